"""A solver as a value: :class:`Solver` is a frozen ``(name, options, rule)`` that solves
``z = f(z, *args)`` when called, and :func:`rule_solver` makes the factory of one.

    solve = solvers.get("broyden", tol=1e-6)    # a Solver
    sol = solve(f, z0, *args)                    # Solution(value, stats)
    tighter = solve.replace(tol=1e-8)            # a new value; the old one is unchanged

Every solver moves by a :class:`solvers.loop.Rule` inside the one shared loop, so all of
them stop, freeze samples, track the best iterate and report statistics the same way.
A user's solver is a value too: ``rule_solver("mine", declared, make_rule)(**options)``
can be passed wherever a solver name can, without registering it.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from solvers.flat import flat_view
from solvers.loop import LoopOptions, Rule, iterate
from solvers.options import COMMON_OPTIONS, Option, resolve
from solvers.types import PyTree, Solution
from solvers.validation import check_finite, check_map, check_state

MakeRule = Callable[[Mapping[str, Any]], Rule]


def compute_dtype(dtype: Any) -> Any:
    """The dtype the solvers' algebra runs in for a state of ``dtype``: the state's own, but
    at least single precision (float16 and bfloat16 states are iterated in float32, and
    ``f`` still sees and returns its own dtype)."""
    return jnp.promote_types(dtype, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Solver:
    """A fixed-point solver: ``solver(f, z0, *args) -> Solution``.

    Attributes:
      name: what the solver is called (its registry name for the built-in ones).
      options: every option, defaults filled in and checked (read-only).
      make_rule: ``make_rule(options) -> Rule``, how the solver moves.
      declared: the options the solver accepts (:class:`solvers.options.Option` by name).

    Two solvers are equal when their name, options and rule agree; solvers hash, so
    they can be static arguments of ``jax.jit``.
    """

    name: str
    options: Mapping[str, Any]
    make_rule: MakeRule = dataclasses.field(repr=False)
    declared: Mapping[str, Option] = dataclasses.field(repr=False, compare=False)

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.options.items())), self.make_rule))

    def __repr__(self) -> str:
        """``Solver('broyden', tol=1e-06)``: the name and the options that differ from the defaults."""
        changed = "".join(
            f", {k}={v!r}" for k, v in self.options.items()
            if k not in self.declared or v != self.declared[k].default
        )
        return f"Solver({self.name!r}{changed})"

    @property
    def rule(self) -> Rule:
        """The :class:`Rule` this solver runs in the shared loop."""
        return self.make_rule(self.options)

    @property
    def fallback(self) -> Optional[Solver]:
        """The solver named by the ``fallback`` option, sharing this one's common options."""
        name = self.options.get("fallback")
        if name is None:
            return None
        from solvers.registry import get  # the registry holds this module's values

        shared = {k: v for k, v in self.options.items() if k in COMMON_OPTIONS}
        return get(name, **{**shared, "fallback": None})

    def replace(self, **options: Any) -> Solver:
        """This solver with some options changed (checked like the originals)."""
        return self.reset(**{**self.options, **options})

    def reset(self, **options: Any) -> Solver:
        """This solver with every option at its default except ``options``."""
        resolved = MappingProxyType(resolve(self.name, self.declared, options))
        solver = dataclasses.replace(self, options=resolved)
        fallback = solver.fallback  # an unknown name fails here, as any bad option does
        if fallback is not None and fallback.rule.restart is None:
            raise ValueError(
                f"option 'fallback' of solver {self.name!r}: solver {fallback.name!r} cannot "
                "restart single samples, so it cannot be a fallback"
            )
        return solver

    def __call__(self, f: Callable[..., PyTree], z0: PyTree, *args: PyTree) -> Solution:
        """Solve ``z = f(z, *args)`` from ``z0``; return the best iterate and its statistics."""
        return self.run(f, z0, args)[0]

    def run(
        self, f: Callable[..., PyTree], z0: PyTree, args: tuple, prior: Any = None
    ) -> tuple[Solution, Any]:
        """Like calling the solver, and also return the rule's final state; with ``prior``
        (such a state from an earlier, related solve) the rule starts warm from it
        (``Rule.warm``; ``ValueError`` if the rule cannot)."""
        if prior is not None and self.rule.warm is None:
            raise ValueError(f"solver {self.name!r} cannot start from an earlier solve's state")
        batch_axis = self.options["batch_axis"]
        check_state(z0, batch_axis)
        check_finite(z0, "z0")
        for i, arg in enumerate(args):
            check_finite(arg, f"args[{i}]")
        check_map(f, z0, args)
        view = flat_view(z0, batch_axis)
        work = compute_dtype(view.dtype)

        def f_matrix(matrix: jax.Array) -> jax.Array:
            return view.to_matrix(f(view.from_matrix(matrix), *args)).astype(work)

        loop_options = LoopOptions(**{k: self.options[k] for k in LoopOptions._fields})
        fallback = self.fallback
        best, stats, state = iterate(
            self.rule, f_matrix, view.to_matrix(z0).astype(work), loop_options,
            None if fallback is None else fallback.rule, prior,
        )
        if batch_axis is None:
            stats = jax.tree_util.tree_map(lambda s: s[0], stats)
        return Solution(view.from_matrix(best), stats), state


def rule_solver(
    name: str, declared: Mapping[str, Option], make_rule: MakeRule
) -> Callable[..., Solver]:
    """The factory ``factory(**options) -> Solver`` of the solver ``name`` moving by ``make_rule``.

    ``declared`` holds the rule's own options; the common ones
    (:data:`solvers.options.COMMON_OPTIONS`) are added. Options are checked when the
    factory is called: an unknown name or a wrong type raises ``TypeError``, a bad value
    ``ValueError``, each naming the option and the solver.
    """
    all_options = MappingProxyType({**COMMON_OPTIONS, **declared})

    def factory(**options: Any) -> Solver:
        return Solver(name, MappingProxyType({}), make_rule, all_options).reset(**options)

    factory.__name__ = f"{name}_factory"
    factory.__doc__ = f"Build the solver {name!r}; options: {', '.join(all_options)}."
    factory.declared = all_options
    return factory
