"""``deq``: the call shape of the original Haiku DEQ code, on top of :func:`implicit.fixed_point`.

    inner = hk.transform(block)
    params = hk.lift(inner.init)(hk.next_rng_key(), x, x)
    z = deq(params, hk.next_rng_key(), x, inner.apply, max_iter)  # z = apply(params, rng, z)

``fun(params, rng, z, *args)`` is a transformed Haiku ``apply`` (or any function of
that shape); it is called with the same ``rng`` at every iteration.
"""

from __future__ import annotations

from typing import Any, Callable

from implicit.fixed_point import fixed_point
from implicit.options import split_options
from solvers.types import PyTree


def deq(
    params: PyTree,
    rng: Any,
    z0: PyTree,
    fun: Callable[..., PyTree],
    max_iter: int,
    *args: PyTree,
    solver: str = "broyden",
    backward: str = "implicit",
    return_stats: bool = False,
    **options: Any,
) -> Any:
    """Solve ``z* = fun(params, rng, z*, *args)`` from ``z0`` in at most ``max_iter`` iterations.

    Derivatives flow to ``params`` and ``args`` by the gradient mode ``backward``;
    ``**options`` are split as in :class:`implicit.haiku.DEQ` (see
    :func:`implicit.options.split_options`). Returns ``z*``, or ``(z*, stats)``
    with ``return_stats=True``.
    """
    solver_options, backward_kwargs = split_options(solver, {**options, "max_iter": max_iter})

    def layer(z: PyTree, params: PyTree, *args: PyTree) -> PyTree:
        return fun(params, rng, z, *args)

    solution = fixed_point(
        layer, z0, params, *args,
        solver=solver, solver_options=solver_options, backward=backward, **backward_kwargs,
    )
    return (solution.value, solution.stats) if return_stats else solution.value
