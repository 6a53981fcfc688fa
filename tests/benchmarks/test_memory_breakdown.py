"""``python -m benchmarks.memory_breakdown --quick`` (in-process): peaks by variant."""

from __future__ import annotations

import json

import pytest

from benchmarks import memory_breakdown


def test_quick_breakdown_orders_the_variants_and_writes_json(tmp_path, capsys) -> None:
    path = tmp_path / "memory.json"
    result = memory_breakdown.main(["--quick", "--json", str(path)])
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ["(defaults)", "--fp-correction 0", "--model unrolled --depth 16"]
    defaults, plain, explicit = rows.values()
    assert defaults["delta_bytes"] == 0 and explicit["ratio"] == 1.0
    # without the correction no activations of f(z0, x) are kept for the backward
    assert 0 < plain["peak_bytes"] < defaults["peak_bytes"]
    assert defaults["peak_bytes"] < explicit["peak_bytes"]  # 16 layers of activations
    assert defaults["ratio"] == pytest.approx(defaults["peak_bytes"] / explicit["peak_bytes"])
    assert "| (defaults) |" in capsys.readouterr().out
    assert json.loads(path.read_text())["rows"][2]["ratio"] == 1.0


def test_a_variant_that_is_not_train_flags_is_one_error_line() -> None:
    with pytest.raises(SystemExit, match="variant '--no-such-flag': not valid"):
        memory_breakdown.main(["--quick", "--variant=--no-such-flag"])
