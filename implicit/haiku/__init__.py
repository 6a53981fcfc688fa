"""Haiku: the fixed-point layer :class:`DEQ`; the monotone operator equilibrium layer
:class:`MonDEQ` and its :class:`MonotoneBlock`; spectral normalisation that bounds how far
its function stretches (:func:`spectral_norm_params` for the layer's ``transform_params``,
:func:`spectral_norm` for any Haiku function); and the general weight and spectral norms of
:mod:`implicit.norms` as a ``transform_params``, :func:`apply_norm`."""

from implicit.haiku.layer import DEQ, STATS_FIELDS
from implicit.haiku.monotone import MonDEQ, MonotoneBlock
from implicit.haiku.norms import (
    apply_norm,
    largest_singular_value,
    linear_weights,
    spectral_norm,
    spectral_norm_bound,
    spectral_norm_params,
)

__all__ = [
    "DEQ",
    "MonDEQ",
    "MonotoneBlock",
    "STATS_FIELDS",
    "apply_norm",
    "largest_singular_value",
    "linear_weights",
    "spectral_norm",
    "spectral_norm_bound",
    "spectral_norm_params",
]
