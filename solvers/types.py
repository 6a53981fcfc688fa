"""The result of a fixed-point solve: the solution and its statistics.

Every solver in the registry returns a :class:`Solution` whose ``stats`` are
computed by the shared loop in :mod:`solvers.loop`, so numbers from different
solvers can be compared one to one.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax

PyTree = Any
"""Any nested structure of tuples, lists, dicts and arrays that ``jax.tree_util`` walks."""


class Stats(NamedTuple):
    """Statistics of a solve of ``z = f(z, *args)``.

    With ``batch_axis=None`` every field is a scalar (``trace`` has shape
    ``(max_iter + 1,)``); with ``batch_axis=0`` every field has a leading axis
    of size ``batch`` (``trace`` has shape ``(batch, max_iter + 1)``).

    Attributes:
      steps: iterations taken (a line-search trial is not an iteration).
      fevals: evaluations of ``f`` spent on the sample, ``f(z0)`` included.
      abs_residual: ``‖f(z) − z‖`` at the returned ``z``.
      rel_residual: ``‖f(z) − z‖ / ‖f(z)‖`` at the returned ``z``.
      converged: whether the stop-mode residual of the returned ``z`` is ``≤ tol``.
      trace: ``trace[k]`` is the stop-mode residual of the best iterate after ``k``
        iterations (``trace[0]`` is the residual of ``z0``), so it is
        non-increasing; after the solve stopped it is padded with its last value.
      reason: why the sample stopped, a :class:`solvers.Reason` code (int32):
        converged, max_iter, stalled, diverged or non-finite.

    Residuals are computed in at least single precision, whatever the state's dtype.
    """

    steps: jax.Array
    fevals: jax.Array
    abs_residual: jax.Array
    rel_residual: jax.Array
    converged: jax.Array
    trace: jax.Array
    reason: jax.Array


class Solution(NamedTuple):
    """A fixed point ``value`` (same pytree, shapes and dtypes as ``z0``) and its ``stats``;
    with a solver's ``record`` option, ``states`` holds the iterates it passed through
    (every leaf stacked on a new leading axis, one entry per recorded iteration), else
    ``None``."""

    value: PyTree
    stats: Stats
    states: Optional[PyTree] = None
