"""From a :class:`~models.config.TrainConfig` to a Haiku-transformed language model and its loss.

The loss is the mean next-byte cross-entropy over real (unpadded) targets,

    L = −(1/N) Σ_{b,t} m[b,t] · log p(y[b,t] | y[b,<t])    with N = Σ m,

in nats; its value in bits per byte is ``L / ln 2``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import haiku as hk
import jax
import jax.numpy as jnp
import optax

import solvers
from implicit import (
    JFB,
    Correction,
    Implicit,
    JacobianPenalty,
    Mode,
    Phantom,
    Reversible,
    Unroll,
    as_mode,
)
from implicit.convergence import Monitor
from implicit.linear import KRYLOV_SOLVERS
from models.config import MODELS, TrainConfig
from models.data import VOCAB_SIZE
from models.transformer import DEQTransformerLM, LMOutput, TransformerLM, UnrolledLM
from solvers import Solver
from solvers.options import declared, parse_assignments

__all__ = ["deq_solver", "deq_backward", "make_model", "next_byte_loss", "LN2"]

LN2: float = math.log(2.0)


def _options(given: str, default: str, known: Iterable[str]) -> dict[str, Any]:
    """The ``KEY=VALUE`` list ``given`` as options; when it is the flag's ``default``, the
    options that the chosen solver lacks (``known``: the ones it has) are left out, so one
    default serves every solver."""
    options = parse_assignments(given)
    if given == default:
        options = {key: value for key, value in options.items() if key in set(known)}
    return options


def _default(flag: str) -> str:
    return TrainConfig.__dataclass_fields__[flag].default


def deq_solver(config: TrainConfig) -> solvers.Solver:
    """The forward solver of ``config``: its method with ``--solver-options``, and the
    stopping flags (``batch_axis`` 0 with ``per_sample``). The gradient mode may change it
    (``--backward reversible`` runs the reversible iteration: ``Mode.prepare``); the
    gradient audit's reference solves with it as it is."""
    options = _options(config.solver_options, _default("solver_options"),
                       solvers.declared(config.solver))
    return solvers.get(config.solver, **options, max_iter=config.max_iter, tol=config.tol,
                       stop_mode=config.stop_mode, batch_axis=0 if config.per_sample else None)


def unrolled_warmup(config: TrainConfig) -> tuple[Solver, Mode]:
    """The solver and gradient mode of the DEQ's unrolled warm-up: exactly
    ``warmup_depth`` plain iterations ``z ← f(z)`` from ``z = 0`` (``tol = 0``: no early
    stop), backpropagated through; that is the weight-tied stack of that depth."""
    solver = solvers.get("fixed_point", max_iter=config.warmup_depth, tol=0.0,
                         stall_window=0, batch_axis=0 if config.per_sample else None)
    return solver, Unroll()


def _phantom(config: TrainConfig) -> Phantom:
    return Phantom(config.phantom_steps, config.phantom_damping)


def deq_backward(config: TrainConfig, monitor: Optional[Monitor] = None) -> Mode:
    """The gradient mode of ``config``: for ``"implicit"`` the adjoint solver, by name with
    its ``--backward-solver-options``, ``max_iter`` and ``tol`` (``stop_mode`` and
    ``batch_axis`` as the forward solve), and its ``--backward-fallback``, reporting each
    adjoint solve to ``monitor``; for ``"phantom"`` its steps and damping; for
    ``"reversible"`` the mode reporting each backward pass to ``monitor``; otherwise the
    mode's defaults."""
    name, default = config.backward_solver, _default("backward_solver_options")
    stopping = dict(max_iter=config.backward_max_iter, tol=config.backward_tol)
    fallback = {"none": None, "phantom": _phantom(config), "jfb": JFB()}[config.backward_fallback]
    if config.backward == "implicit" and name in KRYLOV_SOLVERS:
        krylov = KRYLOV_SOLVERS[name]
        options = _options(config.backward_solver_options, default, declared(krylov))
        return Implicit(krylov(**{**options, **stopping}), fallback=fallback, monitor=monitor)
    if config.backward == "implicit":
        options = _options(config.backward_solver_options, default, solvers.declared(name))
        adjoint = solvers.get(name, **options, **stopping, stop_mode=config.stop_mode,
                              batch_axis=0 if config.per_sample else None)
        return Implicit(adjoint, reuse_inverse=None if config.reuse_inverse else False,
                        fallback=fallback, monitor=monitor)
    if config.backward == "phantom":
        return _phantom(config)
    if config.backward == "reversible":
        return Reversible(monitor=monitor)
    return as_mode(config.backward)


def _build(config: TrainConfig, solver: Optional[Solver], backward: Optional[Mode]) -> hk.Module:
    common = dict(max_seq_len=config.seq_len, embed_std=config.embed_std, name="lm")
    if config.model == "deq":
        penalty = (JacobianPenalty(batch=config.jac_batch, power=config.jac_power)
                   if config.jac_reg > 0 else None)
        correction = Correction(states=config.fp_correction) if config.fp_correction else None
        return DEQTransformerLM(
            VOCAB_SIZE, config.block_config(), solver=solver or deq_solver(config),
            backward=backward or deq_backward(config), jacobian_penalty=penalty,
            correction=correction, initial_state=config.initial_state, remat=config.remat,
            **common,
        )
    if config.model == "unrolled":
        return UnrolledLM(VOCAB_SIZE, config.block_config(), depth=config.depth,
                          initial_state=config.initial_state, **common)
    if config.model == "transformer":
        return TransformerLM(VOCAB_SIZE, config.block_config(), depth=config.depth, **common)
    raise ValueError(f"unknown model {config.model!r}; choose one of {', '.join(MODELS)}")


def make_model(
    config: TrainConfig, solver: Optional[Solver] = None, backward: Optional[Mode] = None
) -> hk.Transformed:
    """``hk.transform`` of ``forward(tokens, mask=None, is_training=False) -> LMOutput``.

    A DEQ solves with ``solver`` and differentiates with ``backward`` (default: those of
    ``config``, :func:`deq_solver` and :func:`deq_backward`); the parameters are the same
    whatever they are, so one set serves a model built with a tighter solver (the gradient
    audit) or a larger evaluation budget (``--eval-max-iter``).
    """

    def forward(
        tokens: jax.Array, mask: jax.Array | None = None, is_training: bool = False
    ) -> LMOutput:
        return _build(config, solver, backward)(tokens, mask, is_training=is_training)

    return hk.transform(forward)


def next_byte_loss(
    logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Return ``(mean NLL in nats over real targets, number of real targets)``.

    ``logits`` is ``(batch, seq, vocab)``, ``targets`` ``(batch, seq)`` ints and ``mask``
    ``(batch, seq)`` (nonzero = real target; ``None`` = all real).
    """
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    if mask is None:
        mask = jnp.ones_like(nll)
    mask = mask.astype(nll.dtype)
    count = jnp.sum(mask)
    return jnp.sum(nll * mask) / jnp.maximum(count, 1.0), count
