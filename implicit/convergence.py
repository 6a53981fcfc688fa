"""Whether the solves behind a derivative converged: warnings and monitor reports,
delivered at run time, under ``jit`` too.

A derivative of a fixed point is only as good as its solves. When the forward solve
stopped short of its tolerance (:class:`ForwardSolveWarning`, raised only when the
solution is differentiated) or a tangent or adjoint solve did (:class:`BackwardSolveWarning`),
the toolkit says so through :func:`jax.debug.callback`, once per offending call. A
``monitor`` given to :class:`implicit.Implicit` also receives a :class:`SolveReport` of
every backward solve, converged or not.

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


_ADVICE = {
    BackwardSolveWarning: "Raise max_iter or tol of the backward solver "
    "(Implicit(solver, max_iter=..., tol=...)), or choose another one.",
    ForwardSolveWarning: "The implicit function theorem holds at a fixed point: raise the "
    "forward solver's max_iter or tol, or regularise f toward a contraction.",
}


def _warn(category: type, what: str, converged: np.ndarray, residual: np.ndarray,
          tol: float) -> None:
    converged = np.asarray(converged)
    if converged.all():
        return
    residual = np.asarray(residual)
    warnings.warn(
        f"{what} did not converge (residual {float(np.max(residual)):.3g}, tol {tol:.3g}; "
        f"{int(np.size(converged) - np.count_nonzero(converged))} of {np.size(converged)} "
        f"system(s)): the derivative may be inaccurate. {_ADVICE[category]}",
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
    category: type, what: str, converged: jax.Array, residual: jax.Array, tol: float
) -> None:
    """Warn (``category``) at run time, under ``jit`` too, if not every system converged."""
    jax.debug.callback(
        functools.partial(_warn, category, what, tol=tol),
        *_host_values(converged, dtype=jnp.int32),
        *_host_values(residual, dtype=jnp.float32),
    )


def _deliver(monitor: Monitor, solver: str, tol: float, steps: np.ndarray,
             converged: np.ndarray, residual: np.ndarray) -> None:
    monitor(SolveReport(solver, np.asarray(steps), np.asarray(converged).astype(bool),
                        np.asarray(residual), tol))


def report_backward(
    solver: str, converged: jax.Array, residual: jax.Array, tol: float,
    steps: Optional[jax.Array] = None, monitor: Optional[Monitor] = None,
) -> None:
    """A backward solve's :class:`BackwardSolveWarning` if it missed ``tol``, and its
    :class:`SolveReport` to ``monitor`` if there is one."""
    report_convergence(BackwardSolveWarning, f"the backward solve with {solver!r}",
                       converged, residual, tol)
    if monitor is not None:
        counted = jnp.full(jnp.shape(converged), -1, jnp.int32) if steps is None else steps
        jax.debug.callback(
            functools.partial(_deliver, monitor, solver, tol),
            *_host_values(counted, converged, dtype=jnp.int32),
            *_host_values(residual, dtype=jnp.float32),
        )
