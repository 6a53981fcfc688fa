"""Solver against solver on fixed-point problems, peers side by side, in one process.

    python -m benchmarks.compare_solvers                 # the full suite (several minutes)
    python -m benchmarks.compare_solvers --quick         # under a minute: a smoke run
    python -m benchmarks.compare_solvers --problems slow-modes --dims 1024 --json out.json
    python -m benchmarks.compare_solvers --problem mypkg.layers:make_problem
    python -m benchmarks.compare_solvers --solvers broyden --no-peers \
        --variant broyden_full=broyden --solver-option broyden_full:initial_history=0

For every problem (:mod:`benchmarks.problems`) at every size and every contender
(:mod:`benchmarks.contenders`: each registered solver, then jaxopt's and optimistix's
solvers where installed), all asked for the per-sample relative tolerance ``--tol``
within ``--max-iter`` iterations, the table reports

* ``iters``, ``f-evals``: the most any sample took (the batch runs as long as its
  slowest sample); the means are in the JSON;
* ``fwd ms``: median forward solve time after a warm-up, output blocked on, timed
  round-robin with the other contenders; ``× broyden``: that time over broyden's;
* ``fwd+bwd ms``: median time of the loss ``L = Σ c ⊙ z*`` and its gradient with respect
  to the problem's parameters (registered solvers: ``implicit.fixed_point``,
  ``backward="implicit"``; peers: their own implicit differentiation);
* ``max rel res``: ``max_i ‖f(z)_i − z_i‖ / ‖f(z)_i‖`` re-measured here in one way for all
  (``nan`` if any sample is not finite); ``conv``: samples within ``--tol``;
* ``grad err``: ``‖g − g_ref‖ / ‖g_ref‖`` against a float64 reference
  (:mod:`benchmarks.reference`);
* ``overhead``: forward time / (f-evals × time of one f evaluation on the batch), the
  latter measured inside a jitted loop of evaluations (:func:`benchmarks.timing.f_loop`),
  timed round-robin with the solvers: 1.0 means the solver costs nothing beyond its
  evaluations of ``f``;
* ``peak MiB``: XLA's memory analysis of the compiled forward+backward.

Outputs: the markdown table on stdout, ``--json``, ``--csv``, and one PNG per problem
and size (residual against iteration and against time) under ``--plots``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import solvers
from benchmarks import cli, output, timing
from benchmarks import contenders as contenders_lib
from benchmarks import reference as reference_lib
from benchmarks.problems import Problem
from benchmarks.reference import loss_and_grad, max_or_nan, relative_residuals
from benchmarks.timing import measure

DEFAULTS = cli.SOLVER_DEFAULTS
BASELINE = "broyden"
F_LOOP = "<f loop>"  # the candidate that times evaluations of f alone

COLUMNS = (
    output.Column("problem", "problem", align="left"),
    output.Column("dim", "d", output.fmt_int),
    output.Column("solver", "solver", align="left"),
    output.Column("iterations", "iters", output.fmt_int),
    output.Column("fevals", "f-evals", output.fmt_int),
    output.Column("forward_s", "fwd ms", output.fmt_ms),
    output.Column("vs_baseline", f"× {BASELINE}", output.fmt_ratio),
    output.Column("forward_backward_s", "fwd+bwd ms", output.fmt_ms),
    output.Column("max_rel_residual", "max rel res", output.fmt_sci),
    output.Column("converged_text", "conv"),
    output.Column("stopped", "stopped (solvers.Reason)", align="left"),
    output.Column("grad_rel_error", "grad err", output.fmt_sci),
    output.Column("overhead", "overhead", output.fmt_ratio),
    output.Column("peak_bytes", "peak MiB", output.fmt_mib),
)
CSV_KEYS = (
    "problem", "family", "dim", "batch", "solver", "kind", "status", "iterations",
    "iterations_mean", "fevals", "fevals_mean", "forward_s", "vs_baseline",
    "forward_backward_s", "max_rel_residual", "converged", "nonfinite", "grad_rel_error",
    "overhead", "f_call_s", "peak_bytes", "forward_peak_bytes", "note",
)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("python -m benchmarks.compare_solvers",
                        "Compare fixed-point solvers (registered ones and peers) side by side.",
                        DEFAULTS)
    parser.add_argument("--solvers", nargs="+", default=None, metavar="NAME",
                        help="contenders to run (registered names and peer names); default: all")
    parser.add_argument("--no-peers", action="store_true", help="registered solvers only")
    parser.add_argument("--solver-option", action="append", default=[],
                        metavar="NAME:KEY=VALUE",
                        help="an option for a registered solver or a --variant label, e.g. "
                        "broyden:history=60")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=SOLVER",
                        help="one more row of a registered solver under its own label, for its "
                        "own --solver-option LABEL:KEY=VALUE (the same solver with other "
                        "options, timed side by side), e.g. broyden_full=broyden")
    parser.add_argument("--dense-max-dim", type=int, default=256,
                        help="largest d for the dense-Jacobian peers (optx.Newton, optx.Chord)")
    parser.add_argument("--dense-grad-max-dim", type=int, default=2048,
                        help="largest d for optimistix's dense implicit gradient")
    parser.add_argument("--no-grad", action="store_true",
                        help="skip forward+backward time, gradient error and memory")
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="the transformer problem from this models checkpoint")
    parser.add_argument("--plots", default="runs/compare_solvers", metavar="DIR",
                        help="folder for the residual plots (one PNG per problem and size)")
    parser.add_argument("--no-plots", action="store_true", help="draw no plots")
    parser.add_argument("--no-peer-traces", action="store_true",
                        help="plot registered solvers only (peer traces need one extra run each; "
                        "off with --quick)")
    return parser


@dataclasses.dataclass(frozen=True)
class Config:
    """One run of the comparison: the shared settings and this benchmark's own."""

    common: cli.Common
    settings: contenders_lib.Settings
    solvers: Optional[tuple[str, ...]]
    variants: tuple[str, ...]
    peers: bool
    grad: bool
    checkpoint: Optional[str]
    plots: Optional[str]
    peer_traces: bool


def config_from_args(args: argparse.Namespace) -> Config:
    common = cli.common(args, DEFAULTS)
    settings = contenders_lib.Settings(
        tol=common.tol, max_iter=common.max_iter, dense_max_dim=args.dense_max_dim,
        dense_grad_max_dim=args.dense_grad_max_dim,
        solver_options=cli.parse_solver_options(args.solver_option),
    )
    return Config(
        common=common, settings=settings,
        solvers=tuple(args.solvers) if args.solvers else None, variants=tuple(args.variant),
        peers=not args.no_peers,
        grad=not args.no_grad, checkpoint=args.checkpoint,
        plots=None if args.no_plots else args.plots,
        peer_traces=not (args.no_peer_traces or common.quick),
    )


def stopped_text(reason: Any) -> str:
    """How many samples stopped for each :class:`solvers.Reason`, e.g. ``"30 converged,
    2 stalled"`` (the solver's own verdict, on its own residual)."""
    codes = _per_sample(reason)
    return ", ".join(f"{int(np.sum(codes == r))} {r.name.lower()}"
                     for r in solvers.Reason if np.any(codes == r))


def _per_sample(values: Any) -> np.ndarray:
    return np.asarray(values).reshape(-1)


def run_problem(
    problem: Problem,
    contenders: list[contenders_lib.Contender],
    config: Config,
    progress: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Measure every contender on ``problem``; returns ``(rows, plot curves, notes)``."""
    settings = config.settings
    notes: list[str] = []
    ref = reference_lib.compute(problem, config.common.seed, config.common.compiler_options)
    if max(ref.forward_residual, ref.adjoint_residual) > 1e-9:
        notes.append(
            f"`{problem.name}` d={problem.dim}: the float64 reference reached only "
            f"{ref.forward_residual:.1e} (forward) / {ref.adjoint_residual:.1e} (adjoint)"
        )
    # Time f from z* (cast back to the problem's dtype): iterating f there stays bounded
    # even for the non-contractive problems, so no inf or denormal skews the timing.
    z_star = jax.tree_util.tree_map(lambda r, z: np.asarray(r, np.asarray(z).dtype),
                                    ref.value, problem.z0)
    f_calls = timing.f_loop_calls(problem.f, z_star, problem.args,
                                  compiler_options=config.common.compiler_options)
    residuals = relative_residuals(problem)
    call_args = (problem.z0, *problem.args)

    rows: dict[str, dict[str, Any]] = {}
    forward_fns: dict[str, tuple] = {}
    grad_fns: dict[str, tuple] = {}
    for c in contenders:
        row = rows[c.name] = {
            "problem": problem.name, "family": problem.family, "dim": problem.dim,
            "batch": problem.batch, "solver": c.name, "kind": c.kind, "status": "ok",
            "note": None,
        }
        reason = c.skip_reason(problem, settings)
        if reason:
            row.update(status="skipped", note=reason)
            continue
        try:
            forward_fns[c.name] = (c.forward(problem, ref, settings), call_args)
            if config.grad:
                solution = c.solution(problem, ref, settings)
                if isinstance(solution, str):
                    row["note"] = f"no gradient: {solution}"
                else:
                    grad_fns[c.name] = (loss_and_grad(problem, solution, ref.cotangent),
                                        call_args)
        except Exception as err:  # noqa: BLE001 — a contender that cannot be built is a row note
            row.update(status="error", note=f"build failed: {err}")

    def tick() -> None:
        progress.update(1)

    # The f loop is timed round-robin with the solvers, so the overhead ratio compares
    # times taken under the same load.
    forward_fns[F_LOOP] = (timing.f_loop(problem.f),
                           (jnp.asarray(f_calls, jnp.int32), z_star, *problem.args))
    common = config.common
    forward = measure(forward_fns, common.repeats, common.budget, tick, common.compiler_options)
    f_call_s = timing.median(forward.pop(F_LOOP).seconds) / f_calls
    backward = measure(grad_fns, max(1, min(common.repeats, 3)), common.budget, tick,
                       common.compiler_options)

    for name, outcome in forward.items():
        row = rows[name]
        row["f_call_s"] = f_call_s
        if outcome.error:
            row.update(status="error", note=f"forward failed: {outcome.error}")
            continue
        out = outcome.output
        rel = np.asarray(residuals(out.value, problem.args), dtype=float)
        steps, fevals = _per_sample(out.steps), _per_sample(out.fevals)
        row.update(
            iterations=int(steps.max()), iterations_mean=float(steps.mean()),
            fevals=int(fevals.max()), fevals_mean=float(fevals.mean()),
            forward_s=outcome.median_s, forward_times=outcome.seconds,
            max_rel_residual=max_or_nan(rel),
            converged=int(np.sum(rel <= settings.tol)), nonfinite=int(np.sum(~np.isfinite(rel))),
            forward_peak_bytes=(outcome.memory or {}).get("peak"),
            compile_s=outcome.compile_s,
        )
        row["converged_text"] = f"{row['converged']}/{problem.batch}" + (
            f" ({row['nonfinite']} nan)" if row["nonfinite"] else "")
        if outcome.median_s is not None and fevals.max() > 0:
            row["overhead"] = outcome.median_s / (fevals.max() * f_call_s)
        if out.reason is not None:
            row["stopped"] = stopped_text(out.reason)
        if out.trace is not None:
            row["trace"] = np.max(np.asarray(out.trace), axis=0)[: int(steps.max()) + 1]
    for name, outcome in backward.items():
        row = rows[name]
        if outcome.error:
            row["note"] = _join(row.get("note"), f"gradient failed: {outcome.error}")
            continue
        _, grads = outcome.output
        row.update(
            forward_backward_s=outcome.median_s,
            grad_rel_error=reference_lib.relative_error(grads, ref.grads),
            peak_bytes=(outcome.memory or {}).get("peak"),
            memory=outcome.memory,
        )
        if outcome.warnings:
            row["note"] = _join(row.get("note"), "; ".join(outcome.warnings))

    baseline = rows.get(BASELINE, {}).get("forward_s")
    for row in rows.values():
        if baseline and row.get("forward_s"):
            row["vs_baseline"] = row["forward_s"] / baseline

    curves = _curves(problem, contenders, rows, ref, config, progress)
    return list(rows.values()), curves, notes


def _curves(
    problem: Problem, contenders: list[contenders_lib.Contender], rows: dict[str, dict],
    ref: reference_lib.Reference, config: Config, progress: Any,
) -> list[dict[str, Any]]:
    """Residual-vs-iteration curves: built-in traces, and recorded ones for peers if asked."""
    curves = []
    for c in contenders:
        row = rows[c.name]
        if row.get("forward_s") is None:
            continue
        trace = row.pop("trace", None)
        if trace is None and config.peer_traces and config.plots:
            steps = max(1, min(int(row["iterations"]), config.settings.max_iter))
            fn = c.trace(problem, ref, config.settings, steps)
            if fn is not None:
                try:
                    trace = np.max(np.asarray(jax.jit(fn)(problem.z0, *problem.args)), axis=0)
                except Exception as err:  # noqa: BLE001
                    row["note"] = _join(row.get("note"), f"trace failed: {err}")
        if trace is not None:
            iterations = max(int(row["iterations"]), 1)
            curves.append({
                "label": c.name, "residual": [float(x) for x in trace],
                "seconds_per_iteration": row["forward_s"] / iterations,
                "linestyle": "-" if c.kind == "registry" else "--",
            })
    return curves


def _join(a: Optional[str], b: str) -> str:
    return b if not a else f"{a}; {b}"


def checks(rows: Sequence[dict[str, Any]], tol: float) -> list[str]:
    """The issue targets, read off the rows (where the rows hold them)."""
    lines: list[str] = []

    def find(problem: str, dim: int, solver: str) -> Optional[dict]:
        for r in rows:
            if r["problem"] == problem and r["dim"] == dim and r["solver"] == solver:
                return r
        return None

    for r in rows:
        if r["solver"] != BASELINE or r["family"] != "slow-modes" or r.get("forward_s") is None:
            continue
        p, d = r["problem"], r["dim"]
        peers = [x for x in rows if x["problem"] == p and x["dim"] == d
                 and (x["kind"] == "peer" or x["solver"] == "jaxopt_broyden")
                 and x.get("forward_s") is not None]
        ok = r["converged"] == r["batch"]
        line = (f"{p} d={d}: broyden {1e3 * r['forward_s']:.1f} ms, {r['iterations']} iters, "
                f"overhead {r.get('overhead', float('nan')):.2f}, "
                f"{r['converged']}/{r['batch']} within tol")
        if peers:
            fastest = min(peers, key=lambda x: x["forward_s"])
            line += (f"; fastest peer {fastest['solver']} {1e3 * fastest['forward_s']:.1f} ms "
                     f"({fastest['converged']}/{fastest['batch']} within tol) → "
                     f"speed-up {fastest['forward_s'] / r['forward_s']:.2f}×")
            solved = [x for x in peers if x["converged"] == x["batch"]]
            if solved and min(solved, key=lambda x: x["forward_s"]) is not fastest:
                best = min(solved, key=lambda x: x["forward_s"])
                line += (f"; fastest peer with all samples within tol {best['solver']} "
                         f"{1e3 * best['forward_s']:.1f} ms → "
                         f"speed-up {best['forward_s'] / r['forward_s']:.2f}×")
            elif not solved:
                line += "; no peer brought all samples within tol"
        fp = find(p, d, "fixed_point")
        if fp is not None and fp.get("forward_s") is not None:
            line += (f"; vs fixed_point: iterations {r['iterations'] / max(fp['iterations'], 1):.2f}×,"
                     f" time {r['forward_s'] / fp['forward_s']:.2f}×")
        if not ok:
            line += " — NOT all samples converged"
        lines.append(line)
    return lines


def render(result: dict[str, Any]) -> str:
    """The markdown report: settings, table, checks and notes."""
    s = result["settings"]
    lines = [
        f"Solvers at per-sample relative tolerance {s['tol']:g} (max {s['max_iter']} iterations), "
        f"batch {s['batch']}, float32; {output.machine_line(result['machine'])}.",
        "",
        output.markdown_table([r for r in result["rows"] if r["status"] != "skipped"], COLUMNS),
    ]
    if result["checks"]:
        lines += ["", "Slow-modes summary (peers: the jaxopt and optimistix rows and jaxopt_broyden; "
                  "speed-up = peer time / broyden time, > 1 when broyden is faster):",
                  *[f"- {c}" for c in result["checks"]]]
    skipped: dict[tuple[str, str], list[str]] = {}
    for r in result["rows"]:
        if r["status"] == "skipped":
            reason = str(r["note"]).split(", skipped at d =")[0]
            skipped.setdefault((r["solver"], reason), []).append(f"{r['problem']} d={r['dim']}")
    row_notes = [f"{solver} not run on {', '.join(where)}: {reason}"
                 for (solver, reason), where in skipped.items()]
    row_notes += [f"`{r['problem']}` d={r['dim']} {r['solver']}: {r['note']}"
                  for r in result["rows"] if r.get("note") and r["status"] != "skipped"]
    notes = result["notes"] + row_notes
    if notes:
        lines += ["", "Notes:", *[f"- {n}" for n in notes]]
    return "\n".join(lines)


def run(config: Config) -> dict[str, Any]:
    """Run the suite described by ``config``; returns the result record (also the JSON)."""
    from tqdm import tqdm

    start = time.perf_counter()
    notes: list[str] = []
    every = contenders_lib.all_contenders(config.peers)
    contenders = contenders_lib.select(every, list(config.solvers or []))
    contenders += contenders_lib.variants(config.variants, [c.name for c in every])
    common = config.common
    problems = cli.build_problems(common, notes, config.checkpoint)
    rows: list[dict[str, Any]] = []
    plots: list[str] = []
    total = len(problems) * (len(contenders) * (2 if config.grad else 1) + 1)
    with tqdm(total=total, desc="compare_solvers", file=sys.stderr, unit="run",
              disable=not common.progress, leave=False) as progress:
        for problem in problems:
            progress.set_postfix_str(f"{problem.name} d={problem.dim}")
            problem_rows, curves, problem_notes = run_problem(
                problem, contenders, config, progress)
            rows += problem_rows
            notes += problem_notes
            if config.plots and curves:
                path = f"{config.plots}/{problem.name}_d{problem.dim}.png"
                output.plot_traces(
                    path, f"{problem.name}, d = {problem.dim}, batch {problem.batch}",
                    curves, config.settings.tol)
                plots.append(path)
    for row in rows:
        row.setdefault("converged_text", None)
    return {
        "settings": {
            "tol": config.settings.tol, "max_iter": config.settings.max_iter,
            "batch": common.batch, "dims": list(common.dims), "repeats": common.repeats,
            "dense_max_dim": config.settings.dense_max_dim,
            "dense_grad_max_dim": config.settings.dense_grad_max_dim,
            "solver_options": config.settings.solver_options, "grad": config.grad,
            "problems": [p.name for p in problems],
        },
        "machine": output.machine(),
        "solvers": [{"name": c.name, "kind": c.kind, "description": c.description}
                    for c in contenders],
        "problems": [{"name": p.name, "dim": p.dim, "note": p.note} for p in problems],
        "rows": rows,
        "checks": checks(rows, config.settings.tol),
        "notes": notes,
        "plots": plots,
        "seconds": time.perf_counter() - start,
    }


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Command-line entry point; prints the markdown report and returns the result record."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as err:
        build_parser().error(str(err))
    try:
        result = run(config)
    except ValueError as err:  # bad problem specs and checkpoints: a usage error, not a trace
        build_parser().error(str(err))
    output.emit(result, render(result), config.common.json, config.common.csv, CSV_KEYS)
    return result


if __name__ == "__main__":
    main()
