"""The training command's solver flags: read off the solver values' fields, checked by the one
validator, and turned into the same values a user would build. No training runs here."""

from __future__ import annotations

import re

import numpy as np
import pytest

import solvers
from implicit import GMRES, JFB, Implicit, Phantom, Reversible, SolveReport
from models.config import ConfigError, TrainConfig, build_parser, validate_config
from models.lm import deq_backward, deq_solver
from models.solve_metrics import BackwardLog
from solvers.options import declared


def test_the_stopping_and_phantom_flags_are_read_off_their_fields():
    fields = TrainConfig.__dataclass_fields__
    for flag, (owner, name) in {
        "max_iter": (solvers.Stopping, "max_iter"), "tol": (solvers.Stopping, "tol"),
        "backward_max_iter": (solvers.Stopping, "max_iter"),
        "backward_tol": (solvers.Stopping, "tol"), "phantom_steps": (Phantom, "steps"),
        "phantom_damping": (Phantom, "damping"),
    }.items():
        source = owner.__dataclass_fields__[name].metadata
        assert fields[flag].metadata["check"] is source["check"], flag
        assert fields[flag].metadata["doc"].endswith(source["doc"]), flag
    assert not {"history", "backward_history"} & set(fields)  # method options: a KEY=VALUE list
    assert "--solver-options" in build_parser().format_help()


def test_the_default_method_options_fit_every_solver_and_given_ones_are_strict():
    for name in solvers.available():  # the default history=4 applies where there is a history
        method = deq_solver(TrainConfig(solver=name)).method
        has_history = "history" in declared(type(method))
        assert method == type(method)(**({"history": 4} if has_history else {})), name
    with pytest.raises(TypeError, match="'history'; valid options: .*damping"):
        deq_solver(TrainConfig(solver="fixed_point", solver_options="history=3"))
    solve = deq_solver(TrainConfig(solver="broyden", solver_options="history=8,line_search=True"))
    assert solve == solvers.Solver(solvers.Broyden(history=8, line_search=True),
                                   solvers.Stopping(max_iter=16, tol=1e-3), batch_axis=0)
    assert deq_solver(TrainConfig(solver="anderson", solver_options="")).method == (
        solvers.Anderson())


def test_the_backward_flags_build_the_backward_values():
    assert deq_backward(TrainConfig()) == Implicit(solvers.get(
        "anderson", history=4, max_iter=24, tol=1e-3, stop_mode="rel", batch_axis=0))
    assert deq_backward(TrainConfig(backward_solver="gmres")) == Implicit(
        GMRES(max_iter=24, tol=1e-3))
    gmres = deq_backward(TrainConfig(backward_solver="gmres", backward_solver_options="restart=5"))
    assert gmres.solver == GMRES(max_iter=24, tol=1e-3, restart=5)
    assert deq_backward(TrainConfig(backward="phantom", phantom_steps=3)) == Phantom(3, 0.5)
    assert deq_backward(TrainConfig(reuse_inverse=False)).reuse_inverse is False
    assert deq_backward(TrainConfig(backward_fallback="phantom", phantom_steps=3)).fallback == (
        Phantom(3, 0.5))
    assert deq_backward(TrainConfig(backward_fallback="jfb", backward_solver="gmres")) == (
        Implicit(GMRES(max_iter=24, tol=1e-3), fallback=JFB()))
    # --backward reversible: the mode, whose forward solver is the reversible iteration
    assert deq_backward(TrainConfig(backward="reversible")) == Reversible()
    assert Reversible().prepare(deq_solver(TrainConfig(backward="reversible"))) == solvers.get(
        "reversible", max_iter=16, tol=1e-3, stop_mode="rel", batch_axis=0)
    assert "any other --solver is replaced" in " ".join(build_parser().format_help().split())


def test_the_backward_log_counts_the_sequences_that_fell_back():
    log = BackwardLog()
    ones = np.ones(4, bool)
    log(SolveReport("anderson", np.full(4, 3), ones, np.zeros(4), 1e-3))
    assert set(log.take()) == {"backward_steps", "backward_converged"}  # no fallback: no key
    flags = np.array([False, True, True, True])
    for fell_back in (flags, ~ones):
        log(SolveReport("anderson", np.full(4, 3), ~fell_back, np.zeros(4), 1e-3, fell_back,
                        "JFB()"))
    assert log.take() == {"backward_steps": 3.0, "backward_converged": 5 / 8,
                          "backward_fallback": 3 / 8}


@pytest.mark.parametrize("changes, words", [
    (dict(lr=0.0), "--lr must be a finite number > 0, got 0.0"),
    (dict(max_iter=0), "--max-iter must be an integer >= 1, got 0"),
    (dict(stop_mode="relative"), "--stop-mode must be one of 'abs', 'rel', got relative"),
    (dict(phantom_damping=1.5), "--phantom-damping must be a finite number in (0, 1], got 1.5"),
    (dict(dropout=1.0), "--dropout must be a finite number in [0, 1), got 1.0"),
    (dict(model="rnn"), "--model must be one of 'deq', 'transformer', 'unrolled', got rnn"),
    (dict(num_heads=5), "--num-heads must divide --d-model 96, got 5"),
    (dict(resume=True, overwrite=True), "--overwrite contradicts --resume"),
])
def test_a_bad_setting_is_named_by_its_flag(changes, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        validate_config(TrainConfig(**changes))


def test_the_defaults_are_valid():
    validate_config(TrainConfig())
