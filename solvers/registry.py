"""The solver registry: solvers chosen by name.

``get(name, **options)`` builds a :class:`solvers.Solver`; ``register(name, factory)``
adds a solver, where ``factory(**options)`` returns one (:func:`solvers.rule_solver`
makes such factories). The registry is the only global mutable state of the toolkit.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Mapping, Union

from solvers.options import Option
from solvers.solver import Solver

SolverFactory = Callable[..., Solver]

_REGISTRY: dict[str, SolverFactory] = {}


def register(name: str, factory: SolverFactory, *, overwrite: bool = False) -> None:
    """Register ``factory`` under ``name``; ``factory(**options)`` must return a :class:`Solver`.

    Raises ``ValueError`` if ``name`` is taken and ``overwrite`` is false.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"a solver name must be a non-empty str, got {name!r}")
    if not callable(factory):
        raise TypeError(f"the factory for solver {name!r} must be callable, got {factory!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(
            f"a solver named {name!r} is already registered; pass overwrite=True to replace it"
        )
    _REGISTRY[name] = factory


def unregister(name: str) -> None:
    """Remove the solver ``name`` (``KeyError`` if it is not registered)."""
    del _REGISTRY[name]


def available() -> tuple[str, ...]:
    """The names of the registered solvers, sorted."""
    return tuple(sorted(_REGISTRY))


def get(solver: Union[str, Solver], **options: Any) -> Solver:
    """The solver named ``solver`` built with ``options`` (or a :class:`Solver` value with
    ``options`` changed). Bad names and options fail here, eagerly: ``ValueError`` for an
    unknown name (listing the registered ones), ``TypeError``/``ValueError`` for options."""
    if isinstance(solver, Solver):
        return solver.replace(**options) if options else solver
    try:
        factory = _REGISTRY[solver]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown solver {solver!r}; available solvers: {', '.join(available())}"
        ) from None
    built = factory(**options)
    if not isinstance(built, Solver):
        raise TypeError(
            f"the factory registered as {solver!r} returned {type(built).__name__}, not a Solver"
        )
    return built


def declared(name: str) -> Mapping[str, Option]:
    """The options the solver ``name`` accepts, each an :class:`Option` with its default,
    type, valid values and help text (for command lines and documentation)."""
    return MappingProxyType(dict(get(name).declared))
