"""Training the DEQ as the toolkit promises: the unrolled warm-up, the gradient audit, the
evaluation budget, and what the solves did in the metrics, the log and the summary."""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from pathlib import Path

import pytest

from models.config import TrainConfig, given_flags
from models.step import STOPPED_METRICS
from models.train import _resumed_total
from tests.models.train_support import run_fast, tiny_config

WARMUP, DEPTH, AUDIT, STEPS = 3, 3, 4, 8


@pytest.fixture(scope="module")
def deq_run(tmp_path_factory) -> tuple[TrainConfig, list[dict], list[str], dict]:
    run_dir = tmp_path_factory.mktemp("deq")
    config = tiny_config(run_dir, model="deq", steps=STEPS, eval_every=4, max_iter=12,
                         tol=1e-4, backward_tol=1e-4, warmup_unrolled=WARMUP,
                         warmup_depth=DEPTH, audit_every=AUDIT, eval_max_iter=30,
                         spectral_norm=2.0, qk_norm=True)
    lines: list[str] = []
    result = run_fast(config, log=lines.append)
    assert result.status == "completed", result.message
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    return config, records, lines, json.loads((run_dir / "summary.json").read_text())


def test_the_warm_up_steps_run_the_unrolled_stack_then_the_equilibrium(deq_run) -> None:
    _, records, _, _ = deq_run
    train = [r for r in records if r["split"] == "train"]
    assert [r["solver_steps"] for r in train[:WARMUP]] == [DEPTH] * WARMUP
    assert all("backward_steps" not in r for r in train[:WARMUP])  # no adjoint solve
    for r in train[WARMUP:]:
        assert r["solver_steps"] < 12 and r["backward_steps"] >= 1
        assert r["converged"] == 1.0 and r["backward_converged"] == 1.0


def test_the_metrics_say_why_each_forward_solve_stopped(deq_run) -> None:
    _, records, _, summary = deq_run
    train = [r for r in records if r["split"] == "train"]
    # The unrolled warm-up runs its fixed depth (tol = 0): every sequence hits max_iter,
    # unless its residual is exactly 0 (the sum block at initialisation barely depends on z).
    for r in train[:WARMUP]:
        assert r["stopped_max_iter"] + r["converged"] == 1.0 and r["stopped_max_iter"] > 0, r
    for r in [*train[WARMUP:], *(r for r in records if r["split"] == "valid")]:
        assert r["converged"] == 1.0 and all(r[key] == 0.0 for key in STOPPED_METRICS), r
    assert all(summary[f"valid_{key}"] == 0.0 for key in STOPPED_METRICS)


def test_the_audit_compares_the_step_gradient_with_the_exact_one(deq_run) -> None:
    _, records, _, summary = deq_run
    audited = [r for r in records if "audit_cosine" in r]
    assert [r["step"] for r in audited] == list(range(AUDIT, STEPS + 1, AUDIT))
    for r in audited:
        # a converged implicit gradient: the same direction, to the reference's tolerance
        assert 0.999 < r["audit_cosine"] <= 1 + 1e-6 and r["audit_rel_error"] < 0.05, r
        assert r["audit_reference_converged"] == 1.0
        assert r["audit_cosine_converged"] == r["audit_cosine"]  # nothing to leave out
        assert r["audit_rel_error_converged"] == r["audit_rel_error"]
    assert summary["audit"]["count"] == len(audited)
    assert math.isclose(summary["audit"]["cosine_last"], audited[-1]["audit_cosine"])


def test_the_solves_are_reported_in_the_summary_and_the_log(deq_run) -> None:
    _, records, lines, summary = deq_run
    train = [r for r in records if r["split"] == "train"]
    assert summary["train_steps"] == STEPS
    assert summary["forward_unconverged_steps"] == sum(r["forward_unconverged"] for r in train)
    assert summary["backward_unconverged_steps"] == 0
    assert 0.999 <= summary["backward_converged_mean"] <= 1.0
    assert summary["valid_converged"] == 1.0 and summary["valid_solver_fevals"] >= 2
    solves = [line for line in lines if line.startswith("solves:")]
    assert len(solves) == 1 and "gradient audit over 2 steps" in solves[0], lines


def test_evaluation_may_take_a_larger_forward_budget(deq_run) -> None:
    config, _, _, _ = deq_run
    from models.lm import deq_solver, make_model

    assert config.eval_max_iter == 30
    solver = deq_solver(config).replace(max_iter=config.eval_max_iter)
    assert solver.options["max_iter"] == 30 and deq_solver(config).options["max_iter"] == 12
    make_model(config, solver=solver)  # a model with the evaluation budget builds


def test_resume_without_steps_keeps_the_run_total(deq_run) -> None:
    """A plain --resume continues to the checkpoint's own total (here 8), not the default
    700: only an explicit, larger --steps extends a run."""
    config, _, _, _ = deq_run
    assert "steps" not in given_flags(["--resume"])
    assert given_flags(["--resume", "--steps", "9"]) == {"resume", "steps"}
    plain = dataclasses.replace(config, resume=True, steps=TrainConfig().steps)
    assert _resumed_total(plain).steps == STEPS


def test_the_plot_has_a_panel_for_the_solves(deq_run) -> None:
    config, _, _, _ = deq_run
    png = (Path(config.run_dir) / "metrics.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 2.5 * height  # three panels side by side


def test_the_logged_loss_is_the_sum_of_its_terms(deq_run) -> None:
    """At the defaults the training loss is ``nll(z*) + jac_reg · jac_loss + γ · nll(f(z₀))``
    (one correction state, weight ``γ¹``); the metrics give each term in bits or raw."""
    config, records, _, _ = deq_run
    assert config.fp_correction == 1
    equilibrium = [r for r in records if r["split"] == "train"][WARMUP:]
    assert equilibrium
    for r in equilibrium:
        assert r["correction_bpb"] > r["bpb"] * 0.5 > 0 and r["jac_loss"] > 0, r
        terms = (math.log(2) * (r["bpb"] + config.fp_correction_gamma * r["correction_bpb"])
                 + config.jac_reg * r["jac_loss"])
        assert math.isclose(r["loss"], terms, rel_tol=1e-4), (r, terms)
