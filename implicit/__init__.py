"""Differentiable fixed points: ``z* = f(z*, *args)`` with exact, constant-memory derivatives.

    from implicit import fixed_point, Implicit, GMRES
    sol = fixed_point(f, z0, params, x, solver="broyden", backward=Implicit(GMRES()))
    jax.grad(lambda p: loss(fixed_point(f, z0, p, x).value))(params)

* :func:`fixed_point` — the differentiable solve.
* Gradient modes as values (:mod:`implicit.modes`): :class:`Implicit` (implicit
  function theorem, forward and reverse mode; tangent and adjoint equations solved by
  a fixed-point solver or a Krylov solver — :class:`GMRES`, :class:`BiCGStab`,
  :class:`NormalCG`, :mod:`implicit.linear`), :class:`Phantom`, :class:`JFB`,
  :class:`Unroll` and :class:`Reversible` (the exact derivative of the reversible
  iteration, rebuilt backwards in constant memory: :mod:`implicit.reversible`); the strings
  ``"implicit"``, ``"phantom"``, ``"jfb"``, ``"unroll"``, ``"reversible"`` stand for their
  defaults.
* The layers, one signature in every framework (:mod:`implicit.layer`):
  :class:`implicit.haiku.DEQ` (Haiku), and :class:`implicit.flax.DEQ` (Flax NNX) and
  :class:`implicit.equinox.DEQ` (Equinox) as optional extras (``pip install -e
  '.[flax]'``, ``'.[equinox]'``): ``import implicit`` never needs them; ``implicit.flax``
  and ``implicit.equinox`` are imported on first use. :func:`deq` is a shim with the
  call shape of the original (seed) Haiku DEQ code.
* Convergence reports (:mod:`implicit.convergence`): :class:`ForwardSolveWarning`,
  :class:`BackwardSolveWarning` (and its :class:`BackwardFallbackWarning`, when
  ``Implicit(..., fallback=Phantom())`` took over the derivative of the systems whose
  backward solve failed, and :class:`ReconstructionWarning`) and the monitor's
  :class:`SolveReport`.
* The gradient audit (:mod:`implicit.audit`): :func:`audit_gradient` measures how far a
  mode's gradient is from the exact one, on your own model.
* Regularisers (:mod:`implicit.regularizers`): :class:`JacobianPenalty`,
  :func:`jacobian_frobenius_sq`, :func:`spectral_radius`.
* The fixed-point correction (:mod:`implicit.correction`): :class:`Correction` makes the
  forward solve hand out some of its iterates, :func:`correction_states` differentiates
  them, :func:`fixed_point_correction_loss` weighs their losses.
* :mod:`implicit.testing` (import it explicitly; it needs ``hypothesis``):
  strategies and :func:`implicit.testing.check_fixed_point_grads` to property-test
  your own fixed-point layers.
"""

import importlib
from types import ModuleType

from implicit import haiku
from implicit.audit import (
    GradientAudit,
    audit_gradient,
    compare_gradients,
    reference_configuration,
)
from implicit.convergence import (
    BackwardFallbackWarning,
    BackwardSolveWarning,
    ForwardSolveWarning,
    ReconstructionWarning,
    SolveReport,
)
from implicit.correction import (
    Correction,
    correction_states,
    correction_weights,
    fixed_point_correction_loss,
)
from implicit.deq import deq
from implicit.extras import FRAMEWORKS
from implicit.fixed_point import fixed_point
from implicit.layer import DEQSettings
from implicit.linear import GMRES, KRYLOV_NAMES, BiCGStab, Krylov, NormalCG
from implicit.linear import available as backward_solvers
from implicit.modes import (
    BACKWARD_MODES,
    JFB,
    Implicit,
    Mode,
    Phantom,
    Reversible,
    Unroll,
    as_mode,
)
from implicit.regularizers import JacobianPenalty, jacobian_frobenius_sq, spectral_radius

__all__ = [
    "BACKWARD_MODES",
    "BackwardFallbackWarning",
    "BackwardSolveWarning",
    "Correction",
    "BiCGStab",
    "DEQSettings",
    "ForwardSolveWarning",
    "GMRES",
    "GradientAudit",
    "Implicit",
    "JFB",
    "JacobianPenalty",
    "KRYLOV_NAMES",
    "Krylov",
    "Mode",
    "NormalCG",
    "Phantom",
    "ReconstructionWarning",
    "Reversible",
    "SolveReport",
    "Unroll",
    "as_mode",
    "audit_gradient",
    "backward_solvers",
    "compare_gradients",
    "correction_states",
    "correction_weights",
    "deq",
    "fixed_point",
    "fixed_point_correction_loss",
    "haiku",
    "jacobian_frobenius_sq",
    "reference_configuration",
    "spectral_radius",
]


def __getattr__(name: str) -> ModuleType:
    """``implicit.flax`` and ``implicit.equinox``, imported when first asked for."""
    if name in FRAMEWORKS:
        return importlib.import_module(f"implicit.{name}")
    raise AttributeError(f"module 'implicit' has no attribute {name!r}")
