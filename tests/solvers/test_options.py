"""The one validator of typed options: every option of every registered solver, given any
value, either builds the same value a user builds by hand or fails naming the option.

No solve runs here: building and checking values is pure Python.
"""

from __future__ import annotations

import dataclasses

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

import solvers
from solvers.options import OptionError, declared, parse_assignments

ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 100), st.text(max_size=6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["abs", "rel", "replace_oldest", "fixed_point", 0, 1, 0.5, 2.0]),
)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(solvers.available()), data=st.data(), value=ANY_VALUE)
def test_any_value_builds_the_typed_value_or_fails_naming_the_option(name, data, value):
    option = data.draw(st.sampled_from(sorted(solvers.declared(name))))
    try:
        solve = solvers.get(name, **{option: value})
    except (TypeError, ValueError) as error:
        assert repr(option) in str(error), (option, value, error)
        return
    given = solve.options[option]
    if option == "fallback":
        assert value is None or isinstance(given, solvers.Solver)
        return
    assert given == value, (option, value, given)
    # The string front door builds what a user builds by hand, field by field.
    method = type(solve.method)(**{k: v for k, v in solve.options.items()
                                   if k in declared(type(solve.method))})
    stopping = solvers.Stopping(**{k: v for k, v in solve.options.items()
                                   if k in declared(solvers.Stopping)})
    assert solve == solvers.Solver(method, stopping, solve.batch_axis, solve.fallback)


def test_numbers_are_stored_as_python_numbers_of_the_declared_type():
    solve = solvers.get("anderson", tol=0, damping=1, history=np.int64(3))
    assert isinstance(solve.stopping.tol, float) and isinstance(solve.method.damping, float)
    assert type(solve.method.history) is int
    assert solve == solvers.get("anderson", tol=0.0, damping=1.0, history=3)
    assert solvers.get("broyden", tol=np.float32(1e-6)).stopping.tol == float(np.float32(1e-6))
    with pytest.raises(TypeError, match="'history'"):
        solvers.get("anderson", history=np.float64(3.0))


def test_errors_carry_the_option_its_rule_and_the_value():
    with pytest.raises(OptionError) as info:
        solvers.Broyden(history=0)
    assert (info.value.option, info.value.rule, info.value.value) == (
        "history", "an integer >= 1", 0)
    assert isinstance(info.value, ValueError)
    with pytest.raises(TypeError, match="'when_full' of solver 'broyden' must be one of"):
        solvers.Broyden(when_full=3)


def test_declared_options_come_from_the_fields():
    for name in solvers.available():
        solve = solvers.get(name)
        own = {f.name for f in dataclasses.fields(solve.method)}
        assert set(solvers.declared(name)) == set(solvers.COMMON_OPTIONS) | own
        for option in solvers.declared(name).values():
            assert option.doc and option.valid, option
    assert solvers.declared("broyden")["when_full"].choices == ("replace_newest",
                                                                "replace_oldest")


def test_command_line_assignments_parse_as_literals():
    assert parse_assignments("history=4, line_search=True,when_full=replace_oldest") == {
        "history": 4, "line_search": True, "when_full": "replace_oldest"}
    assert parse_assignments("") == {}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_assignments("history")
