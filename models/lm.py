"""From a :class:`~models.config.TrainConfig` to a Haiku-transformed language model and its loss.

The loss is the mean next-byte cross-entropy over real (unpadded) targets,

    L = −(1/N) Σ_{b,t} m[b,t] · log p(y[b,t] | y[b,<t])    with N = Σ m,

in nats; its value in bits per byte is ``L / ln 2``.
"""

from __future__ import annotations

import math
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import optax

import solvers
from models.config import TrainConfig
from models.data import VOCAB_SIZE
from models.transformer import DEQTransformerLM, ExplicitTransformerLM, LMOutput

__all__ = ["deq_options", "make_model", "next_byte_loss", "bits", "LN2"]

LN2: float = math.log(2.0)


def bits(nats: jax.Array | float) -> jax.Array | float:
    """Convert a cross-entropy in nats to bits."""
    return nats / LN2


def deq_options(config: TrainConfig) -> dict[str, Any]:
    """The solver and backward options ``implicit.haiku.DEQ`` receives for ``config``.

    Forward: ``max_iter``, ``tol``, ``stop_mode``, ``batch_axis`` (0 with ``per_sample``),
    and ``history`` when the solver has that option. Backward: for ``"implicit"`` the adjoint
    solver by name with its ``max_iter``, ``tol`` (and ``history``, ``batch_axis``); for
    ``"phantom"`` its steps and damping; ``"jfb"`` and ``"unroll"`` take none.
    """
    batch_axis = 0 if config.per_sample else None
    forward: dict[str, Any] = {
        "max_iter": config.max_iter,
        "tol": config.tol,
        "stop_mode": config.stop_mode,
        "batch_axis": batch_axis,
    }
    if "history" in getattr(solvers.get(config.solver), "options", {}):
        forward["history"] = config.history
    if config.backward == "implicit":
        adjoint: dict[str, Any] = {
            "max_iter": config.backward_max_iter,
            "tol": config.backward_tol,
            "stop_mode": config.stop_mode,
            "batch_axis": batch_axis,
        }
        if "history" in getattr(solvers.get(config.backward_solver), "options", {}):
            adjoint["history"] = config.history
        forward["backward_solver"] = config.backward_solver
        forward["backward_options"] = adjoint
    elif config.backward == "phantom":
        forward["phantom_steps"] = config.phantom_steps
        forward["phantom_damping"] = config.phantom_damping
    return forward


def _build(config: TrainConfig) -> hk.Module:
    common = dict(
        vocab_size=VOCAB_SIZE,
        d_model=config.d_model,
        num_heads=config.num_heads,
        block_layers=config.block_layers,
        dropout_rate=config.dropout,
        max_seq_len=config.seq_len,
        mlp_ratio=config.mlp_ratio,
        init_std=config.init_std,
        out_init_scale=config.out_init_scale,
        embed_std=config.embed_std,
    )
    if config.model == "deq":
        return DEQTransformerLM(
            solver=config.solver,
            backward=config.backward,
            solver_options=deq_options(config),
            jac_reg=config.jac_reg,
            jac_batch=config.jac_batch,
            remat=config.remat,
            name="lm",
            **common,
        )
    if config.model in ("explicit", "untied"):
        return ExplicitTransformerLM(
            depth=config.depth, tied=config.model == "explicit", name="lm", **common
        )
    raise ValueError(f"unknown model {config.model!r}; choose one of deq, explicit, untied")


def make_model(config: TrainConfig) -> hk.Transformed:
    """``hk.transform`` of ``forward(tokens, mask=None, is_training=False) -> LMOutput``."""

    def forward(
        tokens: jax.Array, mask: jax.Array | None = None, is_training: bool = False
    ) -> LMOutput:
        return _build(config)(tokens, mask, is_training=is_training)

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
