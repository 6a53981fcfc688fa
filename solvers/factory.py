"""Turn a :class:`solvers.loop.Rule` into a registrable solver factory.

``rule_solver(name, declared, make_rule)`` returns ``factory(**options) -> solve``
where ``solve(f, z0, *args) -> Solution``. The factory checks the options (the
common ones of :data:`solvers.options.COMMON_OPTIONS` plus the rule's own), and
``solve`` checks its inputs once, flattens the pytree state to a matrix, runs the
shared loop and returns the best iterate with its statistics.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

import jax

from solvers.flat import flat_view
from solvers.loop import LoopOptions, Rule, iterate
from solvers.options import COMMON_OPTIONS, Option, resolve
from solvers.types import PyTree, Solution, SolveFn, SolverFactory
from solvers.validation import check_finite, check_map, check_state


def run_rule(
    rule: Rule,
    options: LoopOptions,
    batch_axis: Optional[int],
    f: Callable[..., PyTree],
    z0: PyTree,
    args: tuple,
) -> Solution:
    """Solve ``z = f(z, *args)`` from ``z0`` with ``rule`` in the shared loop."""
    check_state(z0, batch_axis)
    check_finite(z0, "z0")
    for i, arg in enumerate(args):
        check_finite(arg, f"args[{i}]")
    check_map(f, z0, args)
    view = flat_view(z0, batch_axis)

    def f_matrix(matrix: jax.Array) -> jax.Array:
        return view.to_matrix(f(view.from_matrix(matrix), *args))

    best, stats = iterate(rule, f_matrix, view.to_matrix(z0), options)
    if batch_axis is None:
        stats = jax.tree_util.tree_map(lambda s: s[0], stats)
    return Solution(view.from_matrix(best), stats)


def rule_solver(
    name: str, declared: Mapping[str, Option], make_rule: Callable[[Mapping[str, Any]], Rule]
) -> SolverFactory:
    """A factory for the solver ``name`` that moves by ``make_rule(options)``.

    ``declared`` holds the rule's own options; the common ones are added. The
    solve function it returns carries the resolved options as ``solve.options``.
    """
    all_options = {**COMMON_OPTIONS, **declared}

    def factory(**given: Any) -> SolveFn:
        options = MappingProxyType(resolve(name, all_options, given))
        rule = make_rule(options)
        loop_options = LoopOptions(**{field: options[field] for field in LoopOptions._fields})

        def solve(f: Callable[..., PyTree], z0: PyTree, *args: PyTree) -> Solution:
            return run_rule(rule, loop_options, options["batch_axis"], f, z0, args)

        solve.__name__ = solve.__qualname__ = f"solve_{name}"
        solve.__doc__ = f"Solve z = f(z, *args) from z0 with {name!r}; options: {dict(options)}"
        solve.options = options
        solve.solver_name = name
        return solve

    factory.__name__ = f"{name}_factory"
    factory.declared_options = MappingProxyType(all_options)
    return factory
