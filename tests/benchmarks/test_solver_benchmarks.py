"""Smoke tests of the benchmark entry points (``--quick``, run in-process).

Each entry point runs once per session (module-scoped fixtures); the tests then check
its table: every solver or mode present, finite numbers, and the output files.
"""

from __future__ import annotations

import json
import math

import pytest

import implicit
import solvers
from benchmarks import backward_modes, compare_solvers, contenders, problems, write_results


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, object]:
    out = tmp_path_factory.mktemp("compare")
    paths = {"json": str(out / "cs.json"), "csv": str(out / "cs.csv"), "plots": str(out / "plots")}
    result = compare_solvers.main([
        "--quick", "--no-progress", "--json", paths["json"], "--csv", paths["csv"],
        "--plots", paths["plots"],
        # The same solver once more under its own label and options: Broyden with its full
        # history from the start, which must take exactly the iterations of the growing one.
        "--variant", "broyden_full=broyden", "--solver-option", "broyden_full:initial_history=0",
        # ... and one whose option must show: damped iteration needs more iterations.
        "--variant", "damped=fixed_point", "--solver-option", "damped:damping=0.5",
    ])
    return result, paths, out


@pytest.fixture(scope="module")
def backward_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    path = str(tmp_path_factory.mktemp("backward") / "bm.json")
    return backward_modes.main(["--quick", "--no-progress", "--json", path]), path


def test_compare_solvers_quick_has_every_solver_with_finite_numbers(compare_run, capsys) -> None:
    result, paths, _ = compare_run
    names = {row["solver"] for row in result["rows"]}
    expected = set(solvers.available(general=True)) | {c.name for c in contenders.peers()}
    assert expected <= names
    for row in result["rows"]:
        if row["solver"] in solvers.available():
            assert row["status"] == "ok", row
            for key in ("iterations", "fevals", "forward_s", "overhead", "max_rel_residual"):
                assert _finite(row[key]), (row["solver"], key, row[key])
            assert row["max_rel_residual"] <= result["settings"]["tol"] * 1.01
            for key in ("forward_backward_s", "grad_rel_error", "peak_bytes"):
                assert _finite(row[key]), (row["solver"], key, row[key])
            # The solver's own verdict per sample, by solvers.Reason name, adds up to the batch.
            counts = [part.split(" ") for part in row["stopped"].split(", ")]
            assert {name for _, name in counts} <= {r.name.lower() for r in solvers.Reason}
            assert sum(int(n) for n, _ in counts) == row["batch"], row["stopped"]
        elif row["status"] == "ok":
            assert _finite(row["forward_s"]) and _finite(row["iterations"]), row


def test_a_variant_row_runs_its_solver_with_its_own_options(compare_run) -> None:
    result, _, _ = compare_run
    rows = {(r["problem"], r["dim"], r["solver"]): r for r in result["rows"]}
    variants = [key for key in rows if key[2] == "broyden_full"]
    assert variants and {r["problem"] for r in result["rows"]} == {key[0] for key in variants}
    damped_checked = 0
    for problem, dim, _ in variants:
        full, growing = rows[problem, dim, "broyden_full"], rows[problem, dim, "broyden"]
        assert full["status"] == "ok" and _finite(full["overhead"]), full
        assert full["iterations"] == growing["iterations"], (problem, dim)
        assert full["stopped"] == growing["stopped"], (problem, dim)
        damped, plain = rows[problem, dim, "damped"], rows[problem, dim, "fixed_point"]
        if plain["converged"] == plain["batch"]:
            assert damped["iterations"] > plain["iterations"], (problem, dim)
            damped_checked += 1
    assert damped_checked  # at least one problem where plain iteration converges


@pytest.mark.parametrize("spec, words", [
    ("broyden_full", "LABEL=SOLVER"),
    ("mine=nope", "unknown solver 'nope'"),
    ("anderson=broyden", "already a contender"),
])
def test_bad_variants_are_named(spec, words) -> None:
    with pytest.raises(ValueError, match=words):
        contenders.variants([spec], [c.name for c in contenders.all_contenders(False)])


def test_compare_solvers_outputs(compare_run) -> None:
    result, paths, _ = compare_run
    table = compare_solvers.render(result)
    for name in solvers.available(general=True):
        assert f"| {name} |" in table
    assert "stopped (solvers.Reason)" in table and " converged |" in table
    with open(paths["json"], encoding="utf-8") as handle:
        saved = json.load(handle)
    assert len(saved["rows"]) == len(result["rows"])
    with open(paths["csv"], encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    assert lines[0].startswith("problem,") and len(lines) == len(result["rows"]) + 1
    assert result["plots"] and all(p.endswith(".png") for p in result["plots"])
    with open(result["plots"][0], "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_backward_modes_quick_has_every_mode_with_finite_numbers(backward_run) -> None:
    result, _ = backward_run
    modes = {row["mode"] for row in result["rows"]}
    assert set(result["modes"]) == modes
    assert {f"implicit[{name}]" for name in implicit.backward_solvers()} <= modes
    assert {f"implicit[{name}]" for name in implicit.KRYLOV_NAMES} <= modes
    assert {"jfb", "unroll", "implicit+fallback", "reversible"} <= modes
    assert any(m.startswith("phantom") for m in modes)
    for row in result["rows"]:
        assert row["status"] == "ok", row
        for key in ("cosine", "grad_rel_error", "forward_backward_s", "peak_bytes"):
            assert _finite(row[key]), (row["mode"], key, row[key])
        if row["backward"] == "implicit":
            assert row["cosine"] > 0.999, row


def test_write_results_writes_the_page_and_only_the_marked_readme_section(
    compare_run, backward_run, tmp_path
) -> None:
    _, paths, _ = compare_run
    _, backward_json = backward_run
    readme = tmp_path / "README.md"
    page = tmp_path / "docs" / "results.md"
    readme.write_text(
        f"# title\n\nbefore\n\n{write_results.START}\nold\n{write_results.END}\n\nafter\n",
        encoding="utf-8",
    )
    page.parent.mkdir()
    page.write_text(f"# old page\n\nold table\n\n{write_results.NOTES_START}\n- a figure, and "
                    f"its command\n{write_results.NOTES_END}\n", encoding="utf-8")
    write_results.main(["--readme", str(readme), "--output", str(page),
                        "--compare-json", paths["json"], "--backward-json", backward_json])
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# title\n\nbefore\n\n" + write_results.START)
    assert text.endswith(write_results.END + "\n\nafter\n") and "old" not in text
    assert write_results.RESULTS_PATH in text and "| broyden |" not in text  # a summary
    assert "- jfb:" in text  # the worst cosine of each gradient mode
    full = page.read_text(encoding="utf-8")
    assert "python -m benchmarks.compare_solvers" in full and "| broyden |" in full
    assert "| jfb |" in full
    # The measured notes are carried over; the old tables are not.
    assert "- a figure, and its command" in full and "old table" not in full
    assert write_results.measured_notes(full) == "- a figure, and its command"


def test_write_results_puts_the_deq_tables_between_their_own_markers(
    compare_run, backward_run, tmp_path
) -> None:
    compare, paths, _ = compare_run
    _, backward_json = backward_run
    deq = {  # the shape of benchmarks.deq_vs_explicit's --json output
        "rows": [{"model": "deq", "params": 10, "peak_bytes": 2**20, "tokens_per_s": 100.0,
                  "forward_fevals": 3.0, "backward_vjps": 2.0, "valid_bpb": 3.25,
                  "valid_bpb_spread": 0.01, "valid_bpb_text": "3.250 ± 0.010",
                  "time_steps": 7, "time_bpb": 3.25},
                 {"model": "transformer-1", "params": 10, "peak_bytes": 2**21,
                  "tokens_per_s": 200.0, "forward_fevals": None, "backward_vjps": None,
                  "valid_bpb": 3.5, "valid_bpb_spread": 0.02, "valid_bpb_text": "3.500 ± 0.020",
                  "time_steps": 14, "time_bpb": 3.0}],
        "depth_rows": [{"depth": 2, "model": "deq", "params": 10, "valid_bpb": 3.25,
                        "forward_fevals": 1.5, "tokens_per_s": 100.0, "peak_bytes": 2**20,
                        "memory_ratio": 0.5}],
        "budget_s": 2.0,
        "checks": ["memory: the DEQ's train step peaks at 1.0 MiB, 0.50 of transformer-2's"],
        "settings": {"steps": 3, "batch_size": 4, "seq_len": 16, "seeds": [0],
                     "depth_steps": 2},
        "machine": compare["machine"],
    }
    deq_json = tmp_path / "deq.json"
    deq_json.write_text(json.dumps(deq), encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text(
        f"{write_results.START}\nold\n{write_results.END}\n\nmiddle\n\n"
        f"{write_results.DEQ_START}\nold deq\n{write_results.DEQ_END}\n",
        encoding="utf-8",
    )
    page = tmp_path / "results.md"
    write_results.main(["--readme", str(readme), "--output", str(page), "--compare-json",
                        paths["json"], "--backward-json", backward_json,
                        "--deq-json", str(deq_json)])
    text = readme.read_text(encoding="utf-8")
    section = text.split(write_results.DEQ_START)[1].split(write_results.DEQ_END)[0]
    assert "old" not in text and "\nmiddle\n" in text
    assert "| 2 | deq |" in section and "| transformer-1 |" in section and "0.50" in section
    assert "3.500 ± 0.020" in section
    assert "| 2 | deq |" not in text.split(write_results.DEQ_START)[0]
    assert "## DEQ against explicit Transformers" in page.read_text(encoding="utf-8")
    readme.write_text("no deq markers\n" + text.split(write_results.DEQ_START)[0],
                      encoding="utf-8")
    with pytest.raises(SystemExit, match="deq-vs-explicit:start"):
        write_results.main(["--readme", str(readme), "--deq-json", str(deq_json)])


def test_write_results_fails_clearly_without_markers(tmp_path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="results:start"):
        write_results.main(["--readme", str(readme), "--compare-json", "unused.json"])
    assert readme.read_text(encoding="utf-8") == "# no markers here\n"


def test_problems_select_families_and_reject_unknown_names() -> None:
    assert problems.select(["slow-modes"]) == [f"slow-modes-{r:g}" for r in problems.SLOW_RHOS]
    with pytest.raises(ValueError, match="unknown problem"):
        problems.select(["no-such-problem"])


def test_user_problem_spec_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="module:function"):
        problems.user_problem("no_colon")
    with pytest.raises(ValueError, match="cannot import"):
        problems.user_problem("no_such_module_xyz:make")


def test_user_problem_from_module_function() -> None:
    problem = problems.user_problem("benchmarks.example_problem:make_problem")
    assert problem.name == "make_problem" and problem.batch == 16 and problem.dim == 72
    assert problem.in_axes == (None, 0) and problem.diff_argnums == (0, 1)
    import jax

    z = {"h": problem.z0["h"][0], "c": problem.z0["c"][0]}
    out = jax.eval_shape(problem.per_sample(), z, problem.args[0], problem.args[1][0])
    assert out["h"].shape == (64,) and out["c"].shape == (8,)


@pytest.mark.parametrize("name", ["noncontractive", "nonlinear"])
def test_known_roots_are_fixed_points(name: str) -> None:
    import numpy as np

    problem = problems.build(name, 32, 4)
    z = np.asarray(problem.root, np.float64)
    fz = np.asarray(problem.f(problem.root, *problem.args), np.float64)
    assert np.max(np.abs(fz - z)) <= 1e-4 * max(1.0, np.max(np.abs(z)))
