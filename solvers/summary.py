"""A solve's statistics in one line of words: ``explain(stats)``, from :class:`solvers.Stats`.

    >>> solvers.explain(sol.stats)
    '30/32 converged (rel residual ≤ 1e-05, ≤ 12 iterations), 2 stalled at rel residual 3e-04 after 41 iterations'
"""

from __future__ import annotations

import numpy as np

from solvers.loop import Reason
from solvers.types import Stats

_WORDS = {
    Reason.CONVERGED: "converged",
    Reason.MAX_ITER: "ran out of iterations",
    Reason.STALLED: "stalled",
    Reason.DIVERGED: "diverged",
    Reason.NONFINITE: "went non-finite",
}


def explain(stats: Stats) -> str:
    """How many samples converged, and for each other way of stopping (:class:`Reason`),
    how many stopped so, at what worst relative residual and after how many iterations."""
    reason = np.atleast_1d(np.asarray(stats.reason))
    rel = np.atleast_1d(np.asarray(stats.rel_residual, dtype=float))
    steps = np.atleast_1d(np.asarray(stats.steps))
    total = reason.size
    converged = reason == Reason.CONVERGED
    parts = [f"{int(converged.sum())}/{total} converged"]
    if converged.any():
        parts[0] += (f" (rel residual ≤ {np.max(rel[converged]):.1g}, "
                     f"≤ {int(np.max(steps[converged]))} iterations)")
    for code in (Reason.MAX_ITER, Reason.STALLED, Reason.DIVERGED, Reason.NONFINITE):
        mine = reason == code
        if mine.any():
            parts.append(f"{int(mine.sum())} {_WORDS[code]} at rel residual "
                         f"{np.max(rel[mine]):.1g} after {int(np.max(steps[mine]))} iterations")
    return ", ".join(parts)
