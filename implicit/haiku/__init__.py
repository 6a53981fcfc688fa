"""Haiku: the fixed-point layer :class:`DEQ`, and spectral normalisation that bounds how far
its function stretches (:func:`spectral_norm_params` for the layer's ``transform_params``,
:func:`spectral_norm` for any Haiku function)."""

from implicit.haiku.layer import DEQ, STATS_FIELDS
from implicit.haiku.norms import (
    largest_singular_value,
    linear_weights,
    spectral_norm,
    spectral_norm_bound,
    spectral_norm_params,
)

__all__ = [
    "DEQ",
    "STATS_FIELDS",
    "largest_singular_value",
    "linear_weights",
    "spectral_norm",
    "spectral_norm_bound",
    "spectral_norm_params",
]
