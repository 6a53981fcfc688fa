"""The overhead-floor benchmark: its buffer stages against Broyden's, its fault counter
against a known allocation, and a ``--quick`` run's table."""

from __future__ import annotations

import math
import mmap
import resource

import pytest

import solvers
from benchmarks import overhead_floor


@pytest.mark.parametrize(
    "options, size, iterations, stages",
    [
        ({}, 1024, 50, {8: 8, 30: 42}),  # the defaults: 8 slots, then all 30
        ({}, 1024, 5, {8: 5}),  # a solve that never fills the first buffer
        ({"initial_history": 0}, 1024, 50, {30: 50}),  # all slots from the start
        ({}, 12, 50, {8: 8, 12: 42}),  # history capped at the problem size
        ({"history": 6}, 1024, 50, {6: 50}),  # initial_history capped at history
    ],
)
def test_buffer_stages_follow_broydens_growth(options, size, iterations, stages) -> None:
    resolved = solvers.get("broyden", max_iter=500, **options).options
    assert overhead_floor.buffer_stages(resolved, size, iterations) == stages


def test_faulted_bytes_counts_the_pages_a_call_maps_afresh() -> None:
    size, page = 64 << 20, resource.getpagesize()

    def touch_fresh_pages() -> None:
        memory = mmap.mmap(-1, size)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):  # one fault per page, whatever the THP setting
            memory.madvise(mmap.MADV_NOHUGEPAGE)
        memory[::page] = b"\x01" * (size // page)
        memory.close()

    assert overhead_floor.faulted_bytes(touch_fresh_pages) >= size
    assert overhead_floor.faulted_bytes(lambda: None) < size / 16


def test_quick_run_puts_each_solver_beside_its_floors(tmp_path) -> None:
    result = overhead_floor.main(["--quick", "--no-progress", "--json", str(tmp_path / "f.json")])
    rows = {row["solver"]: row for row in result["rows"]}
    assert set(rows) == set(overhead_floor.SOLVERS)
    for row in rows.values():
        assert row["fevals"] == row["iterations"] + 1
        for key in ("f_us", "call_us", "overhead", "floor_call", "faulted_bytes", "temp_bytes"):
            assert math.isfinite(row[key]) and row[key] >= 0, (key, row)
        assert row["floor_call"] >= 1
    broyden = rows["broyden"]
    # Reads of the buffer only add to the call floor.
    assert broyden["floor_call"] <= broyden["floor_read"]
    assert broyden["floor_call"] <= broyden["floor_passes"]
    assert "floor_read" not in rows["fixed_point"]
    assert (tmp_path / "f.json").exists()
    assert len(result["medians"]) == 2
