"""Smoke test of ``python -m benchmarks.deq_vs_explicit --quick`` (run in-process)."""

from __future__ import annotations

import json
import math

from benchmarks import deq_vs_explicit


def test_quick_benchmark_prints_and_writes_the_table(tmp_path, capsys) -> None:
    path = tmp_path / "deq_vs_explicit.json"
    result = deq_vs_explicit.main(["--quick", "--no-progress", "--json", str(path)])
    rows = result["rows"]
    assert [(r["depth"], r["model"]) for r in rows] == [(2, "deq"), (2, "explicit")]
    assert rows[0]["params"] == rows[1]["params"]  # the same parameters, used two ways
    for row in rows:
        for key in ("valid_bpb", "tokens_per_s", "peak_bytes", "temp_bytes", "memory_ratio"):
            assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), (key, row)
        assert 0 < row["valid_bpb"] < 9
        assert 1 <= row["solver_steps"] <= 2
    assert rows[1]["memory_ratio"] == 1.0
    table = capsys.readouterr().out
    assert "| depth | model |" in table and "| 2 | deq |" in table
    assert json.loads(path.read_text())["rows"][0]["model"] == "deq"
