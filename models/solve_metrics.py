"""The solves of a training step as metrics: counted warnings and the adjoint solves' reports.

A DEQ step runs a forward solve and, for an implicit gradient, an adjoint solve. When one of
them misses its tolerance the toolkit warns (``implicit.ForwardSolveWarning``,
``implicit.BackwardSolveWarning``) from inside the compiled step, with a new message each
time; printed, they would bury the progress bar. :class:`SolveWarnings` counts them per kind
instead, keeping the first message of each, and :class:`BackwardLog` (the ``monitor`` of the
implicit and reversible modes) receives every adjoint solve's iterations and convergence, so
the metrics can report the backward cost, its converged share and, with
``--backward-fallback``, the share of sequences whose gradient fell back to the approximate
mode (their ``implicit.BackwardFallbackWarning`` counts as a backward warning: the adjoint
missed its tolerance there).
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import jax
import numpy as np

from implicit import BackwardSolveWarning, ForwardSolveWarning, SolveReport

__all__ = ["SolveWarnings", "BackwardLog"]

KINDS: dict[str, type[Warning]] = {
    "forward": ForwardSolveWarning,
    "backward": BackwardSolveWarning,
}


class SolveWarnings:
    """Counts the solve warnings (per kind in :data:`KINDS`) instead of printing each one.

    While active, each ``ForwardSolveWarning`` or ``BackwardSolveWarning`` increments
    ``counts[kind]`` and the first of each kind is kept in ``first[kind]``; other warnings
    print as usual.
    """

    def __init__(self) -> None:
        self.counts = {kind: 0 for kind in KINDS}
        self.first: dict[str, str] = {}
        self._context = warnings.catch_warnings()

    def __enter__(self) -> SolveWarnings:
        self._context.__enter__()
        for category in KINDS.values():
            warnings.simplefilter("always", category)
        show = warnings.showwarning

        def showwarning(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
            for kind, kind_category in KINDS.items():
                if issubclass(category, kind_category):
                    self.counts[kind] += 1
                    self.first.setdefault(kind, str(message))
                    return
            show(message, category, *args, **kwargs)

        warnings.showwarning = showwarning
        return self

    def __exit__(self, *exc: Any) -> None:
        self._context.__exit__(*exc)


class BackwardLog:
    """A ``monitor`` for ``implicit.Implicit``: collects the reports of the adjoint solves
    until :meth:`take` summarises and clears them (the callbacks may come from XLA threads)."""

    def __init__(self) -> None:
        self._reports: list[SolveReport] = []
        self._lock = threading.Lock()

    def __call__(self, report: SolveReport) -> None:
        with self._lock:
            self._reports.append(report)

    def take(self) -> dict[str, float]:
        """``{"backward_steps", "backward_converged"}`` of the solves since the last call:
        the mean iterations per system and the share of systems that converged (empty when
        there was no adjoint solve), and ``"backward_fallback"``, the share of systems whose
        derivative fell back, when the solves had a fallback. Waits for the callbacks of
        finished steps first."""
        jax.effects_barrier()
        with self._lock:
            reports, self._reports = self._reports, []
        if not reports:
            return {}
        steps = np.concatenate([np.ravel(r.steps) for r in reports])
        converged = np.concatenate([np.ravel(r.converged) for r in reports])
        summary = {"backward_steps": float(np.mean(steps)),
                   "backward_converged": float(np.mean(converged))}
        fell_back = [np.ravel(r.fell_back) for r in reports if r.fell_back is not None]
        if fell_back:
            summary["backward_fallback"] = float(np.mean(np.concatenate(fell_back)))
        return summary
