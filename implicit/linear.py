"""Linear solves ``A x = b`` for the tangent and adjoint equations of a fixed point.

At a fixed point ``z* = f(z*, θ)`` write ``J = ∂f/∂z(z*)``. Differentiating the
residual ``F(z) = f(z) − z`` gives the operator ``A = ∂F/∂z = J − I``, and

* forward mode solves the tangent equation ``A x = b`` (``t = −x`` then solves
  ``t = J t + ∂f/∂θ·θ̇``),
* reverse mode solves its transpose ``Aᵀ x = b`` (``u = −x`` then solves the
  adjoint fixed point ``u = Jᵀ u + ḡ``, i.e. ``u = u·∂f/∂z + ḡ`` for row vectors).

A :data:`LinearSolve` is ``solve(matvec, b) -> x`` with ``matvec(x) = A x``. Two
kinds are built here, both by name:

* **a fixed-point solver from the registry** (``"broyden"``, ``"anderson"``, ...):
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
:class:`BackwardSolveWarning` through :func:`jax.debug.callback`, which works
inside and outside ``jit``.
"""

from __future__ import annotations

import functools
import math
import warnings
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

import solvers
from solvers.options import Option, positive_float, positive_int, resolve
from solvers.types import PyTree

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # jaxopt is in maintenance mode
    import jaxopt.linear_solve as jaxopt_linear

Matvec = Callable[[PyTree], PyTree]
LinearSolve = Callable[[Matvec, PyTree], PyTree]

# Options of the forward solver that a registry backward solver inherits unless
# they are given in ``backward_options`` (and the backward solver accepts them).
INHERITED_OPTIONS = ("max_iter", "tol", "stop_mode", "batch_axis")

# A Krylov solve is reported as not converged when its true residual
# ‖A x − b‖ exceeds this multiple of its own target max(tol·‖b‖, atol, eps) (eps:
# the dtype's machine epsilon, below which jax's Krylov solvers treat a vector as
# zero): the solvers stop on an estimate (GMRES) or on the normal equations (CG).
KRYLOV_REPORT_FACTOR = 10.0


class BackwardSolveWarning(RuntimeWarning):
    """The linear solve of a tangent or adjoint equation did not reach its tolerance."""


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


def available() -> tuple[str, ...]:
    """Names accepted as ``backward_solver``: the solver registry, then the Krylov solvers."""
    return solvers.available() + tuple(KRYLOV_SOLVERS)


def _warn(what: str, converged: np.ndarray, residual: np.ndarray, tol: float) -> None:
    converged = np.asarray(converged)
    if converged.all():
        return
    residual = np.asarray(residual)
    warnings.warn(
        f"{what} did not converge (residual {float(np.max(residual)):.3g}, tol {tol:.3g}; "
        f"{int(np.size(converged) - np.count_nonzero(converged))} of {np.size(converged)} "
        "system(s)): the derivative may be inaccurate. Raise max_iter or tol in "
        "backward_options, or choose another backward_solver.",
        BackwardSolveWarning,
        stacklevel=2,
    )


def report_convergence(what: str, converged: jax.Array, residual: jax.Array, tol: float) -> None:
    """Warn (:class:`BackwardSolveWarning`) at run time, under ``jit`` too, if not all converged."""
    # Only 32-bit values cross to the host: the callback may run on a thread where
    # a thread-local ``jax.enable_x64`` context is not active.
    jax.debug.callback(
        functools.partial(_warn, what, tol=tol),
        jnp.asarray(converged).astype(jnp.int32),
        jnp.asarray(residual).astype(jnp.float32),
    )


def _tree_norm(tree: PyTree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in jax.tree_util.tree_leaves(tree)))


def registry_linear_solve(
    name: str,
    backward_options: Optional[Mapping[str, Any]] = None,
    forward_options: Optional[Mapping[str, Any]] = None,
) -> LinearSolve:
    """Solve ``A x = b`` (``A = J − I``) as the fixed point ``x = x + A x − b`` with ``name``.

    Options: ``backward_options``, completed with the forward solver's
    :data:`INHERITED_OPTIONS` that the backward solver accepts and that were not
    given. Bad names and values raise here (``ValueError`` / ``TypeError``).
    """
    given = dict(backward_options or {})
    probe = solvers.get(name, **given)  # validates the explicit options eagerly
    accepted = getattr(probe, "options", {})
    inherited = {
        key: value for key, value in (forward_options or {}).items()
        if key in INHERITED_OPTIONS and key in accepted and key not in given
    }
    solve = solvers.get(name, **given, **inherited) if inherited else probe
    options = getattr(solve, "options", {})
    tol = float(options.get("tol", float("nan")))
    residual_field = "abs_residual" if options.get("stop_mode") == "abs" else "rel_residual"

    def linear_solve(matvec: Matvec, b: PyTree) -> PyTree:
        def shifted(x: PyTree) -> PyTree:  # x ↦ x + A x − b  (= J x − b for A = J − I)
            return jax.tree_util.tree_map(
                lambda xi, ai, bi: xi + ai - bi, x, matvec(x), b
            )

        solution = solve(shifted, jax.tree_util.tree_map(jnp.zeros_like, b))
        stats = solution.stats
        report_convergence(
            f"the backward solve with {name!r}", stats.converged, getattr(stats, residual_field),
            tol,
        )
        return solution.value

    linear_solve.options = options
    linear_solve.solver_name = name
    return linear_solve


def krylov_linear_solve(
    name: str,
    backward_options: Optional[Mapping[str, Any]] = None,
    forward_options: Optional[Mapping[str, Any]] = None,
) -> LinearSolve:
    """Solve ``A x = b`` with jaxopt's ``solve_<name>``; ``tol`` defaults to the forward ``tol``.

    Convergence is judged on the true residual ``‖A x − b‖`` (one more product
    with ``A``) against :data:`KRYLOV_REPORT_FACTOR` times the solver's target.
    """
    method, declared = KRYLOV_SOLVERS[name]
    given = dict(backward_options or {})
    if "tol" not in given and forward_options and "tol" in forward_options:
        given["tol"] = forward_options["tol"]
    options = MappingProxyType(resolve(name, declared, given))
    kwargs = {"tol": options["tol"], "atol": options["atol"]}
    if options["max_iter"] is not None:
        kwargs["maxiter"] = options["max_iter"]
    if "restart" in options:
        kwargs["restart"] = options["restart"]

    def linear_solve(matvec: Matvec, b: PyTree) -> PyTree:
        x = method(matvec, b, ridge=options["ridge"], **kwargs)
        residual = _tree_norm(jax.tree_util.tree_map(jnp.subtract, matvec(x), b))
        # jax's Krylov solvers treat vectors with norm below eps as zero.
        floor = jnp.finfo(jnp.result_type(*jax.tree_util.tree_leaves(b))).eps
        target = jnp.maximum(jnp.maximum(options["tol"] * _tree_norm(b), options["atol"]), floor)
        report_convergence(
            f"the backward solve with {name!r}",
            residual <= KRYLOV_REPORT_FACTOR * target, residual, options["tol"],
        )
        return x

    linear_solve.options = options
    linear_solve.solver_name = name
    return linear_solve


def make_linear_solve(
    name: str,
    backward_options: Optional[Mapping[str, Any]] = None,
    forward_options: Optional[Mapping[str, Any]] = None,
) -> LinearSolve:
    """The :data:`LinearSolve` called ``name``: a registry solver or a Krylov solver.

    Raises ``ValueError`` listing :func:`available` for an unknown name, and the
    solver's own ``TypeError`` / ``ValueError`` for bad options.
    """
    if isinstance(name, str) and name in KRYLOV_SOLVERS:
        return krylov_linear_solve(name, backward_options, forward_options)
    if isinstance(name, str) and name in solvers.available():
        return registry_linear_solve(name, backward_options, forward_options)
    raise ValueError(
        f"unknown backward_solver {name!r}; valid backward solvers: {', '.join(available())}"
    )
