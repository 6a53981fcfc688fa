"""Linear solves ``A x = b`` for the tangent and adjoint equations of a fixed point.

At a fixed point ``z* = f(z*, θ)`` write ``J = ∂f/∂z(z*)``. Differentiating the
residual ``F(z) = f(z) − z`` gives the operator ``A = ∂F/∂z = J − I``, and

* forward mode solves the tangent equation ``A x = b`` (``t = −x`` then solves
  ``t = J t + ∂f/∂θ·θ̇``),
* reverse mode solves its transpose ``Aᵀ x = b`` (``u = −x`` then solves the
  adjoint fixed point ``u = Jᵀ u + ḡ``, i.e. ``u = u·∂f/∂z + ḡ`` for row vectors).

A :data:`LinearSolve` is ``solve(matvec, b) -> x`` with ``matvec(x) = A x``. Two
kinds are built here, both by name:

* **a fixed-point solver** from the registry (``"broyden"``, ``"anderson"``, ...) or a
  :class:`solvers.Solver` value:
  ``A x = b`` with ``A = J − I`` is the linear fixed-point problem

      x = x + A x − b = J x − b,

  which the solver iterates like any other (per sample with ``batch_axis=0``).
  It converges when the forward problem does (the same ``J``).
* **a jaxopt Krylov solver** (``"gmres"``, ``"bicgstab"``, ``"normal_cg"``) on
  ``A x = b`` directly, i.e. on ``(I − Jᵀ) u = ḡ`` up to the sign of both sides.
  These need no contraction, only a non-singular ``A``; they treat the whole
  state as one system even with ``batch_axis=0`` (``A`` is then block diagonal,
  so the answer is the same).

A solve that does not converge is not silent: it emits a
:class:`~implicit.reporting.BackwardSolveWarning` through :func:`jax.debug.callback`,
which works inside and outside ``jit``.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp

import solvers
from implicit.reporting import Monitor, report_backward
from solvers import Solver, pytree
from solvers.options import Option, positive_float, positive_int, resolve
from solvers.quiet_jaxopt import import_jaxopt
from solvers.types import PyTree

jaxopt_linear = import_jaxopt("linear_solve")

Matvec = Callable[[PyTree], PyTree]
LinearSolve = Callable[[Matvec, PyTree], PyTree]

# Options of the forward solver that a registry backward solver named by a string (or
# left to default to the forward solver) inherits unless they are given explicitly.
INHERITED_OPTIONS = ("max_iter", "tol", "stop_mode", "batch_axis")

# A Krylov solve is reported as not converged when its true residual
# ‖A x − b‖ exceeds this multiple of its own target max(tol·‖b‖, atol, eps) (eps:
# the dtype's machine epsilon, below which jax's Krylov solvers treat a vector as
# zero): the solvers stop on an estimate (GMRES) or on the normal equations (CG).
KRYLOV_REPORT_FACTOR = 10.0


def _optional_nonnegative(doc: str) -> Option:
    return Option(
        None, (type(None), int, float),
        lambda v: v is None or (math.isfinite(v) and v >= 0),
        "None or a finite number >= 0", doc,
    )


_KRYLOV_COMMON = {
    "tol": positive_float(1e-5, "stop when ‖A x − b‖ <= tol·‖b‖"),
    "atol": Option(0.0, (int, float), lambda v: math.isfinite(v) and v >= 0,
                   "a finite number >= 0", "or when ‖A x − b‖ <= atol"),
    "max_iter": Option(None, (type(None), int), lambda v: v is None or v >= 1,
                       "None or an integer >= 1",
                       "iteration limit (for gmres: restart cycles); None: jax's default"),
    "ridge": _optional_nonnegative("solve (A + ridge·I) x = b instead (None: no ridge)"),
}

KRYLOV_SOLVERS: Mapping[str, tuple[Callable[..., PyTree], Mapping[str, Option]]] = (
    MappingProxyType({
        "gmres": (
            jaxopt_linear.solve_gmres,
            {**_KRYLOV_COMMON, "restart": positive_int(20, "Krylov subspace size per cycle")},
        ),
        "bicgstab": (jaxopt_linear.solve_bicgstab, _KRYLOV_COMMON),
        "normal_cg": (jaxopt_linear.solve_normal_cg, _KRYLOV_COMMON),
    })
)
KRYLOV_NAMES: tuple[str, ...] = tuple(KRYLOV_SOLVERS)
"""The Krylov backward solvers, by name."""


def available() -> tuple[str, ...]:
    """Names accepted as the backward solver: the solver registry, then the Krylov solvers."""
    return solvers.available() + KRYLOV_NAMES


def registry_linear_solve(
    backward: Solver, prior: Any = None, monitor: Optional[Monitor] = None
) -> LinearSolve:
    """Solve ``A x = b`` (``A = J − I``) as the fixed point ``x = x + A x − b`` with
    ``backward``, started warm from ``prior`` (a final state of a solve whose Jacobian
    was ``A``) when one is given; report each solve (:func:`report_backward`)."""
    options = backward.options
    tol = float(options["tol"])
    residual_field = "abs_residual" if options["stop_mode"] == "abs" else "rel_residual"

    def linear_solve(matvec: Matvec, b: PyTree) -> PyTree:
        def shifted(x: PyTree) -> PyTree:  # x ↦ x + A x − b  (= J x − b for A = J − I)
            return jax.tree_util.tree_map(
                lambda xi, ai, bi: xi + ai - bi, x, matvec(x), b
            )

        solution, _ = backward.run(shifted, jax.tree_util.tree_map(jnp.zeros_like, b), (), prior)
        stats = solution.stats
        report_backward(backward.name, stats.converged, getattr(stats, residual_field), tol,
                        stats.steps, monitor)
        return solution.value

    return linear_solve


def krylov_linear_solve(
    name: str, options: Mapping[str, Any], monitor: Optional[Monitor] = None
) -> LinearSolve:
    """Solve ``A x = b`` with jaxopt's ``solve_<name>`` and the resolved ``options``.

    Convergence is judged on the true residual ``‖A x − b‖`` (one more product
    with ``A``) against :data:`KRYLOV_REPORT_FACTOR` times the solver's target.
    """
    method, _ = KRYLOV_SOLVERS[name]
    kwargs = {"tol": options["tol"], "atol": options["atol"]}
    if options["max_iter"] is not None:
        kwargs["maxiter"] = options["max_iter"]
    if "restart" in options:
        kwargs["restart"] = options["restart"]

    def linear_solve(matvec: Matvec, b: PyTree) -> PyTree:
        x = method(matvec, b, ridge=options["ridge"], **kwargs)
        residual = pytree.norm(jax.tree_util.tree_map(jnp.subtract, matvec(x), b))
        # jax's Krylov solvers treat vectors with norm below eps as zero.
        floor = jnp.finfo(jnp.result_type(*jax.tree_util.tree_leaves(b))).eps
        target = jnp.maximum(jnp.maximum(options["tol"] * pytree.norm(b), options["atol"]), floor)
        report_backward(name, residual <= KRYLOV_REPORT_FACTOR * target, residual,
                        options["tol"], monitor=monitor)
        return x

    return linear_solve


def backward_solver(
    solver: Union[str, Solver, None], options: Mapping[str, Any], forward: Optional[Solver]
) -> Union[Solver, tuple[str, Mapping[str, Any]], None]:
    """The backward solver of ``Implicit(solver, **options)`` after the solve ``forward``.

    * a Krylov name gives ``(name, resolved options)``; ``tol`` defaults to the forward one;
    * a :class:`Solver` value is used as given, with ``options`` changed;
    * a registry name, or ``None`` (the forward solver's kind), is built with ``options``
      and the forward solver's :data:`INHERITED_OPTIONS` that ``options`` does not give;
      its other options keep their defaults.

    With ``forward=None`` nothing is inherited and ``None`` stays ``None``: this checks
    names and options early. Raises ``ValueError`` listing :func:`available` for an
    unknown name, and the solver's own ``TypeError`` / ``ValueError`` for bad options.
    """
    if isinstance(solver, str) and solver in KRYLOV_SOLVERS:
        given = dict(options)
        if forward is not None and "tol" not in given:
            given["tol"] = forward.options["tol"]
        return solver, MappingProxyType(resolve(solver, KRYLOV_SOLVERS[solver][1], given))
    if isinstance(solver, Solver):
        return solvers.get(solver, **options)
    if solver is None:
        if forward is None:
            return None
        built = forward.reset(**options)
    elif isinstance(solver, str) and solver in solvers.available():
        built = solvers.get(solver, **options)
    else:
        raise ValueError(
            f"unknown backward solver {solver!r}; valid backward solvers: "
            f"{', '.join(available())}"
        )
    if forward is None:
        return built
    inherited = {
        key: forward.options[key] for key in INHERITED_OPTIONS
        if key in built.declared and key not in options
    }
    return built.replace(**inherited)


def make_linear_solve(built: Union[Solver, tuple[str, Mapping[str, Any]]],
                      prior: Any = None, monitor: Optional[Monitor] = None) -> LinearSolve:
    """The :data:`LinearSolve` of a backward solver as :func:`backward_solver` builds it;
    a registry solver starts warm from ``prior`` when one is given; each solve is reported
    to ``monitor`` when one is given."""
    if isinstance(built, Solver):
        return registry_linear_solve(built, prior, monitor)
    return krylov_linear_solve(*built, monitor=monitor)
