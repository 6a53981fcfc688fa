"""Where the DEQ train step's memory goes: the peak of the compiled step for the defaults of
``python -m models.train`` and for variants that each take one part away, against the
DEQ's unrolled weight-tied twin.

    python -m benchmarks.memory_breakdown                  # the default variants
    python -m benchmarks.memory_breakdown --variant "--backward-solver-options history=2" --variant ""
    python -m benchmarks.memory_breakdown --quick          # a tiny model (numbers not meaningful)

Every row compiles one training step ``θ ← θ − η ∇_θ L(z*(θ), θ)`` and reads its peak from
XLA's ``memory_analysis()`` (``peak = arguments + outputs + temporaries − aliased``); nothing
is trained, so the numbers do not depend on the machine's load. A variant is a string of
``python -m models.train`` flags applied on top of the defaults (``""``: the defaults
themselves). ``ratio`` divides by the peak of the ``--baseline`` variant, by default the
unrolled weight-tied twin of depth 16 that ``benchmarks.deq_vs_explicit`` compares against;
``Δ defaults`` is the difference to the defaults' peak. Like ``models.train``, the program
compiles with XLA's memory-minimising CPU schedule (:mod:`models.xla_setup`) unless
``XLA_FLAGS`` already chooses a scheduler; the schedule is process-wide, so the
concurrency-optimised one is measured by running this module with
``XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=true``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks import output
from benchmarks.deq_vs_explicit import Candidate
from benchmarks.timing import FAST_COMPILE
from models.config import ConfigError, parse_config
from models.sharding import make_mesh, shard_batch
from models.xla_setup import prefer_memory_schedule

DEFAULTS = ""
BASELINE = "--model unrolled --depth 16"
VARIANTS: tuple[str, ...] = (
    DEFAULTS,
    "--fp-correction 0",
    "--block injection --fp-correction 0",
    "--backward jfb",
    "--jac-reg 0",
    "--backward jfb --jac-reg 0",
    "--backward-solver-options history=2",
    "--backward-solver fixed_point --backward-max-iter 30",
    "--backward-fallback phantom",
    "--backward reversible",
    "--model transformer --depth 1",
    "--model transformer --depth 2",
    BASELINE,
)
"""The default rows: the defaults, then the fixed-point correction taken away (and the block
with it), then each part of the DEQ's backward taken away (the implicit adjoint, the Jacobian
regulariser, both, half the adjoint's history, an adjoint without history), the adjoint with
its per-sequence phantom fallback, the reversible gradient instead of the adjoint, then the
standard Transformers of one and two layers, then the unrolled twin."""
QUICK_SIZE = "--d-model 16 --num-heads 2 --seq-len 16 --batch-size 4"
QUICK_VARIANTS = (DEFAULTS, "--fp-correction 0", BASELINE)

COLUMNS = (
    output.Column("variant", "variant (models.train flags)", align="left"),
    output.Column("peak_bytes", "peak MiB", output.fmt_mib),
    output.Column("temp_bytes", "temp MiB", output.fmt_mib),
    output.Column("delta_bytes", "Δ defaults MiB", lambda v: f"{v / 2**20:+.1f}"),
    output.Column("ratio", "ratio", lambda v: f"{float(v):.3f}"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.memory_breakdown",
        description="Peak memory of the compiled DEQ train step, by variant, against the "
        "DEQ's unrolled weight-tied twin.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--variant", action="append", default=None, metavar="FLAGS",
                        help="models.train flags of one row, repeatable ('' = the defaults); "
                        f"default: {list(VARIANTS)}")
    parser.add_argument("--baseline", default=BASELINE, metavar="FLAGS",
                        help="the variant the ratio divides by")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write JSON here")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_SIZE}, fast compilation, three variants")
    return parser


def _config(flags: str, size: str):
    """The :class:`TrainConfig` of a variant, or a :class:`ConfigError` naming it."""
    try:
        return parse_config([*shlex.split(size), *shlex.split(flags)])
    except SystemExit as exit_:  # argparse has printed what is wrong with the flags
        raise ConfigError(f"variant {flags!r}: not valid models.train flags") from exit_


def peak_memory(flags: str, mesh: Any, size: str = "",
                compiler_options: dict | None = None) -> dict[str, int]:
    """``{"peak", "temporaries", ...}`` in bytes of the train step that ``flags`` configure."""
    config = _config(flags, size)
    batch = shard_batch(np.zeros((config.batch_size, config.seq_len + 1), np.int32), mesh)
    memory = Candidate(config, mesh, batch, compiler_options).memory
    if not memory:
        raise RuntimeError("this JAX backend reports no memory_analysis() of compiled programs")
    return memory


def run(args: argparse.Namespace) -> dict[str, Any]:
    """All rows; ``{"rows", "settings", "machine"}``."""
    variants = list(args.variant if args.variant is not None
                    else QUICK_VARIANTS if args.quick else VARIANTS)
    size, options = (QUICK_SIZE, FAST_COMPILE) if args.quick else ("", None)
    for needed in (DEFAULTS, args.baseline):
        if needed not in variants:
            variants.append(needed)
    mesh = make_mesh()
    memory = {flags: peak_memory(flags, mesh, size, options) for flags in variants}
    defaults, baseline = memory[DEFAULTS]["peak"], memory[args.baseline]["peak"]
    rows = [{
        "variant": flags or "(defaults)",
        "peak_bytes": m["peak"], "temp_bytes": m["temporaries"],
        "delta_bytes": m["peak"] - defaults, "ratio": m["peak"] / baseline,
    } for flags, m in memory.items()]
    settings = {"variants": variants, "baseline": args.baseline, "quick": args.quick}
    return {"rows": rows, "settings": settings, "machine": output.machine()}


def render(result: dict[str, Any]) -> str:
    baseline = result["settings"]["baseline"]
    return "\n".join([
        f"Train-step peak memory; ratio to `{baseline}`:", "",
        output.markdown_table(result["rows"], COLUMNS), "",
        output.machine_line(result["machine"]),
    ])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Print the table, write ``--json``; return the result. Bad flags: one error line."""
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except ConfigError as error:
        sys.exit(f"error: {error}")
    output.publish(render(result), result, args.json)
    return result


if __name__ == "__main__":
    prefer_memory_schedule()  # as python -m models.train does, before JAX starts
    main()
