"""How low the ``overhead`` column of :mod:`benchmarks.compare_solvers` can go on this machine.

``compare_solvers`` reports ``overhead = solve time / (n t_f)`` for a solve that evaluates
``f`` ``n`` times, where ``t_f`` is one evaluation inside a compiled loop. Part of a solve's
time is out of any solver's hands. This benchmark times it side by side with the solves
(round-robin, medians, in one process) and turns it into floors under the overhead:

* **call**: a compiled call costs more than its evaluations. ``t_call = T(loop of one
  evaluation) − t_f`` (thread-pool wake-up, cold caches, dispatch) is paid once per solve, so
  ``overhead ≥ 1 + t_call / (n t_f)`` for a solve whose loop cost nothing at all;
* **read**: a limited-memory quasi-Newton iteration must apply its stored terms, a
  ``(batch, 2, slots, size)`` buffer for Broyden's ``J⁻¹ ≈ −I + Σ uᵢ vᵢᴴ``. ``t_read`` is
  one read of it, ``U (Vᴴ f(z))`` after each evaluation in a loop, minus ``t_f``: the least
  that any such iteration reads. Broyden's floor adds ``t_read`` of the buffer it has at
  each iteration (``initial_history`` slots, then ``history``) to the call floor;
* **passes**: the same with the two batched products our Broyden does per iteration
  (``Uᴴ Δz, Vᴴ g`` then ``V (Uᴴ Δz), U (Vᴴ g)``): what its algebra costs before any
  elementwise work.

The table also gives the page faults per solve (``getrusage``): XLA:CPU allocates a
program's temporaries at each call, and glibc maps an allocation above its mmap threshold
(at most 32 MiB) afresh each time, so every page the solve touches there faults again.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import solvers
from benchmarks import cli, output, timing
from benchmarks.problems import Problem
from solvers.flat import flat_view
from solvers.types import PyTree

SOLVERS = ("fixed_point", "broyden")
DEFAULTS = cli.SOLVER_DEFAULTS

COLUMNS = [
    output.Column("problem", "problem", align="left"),
    output.Column("dim", "d", output.fmt_int),
    output.Column("solver", "solver", align="left"),
    output.Column("iterations", "iters", output.fmt_int),
    output.Column("fevals", "f-evals", output.fmt_int),
    output.Column("f_us", "f µs", lambda v: f"{v:.0f}"),
    output.Column("call_us", "call µs", lambda v: f"{v:.0f}"),
    output.Column("overhead", "overhead", output.fmt_ratio),
    output.Column("floor_call", "floor: call", output.fmt_ratio),
    output.Column("floor_read", "floor: call + read", output.fmt_ratio),
    output.Column("floor_passes", "floor: call + passes", output.fmt_ratio),
    output.Column("faulted_bytes", "faulted MiB/call", output.fmt_mib),
    output.Column("temp_bytes", "temp MiB", output.fmt_mib),
]


def read_loop(f: Callable[..., PyTree], passes: int) -> Callable[..., Any]:
    """``loop(calls, z, terms, *args)``: ``calls`` times ``z ← f(z)``, then a read of the
    terms at ``g = f(z)``. With ``passes=1``, ``terms = (u, v)``, each ``(batch, slots,
    size)``, read once: ``u (vᴴ g)``. With ``passes=2``, ``terms`` is Broyden's
    ``(batch, 2, slots, size)`` buffer, read by its two batched products. The result is
    carried, so no read is skipped, and each read waits for its ``f``."""

    def read(terms: Any, g: jax.Array) -> jax.Array:
        if passes == 1:
            u, v = terms
            return jnp.einsum("bm,bmn->bn", jnp.einsum("bmn,bn->bm", v, g), u)[:, None]
        coeff = jnp.einsum("bkmn,bkn->bkm", terms, jnp.stack([g, g], axis=1))
        return jnp.einsum("bkm,bkmn->bkn", coeff[:, ::-1], terms)

    def loop(calls: jax.Array, z: PyTree, terms: Any, *args: Any) -> tuple:
        view = flat_view(z, batch_axis=0)

        def body(_: Any, carry: tuple) -> tuple:
            fz = f(carry[0], *args)
            return fz, read(terms, view.to_matrix(fz))

        out = jnp.zeros((view.batch, passes, view.size), view.dtype)
        return lax.fori_loop(0, calls, body, (z, out))

    return loop


def faulted_bytes(run: Callable[[], Any], calls: int = 5) -> float:
    """Bytes of minor page faults per call of ``run`` (warm it up first: a first call may
    fault in what later calls reuse)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        run()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return faults * resource.getpagesize() / calls


def buffer_stages(broyden: solvers.Solver, size: int, iterations: int) -> dict[int, int]:
    """``{slots: iterations}``: how many of Broyden's iterations run with each buffer size."""
    first, full = broyden.method.slots(size, broyden.stopping)
    early = min(iterations, first)
    stages = {first: early}
    if iterations > early:
        stages[full] = stages.get(full, 0) + iterations - early
    return stages


def build_solvers(
    common: cli.Common, solver_options: Mapping[str, Mapping[str, Any]]
) -> dict[str, solvers.Solver]:
    """The measured solvers, as ``compare_solvers`` runs them, with ``solver_options`` (by
    solver name) on top; an option for another solver, or a bad one, raises ``ValueError``
    or ``TypeError`` naming it."""
    unknown = sorted(set(solver_options) - set(SOLVERS))
    if unknown:
        raise ValueError(f"--solver-option for {', '.join(unknown)}: this benchmark measures "
                         f"only {', '.join(SOLVERS)}")
    return {
        name: solvers.get(name, tol=common.tol, max_iter=common.max_iter, stop_mode="rel",
                          batch_axis=0).replace(**solver_options.get(name, {}))
        for name in SOLVERS
    }


def run_problem(
    problem: Problem, common: cli.Common, solves: Mapping[str, solvers.Solver],
    on_step: Callable[[], None] = lambda: None,
) -> list[dict[str, Any]]:
    """The rows of one problem: each solver's overhead beside the floors under it."""
    broyden = solves["broyden"]
    view = flat_view(problem.z0, batch_axis=0)
    batch, size = view.batch, view.size
    calls = timing.f_loop_calls(problem.f, problem.z0, problem.args,
                                compiler_options=common.compiler_options)
    n = jnp.asarray(calls, jnp.int32)
    candidates: dict[str, tuple[Callable[..., Any], tuple]] = {
        name: (lambda z0, *a, solve=solve: solve(problem.f, z0, *a), (problem.z0, *problem.args))
        for name, solve in solves.items()
    }
    candidates["f"] = (timing.f_loop(problem.f), (n, problem.z0, *problem.args))
    candidates["call"] = (timing.f_loop(problem.f),
                          (jnp.asarray(1, jnp.int32), problem.z0, *problem.args))
    key = jax.random.key(common.seed)
    for slots in sorted(buffer_stages(broyden, size, common.max_iter)):
        terms = 1e-3 * jax.random.normal(key, (batch, 2, slots, size), view.dtype)
        for passes, given in ((1, (terms[:, 0], terms[:, 1])), (2, terms)):
            candidates[f"read{passes}:{slots}"] = (
                read_loop(problem.f, passes), (n, problem.z0, given, *problem.args))
    compiled = {name: timing.compile_fn(fn, *args, compiler_options=common.compiler_options)
                for name, (fn, args) in candidates.items()}
    # The loops of f start at Broyden's solution (as compare_solvers' start at z*), so
    # they run where the solves end, never on overflowing iterates.
    z_star = compiled["broyden"].run().value
    for name, c in compiled.items():
        if name not in solves:
            c.args = (c.args[0], z_star, *c.args[2:])
    seconds = {name: timing.median(t)
               for name, t in timing.round_robin(compiled, common.repeats, common.budget).items()}
    on_step()
    t_f = seconds["f"] / calls
    t_call = max(seconds["call"] - t_f, 0.0)
    rows = []
    for name in SOLVERS:
        stats = compiled[name].run().stats
        iterations, fevals = int(np.max(stats.steps)), int(np.max(stats.fevals))
        row = {
            "problem": problem.name, "dim": problem.dim, "solver": name,
            "iterations": iterations, "fevals": fevals, "f_us": 1e6 * t_f,
            "call_us": 1e6 * t_call, "overhead": seconds[name] / (fevals * t_f),
            "floor_call": 1 + t_call / (fevals * t_f),
            "faulted_bytes": faulted_bytes(compiled[name].run),
            "temp_bytes": (compiled[name].memory() or {}).get("temporaries"),
        }
        if name == "broyden":
            for passes, column in ((1, "floor_read"), (2, "floor_passes")):
                reads = sum(
                    count * max(seconds[f"read{passes}:{slots}"] / calls - t_f, 0.0)
                    for slots, count in buffer_stages(broyden, size, iterations).items())
                row[column] = row["floor_call"] + reads / (fevals * t_f)
        rows.append(row)
    return rows


def medians(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per size: the median overhead of each solver over the problems, beside its floors."""
    lines = []
    for dim in sorted({r["dim"] for r in rows}):
        for name in SOLVERS:
            mine = [r for r in rows if r["dim"] == dim and r["solver"] == name]
            parts = [f"{header} {statistics.median(r[key] for r in mine):.2f}"
                     for key, header in (("overhead", "overhead"), ("floor_call", "call floor"),
                                         ("floor_read", "call + read floor"),
                                         ("floor_passes", "call + passes floor"))
                     if all(r.get(key) is not None for r in mine)]
            problems = ", ".join(r["problem"] for r in mine)
            lines.append(f"d={dim} {name} (median over {problems}): {', '.join(parts)}")
    return lines


def run(common: cli.Common, solves: Mapping[str, solvers.Solver]) -> dict[str, Any]:
    """Measure every selected problem with ``solves`` (:func:`build_solvers`); returns the
    result record (also the JSON)."""
    from tqdm import tqdm

    start = time.perf_counter()
    notes: list[str] = []
    problems = cli.build_problems(common, notes)
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(problems), desc="overhead_floor", file=sys.stderr, unit="problem",
              disable=not common.progress, leave=False) as progress:
        for problem in problems:
            progress.set_postfix_str(f"{problem.name} d={problem.dim}")
            rows += run_problem(problem, common, solves, lambda: progress.update(1))
    return {
        "settings": {"tol": common.tol, "max_iter": common.max_iter, "batch": common.batch,
                     "dims": list(common.dims), "repeats": common.repeats,
                     "problems": [p.name for p in problems],
                     "solvers": [repr(solve) for solve in solves.values()]},
        "machine": output.machine(),
        "rows": rows,
        "medians": medians(rows),
        "notes": notes,
        "seconds": time.perf_counter() - start,
    }


def render(result: Mapping[str, Any]) -> str:
    """The markdown report: settings, table, medians per size and notes."""
    s = result["settings"]
    lines = [
        f"Overhead floors at per-sample relative tolerance {s['tol']:g} (max {s['max_iter']} "
        f"iterations), batch {s['batch']}, float32; {output.machine_line(result['machine'])}.",
        "",
        f"Solvers: {'; '.join(s['solvers'])}.",
        "",
        output.markdown_table(result["rows"], COLUMNS),
        "",
        *[f"- {line}" for line in result["medians"]],
    ]
    if result["notes"]:
        lines += ["", "Notes:", *[f"- {n}" for n in result["notes"]]]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("python -m benchmarks.overhead_floor",
                        "The floors under the overhead of fixed_point and broyden on this machine.",
                        DEFAULTS)
    parser.add_argument("--solver-option", action="append", default=[],
                        metavar="NAME:KEY=VALUE",
                        help="an option for fixed_point or broyden, e.g. broyden:history=8")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Command-line entry point; prints the markdown report and returns the result record."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        common = cli.common(args, DEFAULTS)
        solves = build_solvers(
            common, cli.parse_solver_options(args.solver_option))
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    result = run(common, solves)
    output.emit(result, render(result), common.json, common.csv, [c.key for c in COLUMNS])
    return result


if __name__ == "__main__":
    main()
