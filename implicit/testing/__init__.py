"""Property-testing kit for fixed-point layers.

* :func:`check_fixed_point_grads` — compares the implicit derivative of your
  ``z* = f(z*, *args)`` with central finite differences and with backprop through
  unrolled iterations, forward mode with reverse mode, and reports the worst
  relative error (:class:`GradCheckReport`).
* :mod:`implicit.testing.strategies` — hypothesis strategies for contractive
  layers (:func:`~implicit.testing.strategies.contractive_layers`), state shapes
  and pytree states.
* :mod:`implicit.testing.layers` — the small contractive layers those strategies draw.

Only :mod:`implicit.testing.strategies` needs ``hypothesis`` (the ``test`` extra); it is
imported on first use, so the gradient check and the layers work without it.

A Flax NNX or Equinox block ``block(z, x)`` is checked through
:func:`implicit.flax.as_fixed_point` or :func:`implicit.equinox.as_fixed_point`, which turn
it into ``(f, params)`` with ``f(z, params, x) = block(z, x)``:
``check_fixed_point_grads(f, z0, params, x)``.

Use a float64 reference by running the check under ``with jax.enable_x64(True):``.
"""

import importlib
from typing import Any

from implicit.testing import layers
from implicit.testing.grad_check import GradCheckReport, check_fixed_point_grads, default_tolerance

_STRATEGIES = ("Layer", "contractive_layers", "float_arrays", "pytree_states", "state_shapes")

__all__ = [
    "GradCheckReport",
    "Layer",
    "check_fixed_point_grads",
    "contractive_layers",
    "default_tolerance",
    "float_arrays",
    "layers",
    "pytree_states",
    "state_shapes",
    "strategies",
]


def __getattr__(name: str) -> Any:
    """:mod:`implicit.testing.strategies` and its names, imported (with hypothesis) on first use."""
    if name == "strategies" or name in _STRATEGIES:
        strategies = importlib.import_module("implicit.testing.strategies")
        return strategies if name == "strategies" else getattr(strategies, name)
    raise AttributeError(f"module 'implicit.testing' has no attribute {name!r}")
