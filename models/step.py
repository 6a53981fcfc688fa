"""The train state and the compiled train and evaluation steps.

One train step on a batch ``y`` of shape ``(B, T + 1)`` (inputs ``y[:, :-1]``, targets
``y[:, 1:]``) computes

    L(θ) = NLL(θ) + λ_J · J(θ) + Σⱼ γ^(K+1−j) NLLⱼ(θ),
    g = ∇_θ L,      (θ, opt) ← AdamW(clip(g), opt)

where ``NLL`` is the mean next-byte cross-entropy (nats), ``J`` the Jacobian regulariser of
the DEQ (weight ``λ_J = --jac-reg``) and ``NLLⱼ`` that of the DEQ's ``j``-th fixed-point
correction state (``K = --fp-correction`` of them, weight ``γ = --fp-correction-gamma``;
Bai et al. 2022). Its dropout key is ``fold_in(key(seed), step)``: a
function of the step only, so a resumed run draws the same masks. Both steps are ``jax.jit``
compiled with the state replicated and the batch split over the mesh (see
:mod:`models.sharding`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh

from implicit import compare_gradients, correction_weights
from models.config import TrainConfig
from models.lm import LN2, next_byte_loss
from models.sharding import batch_sharded, replicated, within_mesh
from solvers import Reason

__all__ = [
    "TrainState",
    "init_state",
    "make_train_step",
    "make_eval_step",
    "make_audit_step",
    "training_loss",
    "step_key",
    "TRAIN_METRICS",
    "STOPPED_METRICS",
    "summarize_eval",
]

_STOPPED: dict[str, Reason] = {
    f"stopped_{reason.name.lower()}": reason for reason in Reason if reason != Reason.CONVERGED
}
STOPPED_METRICS: tuple[str, ...] = tuple(_STOPPED)
"""``stopped_max_iter``, ``stopped_stalled``, ``stopped_diverged``, ``stopped_nonfinite``: the
share of sequences whose forward solve ended so (:class:`solvers.Reason`)."""

TRAIN_METRICS: tuple[str, ...] = (
    "loss",
    "bpb",
    "jac_loss",
    "correction_bpb",
    "grad_norm",
    "lr",
    "solver_steps",
    "solver_steps_max",
    "solver_fevals",
    "rel_residual",
    "converged",
    *STOPPED_METRICS,
    "state_finite",
)
"""Keys of the metrics dict a train step returns (scalars). ``state_finite`` is 1 when every
floating-point value of the new parameters and optimizer state is finite, else 0."""

Metrics = dict[str, jax.Array]
TrainStep = Callable[["TrainState", jax.Array], tuple["TrainState", Metrics]]
EvalStep = Callable[[hk.Params, jax.Array], Metrics]


class TrainState(NamedTuple):
    """Everything a step updates: the step counter, the parameters and the optimizer state."""

    step: jax.Array  # int32 scalar: the number of steps taken
    params: hk.Params
    opt_state: optax.OptState


def init_state(
    model: hk.Transformed,
    optimizer: optax.GradientTransformation,
    config: TrainConfig,
    compiler_options: dict[str, Any] | None = None,
) -> TrainState:
    """The state before the first step: parameters from ``key(seed)``, fresh optimizer state."""
    tokens = jnp.zeros((1, config.seq_len), jnp.int32)
    init = jax.jit(lambda key: model.init(key, tokens), compiler_options=compiler_options)
    params = init(jax.random.key(config.seed))
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def _all_finite(tree: Any) -> jax.Array:
    """1.0 if every floating-point leaf of ``tree`` is finite, else 0.0."""
    checks = [
        jnp.all(jnp.isfinite(leaf))
        for leaf in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(checks)).astype(jnp.float32)


def _solve_metrics(stats: dict[str, jax.Array]) -> Metrics:
    return {
        "solver_steps": jnp.mean(stats["steps"].astype(jnp.float32)),
        "solver_steps_max": jnp.max(stats["steps"]).astype(jnp.float32),
        "solver_fevals": jnp.mean(stats["fevals"].astype(jnp.float32)),
        "rel_residual": jnp.mean(stats["rel_residual"]),
        "converged": jnp.mean(stats["converged"].astype(jnp.float32)),
        **{key: jnp.mean((stats["reason"] == reason).astype(jnp.float32))
           for key, reason in _STOPPED.items()},
    }


LossFn = Callable[..., tuple[jax.Array, Any]]  # (params, batch, key, mask=None) -> (L, aux)


def training_loss(model: hk.Transformed, config: TrainConfig) -> LossFn:
    """``loss(params, batch, key, mask=None) -> (L, (nll, stats, jac_loss, first_nll))``:
    the loss of the module docstring on a batch ``(B, T + 1)``, in training mode (dropout
    from ``key``); ``mask`` ``(B, T)`` keeps only the targets where it is nonzero in the
    mean NLL. ``first_nll`` is the NLL of the first fixed-point correction state (0
    without a correction)."""
    jac_weight = config.jac_reg

    def loss_fn(params: hk.Params, batch: jax.Array, key: jax.Array,
                mask: jax.Array | None = None) -> tuple[jax.Array, Any]:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        out = model.apply(params, key, inputs, None, True)
        nll, _ = next_byte_loss(out.logits, targets, mask)
        loss = nll + jac_weight * out.jac_loss if jac_weight else nll
        first = jnp.zeros((), jnp.float32)
        if out.correction_logits is not None:
            nlls = jax.vmap(lambda logits: next_byte_loss(logits, targets, mask)[0])(
                out.correction_logits)
            weights = correction_weights(nlls.shape[0], config.fp_correction_gamma)
            loss, first = loss + jnp.sum(weights * nlls), nlls[0]
        return loss, (nll, out.stats, out.jac_loss, first)

    return loss_fn


def step_key(config: TrainConfig, step: jax.Array) -> jax.Array:
    """The dropout key of training step ``step``: a function of the seed and the step only."""
    return jax.random.fold_in(jax.random.key(config.seed), step)


def make_train_step(
    model: hk.Transformed,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: TrainConfig,
    mesh: Mesh,
    compiler_options: dict[str, Any] | None = None,
) -> TrainStep:
    """The compiled ``step(state, batch) -> (state, metrics)`` (see the module docstring).

    ``compiler_options`` go to ``jax.jit`` (XLA debug options; tests lower the optimisation
    level to compile faster).
    """
    loss_fn = training_loss(model, config)

    def step(state: TrainState, batch: jax.Array) -> tuple[TrainState, Metrics]:
        key = step_key(config, state.step)
        (loss, (nll, stats, jac_loss, first)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, key
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "bpb": nll / LN2,
            "jac_loss": jnp.asarray(jac_loss, jnp.float32),
            "correction_bpb": first / LN2,
            "grad_norm": optax.tree.norm(grads),
            "lr": jnp.asarray(schedule(state.step), jnp.float32),
            **_solve_metrics(stats),
            "state_finite": _all_finite((params, opt_state)),
        }
        return TrainState(state.step + 1, params, opt_state), metrics

    return jax.jit(
        within_mesh(step, mesh),
        in_shardings=(replicated(mesh), batch_sharded(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        compiler_options=compiler_options,
    )


def make_audit_step(
    model: hk.Transformed,
    reference: hk.Transformed,
    config: TrainConfig,
    mesh: Mesh,
    compiler_options: dict[str, Any] | None = None,
) -> Callable[[TrainState, jax.Array], Metrics]:
    """The compiled gradient audit ``audit(state, batch) -> {"audit_cosine",
    "audit_rel_error", "audit_reference_converged", "audit_cosine_converged",
    "audit_rel_error_converged"}``: the training-loss gradient of ``model`` (the configured
    gradient mode) against that of ``reference`` (the same parameters, tight forward and
    implicit backward solves), on the batch of ``state``'s step with its dropout key
    (:func:`implicit.compare_gradients`).

    A sequence whose tight reference solve does not converge has no equilibrium within
    reach, so no gradient of its loss is exact, and its adjoint can dominate both
    gradients. The ``*_converged`` pair compares the gradients of the loss over the other
    sequences only (their NLL; the Jacobian penalty stays whole); it equals the plain pair
    when every sequence converged, or when none did."""
    configured, exact = training_loss(model, config), training_loss(reference, config)

    def audit(state: TrainState, batch: jax.Array) -> Metrics:
        key = step_key(config, state.step)

        def compare(mask: jax.Array | None) -> tuple[Any, jax.Array]:
            grads = jax.grad(lambda p: configured(p, batch, key, mask)[0])(state.params)
            reference_grads, (_, stats, _, _) = jax.grad(
                lambda p: exact(p, batch, key, mask), has_aux=True)(state.params)
            return compare_gradients(grads, reference_grads), stats["converged"]

        whole, converged = compare(None)
        keep = converged | ~jnp.any(converged)
        mask = jnp.broadcast_to(keep[:, None], (batch.shape[0], batch.shape[1] - 1))
        kept = lax.cond(jnp.all(keep), lambda: whole, lambda: compare(mask)[0])
        return {"audit_cosine": whole.cosine, "audit_rel_error": whole.relative_error,
                "audit_reference_converged": jnp.mean(converged.astype(jnp.float32)),
                "audit_cosine_converged": kept.cosine,
                "audit_rel_error_converged": kept.relative_error}

    return jax.jit(
        within_mesh(audit, mesh),
        in_shardings=(replicated(mesh), batch_sharded(mesh)),
        out_shardings=replicated(mesh),
        compiler_options=compiler_options,
    )


def make_eval_step(
    model: hk.Transformed,
    config: TrainConfig,
    mesh: Mesh,
    compiler_options: dict[str, Any] | None = None,
) -> EvalStep:
    """The compiled ``eval(params, batch) -> {"nll_sum", "count", solver stats}`` (no dropout).

    Sums, not means, so that the bits per byte of a validation set is
    ``Σ nll_sum / (Σ count · ln 2)`` however it is batched.
    """
    key = jax.random.key(config.seed)

    def evaluate(params: hk.Params, batch: jax.Array) -> Metrics:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        out = model.apply(params, key, inputs, None, False)
        nll, count = next_byte_loss(out.logits, targets)
        return {"nll_sum": nll * count, "count": count, **_solve_metrics(out.stats)}

    return jax.jit(
        within_mesh(evaluate, mesh),
        in_shardings=(replicated(mesh), batch_sharded(mesh)),
        out_shardings=replicated(mesh),
        compiler_options=compiler_options,
    )


def summarize_eval(results: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Combine per-batch evaluation results: bits per byte and mean solver statistics."""
    nll = sum(float(r["nll_sum"]) for r in results)
    count = sum(float(r["count"]) for r in results)
    summary = {"bpb": nll / max(count, 1.0) / LN2}
    for key in ("solver_steps", "solver_fevals", "rel_residual", "converged", *STOPPED_METRICS):
        summary[key] = float(np.mean([float(r[key]) for r in results]))
    summary["solver_steps_max"] = float(max(float(r["solver_steps_max"]) for r in results))
    return summary
