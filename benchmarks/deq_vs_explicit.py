"""The DEQ Transformer LM against the standard Transformers a user would pick instead of it,
and against its own unrolled twin.

    python -m benchmarks.deq_vs_explicit                 # both tables
    python -m benchmarks.deq_vs_explicit --quick         # a smoke run (numbers not meaningful)
    python -m benchmarks.deq_vs_explicit --json out.json

**The main table: one row per model.**

* ``deq``: the DEQ exactly as ``python -m models.train`` trains it (its defaults);
* ``deq-d<W>``: the same DEQ at width ``--wide-d-model`` W, where one weight-tied block has
  about the parameters of the 2- or 4-layer Transformer (how the DEQ papers compare);
* ``transformer-<L>``: the standard pre-LN Transformer of ``L`` layers (``--layers``;
  ``python -m models.train --model transformer --depth L``), every other setting (width,
  embeddings, readout, optimiser, schedule, batches) that of the DEQ.

*Equal steps*: for each seed of ``--seeds``, every model trains ``--steps`` steps (the default
run's) from its own initialisation on the same batches, one step of each in turn, so load from
other processes falls on all alike; the costliest rows (``--one-seed``: by default the wide DEQ
and the deepest Transformer) train at the first seed only. ``valid bpb`` is the mean over the
seeds of the bits per byte on the validation text (all of it unless ``--eval-batches``, so the
DEQ's first seed is the default run's final number), ``±`` half the range between the best
and the worst seed. *Equal wall-clock*: the time the DEQ's first seed spent in its training
steps is the budget; every Transformer trains for that long (steps interleaved, always the
one that has used the least time next) with its learning-rate schedule laid for the steps
its measured step time fits in the budget. Columns: parameters, the train step's peak memory
(XLA's ``memory_analysis()`` of the compiled step: arguments + outputs + temporaries − aliased),
tokens per second (batch × sequence length over the median step time), forward
``f``-evaluations and adjoint iterations (one VJP of ``f`` each) per step, and the bits per
byte and steps of both comparisons.

**The depth table (``--depths``).** For every depth ``D`` the DEQ and its weight-tied unrolled
twin (``--model unrolled``, the block applied ``D`` times with one set of weights) share every
parameter. The DEQ gets ``max_iter = D`` forward and adjoint iterations, the same compute
budget; both train ``--depth-steps`` steps side by side. ``mem ratio`` is DEQ peak / twin peak.

Like ``python -m models.train``, the program compiles with XLA's memory-minimising CPU schedule
(:mod:`models.xla_setup`) unless ``XLA_FLAGS`` already chooses a scheduler.
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

DEFAULT_LAYERS = (1, 2, 4)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_DEPTHS = (4, 16)
WIDE_D_MODEL = 128
"""The width at which one DEQ block, with its embeddings and readout, has about the parameters
of the two-layer Transformer at the default width (the table's ``params`` column gives both)."""
QUICK = dict(d_model=16, num_heads=2, seq_len=16, batch_size=4, steps=3, eval_batches=1,
             warmup=1, layers=[1], seeds=[0], wide_d_model=0, depths=[2], depth_steps=2)


def _fmt(digits: int):
    return lambda v: f"{float(v):.{digits}f}"


def _fmt_spread(row: dict[str, Any]) -> str:
    if len(row["seeds"]) == 1:
        return f"{row['valid_bpb']:.3f} (1 seed)"
    return f"{row['valid_bpb']:.3f} ± {row['valid_bpb_spread']:.3f}"


MAIN_COLUMNS = (
    report.Column("model", "model", align="left"),
    report.Column("params", "params", lambda v: f"{int(v):,}"),
    report.Column("peak_bytes", "peak MiB", report.fmt_mib),
    report.Column("tokens_per_s", "tokens/s", lambda v: f"{float(v):,.0f}"),
    report.Column("forward_fevals", "fwd f-evals/step", _fmt(1)),
    report.Column("backward_vjps", "bwd VJPs/step", _fmt(1)),
    report.Column("valid_bpb_text", "valid bpb, equal steps", align="right"),
    report.Column("time_steps", "steps, equal time", report.fmt_int),
    report.Column("time_bpb", "valid bpb, equal time", _fmt(3)),
)
DEPTH_COLUMNS = (
    report.Column("depth", "depth", report.fmt_int),
    report.Column("model", "model", align="left"),
    report.Column("params", "params", lambda v: f"{int(v):,}"),
    report.Column("valid_bpb", "valid bpb", _fmt(3)),
    report.Column("forward_fevals", "fwd f-evals/step", _fmt(1)),
    report.Column("tokens_per_s", "tokens/s", lambda v: f"{float(v):,.0f}"),
    report.Column("peak_bytes", "peak MiB", report.fmt_mib),
    report.Column("memory_ratio", "mem ratio", report.fmt_ratio),
)


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.deq_vs_explicit",
        description="The DEQ Transformer LM against standard Transformers of 1, 2 and 4 "
        "layers at equal steps and equal wall-clock time, and against its unrolled "
        "weight-tied twin by depth (memory).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help="training steps per model and seed (equal steps)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS),
                        help="seeds of the equal-steps comparison (the first also sets the "
                        "equal-time budget and runs the equal-time comparison)")
    parser.add_argument("--layers", type=int, nargs="*", default=list(DEFAULT_LAYERS),
                        help="layers of the standard Transformers")
    parser.add_argument("--wide-d-model", type=int, default=WIDE_D_MODEL,
                        help="width of the wide DEQ row (0: no such row)")
    parser.add_argument("--one-seed", nargs="*", default=None, metavar="MODEL",
                        help="rows trained at the first seed only, to save time (default: "
                        "the wide DEQ and the deepest Transformer)")
    parser.add_argument("--no-equal-time", action="store_true",
                        help="skip the equal wall-clock runs")
    parser.add_argument("--depths", type=int, nargs="*", default=list(DEFAULT_DEPTHS),
                        help="depths of the DEQ-vs-unrolled-twin table; none: skip it")
    parser.add_argument("--depth-steps", type=int, default=150,
                        help="training steps per model of the depth table")
    parser.add_argument("--warmup", type=int, default=3,
                        help="steps left out of the median step time")
    parser.add_argument("--eval-batches", type=int, default=0,
                        help="validation batches for the bits per byte (0: the whole validation "
                        "text, as python -m models.train reports at its end)")
    parser.add_argument("--d-model", type=int, default=defaults.d_model)
    parser.add_argument("--num-heads", type=int, default=defaults.num_heads)
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--data", default=defaults.data, help="corpus (see models.train)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write JSON here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: a tiny model, one layer, one seed, a few steps, fast "
                        "compilation")
    parser.add_argument("--no-progress", action="store_true", help="no per-part messages")
    return parser


def _base(args: argparse.Namespace, steps: int, seed: int) -> TrainConfig:
    """The default run's configuration at ``steps`` steps (schedule laid for them)."""
    defaults = TrainConfig()
    return dataclasses.replace(
        defaults, d_model=args.d_model, num_heads=args.num_heads, seq_len=args.seq_len,
        batch_size=args.batch_size, steps=steps,
        warmup_steps=min(defaults.warmup_steps, max(1, steps // 4)), data=args.data,
        seed=seed, progress=False,
    )


def model_configs(args: argparse.Namespace, steps: int, seed: int) -> dict[str, TrainConfig]:
    """The models of the main table, by row name, at ``steps`` steps and ``seed``."""
    base = _base(args, steps, seed)
    configs = {"deq": base}
    if args.wide_d_model:
        configs[f"deq-d{args.wide_d_model}"] = dataclasses.replace(base,
                                                                  d_model=args.wide_d_model)
    for layers in args.layers:
        configs[f"transformer-{layers}"] = dataclasses.replace(base, model="transformer",
                                                               depth=layers)
    return configs


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
        self.steps_done = 0

    @property
    def deq(self) -> bool:
        return self.config.model == "deq"

    def train_step(self, batch: jax.Array) -> None:
        start = time.perf_counter()
        self.state, metrics = self.step(self.state, batch)
        metrics = to_host(metrics)
        self.times.append(time.perf_counter() - start)
        self.fevals.append(float(metrics["solver_fevals"]))
        self.backward_vjps.append(self.backward_log.take().get("backward_steps", 0.0))
        self.steps_done += 1

    def step_seconds(self, warmup: int) -> float:
        return median(self.times[warmup:] or self.times)

    def evaluate(self, valid: list, mesh: Any) -> dict[str, float]:
        return summarize_eval([
            to_host(self.eval_step(self.state.params, shard_batch(b, mesh))) for b in valid
        ])


@dataclasses.dataclass
class _Data:
    mesh: Any
    train_bytes: np.ndarray
    valid: list
    compiler_options: Optional[dict]

    def sampler(self, args: argparse.Namespace, seed: int) -> BatchSampler:
        return BatchSampler(self.train_bytes, args.batch_size, args.seq_len, seed)


def _train_side_by_side(configs: dict[str, TrainConfig], data: _Data,
                        sampler: BatchSampler) -> dict[str, Candidate]:
    """Every model for its configured steps on the same batches, one step of each in turn."""
    first = shard_batch(sampler.batch(0), data.mesh)
    candidates = {name: Candidate(config, data.mesh, first, data.compiler_options)
                  for name, config in configs.items()}
    for step in range(max(c.config.steps for c in candidates.values())):
        batch = shard_batch(sampler.batch(step), data.mesh)
        for candidate in candidates.values():
            if candidate.steps_done < candidate.config.steps:
                candidate.train_step(batch)
    return candidates


def _train_for(configs: dict[str, TrainConfig], budget: float, data: _Data,
               sampler: BatchSampler) -> dict[str, Candidate]:
    """Every model for ``budget`` seconds of steps (or its configured steps), interleaved:
    always the one that has used the least time next."""
    first = shard_batch(sampler.batch(0), data.mesh)
    candidates = {name: Candidate(config, data.mesh, first, data.compiler_options)
                  for name, config in configs.items()}
    while True:
        running = [c for c in candidates.values()
                   if c.steps_done < c.config.steps and sum(c.times) < budget]
        if not running:
            return candidates
        candidate = min(running, key=lambda c: sum(c.times))
        candidate.train_step(shard_batch(sampler.batch(candidate.steps_done), data.mesh))


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.no_progress:
        print(message, file=sys.stderr, flush=True)


def _main_rows(args: argparse.Namespace, data: _Data) -> tuple[list[dict[str, Any]], float]:
    """The main table's rows, and the equal-time budget in seconds."""
    runs: dict[str, list[dict[str, Any]]] = {}
    one_seed = _one_seed_models(args)
    for seed in args.seeds:
        start = time.perf_counter()
        configs = model_configs(args, args.steps, seed)
        if seed != args.seeds[0]:
            configs = {name: c for name, c in configs.items() if name not in one_seed}
        candidates = _train_side_by_side(configs, data, data.sampler(args, seed))
        for name, c in candidates.items():
            summary = c.evaluate(data.valid, data.mesh)
            runs.setdefault(name, []).append({
                "seed": seed, "params": c.params, "valid_bpb": summary["bpb"],
                "valid_converged": summary["converged"] if c.deq else None,
                "step_s": c.step_seconds(args.warmup), "train_s": sum(c.times),
                "peak_bytes": c.memory.get("peak"),
                "forward_fevals": float(np.mean(c.fevals)) if c.deq else None,
                "backward_vjps": float(np.mean(c.backward_vjps)) if c.deq else None,
            })
        _say(args, f"equal steps, seed {seed}: done in {time.perf_counter() - start:.0f}s")
    rows = []
    for name, seeds in runs.items():
        bpbs = [r["valid_bpb"] for r in seeds]
        first = seeds[0]
        rows.append({
            "model": name, "params": first["params"], "peak_bytes": first["peak_bytes"],
            "step_s": median([r["step_s"] for r in seeds]),
            "tokens_per_s": args.batch_size * args.seq_len / median([r["step_s"] for r in seeds]),
            "forward_fevals": _mean_or_none([r["forward_fevals"] for r in seeds]),
            "backward_vjps": _mean_or_none([r["backward_vjps"] for r in seeds]),
            "valid_converged": _mean_or_none([r["valid_converged"] for r in seeds]),
            "valid_bpb": float(np.mean(bpbs)),
            "valid_bpb_spread": (max(bpbs) - min(bpbs)) / 2, "valid_bpb_seeds": bpbs,
            "steps": args.steps, "seeds": [r["seed"] for r in seeds],
        })
    budget = runs["deq"][0]["train_s"]
    return rows, budget


def _matched(row: dict[str, Any], other: dict[str, Any]) -> tuple[float, Optional[int]]:
    """``row``'s bits per byte over the seeds ``other`` has: its mean, or, when ``other``
    ran at one seed only, its value at that seed and the seed."""
    if len(other["seeds"]) > 1 or len(row["seeds"]) == 1:
        return row["valid_bpb"], None if len(other["seeds"]) > 1 else other["seeds"][0]
    seed = other["seeds"][0]
    return row["valid_bpb_seeds"][row["seeds"].index(seed)], seed


def _one_seed_models(args: argparse.Namespace) -> set[str]:
    """The rows of ``--one-seed``; by default the wide DEQ and the deepest Transformer."""
    if args.one_seed is not None:
        names = set(model_configs(args, args.steps, args.seeds[0]))
        unknown = sorted(set(args.one_seed) - names)
        if unknown:
            raise SystemExit(f"--one-seed: no row named {', '.join(unknown)} "
                             f"(rows: {', '.join(names)})")
        return set(args.one_seed)
    costly = {f"deq-d{args.wide_d_model}"} if args.wide_d_model else set()
    if len(args.layers) > 1:
        costly.add(f"transformer-{max(args.layers)}")
    return costly


def _mean_or_none(values: list[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _equal_time(args: argparse.Namespace, rows: list[dict[str, Any]], budget: float,
                data: _Data) -> None:
    """Add ``time_steps`` and ``time_bpb`` to the Transformers' rows: each trained for
    ``budget`` seconds at the first seed, its schedule laid for the steps its step time fits
    (the wide DEQ is not a baseline and has no equal-time run)."""
    seed = args.seeds[0]
    start = time.perf_counter()
    configs = model_configs(args, args.steps, seed)
    by_name = {row["model"]: row for row in rows}
    sized = {}
    for name, config in configs.items():
        if name.startswith("deq"):  # the DEQ's equal-steps run used exactly the budget
            continue
        steps = max(2, int(budget / by_name[name]["step_s"]))
        sized[name] = dataclasses.replace(
            config, steps=steps, warmup_steps=min(config.warmup_steps, max(1, steps // 4)))
    candidates = _train_for(sized, budget, data, data.sampler(args, seed))
    for name, c in candidates.items():
        by_name[name]["time_steps"] = c.steps_done
        by_name[name]["time_bpb"] = c.evaluate(data.valid, data.mesh)["bpb"]
    by_name["deq"]["time_steps"] = args.steps
    by_name["deq"]["time_bpb"] = by_name["deq"]["valid_bpb_seeds"][0]
    _say(args, f"equal time ({budget:.0f} s per model): done in "
               f"{time.perf_counter() - start:.0f}s")


def _depth_rows(args: argparse.Namespace, data: _Data) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    seed = args.seeds[0]
    base = _base(args, args.depth_steps, seed)
    for depth in args.depths:
        start = time.perf_counter()
        configs = {
            "deq": dataclasses.replace(base, max_iter=depth, backward_max_iter=depth),
            "unrolled": dataclasses.replace(base, model="unrolled", depth=depth),
        }
        candidates = _train_side_by_side(configs, data, data.sampler(args, seed))
        twin_peak = candidates["unrolled"].memory.get("peak")
        for name, c in candidates.items():
            peak = c.memory.get("peak")
            rows.append({
                "depth": depth, "model": name, "params": c.params,
                "valid_bpb": c.evaluate(data.valid, data.mesh)["bpb"],
                "forward_fevals": float(np.mean(c.fevals)),
                "tokens_per_s": args.batch_size * args.seq_len / c.step_seconds(args.warmup),
                "peak_bytes": peak,
                "memory_ratio": (peak / twin_peak) if peak and twin_peak else None,
            })
        _say(args, f"depth {depth}: done in {time.perf_counter() - start:.0f}s")
    return rows


def checks(result: dict[str, Any]) -> list[str]:
    """The targets, read off the rows: the DEQ against each Transformer at equal steps and
    equal time, and the memory of the DEQ against the two-layer Transformer's."""
    rows = {row["model"]: row for row in result["rows"]}
    deq = rows.get("deq")
    lines = []
    if deq is None:
        return lines
    for name, row in rows.items():
        if not name.startswith("transformer-"):
            continue
        ours, seeds = _matched(deq, row)
        gap = ours - row["valid_bpb"]
        spread = (f"seed spread ±{deq['valid_bpb_spread']:.3f} / ±{row['valid_bpb_spread']:.3f}"
                  if seeds is None else f"seed {seeds} only")
        line = (f"equal steps: deq {ours:.3f} vs {name} {row['valid_bpb']:.3f} "
                f"bits/byte (gap {gap:+.3f}, {spread})")
        if row.get("time_bpb") is not None:
            time_gap = deq["time_bpb"] - row["time_bpb"]
            line += (f"; equal time: {row['time_steps']} steps to the DEQ's {deq['time_steps']}, "
                     f"{row['time_bpb']:.3f} bits/byte (gap {time_gap:+.3f})")
        lines.append(line)
    wide = next((row for name, row in rows.items() if name.startswith("deq-d")), None)
    two = rows.get("transformer-2")
    if wide is not None and two is not None:
        theirs, seeds = _matched(two, wide)
        lines.append(f"width: {wide['model']} ({wide['params']:,} parameters) "
                     f"{wide['valid_bpb']:.3f} vs transformer-2 ({two['params']:,}) "
                     f"{theirs:.3f} bits/byte (gap {wide['valid_bpb'] - theirs:+.3f}"
                     + (f", seed {seeds} only)" if seeds is not None else ")"))
    two = rows.get("transformer-2")
    if two is not None and deq.get("peak_bytes") and two.get("peak_bytes"):
        lines.append(f"memory: the DEQ's train step peaks at {deq['peak_bytes'] / 2**20:.1f} "
                     f"MiB, {deq['peak_bytes'] / two['peak_bytes']:.2f} of transformer-2's "
                     f"{two['peak_bytes'] / 2**20:.1f} MiB")
    one = rows.get("transformer-1")
    if one is not None:
        lines.append(f"cost: a DEQ step takes {deq['step_s'] / one['step_s']:.1f}× a "
                     f"transformer-1 step ({deq['forward_fevals']:.1f} forward f-evals and "
                     f"{deq['backward_vjps']:.1f} adjoint VJPs against one layer forward and "
                     "back)")
    return lines


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both tables: ``{"rows", "depth_rows", "budget_s", "checks", "settings", "machine"}``."""
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    mesh = make_mesh()
    corpus = load_corpus(args.data)
    train_bytes, valid_bytes = split_corpus(corpus, 0.05, args.seq_len + 1)
    valid = list(eval_batches(valid_bytes, args.batch_size, args.seq_len,
                              args.eval_batches or None))
    data = _Data(mesh, train_bytes, valid, FAST_COMPILE if args.quick else None)
    rows, budget = _main_rows(args, data)
    if not args.no_equal_time:
        _equal_time(args, rows, budget, data)
    for row in rows:
        row["valid_bpb_text"] = _fmt_spread(row)
    depth_rows = _depth_rows(args, data) if args.depths else []
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "no_progress")}
    result = {"rows": rows, "depth_rows": depth_rows, "budget_s": budget, "settings": settings,
              "machine": report.machine()}
    result["checks"] = checks(result)
    return result


def render(result: dict[str, Any]) -> str:
    """Both tables as markdown, with the settings and the targets read off them."""
    s = result["settings"]
    seeds = ", ".join(str(seed) for seed in s["seeds"])
    lines = [
        f"Each model trains {s['steps']} steps of batch {s['batch_size']} × {s['seq_len']} "
        f"bytes (equal steps; mean ± half the range over seeds {seeds}), and for the "
        f"{result['budget_s']:.0f} s the DEQ's training steps took (equal time; seed "
        f"{s['seeds'][0]}):", "",
        report.markdown_table(result["rows"], MAIN_COLUMNS), "",
    ]
    lines += [f"- {check}" for check in result["checks"]]
    if result["depth_rows"]:
        lines += ["", f"The DEQ against its unrolled weight-tied twin ({s['depth_steps']} "
                  "steps each; the DEQ's forward and adjoint solves get at most `depth` "
                  "iterations):", "",
                  report.markdown_table(result["depth_rows"], DEPTH_COLUMNS)]
    lines += ["", report.machine_line(result["machine"])]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the markdown tables, write ``--json``; return the result."""
    args = build_parser().parse_args(argv)
    with SolveWarnings():  # counted by the step metrics; not printed once per step
        result = run(args)
    report.publish(render(result), result, args.json)
    return result


if __name__ == "__main__":
    prefer_memory_schedule()  # as python -m models.train does, before JAX starts
    main()
