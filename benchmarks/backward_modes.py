"""Gradient modes side by side: implicit (per backward solver) vs phantom vs JFB vs unroll.

    python -m benchmarks.backward_modes            # the default suite (a few minutes)
    python -m benchmarks.backward_modes --quick    # under a minute: a smoke run

Every mode differentiates the same forward solve (``--solver``, per-sample relative
``--tol``) of the loss ``L = Σ c ⊙ z*`` with respect to the problem's parameters, through
:func:`implicit.fixed_point`:

* ``implicit[<backward solver>]`` — the implicit function theorem, the adjoint fixed point
  ``u = u·∂f/∂z + c`` solved by each registered solver and by the Krylov solvers
  ``gmres``, ``bicgstab``, ``normal_cg``, all at the forward tolerance;
* ``phantom`` — ``--phantom-steps`` damped steps from ``z*`` (damping ``--phantom-damping``);
* ``jfb`` — Jacobian-free backprop (one undamped step, ``∂f/∂z`` taken as 0);
* ``unroll`` — backpropagation through all ``--max-iter`` solver iterations (fixed length).

Columns: cosine similarity and relative error of the gradient against the exact one (the
float64 reference of :mod:`benchmarks.reference`), median forward+backward time (after a
warm-up, round-robin, blocked on), its ratio to ``implicit[<solver>]``, and the peak and
temporary memory of the compiled forward+backward (XLA's memory analysis).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any, Callable, Optional, Sequence

from benchmarks import problems as problems_lib
from benchmarks import reference as reference_lib
from benchmarks import report, timing
from benchmarks.contenders import implicit_missing, quiet_jaxopt
from benchmarks.measure import loss_and_grad, measure
from benchmarks.problems import Problem

DEFAULT_PROBLEMS = ("gauss", "slow-modes-0.99", "orthogonal", "noncontractive")
DEFAULT_DIMS = (256,)
KRYLOV = ("gmres", "bicgstab", "normal_cg")
QUICK_PROBLEMS = ("slow-modes-0.99",)
QUICK_DIMS = (32,)
QUICK_BATCH = 4

COLUMNS = (
    report.Column("problem", "problem", align="left"),
    report.Column("dim", "d", report.fmt_int),
    report.Column("mode", "mode", align="left"),
    report.Column("cosine", "cos sim", report.fmt_cos),
    report.Column("grad_rel_error", "grad err", report.fmt_sci),
    report.Column("forward_backward_s", "fwd+bwd ms", report.fmt_ms),
    report.Column("vs_implicit", "× implicit", report.fmt_ratio),
    report.Column("peak_bytes", "peak MiB", report.fmt_mib),
    report.Column("temp_bytes", "temp MiB", report.fmt_mib),
)
CSV_KEYS = (
    "problem", "dim", "batch", "mode", "backward", "backward_solver", "status", "cosine",
    "grad_rel_error", "forward_backward_s", "vs_implicit", "peak_bytes", "temp_bytes", "note",
)


@dataclasses.dataclass(frozen=True)
class Mode:
    """One gradient mode: a label and the keywords it passes to ``implicit.fixed_point``."""

    label: str
    backward: str
    kwargs: dict


def modes(solver: str, phantom_steps: int, phantom_damping: float) -> list[Mode]:
    """``implicit[...]`` for every registered solver and Krylov solver, then the others."""
    import solvers

    implicit = [Mode(f"implicit[{name}]", "implicit", {"backward_solver": name})
                for name in (*solvers.available(), *KRYLOV)]
    return implicit + [
        Mode(f"phantom[k={phantom_steps}, λ={phantom_damping:g}]", "phantom",
             {"phantom_steps": phantom_steps, "phantom_damping": phantom_damping}),
        Mode("jfb", "jfb", {}),
        Mode("unroll", "unroll", {}),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.backward_modes",
        description="Compare gradient modes of implicit.fixed_point against the exact gradient.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--problems", nargs="+", default=list(DEFAULT_PROBLEMS), metavar="NAME",
                        help="built-in problems or family prefixes")
    parser.add_argument("--problem", action="append", default=[], metavar="MODULE:FUNCTION",
                        help="add a user problem (see benchmarks.compare_solvers --help)")
    parser.add_argument("--dims", nargs="+", type=int, default=list(DEFAULT_DIMS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--solver", default="broyden", help="forward solver (registry name)")
    parser.add_argument("--tol", type=float, default=1e-5,
                        help="forward and backward per-sample relative tolerance")
    parser.add_argument("--max-iter", type=int, default=500,
                        help="forward and backward iteration limit (also unroll's length)")
    parser.add_argument("--phantom-steps", type=int, default=5)
    parser.add_argument("--phantom-damping", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per mode")
    parser.add_argument("--budget", type=float, default=3.0,
                        help="stop timing a mode after this many seconds (>= 1 call)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="PATH")
    parser.add_argument("--csv", default=None, metavar="PATH")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {', '.join(QUICK_PROBLEMS)} at d = {QUICK_DIMS[0]}, "
                        f"batch {QUICK_BATCH}, max 200 iterations, 1 timed call, XLA backend "
                        "optimisation off (timings not representative)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run_problem(
    problem: Problem, mode_list: list[Mode], args: argparse.Namespace, repeats: int,
    on_step: Callable[[], None],
) -> list[dict[str, Any]]:
    """Every mode on ``problem``: rows of the table."""
    from implicit import fixed_point

    options_xla = timing.FAST_COMPILE if args.quick else None
    ref = reference_lib.compute(problem, args.seed, options_xla)
    options = {"max_iter": args.max_iter, "tol": args.tol, "stop_mode": "rel", "batch_axis": 0}
    candidates = {}
    for mode in mode_list:
        def solution(z0: Any, *a: Any, mode: Mode = mode) -> Any:
            return fixed_point(problem.f, z0, *a, solver=args.solver, solver_options=options,
                               backward=mode.backward, **mode.kwargs).value

        candidates[mode.label] = (loss_and_grad(problem, solution, ref.cotangent),
                                  (problem.z0, *problem.args))
    outcomes = measure(candidates, repeats, args.budget, on_step, options_xla)
    rows = []
    for mode in mode_list:
        outcome = outcomes[mode.label]
        row: dict[str, Any] = {
            "problem": problem.name, "dim": problem.dim, "batch": problem.batch,
            "mode": mode.label, "backward": mode.backward,
            "backward_solver": mode.kwargs.get("backward_solver"), "status": "ok", "note": None,
        }
        if outcome.error:
            row.update(status="error", note=outcome.error)
        else:
            _, grads = outcome.output
            memory = outcome.memory or {}
            row.update(
                cosine=reference_lib.cosine_similarity(grads, ref.grads),
                grad_rel_error=reference_lib.relative_error(grads, ref.grads),
                forward_backward_s=outcome.median_s, times=outcome.seconds,
                peak_bytes=memory.get("peak"), temp_bytes=memory.get("temporaries"),
                memory=memory or None,
            )
            if outcome.warnings:
                row["note"] = "; ".join(outcome.warnings)
        rows.append(row)
    base = next((r for r in rows if r["mode"] == f"implicit[{args.solver}]"), None)
    for row in rows:
        if base and base.get("forward_backward_s") and row.get("forward_backward_s"):
            row["vs_implicit"] = row["forward_backward_s"] / base["forward_backward_s"]
    return rows


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"Gradient modes of implicit.fixed_point; forward solver {s['solver']} at per-sample "
        f"relative tolerance {s['tol']:g} (max {s['max_iter']} iterations), batch {s['batch']}, "
        f"float32; exact gradient: float64 reference; {report.machine_line(result['machine'])}.",
        "",
        report.markdown_table(result["rows"], COLUMNS),
    ]
    notes = result["notes"] + [f"`{r['problem']}` d={r['dim']} {r['mode']}: {r['note']}"
                               for r in result["rows"] if r.get("note")]
    if notes:
        lines += ["", "Notes:", *[f"- {n}" for n in notes]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the comparison described by the parsed ``args``; returns the result record."""
    quiet_jaxopt()
    from tqdm import tqdm

    start = time.perf_counter()
    if args.quick:
        names = args.problems if args.problems != list(DEFAULT_PROBLEMS) else QUICK_PROBLEMS
        dims = QUICK_DIMS if args.dims == list(DEFAULT_DIMS) else args.dims
        batch = QUICK_BATCH if args.batch == 32 else args.batch
        args.max_iter = min(args.max_iter, 200)
        repeats = 1
    else:
        names, dims, batch, repeats = args.problems, args.dims, args.batch, args.repeats
    args.batch = batch
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    missing = implicit_missing()
    problems: list[Problem] = []
    if missing:
        notes.append(f"nothing measured: {missing}")
    else:
        for name in problems_lib.select(names):
            sizes = dims[:1] if name in problems_lib.FIXED_SIZE else dims
            for dim in sizes:
                try:
                    problems.append(problems_lib.build(name, dim, batch, args.seed))
                except problems_lib.ProblemUnavailable as why:
                    notes.append(f"problem `{name}` skipped: {why}")
                    break
        problems += [problems_lib.user_problem(spec) for spec in args.problem]
    mode_list = modes(args.solver, args.phantom_steps, args.phantom_damping)
    with tqdm(total=len(problems) * len(mode_list), desc="backward_modes", file=sys.stderr,
              unit="mode", disable=args.no_progress, leave=False) as progress:
        for problem in problems:
            progress.set_postfix_str(f"{problem.name} d={problem.dim}")
            rows += run_problem(problem, mode_list, args, repeats, lambda: progress.update(1))
    return {
        "settings": {"solver": args.solver, "tol": args.tol, "max_iter": args.max_iter,
                     "batch": batch, "dims": list(dims), "repeats": repeats,
                     "phantom_steps": args.phantom_steps,
                     "phantom_damping": args.phantom_damping,
                     "problems": [p.name for p in problems]},
        "machine": report.machine(),
        "modes": [m.label for m in mode_list],
        "rows": rows,
        "notes": notes,
        "seconds": time.perf_counter() - start,
    }


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Command-line entry point; prints the markdown report and returns the result record."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch < 1 or args.max_iter < 1 or args.repeats < 1 or not args.tol > 0:
        parser.error("--batch, --max-iter and --repeats must be >= 1 and --tol > 0")
    result = run(args)
    report.emit(result, render(result), args.json, args.csv, CSV_KEYS)
    return result


if __name__ == "__main__":
    main()
