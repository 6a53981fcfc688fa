"""``deq``: a shim with the call shape of the original (seed) Haiku DEQ code, kept so that
code written against it runs unchanged, on top of :func:`implicit.fixed_point`.

New code should use a layer (``implicit.haiku.DEQ``, ``implicit.flax.DEQ``,
``implicit.equinox.DEQ``, one signature; :mod:`implicit.layer`) or :func:`fixed_point`.

    inner = hk.transform(block)
    params = hk.lift(inner.init)(hk.next_rng_key(), x, x)
    z = deq(params, hk.next_rng_key(), x, inner.apply, max_iter)  # z = apply(params, rng, z)

``fun(params, rng, z, *args)`` is a transformed Haiku ``apply`` (or any function of
that shape); it is called with the same ``rng`` at every iteration.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import solvers
from implicit.fixed_point import fixed_point
from implicit.modes import Mode
from solvers import Solver
from solvers.types import PyTree


def deq(
    params: PyTree,
    rng: Any,
    z0: PyTree,
    fun: Callable[..., PyTree],
    max_iter: int,
    *args: PyTree,
    solver: Union[str, Solver] = "broyden",
    backward: Union[str, Mode] = "implicit",
    return_stats: bool = False,
    **solver_options: Any,
) -> Any:
    """Solve ``z* = fun(params, rng, z*, *args)`` from ``z0`` in at most ``max_iter`` iterations
    (the seed-compatible shim; see the module docstring).

    Derivatives flow to ``params`` and ``args`` by the gradient mode ``backward`` (a
    value of :mod:`implicit.modes` or its name); ``**solver_options`` go to ``solver``.
    Returns ``z*``, or ``(z*, stats)`` with ``return_stats=True``.
    """
    forward = solvers.get(solver, **solver_options, max_iter=max_iter)

    def layer(z: PyTree, params: PyTree, *args: PyTree) -> PyTree:
        return fun(params, rng, z, *args)

    solution = fixed_point(layer, z0, params, *args, solver=forward, backward=backward)
    return (solution.value, solution.stats) if return_stats else solution.value
