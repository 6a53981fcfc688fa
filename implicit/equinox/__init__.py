"""Equinox (needs the ``equinox`` extra): the fixed-point layer :class:`DEQ`, the monotone
operator equilibrium layer :class:`MonDEQ` and its :class:`MonotoneBlock`, and weight
normalisation for any block, :func:`apply_norm` and :func:`reset_norm`.

``import implicit`` never imports this package; ``implicit.equinox`` imports it on first
use and raises an ``ImportError`` naming the extra when Equinox is missing.
"""

from implicit.extras import missing

try:
    import equinox  # noqa: F401
except ImportError as error:
    raise missing("equinox") from error

from implicit.equinox.layer import DEQ, BlockMap, as_fixed_point
from implicit.equinox.monotone import MonDEQ, MonotoneBlock
from implicit.equinox.norms import Normalized, apply_norm, reset_norm

__all__ = [
    "DEQ",
    "BlockMap",
    "MonDEQ",
    "MonotoneBlock",
    "Normalized",
    "apply_norm",
    "as_fixed_point",
    "reset_norm",
]
