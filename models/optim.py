"""The optimizer: global-norm clipping, then AdamW with a warmup-cosine learning rate.

    η(s) = η_max · s / W                                            for s < W
    η(s) = η_min + (η_max − η_min) · (1 + cos(π (s − W)/(S − W)))/2   for W ≤ s ≤ S

with ``W`` warmup steps, ``S`` total steps and ``η_min = min_lr_ratio · η_max``. Gradients are
first rescaled to global norm at most ``clip_norm``; weight decay is decoupled and applies to
matrices only (not to biases, LayerNorm parameters, or other vectors).
"""

from __future__ import annotations

import jax
import optax

from models.config import TrainConfig

__all__ = ["learning_rate_schedule", "make_optimizer"]


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """The warmup-cosine schedule ``η(step)`` of the module docstring."""
    warmup = min(config.warmup_steps, max(config.steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.lr,
        warmup_steps=warmup,
        decay_steps=max(config.steps, warmup + 1),
        end_value=config.lr * config.min_lr_ratio,
    )


def _decay_mask(params: optax.Params) -> optax.Params:
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """``clip_by_global_norm(clip_norm)`` followed by AdamW(schedule, weight_decay)."""
    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(
            learning_rate_schedule(config),
            b1=0.9,
            b2=0.99,
            weight_decay=config.weight_decay,
            mask=_decay_mask,
        ),
    )
