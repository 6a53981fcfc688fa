"""When a solve stops: :class:`Stopping`, the loop's settings, shared by every method.

The shared loop (:mod:`solvers.loop`) applies these rules to every sample identically,
whatever the method; a method never reads them except to size its buffers (a history is
never longer than ``max_iter``) or to run an inner loop the same way (``fixed_length``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from solvers.options import Options, above, at_least, between, one_of, option


@dataclasses.dataclass(frozen=True)
class Stopping(Options):
    """The stopping rule of a solve, per sample.

    With ``r`` the stop-mode residual (``"abs"``: ``‖f(z) − z‖``; ``"rel"``:
    ``‖f(z) − z‖ / ‖f(z)‖``) a sample stops, with its :class:`solvers.Reason`, when

    * ``r ≤ tol`` (converged);
    * its lowest absolute residual fell by less than a fraction ``stall_tol`` over the
      last :attr:`window` iterations (stalled; off for ``tol = 0``);
    * its absolute residual exceeds ``divergence_factor`` times the first one (diverged);
    * ``f`` returned a non-finite value (non-finite);
    * it ran ``max_iter`` iterations.

    The stall window defaults to half the iteration budget, so it can fire at the default
    settings, and follows ``max_iter`` when that changes (``dataclasses.replace``).
    """

    max_iter: int = option(50, at_least(1), "iteration limit")
    tol: float = option(
        1e-5, at_least(0), "stop a sample when its stop-mode residual is <= tol (0: never "
        "stop early; run max_iter iterations unless a sample diverges or reaches an exact "
        "fixed point)",
    )
    stop_mode: str = option(
        "rel", one_of("abs", "rel"), "'abs': ‖f(z)−z‖; 'rel': ‖f(z)−z‖/‖f(z)‖"
    )
    stall_window: Optional[int] = option(
        None, at_least(0), "stop a sample whose lowest residual fell by less than stall_tol "
        "over this many iterations (None: max_iter // 2; 0: never)",
    )
    stall_tol: float = option(
        1e-3, between(0, 1, high_open=True), "relative progress that counts as not stalled"
    )
    divergence_factor: float = option(
        1e4, above(0), "stop a sample whose residual exceeds this multiple of its first one"
    )
    fixed_length: bool = option(
        False, None, "run exactly max_iter iterations in lax.scan (stopped samples frozen), "
        "so that reverse-mode autodiff can differentiate through the iterations",
    )

    @classmethod
    def describe(cls) -> str:
        return "the stopping rule"

    @property
    def window(self) -> int:
        """The stall window in iterations: ``stall_window``, or ``max_iter // 2`` (at least
        1) when it is ``None``; 0 means the stall guard is off."""
        if self.stall_window is None:
            return max(1, self.max_iter // 2)
        return self.stall_window
