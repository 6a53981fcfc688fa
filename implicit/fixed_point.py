"""``fixed_point``: a differentiable solve of ``z* = f(z*, *args)``.

    sol = fixed_point(f, z0, params, x, solver="broyden", backward="implicit")
    loss = jnp.sum(sol.value ** 2)   # gradients reach params and x through sol.value
    sol.stats                        # forward statistics, no gradient

The forward solve is any solver of the registry (:mod:`solvers`), run under
``stop_gradient``; the derivative comes from the gradient mode ``backward``
(:mod:`implicit.backward`). With ``J = ∂f/∂z(z*)`` the default, ``"implicit"``, is

    dz* = (I − J)⁻¹ · ∂f/∂args(z*) · d(args),

in forward mode (``jax.jvp``, ``jax.jacfwd``) through the tangent fixed point
``t = J t + ∂f/∂args·ȧ`` and in reverse mode (``jax.grad``) through the adjoint
fixed point ``u = u·∂f/∂z + ḡ`` followed by one VJP ``u·∂f/∂args``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import solvers
from implicit.backward import implicit_mode, phantom_mode, unroll_mode
from implicit.linear import make_linear_solve
from implicit.options import check_backward
from solvers.types import PyTree, Solution
from solvers.validation import check_map, check_state


def fixed_point(
    f: Callable[..., PyTree],
    z0: PyTree,
    *args: PyTree,
    solver: str = "broyden",
    solver_options: Optional[Mapping[str, Any]] = None,
    backward: str = "implicit",
    backward_solver: Optional[str] = None,
    backward_options: Optional[Mapping[str, Any]] = None,
    phantom_steps: Optional[int] = None,
    phantom_damping: Optional[float] = None,
) -> Solution:
    """Solve ``z* = f(z*, *args)`` from ``z0``, differentiably with respect to ``args``.

    Args:
      f: ``f(z, *args) -> z``, returning the pytree structure, shapes and dtypes of
        ``z0``. It may close over traced values (parameters of an outer
        transformation); they are differentiated like ``args``.
      z0: the initial guess (any pytree of floating arrays). Its derivative is
        exactly zero in every mode but ``"unroll"``.
      *args: pytrees passed to ``f``; derivatives flow to their floating leaves.
      solver: a name from ``solvers.available()``.
      solver_options: options of ``solver`` (``max_iter``, ``tol``, ``stop_mode``,
        ``batch_axis``, ...).
      backward: ``"implicit"`` (default), ``"phantom"``, ``"jfb"`` or ``"unroll"``.
      backward_solver: ``"implicit"`` only: the solver of the tangent and adjoint
        equations, a registry name (default: ``solver``) or ``"gmres"``,
        ``"bicgstab"``, ``"normal_cg"`` (see :mod:`implicit.linear`).
      backward_options: ``"implicit"`` only: options of ``backward_solver``. A
        registry backward solver inherits ``max_iter``, ``tol``, ``stop_mode`` and
        ``batch_axis`` from the forward solver unless given here; a Krylov one
        inherits ``tol``.
      phantom_steps, phantom_damping: ``"phantom"`` only: ``k`` steps of
        ``z ← (1 − λ) z + λ f(z)`` from ``z*`` (defaults 5 and 0.5).

    Returns:
      ``Solution(value, stats)``: ``value`` is the solver's ``z*`` and carries the
      derivative of the chosen mode; ``stats`` are the forward statistics
      (:class:`solvers.Stats`) under ``stop_gradient``. A backward solve that does
      not converge emits :class:`implicit.BackwardSolveWarning`.

    Raises:
      ValueError: unknown ``solver``, ``backward`` or ``backward_solver`` (the
        message lists the valid names), or a bad option value.
      TypeError: an unknown option name, an option the mode does not use, or an
        ``f`` that changes the pytree structure of the state (``ValueError`` when it
        changes a leaf's shape or dtype; both name the leaf).
    """
    steps, damping = check_backward(
        backward, backward_solver, backward_options, phantom_steps, phantom_damping
    )
    solver_options = dict(solver_options or {})
    if backward == "unroll":
        if solver_options.get("fixed_length") is False:
            raise ValueError(
                "backward='unroll' differentiates through the iterations and needs "
                "fixed_length=True; do not pass fixed_length=False"
            )
        solver_options["fixed_length"] = True
    forward = solvers.get(solver, **solver_options)
    forward_options = getattr(forward, "options", solver_options)
    if backward == "implicit":
        linear_solve = make_linear_solve(
            solver if backward_solver is None else backward_solver,
            backward_options,
            forward_options,
        )
        mode = implicit_mode(linear_solve)
    elif backward == "phantom":
        mode = phantom_mode(steps, damping)
    elif backward == "jfb":
        mode = phantom_mode(1, 1.0)
    else:
        mode = unroll_mode

    check_state(z0, forward_options.get("batch_axis"))
    check_map(f, z0, args)
    return mode(f, z0, args, forward)
