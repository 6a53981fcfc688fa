"""``fixed_point``: a differentiable solve of ``z* = f(z*, *args)``.

    sol = fixed_point(f, z0, params, x, solver="broyden", backward="implicit")
    loss = jnp.sum(sol.value ** 2)   # gradients reach params and x through sol.value
    sol.stats                        # forward statistics, no gradient

The forward solve is any solver (:mod:`solvers`: a registry name or a
:class:`solvers.Solver` value), run under ``stop_gradient``; the derivative comes from
the gradient mode ``backward`` (:mod:`implicit.modes`). With ``J = ∂f/∂z(z*)`` the
default, :class:`~implicit.modes.Implicit`, is

    dz* = (I − J)⁻¹ · ∂f/∂args(z*) · d(args),

in forward mode (``jax.jvp``, ``jax.jacfwd``) through the tangent fixed point
``t = J t + ∂f/∂args·ȧ`` and in reverse mode (``jax.grad``) through the adjoint
fixed point ``u = u·∂f/∂z + ḡ`` followed by one VJP ``u·∂f/∂args``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Union

import solvers
from implicit.correction import Correction
from implicit.modes import Mode, as_mode
from solvers import Solver
from solvers.types import PyTree, Solution


def fixed_point(
    f: Callable[..., PyTree],
    z0: PyTree,
    *args: PyTree,
    solver: Union[str, Solver] = "broyden",
    solver_options: Optional[Mapping[str, Any]] = None,
    backward: Union[str, Mode] = "implicit",
    correction: Optional[Correction] = None,
) -> Solution:
    """Solve ``z* = f(z*, *args)`` from ``z0``, differentiably with respect to ``args``.

    Args:
      f: ``f(z, *args) -> z``, returning the pytree structure, shapes and dtypes of
        ``z0``. It may close over traced values (parameters of an outer
        transformation); they are differentiated like ``args``.
      z0: the initial guess (any pytree of floating arrays). Its derivative is
        exactly zero in every mode but ``Unroll`` and ``Reversible``.
      *args: pytrees passed to ``f``; derivatives flow to their floating leaves.
      solver: the forward solver: a :class:`solvers.Solver` value, or a name from
        ``solvers.available()`` (the string front door, :func:`solvers.get`).
      solver_options: options of the forward solver by name (``max_iter``, ``tol``,
        ``stop_mode``, ``batch_axis``, ...), applied on top of a value's own
        (:meth:`solvers.Solver.replace`).
      backward: the gradient mode: :class:`~implicit.modes.Implicit` (default),
        :class:`~implicit.modes.Phantom`, :class:`~implicit.modes.JFB`,
        :class:`~implicit.modes.Unroll`, :class:`~implicit.modes.Reversible` (which runs
        the forward solve with the reversible iteration), or their names ``"implicit"``,
        ``"phantom"``, ``"jfb"``, ``"unroll"``, ``"reversible"`` for their defaults.
      correction: a :class:`implicit.Correction`: the forward solve also hands out the
        iterates it names, in ``Solution.states`` (no derivative; give them one with
        :func:`implicit.correction_states` or use them in
        :func:`implicit.fixed_point_correction_loss`). The solve runs once either way.

    Returns:
      ``Solution(value, stats, states)``: ``value`` is the solver's ``z*`` and carries
      the derivative of the chosen mode; ``stats`` are the forward statistics
      (:class:`solvers.Stats`) under ``stop_gradient``; ``states`` the recorded
      iterates (``None`` without a ``correction``). A backward solve that does not
      converge emits :class:`implicit.BackwardSolveWarning` (with
      ``Implicit(fallback=...)``, :class:`implicit.BackwardFallbackWarning`: those systems
      took the fallback mode's derivative).

    Raises:
      ValueError: an unknown ``solver`` or ``backward`` (the message lists the valid
        names), or a bad option value.
      TypeError: an unknown option name, or an ``f`` that changes the pytree structure
        of the state (``ValueError`` when it changes a leaf's shape or dtype; both
        name the leaf).
    """
    mode = as_mode(backward)
    forward = mode.prepare(solvers.get(solver, **dict(solver_options or {})))
    if correction is not None:
        forward = correction.recording(forward)
    forward.check(f, z0, args)  # once: the modes run the solve without checking again
    return mode.attach(f, z0, args, forward)
