"""Smoke test of ``python -m benchmarks.deq_vs_explicit --quick`` (run in-process)."""

from __future__ import annotations

import json
import math

from benchmarks import deq_vs_explicit


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_quick_benchmark_prints_and_writes_both_tables(tmp_path, capsys) -> None:
    path = tmp_path / "deq_vs_explicit.json"
    result = deq_vs_explicit.main(["--quick", "--no-progress", "--json", str(path)])
    rows = result["rows"]
    assert [(r["depth"], r["model"]) for r in rows] == [(2, "deq"), (2, "explicit")]
    assert rows[0]["params"] == rows[1]["params"]  # the same parameters, used two ways
    for row in rows:
        for key in ("valid_bpb", "tokens_per_s", "peak_bytes", "temp_bytes", "memory_ratio"):
            assert _finite(row[key]), (key, row)
        assert 0 < row["valid_bpb"] < 9
        assert 1 <= row["solver_steps"] <= 2
    assert rows[1]["memory_ratio"] == 1.0
    budget = {r["model"]: r for r in result["budget_rows"]}
    assert set(budget) == {"deq", "untied-1"}
    for row in budget.values():
        assert row["steps"] >= 1 and _finite(row["valid_bpb"]) and _finite(row["peak_bytes"])
    assert _finite(budget["deq"]["forward_fevals"]) and budget["deq"]["forward_fevals"] >= 2
    assert _finite(budget["deq"]["backward_vjps"]) and budget["untied-1"]["forward_fevals"] is None
    assert any("mem" in c or "memory" in c for c in result["checks"])
    table = capsys.readouterr().out
    assert "| depth | model |" in table and "| 2 | deq |" in table
    assert "| untied-1 |" in table and "fwd f-evals/step" in table
    assert json.loads(path.read_text())["budget_rows"][0]["model"] == "deq"
