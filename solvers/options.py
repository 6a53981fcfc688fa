"""Typed options: declared once as fields of a frozen dataclass, checked by one validator.

A value whose settings are options (a solver's method, its stopping rule, a Krylov
solver, a gradient mode, a command line's configuration) is a frozen dataclass whose
fields are declared with :func:`option`: a default, a :class:`Check` of the value and a
line of help. The field's type annotation says what Python types it takes:

    @dataclasses.dataclass(frozen=True)
    class Broyden(solvers.Method):
        history: int = option(30, at_least(1), "rank-one terms kept")

:func:`validate` checks every field of such a value against its annotation and its
:class:`Check`, and raises an error that names the option, the owner, the rule and the
value. :class:`Options`, the base of the toolkit's option values, runs it in
``__post_init__`` and rejects unknown keyword names listing the valid ones, so a bad
option fails where the value is built, never inside a trace. :func:`declared` describes
the fields as :class:`Option` records, for ``--help`` texts and documentation.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import numbers
import types
import typing
from typing import Any, Callable, Iterable, Mapping, Optional, Union

__all__ = [
    "Check",
    "Option",
    "OptionError",
    "Options",
    "above",
    "at_least",
    "between",
    "check_names",
    "declared",
    "option",
    "one_of",
    "parse_assignments",
    "validate",
]


@dataclasses.dataclass(frozen=True)
class Check:
    """A rule on an option's value: ``test(value)`` must hold; ``valid`` states it in words."""

    test: Callable[[Any], bool]
    valid: str
    choices: Optional[tuple] = None  # the allowed values, when the rule is a finite set


def at_least(low: float) -> Check:
    """``value ≥ low``."""
    return Check(lambda v: v >= low, f">= {low:g}")


def above(low: float) -> Check:
    """``value > low``."""
    return Check(lambda v: v > low, f"> {low:g}")


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    """``value`` in the interval from ``low`` to ``high`` (closed ends unless told open)."""

    def test(v: Any) -> bool:
        return (low < v if low_open else low <= v) and (v < high if high_open else v <= high)

    return Check(test, f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")


def one_of(*values: Any) -> Check:
    """``value`` is one of ``values``."""
    return Check(lambda v: v in values, f"one of {', '.join(map(repr, values))}", values)


def option(
    default: Any, check: Optional[Check] = None, doc: str = "", *, kw_only: bool = False,
    **metadata: Any,
) -> Any:
    """A dataclass field holding an option: its ``default``, its :class:`Check` (``None``:
    any value of the annotated type) and its help line ``doc``; extra ``metadata`` (for
    example how a command line spells it) is kept with them. ``kw_only`` makes it a
    keyword-only argument of the constructor."""
    return dataclasses.field(default=default, kw_only=kw_only,
                             metadata={"check": check, "doc": doc, **metadata})


@dataclasses.dataclass(frozen=True)
class Option:
    """What one option is, read off its field: for ``--help`` texts and documentation.

    Attributes:
      name: the field name (the keyword of the constructor and of ``solvers.get``).
      default: its default value.
      types: the Python types it takes (``type(None)`` for an optional one).
      valid: the rule its values obey, in words (``"an integer >= 1"``).
      doc: one line of help.
      choices: the allowed values when they are a finite set, else ``None``.
    """

    name: str
    default: Any
    types: tuple[type, ...]
    valid: str
    doc: str
    choices: Optional[tuple] = None


class OptionError(Exception):
    """Raised (as a :class:`OptionTypeError` or :class:`OptionValueError`) for an option that
    breaks its declaration; ``option``, ``rule`` and ``value`` say which, what and what not."""

    def __init__(self, message: str, option: str, rule: str, value: Any) -> None:
        super().__init__(message)
        self.option, self.rule, self.value = option, rule, value


class OptionTypeError(OptionError, TypeError):
    """An option of the wrong type (or an unknown option name)."""


class OptionValueError(OptionError, ValueError):
    """An option of the right type whose value breaks its rule."""


@functools.cache
def _hints(cls: type) -> Mapping[str, Any]:
    return typing.get_type_hints(cls)


def _alternatives(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _types(hint: Any) -> tuple[type, ...]:
    """The runtime classes an annotation admits (``float`` admits ``int`` too)."""
    found: list[type] = []
    for alternative in _alternatives(hint):
        origin = typing.get_origin(alternative) or alternative
        if alternative is float:
            found += [int, float]
        elif isinstance(origin, type):
            found.append(origin)
    return tuple(dict.fromkeys(found))


def _type_words(hint: Any) -> str:
    words = {int: "an integer", float: "a finite number", bool: "a bool", str: "a string",
             type(None): "None"}
    parts = []
    for alternative in _alternatives(hint):
        origin = typing.get_origin(alternative) or alternative
        parts.append(words.get(origin, getattr(origin, "__name__", str(origin))))
    return " or ".join(dict.fromkeys(parts))


def _is_instance(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the annotated type: ``bool`` is not an ``int``, any real number
    (NumPy's too) is a ``float`` and any integral one an ``int``, and an annotation that is
    not a class (``Callable``) admits any callable."""
    for alternative in _alternatives(hint):
        origin = typing.get_origin(alternative) or alternative
        if alternative is Any:
            return True
        if origin is float:
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                return True
        elif origin is int:
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                return True
        elif origin in (Callable, typing.get_origin(Callable[..., Any])):
            if callable(value):
                return True
        elif isinstance(origin, type) and isinstance(value, origin):
            return True
    return False


def _owner(cls: type) -> str:
    describe = getattr(cls, "describe", None)
    return describe() if callable(describe) else cls.__name__


def validate(value: Any) -> None:
    """Check every field of the dataclass ``value`` against its annotation and its
    :class:`Check`; a number given for a ``float`` (``int``) field is stored as a Python
    ``float`` (``int``).

    Raises:
      OptionTypeError: a value of the wrong type (a ``TypeError``), naming the option.
      OptionValueError: a value that breaks the field's rule (a ``ValueError``).
    """
    hints = _hints(type(value))
    owner = _owner(type(value))
    for field in dataclasses.fields(value):
        if not field.init:
            continue
        hint, given = hints[field.name], getattr(value, field.name)
        check: Optional[Check] = field.metadata.get("check")
        if not _is_instance(given, hint):
            rule = (check.valid if check is not None and check.choices
                    else _type_words(hint) + (f" {check.valid}" if check else ""))
            raise OptionTypeError(
                f"option {field.name!r} of {owner} must be {rule}, got {given!r} of type "
                f"{type(given).__name__}", field.name, rule, given,
            )
        alternatives = _alternatives(hint)
        if float in alternatives and isinstance(given, numbers.Real) and not isinstance(
                given, bool):
            if not math.isfinite(given):
                rule = "a finite number"
                raise OptionValueError(
                    f"option {field.name!r} of {owner} must be {rule}, got {given!r}",
                    field.name, rule, given,
                )
            given = float(given)
        elif int in alternatives and isinstance(given, numbers.Integral):
            given = int(given)
        object.__setattr__(value, field.name, given)  # Python numbers: stable hashes
        if check is not None and given is not None and not check.test(given):
            rule = check.valid if check.choices else f"{_type_words(hint)} {check.valid}"
            raise OptionValueError(
                f"option {field.name!r} of {owner} must be {rule}, got {given!r}",
                field.name, rule, given,
            )


def declared(cls: type) -> dict[str, Option]:
    """The :class:`Option` of every constructor field of the dataclass ``cls``, in order."""
    hints = _hints(cls)
    described = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        check: Optional[Check] = field.metadata.get("check")
        hint = hints[field.name]
        valid = _type_words(hint) + (f" {check.valid}" if check and not check.choices else "")
        if check is not None and check.choices:
            valid = check.valid
        described[field.name] = Option(
            field.name, field.default, _types(hint), valid, field.metadata.get("doc", ""),
            check.choices if check is not None else None,
        )
    return described


def check_names(given: Iterable[str], known: Iterable[str], owner: str) -> None:
    """Raise :class:`OptionTypeError` if ``given`` holds a name that is not ``known``,
    listing the valid ones."""
    known = sorted(known)
    unknown = sorted(set(given) - set(known))
    if unknown:
        rule = f"one of {', '.join(sorted(known))}"
        raise OptionTypeError(
            f"{owner} got unknown option(s) {', '.join(map(repr, unknown))}; valid options: "
            f"{', '.join(sorted(known))}", unknown[0], rule, unknown[0],
        )


class Options:
    """Base of a frozen dataclass of options: every field is checked when the value is built
    (:func:`validate`), and an unknown keyword raises a ``TypeError`` listing the valid ones.

    A subclass may override :meth:`describe` to name itself in error messages and may extend
    ``__post_init__`` for checks that involve several fields.
    """

    @classmethod
    def describe(cls) -> str:
        """How error messages name this kind of value (default: the class name)."""
        return cls.__name__

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if dataclasses.is_dataclass(cls):
            check_names(kwargs, (f.name for f in dataclasses.fields(cls) if f.init),
                        cls.describe())
        return super().__new__(cls)

    def __post_init__(self) -> None:
        validate(self)


def parse_assignments(text: str) -> dict[str, Any]:
    """``"history=4,line_search=True"`` as ``{"history": 4, "line_search": True}``: how a
    command line spells options (values are Python literals; anything else is a string).
    ``""`` is no options. Raises ``ValueError`` naming an item that is not ``KEY=VALUE``."""
    parsed: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        parsed[key.strip()] = value
    return parsed
