"""``python -m models.train``: train the byte-level DEQ Transformer language model.

The loop, for ``step = start .. steps − 1``:

1. batch ``step`` of :class:`models.data.BatchSampler` (a function of ``(seed, step)``),
   this process's rows of it sharded over the devices;
2. one compiled train step (:mod:`models.step`);
3. a ``train`` record in ``<run_dir>/metrics.jsonl`` and the progress bar (loss, bits per
   byte, forward solver steps, relative residual);
4. every ``--eval-every`` steps, validation bits per byte on ``--eval-batches`` batches;
5. every ``--checkpoint-every`` steps, an atomic checkpoint.

At the end: validation on the whole held-out text, a final checkpoint, ``metrics.png``, a text
sample (``sample.txt``) and ``summary.json``. Ctrl-C finishes the current step, writes a
checkpoint and exits with status 130; ``--resume`` continues from it and ends with the same
parameters and metrics as an uninterrupted run. Bad data, settings or checkpoints print one
``error:`` line and exit with status 2.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from models.checkpoint import (
    CheckpointError,
    check_config,
    checkpoint_path,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from models.config import (
    RESUMABLE_KEYS,
    ConfigError,
    TrainConfig,
    parse_config,
    validate_config,
)
from models.data import (
    BatchSampler,
    DataError,
    eval_batches,
    load_corpus,
    split_corpus,
    unigram_bits_per_byte,
)
from models.lm import deq_options, make_model
from models.metrics import (
    PLOT_NAME,
    BackwardWarningCounter,
    MetricsLog,
    plot_metrics,
    read_metrics,
)
from models.optim import learning_rate_schedule, make_optimizer
from models.sample import generate
from models.sharding import (
    check_batch_divisible,
    make_mesh,
    process_rows,
    replicate,
    shard_batch,
    to_host,
)
from models.step import (
    TrainState,
    init_state,
    make_eval_step,
    make_train_step,
    summarize_eval,
)

__all__ = ["TrainResult", "train", "main", "INTERRUPTED_EXIT", "ERROR_EXIT"]

INTERRUPTED_EXIT: int = 130
ERROR_EXIT: int = 2

StepHook = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
      status: ``"completed"`` or ``"interrupted"`` (a checkpoint was written at ``step``).
      step: completed training steps.
      state: the final train state as NumPy arrays.
      valid_bpb: bits per byte on the whole validation text (``None`` if interrupted).
      unigram_bpb: the unigram baseline on the same text.
      sample: the generated text (``""`` if none).
      summary: the contents of ``summary.json``.
    """

    status: str
    step: int
    state: TrainState
    valid_bpb: float | None
    unigram_bpb: float
    sample: str = ""
    summary: dict[str, Any] = field(default_factory=dict)


class _Interrupt:
    """While active, the first Ctrl-C (SIGINT) only sets ``requested``; a second one raises."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def __enter__(self) -> _Interrupt:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        signal.signal(signal.SIGINT, self._previous)


def _progress(config: TrainConfig, start: int, writer: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=config.steps,
        initial=start,
        disable=not (config.progress and writer),
        dynamic_ncols=True,
        unit="step",
        desc=config.model,
    )


@dataclasses.dataclass(frozen=True)
class _Programs:
    model: Any
    optimizer: Any
    schedule: Any
    initial_state: TrainState  # NumPy arrays
    train_step: Any
    eval_step: Any


@functools.lru_cache(maxsize=2)
def _programs(config: TrainConfig, mesh: Any, options: tuple) -> _Programs:
    """Model, optimizer, initial state and compiled steps of ``config`` on ``mesh``.

    Cached on the settings that determine them, so calling :func:`train` again in one
    process (a resumed run, a notebook, a test) reuses the compiled steps.
    """
    compiler_options = dict(options) or None
    model = make_model(config)
    optimizer = make_optimizer(config)
    schedule = learning_rate_schedule(config)
    return _Programs(
        model,
        optimizer,
        schedule,
        to_host(init_state(model, optimizer, config, compiler_options)),
        make_train_step(model, optimizer, schedule, config, mesh, compiler_options),
        make_eval_step(model, config, mesh, compiler_options),
    )


def _initialize_distributed(config: TrainConfig) -> None:
    if config.distributed:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address or None,
            num_processes=config.num_processes or None,
            process_id=config.process_id if config.process_id >= 0 else None,
        )


def train(
    config: TrainConfig,
    *,
    devices: Sequence[jax.Device] | None = None,
    on_step: StepHook | None = None,
    log: Callable[[str], None] = print,
    compiler_options: dict[str, Any] | None = None,
) -> TrainResult:
    """Run training as configured (the body of ``python -m models.train``).

    Args:
      config: the run's settings.
      devices: the devices of the data-parallel mesh (default: all).
      on_step: called as ``on_step(step, train_metrics)`` after each completed step and its
        evaluation/checkpoint (tests use it to interrupt a run).
      log: where one-line messages go.
      compiler_options: XLA options for every ``jax.jit`` of the run (tests use a low
        optimisation level to compile faster); they do not change the results' meaning.

    Raises:
      ConfigError, DataError, CheckpointError: bad settings, data or checkpoint.
    """
    t_begin = time.perf_counter()
    validate_config(config)
    try:
        options = deq_options(config) if config.model == "deq" else {}
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from err
    _initialize_distributed(config)
    writer = jax.process_index() == 0
    mesh = make_mesh(devices)
    try:
        check_batch_divisible(config.batch_size, mesh)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    rows = process_rows(config.batch_size)

    run_dir = Path(config.run_dir)
    ckpt = checkpoint_path(run_dir)
    if config.resume:  # refuse a mismatched resume before any expensive work
        check_config(read_meta(ckpt)["config"], config.to_dict(), ckpt)

    corpus = load_corpus(config.data, max_bytes=config.max_bytes or None)
    try:
        train_bytes, valid_bytes = split_corpus(corpus, config.valid_fraction, config.seq_len + 1)
        next(eval_batches(valid_bytes, config.batch_size, config.seq_len))  # one batch at least
    except DataError as err:
        raise DataError(f"corpus {config.data!r} is too short: {err}") from err
    unigram = unigram_bits_per_byte(train_bytes, valid_bytes)
    sampler = BatchSampler(train_bytes, config.batch_size, config.seq_len, config.seed)

    defaults = TrainConfig()
    key = dataclasses.replace(config, **{k: getattr(defaults, k) for k in RESUMABLE_KEYS})
    programs = _programs(key, mesh, tuple(sorted((compiler_options or {}).items())))
    model, train_step, eval_step = programs.model, programs.train_step, programs.eval_step
    host_state = programs.initial_state
    start = 0
    if config.resume:
        host_state, meta = load_checkpoint(ckpt, host_state)
        check_config(meta["config"], config.to_dict(), ckpt)
        start = int(meta["step"])
    state = replicate(host_state, mesh)

    metrics_log = MetricsLog(run_dir, enabled=writer)
    metrics_log.start(start if config.resume else None)
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        n_params = sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(host_state.params))
        what = (
            f"DEQ (solver {config.solver}, backward {config.backward}, {options})"
            if config.model == "deq"
            else f"{config.model} stack of depth {config.depth}"
        )
        log(
            f"{what}; {n_params:,} parameters; {len(train_bytes):,} train / "
            f"{len(valid_bytes):,} valid bytes of {config.data!r}; unigram baseline "
            f"{unigram:.3f} bits/byte; {len(mesh.devices.flat)} device(s); "
            + (f"resuming at step {start}" if config.resume else "starting at step 0")
        )

    def evaluate(max_batches: int | None) -> dict[str, float]:
        results = [
            to_host(eval_step(state.params, shard_batch(batch[rows], mesh)))
            for batch in eval_batches(valid_bytes, config.batch_size, config.seq_len, max_batches)
        ]
        return summarize_eval(results)

    def checkpoint(step: int) -> None:
        host = to_host(state)
        if writer:
            save_checkpoint(ckpt, host, step=step, config=config.to_dict())

    def say(message: str) -> None:  # above the progress bar when there is one
        if config.progress:
            bar.write(message)
        else:
            log(message)

    tokens_per_step = config.batch_size * config.seq_len
    t_start = time.perf_counter()
    status = "completed"
    with _Interrupt() as interrupt, BackwardWarningCounter() as backward_warnings, _progress(
        config, start, writer
    ) as bar:
        for step in range(start, config.steps):
            t_step = time.perf_counter()
            batch = shard_batch(sampler.batch(step)[rows], mesh)
            seen = backward_warnings.count
            state, metrics = train_step(state, batch)
            values = {k: float(v) for k, v in to_host(metrics).items()}
            values["backward_unconverged"] = float(backward_warnings.count > seen)
            if seen == 0 and backward_warnings.count and writer:
                say(f"note (step {step + 1}; counted in the metrics, not repeated): "
                    f"{backward_warnings.first}")
            done = step + 1
            elapsed = time.perf_counter() - t_step
            metrics_log.write(
                "train",
                done,
                {**values, "time": time.perf_counter() - t_start,
                 "tokens_per_s": tokens_per_step / max(elapsed, 1e-9)},
            )
            bar.set_postfix(
                loss=f"{values['loss']:.3f}",
                bpb=f"{values['bpb']:.3f}",
                steps=f"{values['solver_steps']:.1f}",
                res=f"{values['rel_residual']:.1e}",
                refresh=False,
            )
            bar.update(1)
            if config.eval_every and done % config.eval_every == 0 and done < config.steps:
                valid = evaluate(config.eval_batches or None)
                metrics_log.write("valid", done, valid)
                if writer:
                    say(
                        f"step {done}: valid {valid['bpb']:.3f} bits/byte, "
                        f"{valid['solver_steps']:.1f} solver steps"
                    )
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                checkpoint(done)
            if on_step is not None:
                on_step(done, values)
            if interrupt.requested and done < config.steps:
                checkpoint(done)
                status = "interrupted"
                break

    final_step = int(to_host(state.step))
    if status == "interrupted":
        if writer:
            log(
                f"interrupted after step {final_step}: checkpoint written to {str(ckpt)!r}; "
                "continue with the same flags plus --resume"
            )
        return TrainResult(status, final_step, to_host(state), None, unigram)

    valid = evaluate(None)
    metrics_log.write("valid", final_step, valid)
    checkpoint(final_step)
    host = to_host(state)
    sample = ""
    summary: dict[str, Any] = {
        "step": final_step,
        "valid_bpb": valid["bpb"],
        "unigram_bpb": unigram,
        "uniform_bpb": 8.0,
        "valid_solver_steps": valid["solver_steps"],
        "valid_rel_residual": valid["rel_residual"],
        "train_seconds": time.perf_counter() - t_start,
        "wall_seconds": time.perf_counter() - t_begin,
    }
    if writer:
        records = read_metrics(metrics_log.path)
        summary["backward_unconverged_steps"] = int(sum(
            r.get("backward_unconverged", 0) for r in records if r["split"] == "train"
        ))
        plot_metrics(records, run_dir / PLOT_NAME, baselines={"unigram": unigram, "uniform": 8.0})
        if config.sample_len:
            sample = generate(
                model, host.params, config.sample_prompt.encode("utf-8"), config.sample_len,
                seq_len=config.seq_len, temperature=config.temperature, seed=config.seed,
            )
            (run_dir / "sample.txt").write_text(sample + "\n", encoding="utf-8")
        summary["sample"] = sample
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log(
            f"done: {final_step} steps in {summary['wall_seconds']:.0f}s; validation "
            f"{valid['bpb']:.3f} bits/byte (unigram {unigram:.3f}, uniform 8.000); forward "
            f"solver {valid['solver_steps']:.1f} steps, relative residual "
            f"{valid['rel_residual']:.1e}; outputs in {str(run_dir)!r}"
        )
        if sample:
            log("sample:\n" + sample)
    return TrainResult("completed", final_step, host, valid["bpb"], unigram, sample, summary)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, train, and map expected failures to a one-line message and an exit code."""
    config = parse_config(argv)
    try:
        result = train(config)
    except (ConfigError, DataError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return ERROR_EXIT
    except KeyboardInterrupt:
        print("interrupted (no checkpoint written)", file=sys.stderr)
        return INTERRUPTED_EXIT
    return INTERRUPTED_EXIT if result.status == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main())
