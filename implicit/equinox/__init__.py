"""Equinox (needs the ``equinox`` extra): the fixed-point layer :class:`DEQ`, the monotone
operator equilibrium layer :class:`MonDEQ` and its :class:`MonotoneBlock`.

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

__all__ = [
    "DEQ",
    "BlockMap",
    "MonDEQ",
    "MonotoneBlock",
    "as_fixed_point",
]
