"""Flax NNX (needs the ``flax`` extra): the fixed-point layer :class:`DEQ`, the monotone
operator equilibrium layer :class:`MonDEQ` and its :class:`MonotoneBlock`, and weight
normalisation for any block, :func:`apply_norm` and :func:`reset_norm`.

``import implicit`` never imports this package; ``implicit.flax`` imports it on first use
and raises an ``ImportError`` naming the extra when Flax is missing.
"""

from implicit.extras import missing

try:
    from flax import nnx  # noqa: F401
except ImportError as error:
    raise missing("flax") from error

from implicit.flax.layer import DEQ, BlockMap, as_fixed_point
from implicit.flax.monotone import MonDEQ, MonotoneBlock
from implicit.flax.norms import Normalized, PowerIteration, apply_norm, reset_norm

__all__ = [
    "DEQ",
    "BlockMap",
    "MonDEQ",
    "MonotoneBlock",
    "Normalized",
    "PowerIteration",
    "apply_norm",
    "as_fixed_point",
    "reset_norm",
]
