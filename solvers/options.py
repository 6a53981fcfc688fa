"""Declared solver options, checked when a solver is built, not inside a trace.

A solver declares each option it accepts as an :class:`Option`: a default, the
Python types it takes and a predicate on the value. :func:`resolve` fills in the
defaults and rejects unknown names (``TypeError``), wrong types (``TypeError``)
and bad values (``ValueError``), each message naming the option and the solver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Option:
    """One option: its ``default``, accepted ``types``, and the rule ``check`` that ``valid`` states."""

    default: Any
    types: tuple[type, ...]
    check: Callable[[Any], bool]
    valid: str
    doc: str = ""


def positive_int(default: int, doc: str = "") -> Option:
    return Option(default, (int,), lambda v: v >= 1, "an integer >= 1", doc)


def nonnegative_int(default: int, doc: str = "") -> Option:
    return Option(default, (int,), lambda v: v >= 0, "an integer >= 0", doc)


def positive_float(default: float, doc: str = "") -> Option:
    return Option(
        default, (int, float), lambda v: math.isfinite(v) and v > 0, "a finite number > 0", doc
    )


def unit_interval(default: float, doc: str = "") -> Option:
    return Option(default, (int, float), lambda v: 0 <= v < 1, "a number in [0, 1)", doc)


def flag(default: bool, doc: str = "") -> Option:
    return Option(default, (bool,), lambda v: True, "a bool", doc)


def choice(default: Any, values: tuple, doc: str = "") -> Option:
    types = tuple({type(v) for v in values})
    return Option(default, types, lambda v: v in values, f"one of {values!r}", doc)


COMMON_OPTIONS: dict[str, Option] = {
    "max_iter": positive_int(50, "iteration limit"),
    "tol": Option(
        1e-5, (int, float), lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0",
        "stop when the stop-mode residual is <= tol (0: never stop early; run max_iter "
        "iterations unless a sample diverges or reaches an exact fixed point)",
    ),
    "stop_mode": choice("rel", ("abs", "rel"), "'abs': ‖f(z)−z‖; 'rel': ‖f(z)−z‖/‖f(z)‖"),
    "batch_axis": Option(
        None,
        (type(None), int),
        lambda v: v is None or v == 0,
        "None (one system) or 0 (independent per-sample systems)",
        "None: the whole pytree is one system; 0: per-sample systems along axis 0",
    ),
    "stall_window": nonnegative_int(
        80,
        "stop a sample whose best residual fell by less than stall_tol over this many "
        "iterations (0 disables); Broyden's best residual can stay flat for tens of "
        "iterations before it falls again",
    ),
    "stall_tol": unit_interval(1e-3, "relative progress that counts as not stalled"),
    "divergence_factor": positive_float(
        1e4, "stop a sample whose residual exceeds this multiple of its initial residual"
    ),
    "fixed_length": flag(
        False,
        "run exactly max_iter iterations in lax.scan (stopped samples frozen) so that "
        "reverse-mode autodiff can differentiate through the iterations",
    ),
    "fallback": Option(
        None,
        (type(None), str),
        lambda v: v is None or bool(v),
        "None or the name of a registered solver",
        "a solver that takes over a sample that stalls, diverges or goes non-finite, from "
        "its best iterate, within the same max_iter (e.g. 'fixed_point')",
    ),
}


def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


def resolve(solver: str, declared: Mapping[str, Option], given: Mapping[str, Any]) -> dict:
    """Return ``given`` completed with defaults, after checking every name, type and value."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise TypeError(
            f"solver {solver!r} got unknown option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(sorted(declared))}"
        )
    resolved = {}
    for name, option in declared.items():
        value = given.get(name, option.default)
        # bool is an int subclass: accept it only where a bool is declared.
        if not isinstance(value, option.types) or (
            isinstance(value, bool) and bool not in option.types
        ):
            raise TypeError(
                f"option {name!r} of solver {solver!r} must be {option.valid} "
                f"({_type_name(option.types)}), got {value!r} of type {type(value).__name__}"
            )
        if not option.check(value):
            raise ValueError(
                f"option {name!r} of solver {solver!r} must be {option.valid}, got {value!r}"
            )
        resolved[name] = value
    return resolved
