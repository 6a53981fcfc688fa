"""A solver as a value: :class:`Solver` is a frozen ``(method, stopping, batch_axis,
fallback)`` that solves ``z = f(z, *args)`` when called; :func:`get` builds one from names.

    solve = Solver(Broyden(history=10), Stopping(tol=1e-6), batch_axis=0)
    solve == solvers.get("broyden", history=10, tol=1e-6, batch_axis=0)   # the same value
    sol = solve(f, z0, *args)                          # Solution(value, stats)
    tighter = solve.replace(tol=1e-8)                  # a new value; the old one is unchanged

The method (:class:`solvers.Method`) says how to move and the stopping rule
(:class:`solvers.Stopping`) when to stop; the shared loop (:mod:`solvers.loop`) runs every
method the same way. A fallback is a solver value too (or a registry name, resolved
here): its method takes over the samples that stall, diverge or go non-finite, with its
own settings, in the same loop and so under this solver's stopping rule.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp

import solvers.options as declarations
from solvers.flat import flat_view
from solvers.loop import iterate
from solvers.method import Method, Restartable, Structured, WarmStartable
from solvers.options import Check, Option, Options, check_names, one_of, option
from solvers.registry import lookup
from solvers.stopping import Stopping
from solvers.types import PyTree, Solution
from solvers.validation import check_finite, check_map, check_state

__all__ = ["COMMON_OPTIONS", "Solver", "compute_dtype", "declared", "get"]


def compute_dtype(dtype: Any) -> Any:
    """The dtype the solvers' algebra runs in for a state of ``dtype``: the state's own, but
    at least single precision (float16 and bfloat16 states are iterated in float32, and
    ``f`` still sees and returns its own dtype)."""
    return jnp.promote_types(dtype, jnp.float32)


@dataclasses.dataclass(frozen=True, repr=False)
class Solver(Options):
    """A fixed-point solver: ``solver(f, z0, *args) -> Solution``.

    Attributes:
      method: how the solver moves (:class:`solvers.Method`, e.g. ``Broyden(history=30)``).
      stopping: when each sample stops (:class:`solvers.Stopping`).
      batch_axis: ``None`` (the whole state is one system) or ``0`` (independent
        per-sample systems with per-sample stopping, freezing and statistics).
      fallback: ``None`` or the solver whose method takes over a sample that stalls,
        diverges or goes non-finite, from its best iterate, within the same ``max_iter``.
        Given as a :class:`Solver`, a :class:`solvers.Method` or a registry name; it is
        kept as a :class:`Solver` with this one's stopping rule and batch axis, the ones it
        runs under. Its method must be :class:`solvers.method.Restartable`.
      record: iteration counts ``(k₁, …, k_K)`` in ``[0, max_iter]`` whose iterates the
        solve hands out as :attr:`Solution.states` (stacked on a new leading axis; ``k = 0``
        is ``z0``; a sample that stopped before ``kⱼ`` gives its returned iterate), as
        torchdeq's ``indexing``; ``()`` records none. For the fixed-point correction
        (:func:`implicit.fixed_point_correction_loss`).

    Solvers compare and hash by value, so ``jax.jit`` takes them as static arguments.
    """

    method: Method
    stopping: Stopping = Stopping()
    batch_axis: Optional[int] = option(
        None, one_of(None, 0),
        "None: the whole pytree is one system; 0: per-sample systems along axis 0",
    )
    fallback: Union[Solver, Method, str, None] = option(
        None, None, "a solver (or registry name) that takes over a sample that stalls, "
        "diverges or goes non-finite, from its best iterate, within the same max_iter",
    )
    record: tuple = option(
        (), Check(lambda ks: all(isinstance(k, int) and not isinstance(k, bool) and k >= 0
                                 for k in ks), "of integers >= 0"),
        "iteration counts whose iterates the solve hands out as Solution.states",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        too_late = [k for k in self.record if k > self.stopping.max_iter]
        if too_late:
            raise ValueError(
                f"option 'record' of solver {self.name!r}: iteration(s) "
                f"{', '.join(map(str, too_late))} lie beyond max_iter={self.stopping.max_iter}"
            )
        fallback = self.fallback
        if isinstance(fallback, str):
            try:
                fallback = get(fallback)
            except ValueError as error:
                raise ValueError(f"option 'fallback' of solver {self.name!r}: {error}") from None
        elif isinstance(fallback, Method):
            fallback = Solver(fallback)
        if fallback is None:
            return
        if fallback.fallback is not None or not isinstance(fallback.method, Restartable):
            why = ("has a fallback of its own" if fallback.fallback is not None
                   else "cannot restart single samples")
            raise ValueError(
                f"option 'fallback' of solver {self.name!r}: solver {fallback.name!r} {why}, "
                "so it cannot be a fallback"
            )
        if (fallback.stopping, fallback.batch_axis, fallback.record) != (
                self.stopping, self.batch_axis, ()):
            fallback = dataclasses.replace(fallback, stopping=self.stopping,
                                           batch_axis=self.batch_axis, record=())
        object.__setattr__(self, "fallback", fallback)

    @property
    def name(self) -> str:
        """The method's name (its registry name for the built-in ones)."""
        return self.method.name

    @property
    def options(self) -> Mapping[str, Any]:
        """Every option by name, read-only, as :func:`get` and :meth:`replace` spell them
        (for display and command lines; the fields are the values to use)."""
        own = {name: getattr(self, name) for name in _OWN}
        return MappingProxyType({
            **_field_values(self.stopping), **own, **_field_values(self.method),
        })

    @property
    def declared(self) -> Mapping[str, Option]:
        """The :class:`solvers.Option` of every option this solver takes, read off the
        fields of :class:`Stopping`, of this class and of its method."""
        return MappingProxyType({**COMMON_OPTIONS, **declarations.declared(type(self.method))})

    def replace(self, **options: Any) -> Solver:
        """This solver with the options ``options`` (flat names, as :func:`get` takes them)
        changed and every other one kept, each checked like the originals."""
        if not options:
            return self
        method, stopping, own = _split(type(self.method), options)
        return dataclasses.replace(
            self, method=dataclasses.replace(self.method, **method) if method else self.method,
            stopping=dataclasses.replace(self.stopping, **stopping) if stopping else self.stopping,
            **own,
        )

    def check(self, f: Callable[..., PyTree], z0: PyTree, args: tuple) -> None:
        """The checks at the boundary, once per solve and at trace time: ``z0`` is a state
        (floating leaves, one batch size with ``batch_axis=0``), concrete inputs are finite,
        and ``f(z0, *args)`` has the structure, shapes and dtypes of ``z0`` (traced
        abstractly). Each error names the offending leaf."""
        check_state(z0, self.batch_axis)
        check_finite(z0, "z0")
        for i, arg in enumerate(args):
            check_finite(arg, f"args[{i}]")
        check_map(f, z0, args)

    def __call__(self, f: Callable[..., PyTree], z0: PyTree, *args: PyTree) -> Solution:
        """Solve ``z = f(z, *args)`` from ``z0``; return the best iterate and its statistics."""
        self.check(f, z0, args)
        return self.run(f, z0, args)[0]

    def run(
        self, f: Callable[..., PyTree], z0: PyTree, args: tuple, prior: Any = None
    ) -> tuple[Solution, Any]:
        """The solve without the boundary checks (for callers that ran :meth:`check`), with
        the method's final state; with ``prior`` (such a state from an earlier, related
        solve) a :class:`~solvers.method.WarmStartable` method starts from it."""
        if prior is not None and not isinstance(self.method, WarmStartable):
            raise ValueError(f"solver {self.name!r} cannot start from an earlier solve's state")
        view = flat_view(z0, self.batch_axis)
        work = compute_dtype(view.dtype)

        def f_matrix(matrix: jax.Array) -> jax.Array:
            return view.to_matrix(f(view.from_matrix(matrix), *args)).astype(work)

        fallback = None if self.fallback is None else self.fallback.method
        step_on: Callable[[jax.Array], jax.Array] = f_matrix
        for method in (self.method, fallback):
            if isinstance(method, Structured):  # once per solve, before the loop
                step_on = method.bind(step_on, args, view, work)
        best, stats, state, recorded = iterate(
            self.method, step_on, view.to_matrix(z0).astype(work), self.stopping, fallback,
            prior, self.record,
        )
        if self.batch_axis is None:
            stats = jax.tree_util.tree_map(lambda s: s[0], stats)
        states = None
        if recorded is not None:
            states = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves),
                                            *(view.from_matrix(r) for r in recorded))
        return Solution(view.from_matrix(best), stats, states), state

    def __repr__(self) -> str:
        """``Solver(Broyden(history=7), Stopping(tol=1e-06))``: what differs from the defaults."""
        parts = [_short(self.method)]
        if self.stopping != Stopping():
            parts.append(_short(self.stopping))
        if self.batch_axis is not None:
            parts.append(f"batch_axis={self.batch_axis}")
        if self.fallback is not None:
            parts.append(f"fallback={_short(self.fallback.method)}")
        if self.record:
            parts.append(f"record={self.record}")
        return f"Solver({', '.join(parts)})"


def _field_values(value: Any) -> dict[str, Any]:
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}


def _short(value: Any) -> str:
    """``Broyden(history=7)``: the class and the fields that differ from their defaults."""
    changed = ", ".join(
        f"{f.name}={getattr(value, f.name)!r}" for f in dataclasses.fields(value)
        if f.init and getattr(value, f.name) != f.default
    )
    return f"{type(value).__name__}({changed})"


_OWN = tuple(f.name for f in dataclasses.fields(Solver) if f.type not in ("Method", "Stopping"))
"""The options a solver holds itself (beside its method's and its stopping rule's)."""

COMMON_OPTIONS: Mapping[str, Option] = MappingProxyType({
    **declarations.declared(Stopping),
    **{name: declarations.declared(Solver)[name] for name in _OWN},
})
"""The options every solver takes: the stopping rule's, ``batch_axis`` and ``fallback``."""


def _split(method: type[Method], options: Mapping[str, Any]) -> tuple[dict, dict, dict]:
    """``options`` (flat names) as ``(method fields, stopping fields, solver fields)``;
    a name none of them has raises ``TypeError`` listing the valid ones."""
    own = declarations.declared(method)
    check_names(options, [*COMMON_OPTIONS, *own], method.describe())
    parts: tuple[dict, dict, dict] = ({}, {}, {})
    for name, value in options.items():
        parts[0 if name in own else 2 if name in _OWN else 1][name] = value
    return parts


def _build(method: Union[type[Method], Method], options: Mapping[str, Any]) -> Solver:
    """The solver of ``method`` (a class, built with its options, or a value, changed by
    them) with ``options``."""
    cls = method if isinstance(method, type) else type(method)
    own, stopping, rest = _split(cls, options)
    value = cls(**own) if isinstance(method, type) else dataclasses.replace(method, **own)
    return Solver(value, Stopping(**stopping), **rest)


def get(solver: Union[str, Solver, Method], **options: Any) -> Solver:
    """The solver named ``solver`` with ``options`` (or a :class:`Solver` value with
    ``options`` changed, or a :class:`solvers.Method` value run with them).

    Options are flat names: the stopping rule's (``max_iter``, ``tol``, ...),
    ``batch_axis``, ``fallback`` and the method's own (``history``, ...). Bad names and
    options fail here, eagerly: ``ValueError`` for an unknown solver (listing the
    registered ones), ``TypeError`` for an unknown option (listing the valid ones) or a
    wrong type, ``ValueError`` for a value out of range.
    """
    if isinstance(solver, Solver):
        return solver.replace(**options)
    if isinstance(solver, Method):
        return _build(solver, options)
    entry = lookup(solver)
    if isinstance(entry, type) and issubclass(entry, Method):
        return _build(entry, options)
    built = entry(**options)
    if not isinstance(built, Solver):
        raise TypeError(
            f"the factory registered as {solver!r} returned {type(built).__name__}, not a Solver"
        )
    return built


def declared(name: str) -> Mapping[str, Option]:
    """The options the solver ``name`` accepts, each a :class:`solvers.Option` with its
    default, types, valid values and help, derived from the dataclass fields."""
    return get(name).declared
