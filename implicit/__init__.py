"""Differentiable fixed points: ``z* = f(z*, *args)`` with exact, constant-memory derivatives.

    from implicit import fixed_point
    sol = fixed_point(f, z0, params, x, solver="broyden", backward="implicit")
    jax.grad(lambda p: loss(fixed_point(f, z0, p, x).value))(params)

* :func:`fixed_point` — the differentiable solve; gradient modes ``"implicit"``
  (implicit function theorem, forward and reverse mode), ``"phantom"``, ``"jfb"``
  and ``"unroll"`` (:mod:`implicit.backward`); tangent and adjoint equations solved
  by a registry solver or a Krylov solver (:mod:`implicit.linear`).
* :class:`implicit.haiku.DEQ` — the layer as a Haiku module; :func:`deq` — the call
  shape of the original Haiku DEQ code.
* Regularisers (:mod:`implicit.regularizers`): :func:`jacobian_frobenius_sq`,
  :func:`spectral_radius`, :func:`solver_trajectory`,
  :func:`fixed_point_correction_loss`.
* :mod:`implicit.testing` (import it explicitly; it needs ``hypothesis``):
  strategies and :func:`implicit.testing.check_fixed_point_grads` to property-test
  your own fixed-point layers.
"""

from implicit import haiku
from implicit.deq import deq
from implicit.fixed_point import fixed_point
from implicit.linear import BackwardSolveWarning
from implicit.linear import available as backward_solvers
from implicit.options import BACKWARD_MODES, BACKWARD_OPTIONS, split_options
from implicit.regularizers import (
    fixed_point_correction_loss,
    jacobian_frobenius_sq,
    solver_trajectory,
    spectral_radius,
)

__all__ = [
    "BACKWARD_MODES",
    "BACKWARD_OPTIONS",
    "BackwardSolveWarning",
    "backward_solvers",
    "deq",
    "fixed_point",
    "fixed_point_correction_loss",
    "haiku",
    "jacobian_frobenius_sq",
    "solver_trajectory",
    "spectral_radius",
    "split_options",
]
