"""The DEQ Transformer LM against explicit Transformers: by depth at equal steps, and against
the untied models a user would pick instead at equal wall-clock time.

    python -m benchmarks.deq_vs_explicit                 # both tables (about 15 minutes)
    python -m benchmarks.deq_vs_explicit --quick         # a smoke run (numbers not meaningful)
    python -m benchmarks.deq_vs_explicit --json out.json

**Depth (memory) table.** For every depth ``D`` the DEQ and the explicit weight-tied stack
share everything but how they use the block ``f(z, x)`` of :mod:`models.transformer`, so
they have exactly the same parameters:

* ``explicit``: ``zᵏ⁺¹ = f(zᵏ, x)`` for ``k < D`` with one set of weights, backpropagated
  layer by layer (its activations for all ``D`` layers are kept for the backward pass);
* ``deq``: ``z* = f(z*, x)`` found by the forward solver with at most ``D`` iterations
  (``max_iter = D``, the same forward compute budget) and differentiated implicitly (the
  adjoint solve also gets at most ``D`` iterations).

Both train side by side on the same batches (one step of each in turn, so load from other
processes falls on both alike) for ``--steps`` steps from the same initial parameters, every
other setting the default of ``python -m models.train``. ``mem ratio`` is DEQ peak /
explicit peak, from XLA's ``memory_analysis()`` of the compiled train step (``peak =
arguments + outputs + temporaries − aliased``). Like ``python -m models.train``, the program
compiles with XLA's memory-minimising CPU schedule (:mod:`models.xla_setup`) unless
``XLA_FLAGS`` already chooses a scheduler.

**Wall-clock table.** The DEQ with the defaults of ``python -m models.train`` against
standard untied Transformers (the same block, ``--layers`` separate layers, no fixed point):
each trains for ``--budget`` seconds of step time, the steps of all models interleaved
(always the one that has used the least time next), with a learning-rate schedule laid for
the steps it can take in that time (measured on ``--calibrate`` steps first). Columns:
steps taken, validation bits per byte, tokens per second, peak memory, and the DEQ's forward
``f``-evaluations and adjoint iterations (one VJP of ``f`` each) per step.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from typing import Any, Optional

import jax
import numpy as np

from benchmarks import output as report
from benchmarks.timing import FAST_COMPILE, median, memory_of
from models.config import TrainConfig, validate_config
from models.data import BatchSampler, eval_batches, load_corpus, split_corpus
from models.lm import deq_backward, make_model
from models.optim import learning_rate_schedule, make_optimizer
from models.sharding import make_mesh, replicate, shard_batch, to_host
from models.solve_metrics import BackwardLog, SolveWarnings
from models.step import init_state, make_eval_step, make_train_step, summarize_eval
from models.xla_setup import prefer_memory_schedule

DEFAULT_DEPTHS = (2, 4, 8, 16)
DEFAULT_LAYERS = (1, 2, 4)
QUICK = dict(d_model=16, num_heads=2, seq_len=16, batch_size=4, steps=3, eval_batches=1,
             warmup=1, depths=[2], layers=[1], budget=2.0, calibrate=0)


def _fmt(digits: int):
    return lambda v: f"{float(v):.{digits}f}"


DEPTH_COLUMNS = (
    report.Column("depth", "depth", report.fmt_int),
    report.Column("model", "model", align="left"),
    report.Column("params", "params", report.fmt_int),
    report.Column("valid_bpb", "valid bpb", _fmt(3)),
    report.Column("solver_steps", "fwd steps", _fmt(1)),
    report.Column("tokens_per_s", "tokens/s", lambda v: f"{float(v):,.0f}"),
    report.Column("peak_bytes", "peak MiB", report.fmt_mib),
    report.Column("temp_bytes", "temp MiB", report.fmt_mib),
    report.Column("memory_ratio", "mem ratio", report.fmt_ratio),
    report.Column("backward_misses", "bwd misses", report.fmt_int),
)
BUDGET_COLUMNS = (
    report.Column("model", "model", align="left"),
    report.Column("params", "params", report.fmt_int),
    report.Column("steps", "steps", report.fmt_int),
    report.Column("valid_bpb", "valid bpb", _fmt(3)),
    report.Column("tokens_per_s", "tokens/s", lambda v: f"{float(v):,.0f}"),
    report.Column("peak_bytes", "peak MiB", report.fmt_mib),
    report.Column("forward_fevals", "fwd f-evals/step", _fmt(1)),
    report.Column("backward_vjps", "bwd VJPs/step", _fmt(1)),
)


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.deq_vs_explicit",
        description="DEQ Transformer LM vs the explicit weight-tied stack at several depths "
        "(memory, equal steps), and vs untied Transformers at equal wall-clock time.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--depths", type=int, nargs="*", default=list(DEFAULT_DEPTHS),
                        help="explicit depth = DEQ forward (and adjoint) max_iter; none: skip")
    parser.add_argument("--steps", type=int, default=150, help="training steps per model (depths)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--layers", type=int, nargs="*", default=list(DEFAULT_LAYERS),
                        help="layers of the untied Transformers of the wall-clock table; none: skip")
    parser.add_argument("--budget", type=float, default=120.0,
                        help="seconds of training steps per model in the wall-clock table")
    parser.add_argument("--calibrate", type=int, default=8,
                        help="steps timed to size each model's schedule to the budget (0: "
                        "lay it for --steps instead)")
    parser.add_argument("--d-model", type=int, default=defaults.d_model)
    parser.add_argument("--num-heads", type=int, default=defaults.num_heads)
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--eval-batches", type=int, default=8,
                        help="validation batches for the bits per byte")
    parser.add_argument("--data", default=defaults.data, help="corpus (see models.train)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write JSON here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: depth 2, one layer, tiny model, a few steps, fast "
                        "compilation")
    parser.add_argument("--no-progress", action="store_true", help="no per-part messages")
    return parser


def _base(args: argparse.Namespace, steps: int) -> TrainConfig:
    return dataclasses.replace(
        TrainConfig(), d_model=args.d_model, num_heads=args.num_heads, seq_len=args.seq_len,
        batch_size=args.batch_size, steps=steps,
        warmup_steps=min(TrainConfig().warmup_steps, steps // 4), data=args.data,
        seed=args.seed, progress=False,
    )


class Candidate:
    """One model being trained: its compiled step, state and measurements."""

    def __init__(self, config: TrainConfig, mesh: Any, batch: jax.Array,
                 compiler_options: Optional[dict]) -> None:
        validate_config(config)
        self.config = config
        self.backward_log = BackwardLog()
        deq = config.model == "deq"
        model = make_model(config, backward=deq_backward(config, self.backward_log)
                           if deq else None)
        optimizer = make_optimizer(config)
        host_state = to_host(init_state(model, optimizer, config, compiler_options))
        self.params = sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(host_state.params))
        self.state = replicate(host_state, mesh)
        step = make_train_step(model, optimizer, learning_rate_schedule(config), config, mesh,
                               compiler_options)
        self.step = step.lower(self.state, batch).compile()
        self.memory = memory_of(self.step) or {}
        self.eval_step = make_eval_step(model, config, mesh, compiler_options)
        self.times: list[float] = []
        self.fevals: list[float] = []
        self.backward_vjps: list[float] = []
        self.backward_misses = 0

    def train_step(self, batch: jax.Array, warnings: SolveWarnings) -> None:
        start = time.perf_counter()
        seen = warnings.counts["backward"]
        self.state, metrics = self.step(self.state, batch)
        metrics = to_host(metrics)
        self.times.append(time.perf_counter() - start)
        self.fevals.append(float(metrics["solver_fevals"]))
        self.backward_vjps.append(self.backward_log.take().get("backward_steps", 0.0))
        self.backward_misses += warnings.counts["backward"] > seen

    def evaluate(self, valid: list, mesh: Any) -> dict[str, float]:
        return summarize_eval([
            to_host(self.eval_step(self.state.params, shard_batch(b, mesh))) for b in valid
        ])


def _depth_rows(args, mesh, sampler, valid, compiler_options) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    base = _base(args, args.steps)
    for depth in args.depths:
        start = time.perf_counter()
        first = shard_batch(sampler.batch(0), mesh)
        configs = {
            "deq": dataclasses.replace(base, model="deq", max_iter=depth,
                                       backward_max_iter=depth),
            "explicit": dataclasses.replace(base, model="explicit", depth=depth),
        }
        candidates = {name: Candidate(config, mesh, first, compiler_options)
                      for name, config in configs.items()}
        with SolveWarnings() as counter:
            for step in range(args.steps):
                batch = shard_batch(sampler.batch(step), mesh)
                for candidate in candidates.values():  # round-robin: load falls on both alike
                    candidate.train_step(batch, counter)
        explicit_peak = candidates["explicit"].memory.get("peak")
        for name, candidate in candidates.items():
            summary = candidate.evaluate(valid, mesh)
            timed = candidate.times[args.warmup:] or candidate.times
            peak = candidate.memory.get("peak")
            rows.append({
                "depth": depth, "model": name, "params": candidate.params,
                "valid_bpb": summary["bpb"], "solver_steps": summary["solver_steps"],
                "tokens_per_s": args.batch_size * args.seq_len / median(timed),
                "step_s": median(timed), "peak_bytes": peak,
                "temp_bytes": candidate.memory.get("temporaries"),
                "memory_ratio": (peak / explicit_peak) if peak and explicit_peak else None,
                "backward_misses": candidate.backward_misses if name == "deq" else None,
            })
        if not args.no_progress:
            print(f"depth {depth}: done in {time.perf_counter() - start:.0f}s", file=sys.stderr)
    return rows


def _budget_configs(args: argparse.Namespace, steps: int) -> dict[str, TrainConfig]:
    base = _base(args, steps)
    configs = {"deq": dataclasses.replace(base, model="deq")}
    for layers in args.layers:
        configs[f"untied-{layers}"] = dataclasses.replace(base, model="untied", depth=layers)
    return configs


def _step_seconds(config, args, mesh, sampler, counter, compiler_options) -> float:
    """The median time of a training step of ``config`` over ``--calibrate`` steps."""
    candidate = Candidate(config, mesh, shard_batch(sampler.batch(0), mesh), compiler_options)
    for step in range(args.calibrate + 1):
        candidate.train_step(shard_batch(sampler.batch(step), mesh), counter)
    return median(candidate.times[1:])


def _sized(config: TrainConfig, step_seconds: float, budget: float) -> TrainConfig:
    """``config`` with its schedule laid for the steps that fit in ``budget`` seconds."""
    steps = max(2, int(budget / step_seconds))
    return dataclasses.replace(config, steps=steps,
                               warmup_steps=min(config.warmup_steps, max(1, steps // 4)))


def _budget_rows(args, mesh, sampler, valid, compiler_options) -> list[dict[str, Any]]:
    """Every model for ``--budget`` seconds of steps, interleaved least-time-first."""
    start = time.perf_counter()
    first = shard_batch(sampler.batch(0), mesh)
    nominal = _budget_configs(args, args.steps)
    with SolveWarnings() as counter:
        if args.calibrate:
            nominal = {name: _sized(config, _step_seconds(config, args, mesh, sampler, counter,
                                                         compiler_options), args.budget)
                       for name, config in nominal.items()}
        candidates = {name: Candidate(config, mesh, first, compiler_options)
                      for name, config in nominal.items()}
        done = {name: 0 for name in candidates}
        while True:
            running = [n for n, c in candidates.items() if done[n] < c.config.steps
                       and sum(c.times) < args.budget]
            if not running:
                break
            name = min(running, key=lambda n: sum(candidates[n].times))
            candidates[name].train_step(shard_batch(sampler.batch(done[name]), mesh), counter)
            done[name] += 1
    rows = []
    for name, candidate in candidates.items():
        summary = candidate.evaluate(valid, mesh)
        deq = candidate.config.model == "deq"
        rows.append({
            "model": name, "params": candidate.params, "steps": done[name],
            "schedule_steps": candidate.config.steps, "seconds": sum(candidate.times),
            "valid_bpb": summary["bpb"],
            "tokens_per_s": args.batch_size * args.seq_len * done[name] / sum(candidate.times),
            "peak_bytes": candidate.memory.get("peak"),
            "forward_fevals": float(np.mean(candidate.fevals)) if deq else None,
            "backward_vjps": float(np.mean(candidate.backward_vjps)) if deq else None,
            "valid_converged": summary["converged"] if deq else None,
        })
    if not args.no_progress:
        print(f"wall-clock table: done in {time.perf_counter() - start:.0f}s", file=sys.stderr)
    return rows


def budget_check(rows: list[dict[str, Any]]) -> Optional[str]:
    """The target, read off the wall-clock rows: the DEQ's bits per byte against the best
    untied model whose peak memory is at most the DEQ's."""
    deq = next((r for r in rows if r["model"] == "deq"), None)
    if deq is None:
        return None
    fitting = [r for r in rows if r["model"] != "deq" and r["peak_bytes"] is not None
               and deq["peak_bytes"] is not None and r["peak_bytes"] <= deq["peak_bytes"]]
    if not fitting:
        return (f"deq {deq['valid_bpb']:.3f} bits/byte; no untied model fits in its memory "
                f"({deq['peak_bytes'] / 2**20:.1f} MiB)")
    best = min(fitting, key=lambda r: r["valid_bpb"])
    gap = deq["valid_bpb"] - best["valid_bpb"]
    return (f"deq {deq['valid_bpb']:.3f} bits/byte vs {best['model']} {best['valid_bpb']:.3f}, "
            f"the best untied model within its memory ({best['peak_bytes'] / 2**20:.1f} ≤ "
            f"{deq['peak_bytes'] / 2**20:.1f} MiB): gap {gap:+.3f}")


def depth_check(rows: list[dict[str, Any]]) -> Optional[str]:
    """The deepest depth's memory ratio, DEQ over the explicit stack."""
    deq = [r for r in rows if r["model"] == "deq"]
    if not deq:
        return None
    deepest = max(deq, key=lambda r: r["depth"])
    return (f"depth {deepest['depth']}: DEQ train-step peak memory is "
            f"{deepest['memory_ratio']:.2f} of the explicit weight-tied stack's")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both tables; ``{"rows", "budget_rows", "checks", "settings", "machine"}``."""
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    compiler_options = FAST_COMPILE if args.quick else None
    mesh = make_mesh()
    corpus = load_corpus(args.data)
    train_bytes, valid_bytes = split_corpus(corpus, 0.05, args.seq_len + 1)
    sampler = BatchSampler(train_bytes, args.batch_size, args.seq_len, args.seed)
    valid = list(eval_batches(valid_bytes, args.batch_size, args.seq_len, args.eval_batches))
    rows = _depth_rows(args, mesh, sampler, valid, compiler_options) if args.depths else []
    budget_rows = (_budget_rows(args, mesh, sampler, valid, compiler_options)
                   if args.layers else [])
    checks = [c for c in (depth_check(rows), budget_check(budget_rows)) if c]
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "no_progress")}
    return {"rows": rows, "budget_rows": budget_rows, "checks": checks, "settings": settings,
            "machine": report.machine()}


def render(result: dict[str, Any]) -> str:
    """Both tables as markdown, with the settings and the targets read off them."""
    s = result["settings"]
    lines = []
    if result["rows"]:
        lines += [f"By depth, equal steps ({s['steps']} steps of batch {s['batch_size']} × "
                  f"{s['seq_len']} bytes per model):", "",
                  report.markdown_table(result["rows"], DEPTH_COLUMNS), ""]
    if result["budget_rows"]:
        lines += [f"Equal wall-clock time ({s['budget']:g} s of training steps per model), "
                  "the DEQ as `python -m models.train` trains it:", "",
                  report.markdown_table(result["budget_rows"], BUDGET_COLUMNS), ""]
    lines += [f"- {check}" for check in result["checks"]]
    lines += ["", report.machine_line(result["machine"])]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the markdown tables, write ``--json``; return the result."""
    args = build_parser().parse_args(argv)
    result = run(args)
    report.publish(render(result), result, args.json)
    return result


if __name__ == "__main__":
    prefer_memory_schedule()  # as python -m models.train does, before JAX starts
    main()
