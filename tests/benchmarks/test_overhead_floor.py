"""The overhead-floor benchmark: its buffer stages against Broyden's, its fault counter
against a known allocation, and a ``--quick`` run's table."""

from __future__ import annotations

import math
import mmap
import resource

import pytest

import solvers
from benchmarks import cli, overhead_floor


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
    broyden = solvers.get("broyden", max_iter=500, **options)
    assert overhead_floor.buffer_stages(broyden, size, iterations) == stages


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


def _common() -> cli.Common:
    parser = overhead_floor.build_parser()
    return cli.common(parser.parse_args(["--quick"]), overhead_floor.DEFAULTS)


def test_solver_options_reach_only_the_named_solver() -> None:
    solves = overhead_floor.build_solvers(_common(), {"broyden": {"history": 4}})
    assert solves["broyden"].options["history"] == 4
    assert solves["broyden"].options["stop_mode"] == "rel"  # as compare_solvers runs it
    assert solves["fixed_point"] == solvers.get(
        "fixed_point", **{k: solves["broyden"].options[k]
                          for k in ("tol", "max_iter", "stop_mode", "batch_axis")})


@pytest.mark.parametrize("options, words", [
    ({"anderson": {"history": 4}}, "only fixed_point, broyden"),
    ({"broyden": {"histroy": 4}}, "histroy"),
])
def test_bad_solver_options_are_named(options, words) -> None:
    with pytest.raises((TypeError, ValueError), match=words):
        overhead_floor.build_solvers(_common(), options)


def test_quick_run_puts_each_solver_beside_its_floors(tmp_path) -> None:
    result = overhead_floor.main(["--quick", "--no-progress", "--json", str(tmp_path / "f.json"),
                                  "--solver-option", "broyden:initial_history=4"])
    assert any("initial_history=4" in text for text in result["settings"]["solvers"])
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
