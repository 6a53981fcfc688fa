"""The prepared device check: its ``--quick`` run (every part, in this process) writes one
JSON and one Markdown table with a passing row for every item; a part that runs over its
budget is stopped and recorded, and the parts after it keep their time or are skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import device_check


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("device_check")
    return device_check.main([str(out), "--quick"]), out


def test_quick_writes_one_json_and_one_table_with_every_item(quick, capsys) -> None:
    result, out = quick
    assert json.loads((out / "device_check.json").read_text())["parts"].keys() == \
        set(device_check.PARTS)
    for name, part in result["parts"].items():
        assert part["status"] == "done", (name, part["notes"])
    table = (out / "device_check.md").read_text()
    lines = table.splitlines()
    assert lines[0].startswith("Device check `python -m benchmarks.device_check OUT_DIR "
                               "--quick`") and "cpu" in lines[0]
    rows = [line for line in lines if line.startswith("|")]
    assert rows[0] == "| part | item | measured | status |"
    assert len(rows) == 2 + sum(len(p["rows"]) for p in result["parts"].values())
    assert all(line.startswith("|") for line in lines[2:2 + len(rows)])  # one table
    statuses = [row["status"] for p in result["parts"].values() for row in p["rows"]]
    assert set(statuses) <= {"pass", "ok"}, table

    results = {name: p["results"] for name, p in result["parts"].items()}
    matrix = {(r["dtype"], r["precision"]) for r in results["correctness"]["dtype_matrix"]}
    assert matrix == {("float32", "default"), ("float32", "highest"), ("bfloat16", "default")}
    assert results["correctness"]["gradients"][0]["unroll_rel_error"] < 1e-3
    assert results["lm"]["determinism_needs"] == "default XLA flags"
    solvers = {row["solver"] for row in results["solvers"]["compare_solvers"][0]["rows"]}
    assert solvers == set(device_check.QUICK_SOLVERS)
    models = [row["model"] for row in results["lm"]["lm"]]
    assert models == ["deq", "transformer-1"]
    for row in results["lm"]["lm"]:
        for key in ("tokens_per_s", "fevals_per_step", "peak_bytes", "valid_bpb"):
            assert row[key] is not None and row[key] > 0, (row["model"], key)
    assert [row["mode"] for row in results["backward"]["lm_modes"]] == ["implicit"]
    assert results["backward"]["backward_modes"][0]["status"] == "ok"


def test_a_part_over_its_budget_is_stopped_and_the_next_skipped(tmp_path) -> None:
    """``lm`` in its own process with one second: killed while it starts; ``solvers`` after
    it finds too little of the total left."""
    result = device_check.main([str(tmp_path), "--quick", "--isolate", "--parts", "lm",
                                "solvers", "--budget", "lm=1", "--total", "4"])
    lm, solvers = result["parts"]["lm"], result["parts"]["solvers"]
    assert lm["status"] == "stopped" and lm["rows"][-1]["status"] == \
        "skipped: over its budget of 1 s", lm
    assert solvers["status"] == "skipped" and "of the 4 s were left" in solvers["notes"][0]
    table = (tmp_path / "device_check.md").read_text()
    assert "| lm | the rest of the part | — | skipped: over its budget of 1 s |" in table
    assert json.loads((tmp_path / "device_check.json").read_text())["parts"]["lm"]["status"] \
        == "stopped"


def test_budgets_are_checked() -> None:
    with pytest.raises(SystemExit):
        device_check.build_parser().parse_args(["out", "--budget", "gpu=3"])
    with pytest.raises(SystemExit):
        device_check.build_parser().parse_args(["out", "--budget", "lm=-1"])
    assert sum(device_check.BUDGETS_S.values()) <= device_check.TOTAL_S <= 8 * 60


def test_write_results_publishes_the_check_and_keeps_it(quick, tmp_path) -> None:
    """``--device-check`` puts the table in the page and the summary in the README, between
    their markers; rewriting the page from the CPU benchmarks keeps the table."""
    from benchmarks import write_results

    result, out = quick
    marked = (f"before\n{write_results.DEVICE_START}\nold\n{write_results.DEVICE_END}\nafter\n")
    page, readme = tmp_path / "results.md", tmp_path / "README.md"
    page.write_text(marked)
    readme.write_text(f"{write_results.START}\n{write_results.END}\n{marked}")
    write_results.main(["--device-check", str(out), "--output", str(page),
                        "--readme", str(readme)])
    table = (out / "device_check.md").read_text()
    assert page.read_text() == marked.replace("old\n", table)
    summary = device_check.summary(result)
    assert summary.startswith("On 1 × ") and "correctness checks passed" in summary
    assert f"{write_results.DEVICE_START}\n{summary}\n{write_results.DEVICE_END}" in \
        readme.read_text()

    compare = tmp_path / "compare.json"
    compare.write_text(json.dumps(result["parts"]["solvers"]["results"]["compare_solvers"][0]))
    write_results.main(["--compare-json", str(compare), "--no-backward", "--output", str(page),
                        "--readme", str(readme)])
    rewritten = page.read_text()
    assert rewritten.startswith("# Benchmark results") and table in rewritten
    assert rewritten.count(write_results.DEVICE_START) == 1


def test_problems_above_the_exact_size_normalise_by_power_iteration(monkeypatch) -> None:
    """The check's d = 4096 and 16384 problems take ``‖G‖₂`` from power iteration (an SVD of
    that size on the host would outlast the check); here the switch is moved down to d = 16."""
    import numpy as np

    from benchmarks import problems

    monkeypatch.setattr(problems, "EXACT_NORM_MAX_DIM", 16)
    g = np.random.default_rng(0).standard_normal((64, 64))
    estimate, exact = problems.spectral_norm(g), np.linalg.norm(g, 2)
    assert estimate <= exact * (1 + 1e-6) and estimate == pytest.approx(exact, rel=1e-3)
    assert problems.slow_modes(64, 2).dim == 64
