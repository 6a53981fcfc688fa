"""The solver registry: solvers are chosen by name.

``get(name, **options)`` builds a solve function ``solve(f, z0, *args) -> Solution``;
``register(name, factory)`` adds a solver, where ``factory(**options)`` returns such
a function. The registry is the only global mutable state of the toolkit.
"""

from __future__ import annotations

from typing import Any

from solvers.types import SolveFn, SolverFactory

_REGISTRY: dict[str, SolverFactory] = {}


def register(name: str, factory: SolverFactory, *, overwrite: bool = False) -> None:
    """Register ``factory`` under ``name``; ``factory(**options)`` must return a solve function.

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


def get(name: str, **options: Any) -> SolveFn:
    """Build the solver ``name`` with ``options``; bad names and options fail here, eagerly."""
    try:
        factory = _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown solver {name!r}; available solvers: {', '.join(available())}"
        ) from None
    return factory(**options)
