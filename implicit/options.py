"""The names a fixed-point layer accepts, and how a layer's ``**options`` are split.

:func:`implicit.fixed_point` takes the forward solver and its options, and the
gradient mode (``backward=``) and its options, as separate keywords. The layers
built on it (:class:`implicit.haiku.DEQ`, :func:`implicit.deq`) take one flat
``**options`` instead; :func:`split_options` sends

* the names in :data:`BACKWARD_OPTIONS` (``backward_solver``,
  ``backward_options``, ``phantom_steps``, ``phantom_damping``) to the gradient
  mode, and
* every other name (``max_iter``, ``tol``, ``stop_mode``, ``batch_axis``,
  ``history``, ...) to the forward solver as ``solver_options``,

and checks the solver options against the solver at once, so a misspelt
option fails when the layer is built, with a message listing the valid names.
"""

from __future__ import annotations

from typing import Any, Mapping

import solvers

BACKWARD_MODES = ("implicit", "phantom", "jfb", "unroll")
"""``"implicit"``: implicit function theorem (exact); ``"phantom"``: damped unrolled
steps from ``z*``; ``"jfb"``: Jacobian-free backprop (one step); ``"unroll"``:
backprop through the solver iterations."""

BACKWARD_OPTIONS = ("backward_solver", "backward_options", "phantom_steps", "phantom_damping")
"""Layer options that configure the gradient mode rather than the forward solver."""

DEFAULT_PHANTOM_STEPS = 5
DEFAULT_PHANTOM_DAMPING = 0.5


def split_options(solver: str, options: Mapping[str, Any]) -> tuple[dict, dict]:
    """Split a layer's ``**options`` into ``(solver_options, backward_kwargs)``.

    ``backward_kwargs`` holds the names in :data:`BACKWARD_OPTIONS`; everything
    else is a solver option, checked now against ``solver`` (``ValueError`` for an
    unknown solver, ``TypeError`` naming the valid options for an unknown option).
    """
    backward = {k: v for k, v in options.items() if k in BACKWARD_OPTIONS}
    solver_options = {k: v for k, v in options.items() if k not in BACKWARD_OPTIONS}
    try:
        solvers.get(solver, **solver_options)
    except TypeError as error:
        raise TypeError(
            f"{error}; the gradient-mode options are: {', '.join(BACKWARD_OPTIONS)}"
        ) from None
    return solver_options, backward


def check_backward(
    backward: str,
    backward_solver: Any,
    backward_options: Any,
    phantom_steps: Any,
    phantom_damping: Any,
) -> tuple[int, float]:
    """Check the gradient-mode keywords; return the phantom ``(steps, damping)`` to use.

    Raises ``ValueError`` for an unknown ``backward`` (listing the valid ones) or a
    bad value, ``TypeError`` for a keyword that the chosen mode does not use.
    """
    if not isinstance(backward, str) or backward not in BACKWARD_MODES:
        raise ValueError(
            f"unknown backward {backward!r}; valid backward modes: {', '.join(BACKWARD_MODES)}"
        )
    if backward != "implicit" and (backward_solver is not None or backward_options is not None):
        raise TypeError(
            f"backward_solver and backward_options apply to backward='implicit' only, "
            f"not to backward={backward!r}"
        )
    if backward_options is not None and not isinstance(backward_options, Mapping):
        raise TypeError(f"backward_options must be a mapping, got {backward_options!r}")
    if backward != "phantom" and (phantom_steps is not None or phantom_damping is not None):
        raise TypeError(
            f"phantom_steps and phantom_damping apply to backward='phantom' only, "
            f"not to backward={backward!r}"
        )
    steps = DEFAULT_PHANTOM_STEPS if phantom_steps is None else phantom_steps
    damping = DEFAULT_PHANTOM_DAMPING if phantom_damping is None else phantom_damping
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"phantom_steps must be an integer >= 1, got {steps!r}")
    if (
        not isinstance(damping, (int, float)) or isinstance(damping, bool)
        or not 0 < damping <= 1
    ):
        raise ValueError(f"phantom_damping must be a number in (0, 1], got {damping!r}")
    return steps, float(damping)
