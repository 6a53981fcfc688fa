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
    rows = {r["model"]: r for r in result["rows"]}
    assert list(rows) == ["deq", "transformer-1"]
    deq, transformer = rows["deq"], rows["transformer-1"]
    assert deq["params"] == transformer["params"]  # one layer: the DEQ's parameters exactly
    for row in rows.values():
        for key in ("valid_bpb", "tokens_per_s", "peak_bytes", "time_bpb"):
            assert _finite(row[key]), (key, row)
        assert 0 < row["valid_bpb"] < 9 and row["valid_bpb_spread"] == 0.0  # one seed
        assert row["time_steps"] >= 2
    assert deq["time_steps"] == deq["steps"] and deq["time_bpb"] == deq["valid_bpb"]
    assert _finite(deq["forward_fevals"]) and deq["forward_fevals"] >= 2
    assert _finite(deq["backward_vjps"]) and transformer["forward_fevals"] is None
    assert result["budget_s"] > 0
    assert any(c.startswith("equal steps: deq") and "transformer-1" in c
               for c in result["checks"])
    depth = result["depth_rows"]
    assert [(r["depth"], r["model"]) for r in depth] == [(2, "deq"), (2, "unrolled")]
    assert depth[0]["params"] == depth[1]["params"]  # the same parameters, used two ways
    assert depth[1]["memory_ratio"] == 1.0 and _finite(depth[0]["memory_ratio"])
    table = capsys.readouterr().out
    assert "| model | params |" in table and "| deq |" in table and "| transformer-1 |" in table
    assert "| 2 | unrolled |" in table and "valid bpb, equal time" in table
    assert json.loads(path.read_text())["rows"][0]["model"] == "deq"
