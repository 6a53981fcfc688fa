"""Whether the solves behind a derivative converged: warnings and monitor reports,
delivered at run time, under ``jit`` too.

A derivative of a fixed point is only as good as its solves. When the forward solve
stopped short of its tolerance (:class:`ForwardSolveWarning`, raised only when the
solution is differentiated) or a tangent or adjoint solve did (:class:`BackwardSolveWarning`),
the toolkit says so through :func:`jax.debug.callback`, once per offending call. A
``monitor`` given to :class:`implicit.Implicit` also receives a :class:`SolveReport` of
every backward solve, converged or not. When ``Implicit`` has a ``fallback``, the systems
whose backward solve missed its tolerance take the fallback mode's derivative instead: the
warning is then a :class:`BackwardFallbackWarning`, and the report says which systems fell
back.

Under SPMD the per-system statistics of a batch split over devices are split too, while a
callback runs once, on one device. Inside a mesh context (``jax.set_mesh`` or
``jax.sharding.use_abstract_mesh``, as :mod:`models.step` traces its steps) the reported
values are first gathered to every device (:func:`replicated`), an all-gather; without one,
XLA's partitioner reaches the callback's device by an "involuntary full rematerialization".
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec


class SolveReport(NamedTuple):
    """What one backward (tangent or adjoint) solve did, as NumPy arrays on the host.

    Attributes:
      solver: the backward solver's name.
      steps: iterations per system (-1 where the solver does not count them: Krylov).
      converged: per system.
      residual: the residual each system's convergence was judged on.
      tol: its tolerance.
      fell_back: per system, whether its derivative is the fallback mode's (those that did
        not converge); ``None`` when the solve had no fallback.
      fallback: the fallback mode (``repr``), ``""`` when there was none.
    """

    solver: str
    steps: np.ndarray
    converged: np.ndarray
    residual: np.ndarray
    tol: float
    fell_back: Optional[np.ndarray] = None
    fallback: str = ""


Monitor = Callable[[SolveReport], None]


class BackwardSolveWarning(RuntimeWarning):
    """The linear solve of a tangent or adjoint equation did not reach its tolerance."""


class ForwardSolveWarning(RuntimeWarning):
    """A fixed point was differentiated where its forward solve had not converged."""


class BackwardFallbackWarning(BackwardSolveWarning):
    """A tangent or adjoint solve missed its tolerance in some systems, whose derivative
    therefore is the fallback mode's (``Implicit(..., fallback=...)``)."""


class ReconstructionWarning(BackwardSolveWarning):
    """The reversible gradient rebuilt the forward iterates backwards and did not arrive
    back at the start ``z0`` within its tolerance (or the rebuilt iterates overflowed)."""


_ADVICE = {
    BackwardSolveWarning: "Raise max_iter or tol of the backward solver "
    "(Implicit(solver, max_iter=..., tol=...)), or choose another one.",
    ForwardSolveWarning: "The implicit function theorem holds at a fixed point: raise the "
    "forward solver's max_iter or tol, or regularise f toward a contraction.",
    BackwardFallbackWarning: "Raise max_iter or tol of the backward solver to keep "
    "their derivative exact.",
    ReconstructionWarning: "Rebuilding the iterates backwards amplifies rounding errors by "
    "about the contraction the forward solve achieved: stop it at a looser tol, in fewer "
    "steps past convergence, or compute in float64.",
}

_FAILED = {ReconstructionWarning: "missed its start"}
"""How a warning says that the computation it names failed (default: "did not converge")."""


def _warn(category: type, what: str, converged: np.ndarray, residual: np.ndarray,
          tol: float, consequence: str = "the derivative may be inaccurate") -> None:
    converged = np.asarray(converged)
    if converged.all():
        return
    residual = np.asarray(residual)
    warnings.warn(
        f"{what} {_FAILED.get(category, 'did not converge')} (residual "
        f"{float(np.max(residual)):.3g}, tol {tol:.3g}; "
        f"{int(np.size(converged) - np.count_nonzero(converged))} of {np.size(converged)} "
        f"system(s)): {consequence}. {_ADVICE[category]}",
        category,
        stacklevel=2,
    )


def replicated(value: jax.Array) -> jax.Array:
    """``value``, on every device of the mesh in context (unchanged without one): what a
    callback reads, so that SPMD gathers it with an all-gather (see the module docstring)."""
    get_mesh = getattr(jax.sharding, "get_abstract_mesh", None)
    if get_mesh is None or get_mesh().empty:
        return value
    return jax.lax.with_sharding_constraint(value, PartitionSpec())


def _host_values(*values: jax.Array, dtype: type) -> list[jax.Array]:
    # Only 32-bit values cross to the host: the callback may run on a thread where
    # a thread-local ``jax.enable_x64`` context is not active.
    return [replicated(jnp.asarray(value).astype(dtype)) for value in values]


def report_convergence(
    category: type, what: str, converged: jax.Array, residual: jax.Array, tol: float,
    consequence: str = "the derivative may be inaccurate",
) -> None:
    """Warn (``category``) at run time, under ``jit`` too, if not every system converged."""
    jax.debug.callback(
        functools.partial(_warn, category, what, tol=tol, consequence=consequence),
        *_host_values(converged, dtype=jnp.int32),
        *_host_values(residual, dtype=jnp.float32),
    )


def _deliver(monitor: Monitor, solver: str, tol: float, fallback: str, steps: np.ndarray,
             converged: np.ndarray, residual: np.ndarray,
             fell_back: Optional[np.ndarray] = None) -> None:
    monitor(SolveReport(solver, np.asarray(steps), np.asarray(converged).astype(bool),
                        np.asarray(residual), tol,
                        None if fell_back is None else np.asarray(fell_back).astype(bool),
                        fallback))


def report_backward(
    solver: str, converged: jax.Array, residual: jax.Array, tol: float,
    steps: Optional[jax.Array] = None, monitor: Optional[Monitor] = None, *,
    category: type = BackwardSolveWarning, what: Optional[str] = None,
    fell_back: Optional[jax.Array] = None, fallback: str = "",
) -> None:
    """A backward solve's :class:`BackwardSolveWarning` (or ``category``, about ``what``) if
    it missed ``tol``, and its :class:`SolveReport` to ``monitor`` if there is one; with
    ``fell_back`` (per system), the systems that missed ``tol`` took the derivative of the
    mode ``fallback`` instead (:class:`BackwardFallbackWarning`)."""
    what = what or f"the backward solve with {solver!r}"
    if fell_back is None:
        report_convergence(category, what, converged, residual, tol)
    else:
        report_convergence(BackwardFallbackWarning, what, converged, residual, tol,
                           f"their derivative fell back to {fallback}")
    if monitor is not None:
        counted = jnp.full(jnp.shape(converged), -1, jnp.int32) if steps is None else steps
        flags = () if fell_back is None else (jnp.asarray(fell_back).astype(jnp.int32),)
        jax.debug.callback(
            functools.partial(_deliver, monitor, solver, tol, fallback),
            *_host_values(counted, converged, dtype=jnp.int32),
            *_host_values(residual, dtype=jnp.float32),
            *_host_values(*flags, dtype=jnp.int32),
        )
