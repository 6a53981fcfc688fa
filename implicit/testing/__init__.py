"""Property-testing kit for fixed-point layers (needs ``hypothesis``: the ``test`` extra).

* :func:`check_fixed_point_grads` — compares the implicit derivative of your
  ``z* = f(z*, *args)`` with central finite differences and with backprop through
  unrolled iterations, forward mode with reverse mode, and reports the worst
  relative error (:class:`GradCheckReport`).
* :mod:`implicit.testing.strategies` — hypothesis strategies for contractive
  layers (:func:`~implicit.testing.strategies.contractive_layers`), state shapes
  and pytree states.
* :mod:`implicit.testing.layers` — the small contractive layers those strategies draw.

A Flax NNX or Equinox block ``block(z, x)`` is checked through
:func:`implicit.flax.as_fixed_point` or :func:`implicit.equinox.as_fixed_point`, which turn
it into ``(f, params)`` with ``f(z, params, x) = block(z, x)``:
``check_fixed_point_grads(f, z0, params, x)``.

Use a float64 reference by running the check under ``with jax.enable_x64(True):``.
"""

from implicit.testing import layers, strategies
from implicit.testing.grad_check import GradCheckReport, check_fixed_point_grads, default_tolerance
from implicit.testing.strategies import (
    Layer,
    contractive_layers,
    float_arrays,
    pytree_states,
    state_shapes,
)

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
