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
from models.config import ConfigError, TrainConfig, parse_config, validate_config
from models.data import (
    BatchSampler,
    DataError,
    eval_batches,
    load_corpus,
    split_corpus,
    unigram_bits_per_byte,
)
from models.lm import deq_backward, deq_solver, make_model
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
def _programs(key: TrainConfig, mesh: Any, options: tuple) -> _Programs:
    """Model, optimizer, initial state and compiled steps for ``key`` (a
    :meth:`TrainConfig.compile_key`) on ``mesh``.

    Cached, so calling :func:`train` again in one process (a resumed run, a notebook, a
    test) reuses the compiled steps.
    """
    compiler_options = dict(options) or None
    model = make_model(key)
    optimizer = make_optimizer(key)
    schedule = learning_rate_schedule(key)
    return _Programs(
        model,
        optimizer,
        schedule,
        to_host(init_state(model, optimizer, key, compiler_options)),
        make_train_step(model, optimizer, schedule, key, mesh, compiler_options),
        make_eval_step(model, key, mesh, compiler_options),
    )


def _initialize_distributed(config: TrainConfig) -> None:
    if config.distributed:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address or None,
            num_processes=config.num_processes or None,
            process_id=config.process_id if config.process_id >= 0 else None,
        )


@dataclasses.dataclass
class _Run:
    """A run being trained: its data, compiled programs, state and outputs."""

    config: TrainConfig
    log: Callable[[str], None]
    writer: bool  # this process writes the run directory
    mesh: Any
    rows: Any  # this process's rows of a global batch
    run_dir: Path
    valid_bytes: np.ndarray
    unigram: float
    sampler: BatchSampler
    programs: _Programs
    state: TrainState
    start: int
    metrics_log: MetricsLog
    t_begin: float
    train_seconds: float = 0.0  # in the loop, this session

    @property
    def checkpoint_file(self) -> Path:
        return checkpoint_path(self.run_dir)

    def evaluate(self, max_batches: int | None) -> dict[str, float]:
        """Validation bits per byte and solver statistics on ``max_batches`` (None: all)."""
        c = self.config
        results = [
            to_host(self.programs.eval_step(self.state.params, shard_batch(batch[self.rows],
                                                                           self.mesh)))
            for batch in eval_batches(self.valid_bytes, c.batch_size, c.seq_len, max_batches)
        ]
        return summarize_eval(results)

    def checkpoint(self, step: int) -> None:
        host = to_host(self.state)
        if self.writer:
            save_checkpoint(self.checkpoint_file, host, step=step, config=self.config.to_dict())


def _setup(
    config: TrainConfig,
    devices: Sequence[jax.Device] | None,
    log: Callable[[str], None],
    compiler_options: dict[str, Any] | None,
) -> _Run:
    """Check the settings, load the data, build (or reuse) the compiled programs and the
    state to start from (fresh or the checkpoint's); say what will run."""
    t_begin = time.perf_counter()
    validate_config(config)
    try:
        solver = deq_solver(config) if config.model == "deq" else None
        backward = deq_backward(config) if config.model == "deq" else None
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from err
    _initialize_distributed(config)
    writer = jax.process_index() == 0
    mesh = make_mesh(devices)
    try:
        check_batch_divisible(config.batch_size, mesh)
    except ValueError as err:
        raise ConfigError(str(err)) from err

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

    programs = _programs(
        config.compile_key(), mesh, tuple(sorted((compiler_options or {}).items()))
    )
    host_state, start = programs.initial_state, 0
    if config.resume:
        host_state, meta = load_checkpoint(ckpt, host_state)
        check_config(meta["config"], config.to_dict(), ckpt)
        start = int(meta["step"])

    metrics_log = MetricsLog(run_dir, enabled=writer)
    metrics_log.start(start if config.resume else None)
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        n_params = sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(host_state.params))
        what = (
            f"DEQ (solver {solver}, backward {backward})"
            if config.model == "deq"
            else f"{config.model} stack of depth {config.depth}"
        )
        log(
            f"{what}; {n_params:,} parameters; {len(train_bytes):,} train / "
            f"{len(valid_bytes):,} valid bytes of {config.data!r}; unigram baseline "
            f"{unigram:.3f} bits/byte; {len(mesh.devices.flat)} device(s); "
            + (f"resuming at step {start}" if config.resume else "starting at step 0")
        )
    return _Run(
        config=config, log=log, writer=writer, mesh=mesh,
        rows=process_rows(config.batch_size), run_dir=run_dir, valid_bytes=valid_bytes,
        unigram=unigram,
        sampler=BatchSampler(train_bytes, config.batch_size, config.seq_len, config.seed),
        programs=programs, state=replicate(host_state, mesh), start=start,
        metrics_log=metrics_log, t_begin=t_begin,
    )


def _loop(run: _Run, on_step: StepHook | None) -> str:
    """Train from ``run.start`` to ``config.steps`` (see the module docstring); return
    ``"completed"``, or ``"interrupted"`` after a Ctrl-C (a checkpoint is then written)."""
    config = run.config
    tokens_per_step = config.batch_size * config.seq_len
    t_start = time.perf_counter()

    def say(message: str) -> None:  # above the progress bar when there is one
        if config.progress:
            bar.write(message)
        else:
            run.log(message)

    with _Interrupt() as interrupt, BackwardWarningCounter() as backward_warnings, _progress(
        config, run.start, run.writer
    ) as bar:
        for step in range(run.start, config.steps):
            t_step = time.perf_counter()
            batch = shard_batch(run.sampler.batch(step)[run.rows], run.mesh)
            seen = backward_warnings.count
            run.state, metrics = run.programs.train_step(run.state, batch)
            values = {k: float(v) for k, v in to_host(metrics).items()}
            values["backward_unconverged"] = float(backward_warnings.count > seen)
            if seen == 0 and backward_warnings.count and run.writer:
                say(f"note (step {step + 1}; counted in the metrics, not repeated): "
                    f"{backward_warnings.first}")
            done = step + 1
            elapsed = time.perf_counter() - t_step
            run.metrics_log.write(
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
                valid = run.evaluate(config.eval_batches or None)
                run.metrics_log.write("valid", done, valid)
                if run.writer:
                    say(
                        f"step {done}: valid {valid['bpb']:.3f} bits/byte, "
                        f"{valid['solver_steps']:.1f} solver steps"
                    )
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                run.checkpoint(done)
            if on_step is not None:
                on_step(done, values)
            run.train_seconds = time.perf_counter() - t_start
            if interrupt.requested and done < config.steps:
                run.checkpoint(done)
                return "interrupted"
    return "completed"


def _finish(run: _Run, status: str) -> TrainResult:
    """After the loop: on completion, validate on the whole held-out text, checkpoint,
    plot, sample and summarise; after an interruption, say how to resume."""
    config, log = run.config, run.log
    final_step = int(to_host(run.state.step))
    if status == "interrupted":
        if run.writer:
            log(
                f"interrupted after step {final_step}: checkpoint written to "
                f"{str(run.checkpoint_file)!r}; continue with the same flags plus --resume"
            )
        return TrainResult(status, final_step, to_host(run.state), None, run.unigram)

    valid = run.evaluate(None)
    run.metrics_log.write("valid", final_step, valid)
    run.checkpoint(final_step)
    host = to_host(run.state)
    sample = ""
    summary: dict[str, Any] = {
        "step": final_step,
        "valid_bpb": valid["bpb"],
        "unigram_bpb": run.unigram,
        "uniform_bpb": 8.0,
        "valid_solver_steps": valid["solver_steps"],
        "valid_rel_residual": valid["rel_residual"],
        "train_seconds": run.train_seconds,
        "wall_seconds": time.perf_counter() - run.t_begin,
    }
    if run.writer:
        records = read_metrics(run.metrics_log.path)
        summary["backward_unconverged_steps"] = int(sum(
            r.get("backward_unconverged", 0) for r in records if r["split"] == "train"
        ))
        plot_metrics(records, run.run_dir / PLOT_NAME,
                     baselines={"unigram": run.unigram, "uniform": 8.0})
        if config.sample_len:
            sample = generate(
                run.programs.model, host.params, config.sample_prompt.encode("utf-8"),
                config.sample_len, seq_len=config.seq_len, temperature=config.temperature,
                seed=config.seed,
            )
            (run.run_dir / "sample.txt").write_text(sample + "\n", encoding="utf-8")
        summary["sample"] = sample
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log(
            f"done: {final_step} steps in {summary['wall_seconds']:.0f}s; validation "
            f"{valid['bpb']:.3f} bits/byte (unigram {run.unigram:.3f}, uniform 8.000); forward "
            f"solver {valid['solver_steps']:.1f} steps, relative residual "
            f"{valid['rel_residual']:.1e}; outputs in {str(run.run_dir)!r}"
        )
        if sample:
            log("sample:\n" + sample)
    return TrainResult("completed", final_step, host, valid["bpb"], run.unigram, sample, summary)


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
    run = _setup(config, devices, log, compiler_options)
    return _finish(run, _loop(run, on_step))


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
