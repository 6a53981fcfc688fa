"""Gradient modes side by side: implicit (per backward solver, and with a fallback) vs
phantom vs JFB vs unroll vs reversible.

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
* ``unroll`` — backpropagation through all ``--max-iter`` solver iterations (fixed length);
* ``implicit+fallback`` — the implicit gradient (adjoint solved by the forward solver) whose
  samples with an adjoint solve that misses its tolerance fall back to the phantom gradient
  (``Implicit(fallback=...)``);
* ``reversible`` — the exact gradient of the reversible iteration (which then is the forward
  solver, with the same stopping rule), rebuilt backwards in constant memory.

Columns: cosine similarity and relative error of the gradient against the exact one (the
float64 reference of :mod:`benchmarks.reference`), median forward+backward time (after a
warm-up, round-robin, blocked on), its ratio to ``implicit[<solver>]``, the peak and
temporary memory of the compiled forward+backward (XLA's memory analysis), and for the
fallback the share of samples whose gradient fell back.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

import solvers
from benchmarks import cli, output
from benchmarks import reference as reference_lib
from benchmarks.problems import Problem
from benchmarks.reference import loss_and_grad
from benchmarks.timing import measure
from implicit import (
    JFB,
    Implicit,
    Mode,
    Phantom,
    Reversible,
    SolveReport,
    Unroll,
    backward_solvers,
    fixed_point,
)

DEFAULTS = cli.Defaults(
    problems=("gauss", "slow-modes-0.99", "orthogonal", "noncontractive"), dims=(256,),
    batch=32, tol=1e-5, max_iter=500, repeats=3,
    quick_problems=("slow-modes-0.99",), quick_dims=(32,), quick_batch=4, quick_max_iter=200,
)

COLUMNS = (
    output.Column("problem", "problem", align="left"),
    output.Column("dim", "d", output.fmt_int),
    output.Column("mode", "mode", align="left"),
    output.Column("cosine", "cos sim", output.fmt_cos),
    output.Column("grad_rel_error", "grad err", output.fmt_sci),
    output.Column("forward_backward_s", "fwd+bwd ms", output.fmt_ms),
    output.Column("vs_implicit", "× implicit", output.fmt_ratio),
    output.Column("peak_bytes", "peak MiB", output.fmt_mib),
    output.Column("temp_bytes", "temp MiB", output.fmt_mib),
    output.Column("fell_back", "fell back", output.fmt_percent),
)
CSV_KEYS = (
    "problem", "dim", "batch", "mode", "backward", "backward_solver", "status", "cosine",
    "grad_rel_error", "forward_backward_s", "vs_implicit", "peak_bytes", "temp_bytes",
    "fell_back", "note",
)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One gradient mode under test: a table label, the mode value, and the list its
    backward solves report to (a mode with a fallback)."""

    label: str
    mode: Mode
    reports: Optional[list] = dataclasses.field(default=None, compare=False)


def candidates(phantom: Phantom) -> list[Candidate]:
    """``implicit[...]`` for every registered and Krylov backward solver, then the others."""
    implicit = [Candidate(f"implicit[{name}]", Implicit(name)) for name in backward_solvers()]
    reports: list[SolveReport] = []
    return implicit + [
        Candidate(f"phantom[k={phantom.steps}, λ={phantom.damping:g}]", phantom),
        Candidate("jfb", JFB()),
        Candidate("unroll", Unroll()),
        Candidate("implicit+fallback", Implicit(fallback=phantom, monitor=reports.append),
                  reports),
        Candidate("reversible", Reversible()),
    ]


def fallback_share(reports: list[SolveReport]) -> Optional[float]:
    """The share of systems whose derivative fell back, over ``reports``."""
    flags = [np.ravel(r.fell_back) for r in reports if r.fell_back is not None]
    return float(np.mean(np.concatenate(flags))) if flags else None


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("python -m benchmarks.backward_modes",
                        "Compare gradient modes of implicit.fixed_point against the exact gradient.",
                        DEFAULTS)
    parser.add_argument("--solver", default="broyden", help="forward solver (registry name)")
    parser.add_argument("--phantom-steps", type=int, default=5)
    parser.add_argument("--phantom-damping", type=float, default=0.5)
    return parser


@dataclasses.dataclass(frozen=True)
class Config:
    """One run of the comparison: the shared settings, the forward solver, the phantom mode."""

    common: cli.Common
    solver: str
    phantom: Phantom


def config_from_args(args: argparse.Namespace) -> Config:
    """The :class:`Config` of parsed flags; ``ValueError`` names a bad one."""
    return Config(cli.common(args, DEFAULTS), args.solver,
                  Phantom(args.phantom_steps, args.phantom_damping))


def run_problem(
    problem: Problem, modes: list[Candidate], config: Config, on_step: Callable[[], None],
) -> list[dict[str, Any]]:
    """Every mode on ``problem``: rows of the table."""
    common = config.common
    ref = reference_lib.compute(problem, common.seed, common.compiler_options)
    forward = solvers.get(config.solver, max_iter=common.max_iter, tol=common.tol,
                          stop_mode="rel", batch_axis=0)
    programs = {}
    for candidate in modes:
        if candidate.reports is not None:
            candidate.reports.clear()
        def solution(z0: Any, *a: Any, mode: Mode = candidate.mode) -> Any:
            return fixed_point(problem.f, z0, *a, solver=forward, backward=mode).value

        programs[candidate.label] = (loss_and_grad(problem, solution, ref.cotangent),
                                     (problem.z0, *problem.args))
    outcomes = measure(programs, common.repeats, common.budget, on_step, common.compiler_options)
    rows = []
    for candidate in modes:
        outcome = outcomes[candidate.label]
        mode = candidate.mode
        row: dict[str, Any] = {
            "problem": problem.name, "dim": problem.dim, "batch": problem.batch,
            "mode": candidate.label, "backward": mode.name,
            "backward_solver": getattr(getattr(mode, "solver", None), "name", None),
            "status": "ok", "note": None,
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
            if candidate.reports is not None:
                jax.effects_barrier()
                row["fell_back"] = fallback_share(candidate.reports)
        rows.append(row)
    base = next((r for r in rows if r["mode"] == f"implicit[{config.solver}]"), None)
    for row in rows:
        if base and base.get("forward_backward_s") and row.get("forward_backward_s"):
            row["vs_implicit"] = row["forward_backward_s"] / base["forward_backward_s"]
    return rows


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"Gradient modes of implicit.fixed_point; forward solver {s['solver']} at per-sample "
        f"relative tolerance {s['tol']:g} (max {s['max_iter']} iterations), batch {s['batch']}, "
        f"float32; exact gradient: float64 reference; {output.machine_line(result['machine'])}.",
        "",
        output.markdown_table(result["rows"], COLUMNS),
    ]
    notes = result["notes"] + [f"`{r['problem']}` d={r['dim']} {r['mode']}: {r['note']}"
                               for r in result["rows"] if r.get("note")]
    if notes:
        lines += ["", "Notes:", *[f"- {n}" for n in notes]]
    return "\n".join(lines)


def run(config: Config) -> dict[str, Any]:
    """Run the comparison described by ``config``; returns the result record."""
    from tqdm import tqdm

    start = time.perf_counter()
    common = config.common
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    problems = cli.build_problems(common, notes)
    modes = candidates(config.phantom)
    with tqdm(total=len(problems) * len(modes), desc="backward_modes", file=sys.stderr,
              unit="mode", disable=not common.progress, leave=False) as progress:
        for problem in problems:
            progress.set_postfix_str(f"{problem.name} d={problem.dim}")
            rows += run_problem(problem, modes, config, lambda: progress.update(1))
    return {
        "settings": {"solver": config.solver, "tol": common.tol, "max_iter": common.max_iter,
                     "batch": common.batch, "dims": list(common.dims),
                     "repeats": common.repeats, "phantom_steps": config.phantom.steps,
                     "phantom_damping": config.phantom.damping,
                     "problems": [p.name for p in problems]},
        "machine": output.machine(),
        "modes": [c.label for c in modes],
        "rows": rows,
        "notes": notes,
        "seconds": time.perf_counter() - start,
    }


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Command-line entry point; prints the markdown report and returns the result record."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    result = run(config)
    output.emit(result, render(result), config.common.json, config.common.csv, CSV_KEYS)
    return result


if __name__ == "__main__":
    main()
