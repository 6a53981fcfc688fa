"""Whether the solves behind a derivative converged: warnings and monitor reports,
delivered at run time, under ``jit`` too.

A derivative of a fixed point is only as good as its solves. When the forward solve
stopped short of its tolerance (:class:`ForwardSolveWarning`, raised only when the
solution is differentiated) or a tangent or adjoint solve did (:class:`BackwardSolveWarning`),
the toolkit says so through :func:`jax.debug.callback`, once per offending call. A
``monitor`` given to :class:`implicit.Implicit` also receives a :class:`SolveReport` of
every backward solve, converged or not.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np


class SolveReport(NamedTuple):
    """What one backward (tangent or adjoint) solve did, as NumPy arrays on the host.

    Attributes:
      solver: the backward solver's name.
      steps: iterations per system (-1 where the solver does not count them: Krylov).
      converged: per system.
      residual: the residual each system's convergence was judged on.
      tol: its tolerance.
    """

    solver: str
    steps: np.ndarray
    converged: np.ndarray
    residual: np.ndarray
    tol: float


Monitor = Callable[[SolveReport], None]


class BackwardSolveWarning(RuntimeWarning):
    """The linear solve of a tangent or adjoint equation did not reach its tolerance."""


class ForwardSolveWarning(RuntimeWarning):
    """A fixed point was differentiated where its forward solve had not converged."""


class ReconstructionWarning(BackwardSolveWarning):
    """The reversible gradient rebuilt the forward iterates backwards and did not arrive
    back at the start ``z0`` within its tolerance (or the rebuilt iterates overflowed)."""


_ADVICE = {
    BackwardSolveWarning: "Raise max_iter or tol of the backward solver "
    "(Implicit(solver, max_iter=..., tol=...)), or choose another one.",
    ForwardSolveWarning: "The implicit function theorem holds at a fixed point: raise the "
    "forward solver's max_iter or tol, or regularise f toward a contraction.",
    ReconstructionWarning: "Rebuilding the iterates backwards amplifies rounding errors by "
    "about the contraction the forward solve achieved: stop it at a looser tol, in fewer "
    "steps past convergence, or compute in float64.",
}

_FAILED = {ReconstructionWarning: "missed its start"}
"""How a warning says that the computation it names failed (default: "did not converge")."""


def _warn(category: type, what: str, converged: np.ndarray, residual: np.ndarray,
          tol: float) -> None:
    converged = np.asarray(converged)
    if converged.all():
        return
    residual = np.asarray(residual)
    warnings.warn(
        f"{what} {_FAILED.get(category, 'did not converge')} (residual {float(np.max(residual)):.3g}, tol {tol:.3g}; "
        f"{int(np.size(converged) - np.count_nonzero(converged))} of {np.size(converged)} "
        f"system(s)): the derivative may be inaccurate. {_ADVICE[category]}",
        category,
        stacklevel=2,
    )


def report_convergence(
    category: type, what: str, converged: jax.Array, residual: jax.Array, tol: float
) -> None:
    """Warn (``category``) at run time, under ``jit`` too, if not every system converged."""
    # Only 32-bit values cross to the host: the callback may run on a thread where
    # a thread-local ``jax.enable_x64`` context is not active.
    jax.debug.callback(
        functools.partial(_warn, category, what, tol=tol),
        jnp.asarray(converged).astype(jnp.int32),
        jnp.asarray(residual).astype(jnp.float32),
    )


def _deliver(monitor: Monitor, solver: str, tol: float, steps: np.ndarray,
             converged: np.ndarray, residual: np.ndarray) -> None:
    monitor(SolveReport(solver, np.asarray(steps), np.asarray(converged).astype(bool),
                        np.asarray(residual), tol))


def report_backward(
    solver: str, converged: jax.Array, residual: jax.Array, tol: float,
    steps: Optional[jax.Array] = None, monitor: Optional[Monitor] = None, *,
    category: type = BackwardSolveWarning, what: Optional[str] = None,
) -> None:
    """A backward solve's :class:`BackwardSolveWarning` (or ``category``, about ``what``) if
    it missed ``tol``, and its :class:`SolveReport` to ``monitor`` if there is one."""
    report_convergence(category, what or f"the backward solve with {solver!r}",
                       converged, residual, tol)
    if monitor is not None:
        counted = jnp.full(jnp.shape(converged), -1, jnp.int32) if steps is None else steps
        jax.debug.callback(
            functools.partial(_deliver, monitor, solver, tol),
            jnp.asarray(counted).astype(jnp.int32),
            jnp.asarray(converged).astype(jnp.int32),
            jnp.asarray(residual).astype(jnp.float32),
        )
