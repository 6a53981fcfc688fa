"""The DEQ Transformer LM against the explicit weight-tied stack of the same block, by depth.

    python -m benchmarks.deq_vs_explicit                 # depths 2, 4, 8, 16 (several minutes)
    python -m benchmarks.deq_vs_explicit --quick         # a smoke run (numbers not meaningful)
    python -m benchmarks.deq_vs_explicit --json out.json

For every depth ``D`` both models share everything but how they use the block
``f(z, x)`` of :mod:`models.transformer`, so they have exactly the same parameters:

* ``explicit``: ``zᵏ⁺¹ = f(zᵏ, x)`` for ``k < D`` with one set of weights, backpropagated
  layer by layer (its activations for all ``D`` layers are kept for the backward pass);
* ``deq``: ``z* = f(z*, x)`` found by the forward solver with at most ``D`` iterations
  (``max_iter = D``, so the same forward compute budget) and differentiated implicitly
  (the adjoint solve also gets at most ``D`` iterations).

Both train side by side on the same batches (one step of each in turn, so load from other
processes falls on both alike) for ``--steps`` steps from the same initial parameters, with
every other setting the default of ``python -m models.train``. Columns: validation bits per
byte after training, mean forward solver steps on validation, training throughput (tokens
per second: median over the steps after ``--warmup`` of the step time, blocked on), and the
peak and temporary memory of the compiled train step (XLA's ``memory_analysis()``:
``peak = arguments + outputs + temporaries − aliased``; the DEQ's figure includes the
Broyden history buffers of both solves). ``mem ratio`` is DEQ peak / explicit peak;
``bwd misses`` counts the DEQ's training steps whose adjoint solve stopped at its
iteration limit above tolerance in some sequence (the gradient is then approximate).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from benchmarks import report
from benchmarks.timing import FAST_COMPILE, median, memory_of
from models.config import TrainConfig, validate_config
from models.data import BatchSampler, eval_batches, load_corpus, split_corpus
from models.lm import make_model
from models.metrics import BackwardWarningCounter
from models.optim import learning_rate_schedule, make_optimizer
from models.sharding import make_mesh, replicate, shard_batch, to_host
from models.step import (
    init_state,
    make_eval_step,
    make_train_step,
    summarize_eval,
)

DEFAULT_DEPTHS = (2, 4, 8, 16)
QUICK = dict(d_model=16, num_heads=2, seq_len=16, batch_size=4, steps=3, eval_batches=1,
             warmup=1)

COLUMNS = (
    report.Column("depth", "depth", report.fmt_int),
    report.Column("model", "model", align="left"),
    report.Column("params", "params", report.fmt_int),
    report.Column("valid_bpb", "valid bpb", lambda v: f"{float(v):.3f}"),
    report.Column("solver_steps", "fwd steps", lambda v: f"{float(v):.1f}"),
    report.Column("tokens_per_s", "tokens/s", lambda v: f"{float(v):,.0f}"),
    report.Column("peak_bytes", "peak MiB", report.fmt_mib),
    report.Column("temp_bytes", "temp MiB", report.fmt_mib),
    report.Column("memory_ratio", "mem ratio", report.fmt_ratio),
    report.Column("backward_misses", "bwd misses", report.fmt_int),
)


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.deq_vs_explicit",
        description="DEQ Transformer LM vs the explicit weight-tied stack at several depths: "
        "validation bits per byte, tokens/s and compiled train-step memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--depths", type=int, nargs="+", default=list(DEFAULT_DEPTHS),
                        help="explicit depth = DEQ forward (and adjoint) max_iter")
    parser.add_argument("--steps", type=int, default=150, help="training steps per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--d-model", type=int, default=defaults.d_model)
    parser.add_argument("--num-heads", type=int, default=defaults.num_heads)
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--eval-batches", type=int, default=8,
                        help="validation batches for the bits per byte")
    parser.add_argument("--solver", default=defaults.solver, help="DEQ forward solver")
    parser.add_argument("--backward", default=defaults.backward, help="DEQ backward mode")
    parser.add_argument("--tol", type=float, default=defaults.tol, help="DEQ solver tolerance")
    parser.add_argument("--history", type=int, default=defaults.history,
                        help="Broyden history of the DEQ solves")
    parser.add_argument("--data", default=defaults.data, help="corpus (see models.train)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write JSON here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: depth 2, tiny model, 3 steps, fast compilation")
    parser.add_argument("--no-progress", action="store_true", help="no per-depth messages")
    return parser


def _configs(args: argparse.Namespace, depth: int) -> dict[str, TrainConfig]:
    base = dataclasses.replace(
        TrainConfig(),
        d_model=args.d_model, num_heads=args.num_heads, seq_len=args.seq_len,
        batch_size=args.batch_size, steps=args.steps, warmup_steps=min(40, args.steps // 4),
        solver=args.solver, backward=args.backward, tol=args.tol, backward_tol=args.tol,
        history=args.history, data=args.data, seed=args.seed, progress=False,
    )
    configs = {
        "deq": dataclasses.replace(base, model="deq", max_iter=depth, backward_max_iter=depth),
        "explicit": dataclasses.replace(base, model="explicit", depth=depth),
    }
    for config in configs.values():
        validate_config(config)
    return configs


class _Candidate:
    """One model being trained: its compiled step, state and measurements."""

    def __init__(self, config: TrainConfig, mesh: Any, batch: jax.Array,
                 compiler_options: dict | None) -> None:
        self.config = config
        model, optimizer = make_model(config), make_optimizer(config)
        host_state = to_host(init_state(model, optimizer, config, compiler_options))
        self.params = sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(host_state.params))
        self.state = replicate(host_state, mesh)
        step = make_train_step(model, optimizer, learning_rate_schedule(config), config, mesh,
                               compiler_options)
        self.step = step.lower(self.state, batch).compile()
        self.memory = memory_of(self.step) or {}
        self.eval_step = make_eval_step(model, config, mesh, compiler_options)
        self.times: list[float] = []
        self.backward_misses = 0

    def train_step(self, batch: jax.Array, warnings: BackwardWarningCounter) -> None:
        start = time.perf_counter()
        seen = warnings.count
        self.state, metrics = self.step(self.state, batch)
        jax.block_until_ready(metrics)
        self.times.append(time.perf_counter() - start)
        self.backward_misses += warnings.count > seen


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train and measure both models at every depth; return ``{"rows", "machine", ...}``."""
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
        args.depths = [2]
    compiler_options = FAST_COMPILE if args.quick else None
    mesh = make_mesh()
    corpus = load_corpus(args.data)
    train_bytes, valid_bytes = split_corpus(corpus, 0.05, args.seq_len + 1)
    sampler = BatchSampler(train_bytes, args.batch_size, args.seq_len, args.seed)
    valid = list(eval_batches(valid_bytes, args.batch_size, args.seq_len, args.eval_batches))
    rows: list[dict[str, Any]] = []
    for depth in args.depths:
        start = time.perf_counter()
        first = shard_batch(sampler.batch(0), mesh)
        candidates = {
            name: _Candidate(config, mesh, first, compiler_options)
            for name, config in _configs(args, depth).items()
        }
        with BackwardWarningCounter() as counter:
            for step in range(args.steps):
                batch = shard_batch(sampler.batch(step), mesh)
                for candidate in candidates.values():  # round-robin: load falls on both alike
                    candidate.train_step(batch, counter)
        explicit_peak = candidates["explicit"].memory.get("peak")
        for name, candidate in candidates.items():
            results = [
                to_host(candidate.eval_step(candidate.state.params, shard_batch(b, mesh)))
                for b in valid
            ]
            summary = summarize_eval(results)
            timed = candidate.times[args.warmup:] or candidate.times
            peak = candidate.memory.get("peak")
            rows.append({
                "depth": depth,
                "model": name,
                "params": candidate.params,
                "valid_bpb": summary["bpb"],
                "solver_steps": summary["solver_steps"],
                "tokens_per_s": args.batch_size * args.seq_len / median(timed),
                "step_s": median(timed),
                "peak_bytes": peak,
                "temp_bytes": candidate.memory.get("temporaries"),
                "memory_ratio": (peak / explicit_peak) if peak and explicit_peak else None,
                "backward_misses": candidate.backward_misses if name == "deq" else None,
            })
        if not args.no_progress:
            print(f"depth {depth}: done in {time.perf_counter() - start:.0f}s", file=sys.stderr)
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "no_progress")}
    return {"rows": rows, "settings": settings, "machine": report.machine()}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the markdown table, write ``--json``; return the result."""
    args = build_parser().parse_args(argv)
    result = run(args)
    print(report.markdown_table(result["rows"], COLUMNS))
    print(f"\n{report.machine_line(result['machine'])}; {args.steps} steps of batch "
          f"{args.batch_size} x {args.seq_len} bytes per model")
    if args.json:
        report.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
