"""The solver registry: names for methods. The only global mutable state of the toolkit.

A name maps to a :class:`solvers.Method` subclass (``register("broyden", Broyden)``), whose
fields are the options ``solvers.get(name, ...)`` accepts besides the common ones, or to
a factory ``factory(**options) -> Solver`` for a solver that is more than a method with
options. :func:`lookup` hands the entry to :mod:`solvers.solver`, which builds the value;
this module knows nothing of :class:`solvers.Solver`, so the two never import each other.
"""

from __future__ import annotations

from typing import Any, Callable, Union

from solvers.method import Method, Structured

Entry = Union[type[Method], Callable[..., Any]]
"""What a name stands for: a :class:`Method` subclass, or a factory of solvers."""

_REGISTRY: dict[str, Entry] = {}


def register(name: str, entry: Entry, *, overwrite: bool = False) -> None:
    """Register ``entry`` (a :class:`Method` subclass, or ``factory(**options) -> Solver``)
    under ``name``. Raises ``ValueError`` if ``name`` is taken and ``overwrite`` is false."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a solver name must be a non-empty str, got {name!r}")
    if not callable(entry):
        raise TypeError(
            f"solver {name!r} must be registered as a Method subclass or a factory, got {entry!r}"
        )
    if name in _REGISTRY and not overwrite:
        raise ValueError(
            f"a solver named {name!r} is already registered; pass overwrite=True to replace it"
        )
    _REGISTRY[name] = entry


def unregister(name: str) -> None:
    """Remove the solver ``name`` (``KeyError`` if it is not registered)."""
    del _REGISTRY[name]


def available(*, general: bool = False) -> tuple[str, ...]:
    """The names of the registered solvers, sorted; with ``general=True`` only those that
    solve any ``z = f(z, *args)``, leaving out the :class:`~solvers.method.Structured`
    methods (the operator-splitting ones, which need a monotone operator)."""
    return tuple(sorted(
        name for name, entry in _REGISTRY.items()
        if not (general and isinstance(entry, type) and issubclass(entry, Structured))
    ))


def lookup(name: Any) -> Entry:
    """What ``name`` stands for; ``ValueError`` listing the registered names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown solver {name!r}; available solvers: {', '.join(available())}"
        ) from None
