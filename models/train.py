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
parameters and metrics as an uninterrupted run; ``--resume`` with a larger ``--steps`` extends
the run, re-laying the learning-rate schedule for the new total.

The run directory is safe (:mod:`models.rundir`): writable, one process at a time
(``run.lock``) and one user's, stale temporary files deleted at start, a fresh start over an
existing run refused without ``--overwrite``, the checkpoint before the latest kept as
``checkpoint.prev.npz``, and a checkpoint verified before it is used
(:mod:`models.checkpoint`). All of that is checked before the data is loaded and the steps
are compiled. The SHA-256 of the corpus's bytes is recorded in ``config.json`` and in every
checkpoint; ``--resume`` on a corpus that has changed since is refused, naming it, unless
``--allow-data-change``. A write that fails (a full disk: ``ENOSPC``; a file-size limit:
``EFBIG``) stops training with one line naming the file and the last checkpoint, which it
leaves intact, and leaves nothing half-written (:mod:`models.metrics`, :mod:`models.rundir`).

A ``--distributed`` run that loses a process stops at once in every other process, with one
``error:`` line naming the lost one (:mod:`models.peers`); restarting all of them with
``--resume`` continues it bit for bit.

Exit status: 0 done; 2 bad settings, data, checkpoint, metrics or run directory, a failed
write, or a lost process (one ``error:`` line); 3 training stopped because a training or
validation loss, or the updated parameters, were not finite (that step is not checkpointed;
the last good checkpoint is kept); 130 interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from implicit import reference_configuration
from models.checkpoint import (
    CHECKPOINT_NAME,
    PREVIOUS_NAME,
    Checkpoint,
    CheckpointError,
    check_config,
    checkpoint_path,
    previous_checkpoint_path,
    read_run_checkpoint,
    restore,
    save_checkpoint,
)
from models.config import ConfigError, TrainConfig, given_flags, parse_config, validate_config
from models.data import (
    BatchSampler,
    DataError,
    eval_batches,
    load_corpus,
    split_corpus,
    unigram_bits_per_byte,
)
from models.lm import deq_backward, deq_solver, make_model, unrolled_warmup
from models.metrics import (
    METRICS_NAME,
    PLOT_NAME,
    MetricsError,
    MetricsLog,
    plot_metrics,
    read_metrics,
)
from models.optim import learning_rate_schedule, make_optimizer
from models.peers import (
    PeerLostError,
    join_supervisor,
    lost_peer,
    peer_table,
    supervise,
    wants_supervisor,
)
from models.rundir import (
    RunDirError,
    RunLock,
    atomic_write,
    check_writable,
    ensure_run_dir,
    remove_stale_temporaries,
    writing,
)
from models.sample import generate
from models.sharding import (
    check_batch_divisible,
    make_mesh,
    process_rows,
    replicate,
    shard_batch,
    to_host,
)
from models.solve_metrics import KINDS as SOLVE_KINDS
from models.solve_metrics import BackwardLog, SolveWarnings
from models.step import (
    STOPPED_METRICS,
    TrainState,
    init_state,
    make_audit_step,
    make_eval_step,
    make_train_step,
    summarize_eval,
)
from models.xla_setup import prefer_memory_schedule

__all__ = [
    "TrainResult",
    "train",
    "main",
    "command",
    "INTERRUPTED_EXIT",
    "ERROR_EXIT",
    "DIVERGED_EXIT",
    "EXPECTED_ERRORS",
    "RUN_FILES",
]

INTERRUPTED_EXIT: int = 130
ERROR_EXIT: int = 2
DIVERGED_EXIT: int = 3

EXPECTED_ERRORS: tuple[type[Exception], ...] = (
    ConfigError, DataError, CheckpointError, MetricsError, RunDirError, PeerLostError,
)
"""Failures that ``main`` reports as one ``error:`` line with status 2."""

CONFIG_NAME, SUMMARY_NAME, SAMPLE_NAME = "config.json", "summary.json", "sample.txt"
DATA_HASH_KEY: str = "data_sha256"
"""The key of the corpus's SHA-256 in ``config.json`` and in each checkpoint's metadata."""
RUN_FILES: tuple[str, ...] = (
    CHECKPOINT_NAME, PREVIOUS_NAME, METRICS_NAME, PLOT_NAME, CONFIG_NAME, SUMMARY_NAME,
    SAMPLE_NAME,
)
"""The files a run writes in its directory (``--overwrite`` deletes them)."""

StepHook = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
      status: ``"completed"``, ``"interrupted"`` (a checkpoint was written at ``step``) or
        ``"diverged"`` (a training or validation loss, or the updated state, was not finite;
        that step was not checkpointed, and ``message`` says so).
      step: completed training steps (a step whose loss or update was not finite excluded).
      state: the final train state as NumPy arrays (the last finite one).
      valid_bpb: bits per byte on the whole validation text (``None`` unless completed).
      unigram_bpb: the unigram baseline on the same text.
      sample: the generated text (``""`` if none).
      summary: the contents of ``summary.json``.
      message: why a run stopped early (``""`` if it did not).
    """

    status: str
    step: int
    state: TrainState
    valid_bpb: float | None
    unigram_bpb: float
    sample: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    message: str = ""


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
    warmup_step: Any  # the unrolled warm-up's train step; None unless --warmup-unrolled
    eval_step: Any
    audit_step: Any  # None unless --audit-every
    backward_log: BackwardLog  # what the compiled step's adjoint solves report


@functools.lru_cache(maxsize=4)
def _programs(key: TrainConfig, mesh: Any, options: tuple) -> _Programs:
    """Model, optimizer, initial state and compiled steps for ``key`` (a
    :meth:`TrainConfig.compile_key`) on ``mesh``.

    Cached, so calling :func:`train` again in one process (a resumed run, a notebook, a
    test) reuses the compiled steps. ``key`` includes ``steps``: the learning-rate schedule
    is part of the compiled step, so a run extended to a larger ``--steps`` compiles anew.
    """
    compiler_options = dict(options) or None
    backward_log = BackwardLog()
    deq = key.model == "deq"
    model = make_model(key, backward=deq_backward(key, backward_log) if deq else None)
    optimizer = make_optimizer(key)
    schedule = learning_rate_schedule(key)
    evaluated = model
    if deq and key.eval_max_iter:
        evaluated = make_model(key, solver=deq_solver(key).replace(max_iter=key.eval_max_iter))
    warmup_step = None
    if deq and key.warmup_unrolled:
        unrolled = make_model(key, *unrolled_warmup(key))
        warmup_step = make_train_step(unrolled, optimizer, schedule, key, mesh, compiler_options)
    audit_step = None
    if deq and key.audit_every:
        solver, backward = reference_configuration(deq_solver(key))
        audit_step = make_audit_step(model, make_model(key, solver, backward), key, mesh,
                                     compiler_options)
    return _Programs(
        model,
        optimizer,
        schedule,
        to_host(init_state(model, optimizer, key, compiler_options)),
        make_train_step(model, optimizer, schedule, key, mesh, compiler_options),
        warmup_step,
        make_eval_step(evaluated, key, mesh, compiler_options),
        audit_step,
        backward_log,
    )


def _initialize_distributed(config: TrainConfig) -> None:
    """Join the other processes (``--distributed``): a process that stops answering for
    ``--peer-timeout`` seconds counts as lost (JAX's heartbeat timeout), and so does one that
    has not joined within ``max(300, --peer-timeout)`` seconds."""
    if not config.distributed:
        return
    try:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address or None,
            num_processes=config.num_processes or None,
            process_id=config.process_id if config.process_id >= 0 else None,
            initialization_timeout=max(300, config.peer_timeout),
            heartbeat_timeout_seconds=config.peer_timeout,
            shutdown_timeout_seconds=config.peer_timeout,
        )
    except (RuntimeError, ValueError) as err:
        where = config.coordinator_address or "the auto-detected coordinator"
        raise PeerLostError(
            f"--distributed: could not join the run's processes at {where}: "
            f"{' '.join(str(err).split())[:300]}"
        ) from err


@dataclasses.dataclass
class _Run:
    """A run being trained: its data, compiled programs, state and outputs."""

    config: TrainConfig
    log: Callable[[str], None]
    writer: bool  # this process writes the run directory
    peers: list[dict[str, Any]]  # every process's pid and host, in process order
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
    last_checkpoint: int | None  # the step of the latest checkpoint in run_dir, if any
    data_sha256: str  # of the corpus's bytes, recorded in config.json and each checkpoint
    train_seconds: float = 0.0  # in the loop, this session
    stop_reason: str = ""  # why the loop stopped early, if it did

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
        """Write the state as the checkpoint of ``step`` (once), keeping the one before."""
        if self.last_checkpoint == step:
            return
        host = to_host(self.state)
        if self.writer:
            with writing(self.checkpoint_file):
                save_checkpoint(self.checkpoint_file, host, step=step,
                                config=self.config.to_dict(),
                                previous=previous_checkpoint_path(self.run_dir),
                                extra={DATA_HASH_KEY: self.data_sha256})
        self.last_checkpoint = step

    def kept(self) -> str:
        """Where a stopped run can continue from: its intact last checkpoint, if any."""
        if self.last_checkpoint is None:
            return "no checkpoint had been written yet"
        return (f"the checkpoint of step {self.last_checkpoint} ({str(self.checkpoint_file)!r}) "
                "is intact")


def _holds_run(run_dir: Path) -> list[str]:
    """The files that make ``run_dir`` hold a run: checkpoints, or metrics with records."""
    held = [name for name in (CHECKPOINT_NAME, PREVIOUS_NAME) if (run_dir / name).exists()]
    metrics = run_dir / METRICS_NAME
    if metrics.is_file() and metrics.stat().st_size:
        held.append(METRICS_NAME)
    return held


def _claim_run_dir(
    config: TrainConfig, run_dir: Path, log: Callable[[str], None], stack: contextlib.ExitStack
) -> None:
    """Make and lock the run directory (released when ``stack`` closes), delete stale
    temporary files, and refuse a fresh start over a run without ``--overwrite``."""
    ensure_run_dir(run_dir)
    check_writable(run_dir)
    lock = stack.enter_context(RunLock(run_dir))
    if lock.took_over is not None:
        log(f"note: process {lock.took_over} left its lock on {str(run_dir)!r} and is no "
            "longer running; taking the run directory over")
    removed = remove_stale_temporaries(run_dir, RUN_FILES)
    if removed:
        log(f"note: deleted {len(removed)} temporary file(s) left by an interrupted write: "
            + ", ".join(removed))
    held = _holds_run(run_dir)
    if held and not (config.resume or config.overwrite):
        raise RunDirError(
            f"run directory {str(run_dir)!r} already holds a run ({', '.join(held)}); pass "
            "--resume to continue it or --overwrite to replace it, or use another --run-dir"
        )
    if held and config.overwrite:
        log(f"--overwrite: replacing the run in {str(run_dir)!r}")
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)


def _resume_point(
    config: TrainConfig, run_dir: Path, log: Callable[[str], None]
) -> Checkpoint | None:
    """The verified checkpoint to resume from (None for a fresh start); says when the run
    is extended to a larger ``--steps``."""
    if not config.resume:
        return None
    checkpoint = read_run_checkpoint(run_dir)
    old_total = check_config(checkpoint.config, config.to_dict(), checkpoint.path)
    if old_total is not None:
        log(f"extending the run from {old_total} to {config.steps} steps: the learning-rate "
            f"schedule is re-laid for {config.steps} steps (resuming at step {checkpoint.step})")
    return checkpoint


def _setup(
    config: TrainConfig,
    devices: Sequence[jax.Device] | None,
    log: Callable[[str], None],
    compiler_options: dict[str, Any] | None,
    stack: contextlib.ExitStack,
) -> _Run:
    """Check the settings and the run directory (claimed until ``stack`` closes) and the
    checkpoint to resume from, then load the data, build (or reuse) the compiled programs
    and the state to start from; say what will run."""
    t_begin = time.perf_counter()
    validate_config(config)
    try:
        solver = deq_solver(config) if config.model == "deq" else None
        backward = deq_backward(config) if config.model == "deq" else None
        if backward is not None:
            solver = backward.prepare(solver)  # the forward solver the mode runs
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from err
    _initialize_distributed(config)
    writer = jax.process_index() == 0
    if not writer:
        log = _silent
    mesh = make_mesh(devices)
    peers = peer_table()
    try:
        check_batch_divisible(config.batch_size, mesh)
    except ValueError as err:
        raise ConfigError(str(err)) from err

    # the run directory and the checkpoint, before any expensive work
    run_dir = Path(config.run_dir)
    if writer:
        _claim_run_dir(config, run_dir, log, stack)
    checkpoint = _resume_point(config, run_dir, log)
    start = checkpoint.step if checkpoint is not None else 0
    metrics_log = MetricsLog(run_dir, enabled=writer)
    metrics_log.start(start if checkpoint is not None else None)

    corpus = load_corpus(config.data, max_bytes=config.max_bytes or None)
    data_sha256 = hashlib.sha256(corpus).hexdigest()
    if checkpoint is not None:
        _check_data(config, checkpoint, data_sha256, len(corpus), log)
    if writer:
        with writing(run_dir / CONFIG_NAME):
            atomic_write(run_dir / CONFIG_NAME, json.dumps(
                {**config.to_dict(), DATA_HASH_KEY: data_sha256}, indent=2) + "\n")
    try:
        train_bytes, valid_bytes = split_corpus(corpus, config.valid_fraction, config.seq_len + 1)
        next(eval_batches(valid_bytes, config.batch_size, config.seq_len))  # one batch at least
    except DataError as err:
        raise DataError(f"corpus {config.data!r} is too short: {err}") from err
    unigram = unigram_bits_per_byte(train_bytes, valid_bytes)

    programs = _programs(
        config.compile_key(), mesh, tuple(sorted((compiler_options or {}).items()))
    )
    host_state = programs.initial_state
    if checkpoint is not None:
        host_state = restore(checkpoint, host_state)

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
        + (f"resuming at step {start}" if checkpoint is not None else "starting at step 0")
    )
    return _Run(
        config=config, log=log, writer=writer, peers=peers, mesh=mesh,
        rows=process_rows(config.batch_size), run_dir=run_dir, valid_bytes=valid_bytes,
        unigram=unigram,
        sampler=BatchSampler(train_bytes, config.batch_size, config.seq_len, config.seed),
        programs=programs, state=replicate(host_state, mesh), start=start,
        metrics_log=metrics_log, t_begin=t_begin,
        last_checkpoint=checkpoint.step if checkpoint is not None else None,
        data_sha256=data_sha256,
    )


def _check_data(config: TrainConfig, checkpoint: Checkpoint, digest: str, size: int,
                log: Callable[[str], None]) -> None:
    """Refuse to resume on a corpus whose bytes differ from those the checkpoint was trained
    on (by their SHA-256), unless ``--allow-data-change``."""
    recorded = checkpoint.meta.get(DATA_HASH_KEY)
    if recorded is None:
        log(f"note: checkpoint {str(checkpoint.path)!r} records no hash of its data (written "
            "by an older version); the corpus is not checked")
        return
    if recorded == digest:
        return
    change = (f"the corpus {config.data!r} has changed since the checkpoint of step "
              f"{checkpoint.step} was written (SHA-256 {recorded[:12]}… then, {digest[:12]}… "
              f"now, of its {size:,} bytes)")
    if not config.allow_data_change:
        raise DataError(f"{change}: resuming would train on other text than the run began "
                        "with. Restore it, or pass --allow-data-change to continue on the "
                        "new text")
    log(f"note: {change}; continuing on the new text (--allow-data-change)")


def _silent(message: str) -> None:
    """The log of the processes that do not write the run directory."""


_TRAIN_CHECKS = {"loss": "the loss", "grad_norm": "the gradient norm"}
_VALID_CHECKS = {"bpb": "the validation loss"}


def _non_finite(values: dict[str, float], checks: dict[str, str]) -> str | None:
    """What is not finite in a step's or an evaluation's metrics, or None."""
    for key, name in checks.items():
        if not math.isfinite(values[key]):
            return f"{name} is not finite ({values[key]})"
    if values.get("state_finite", 1.0) != 1.0:
        return "the updated parameters or optimizer state are not finite"
    return None


def _stopped_message(run: _Run, step: int, problem: str) -> str:
    """The one line that says why and where training stopped on non-finite values."""
    kept = (
        f"the last good checkpoint, at step {run.last_checkpoint}, is kept "
        f"({str(run.checkpoint_file)!r})"
        if run.last_checkpoint is not None
        else "no checkpoint was written"
    )
    return (
        f"training stopped at step {step}: {problem}; {kept}. Lower --lr (now "
        f"{run.config.lr:g}), raise --warmup-steps or lower --clip-norm, and start afresh with "
        "--overwrite (resuming with the same settings would diverge again)"
    )


def _postfix(values: dict[str, float], missed: dict[str, int]) -> dict[str, str]:
    """The progress bar's fields: the loss, and what the solves did this step (forward
    iterations and share of sequences converged, adjoint iterations) and this session
    (steps whose forward or adjoint solve missed its tolerance)."""
    fields = {
        "loss": f"{values['loss']:.3f}",
        "bpb": f"{values['bpb']:.3f}",
        "fwd": f"{values['solver_steps']:.1f}",
        "conv": f"{100 * values['converged']:.0f}%",
    }
    if "backward_steps" in values:
        fields["bwd"] = f"{values['backward_steps']:.1f}"
    if "backward_fallback" in values:
        fields["fb"] = f"{100 * values['backward_fallback']:.0f}%"
    if any(missed.values()):
        fields["missed"] = f"{missed['forward']}f/{missed['backward']}b"
    return fields


def _loop(run: _Run, on_step: StepHook | None) -> str:
    """Train from ``run.start`` to ``config.steps`` (see the module docstring); return
    ``"completed"``, ``"interrupted"`` after a Ctrl-C (a checkpoint is then written), or
    ``"diverged"`` when a step's loss or new state, or a validation loss, is not finite
    (``run.stop_reason`` then says what happened; a non-finite step is not kept in
    ``run.state``)."""
    config, programs = run.config, run.programs
    tokens_per_step = config.batch_size * config.seq_len
    t_start = time.perf_counter()
    missed = {kind: 0 for kind in SOLVE_KINDS}

    def say(message: str) -> None:  # above the progress bar when there is one
        if config.progress:
            bar.write(message)
        else:
            run.log(message)

    with _Interrupt() as interrupt, SolveWarnings() as solve_warnings, _progress(
        config, run.start, run.writer
    ) as bar:
        for step in range(run.start, config.steps):
            t_step = time.perf_counter()
            batch = shard_batch(run.sampler.batch(step)[run.rows], run.mesh)
            before = dict(solve_warnings.counts)
            warming_up = programs.warmup_step is not None and step < config.warmup_unrolled
            train_step = programs.warmup_step if warming_up else programs.train_step
            new_state, metrics = train_step(run.state, batch)
            values = {k: float(v) for k, v in to_host(metrics).items()}
            problem = _non_finite(values, _TRAIN_CHECKS)
            if problem:
                run.stop_reason = _stopped_message(run, step + 1, problem)
                return "diverged"
            del values["state_finite"]
            values.update(programs.backward_log.take())
            for kind in SOLVE_KINDS:
                unconverged = solve_warnings.counts[kind] > before[kind]
                values[f"{kind}_unconverged"] = float(unconverged)
                if unconverged and not missed[kind] and run.writer:
                    say(f"note (step {step + 1}; counted in the metrics and the progress bar, "
                        f"not repeated): {solve_warnings.first[kind]}")
                missed[kind] += unconverged
            done = step + 1
            if programs.audit_step is not None and done % config.audit_every == 0:
                values.update({k: float(v) for k, v in
                               to_host(programs.audit_step(run.state, batch)).items()})
                programs.backward_log.take()  # the audit's own solves are not the step's
            run.state = new_state
            elapsed = time.perf_counter() - t_step
            run.metrics_log.write(
                "train",
                done,
                {**values, "time": time.perf_counter() - t_start,
                 "tokens_per_s": tokens_per_step / max(elapsed, 1e-9)},
            )
            bar.set_postfix(_postfix(values, missed), refresh=False)
            bar.update(1)
            if config.eval_every and done % config.eval_every == 0 and done < config.steps:
                valid = run.evaluate(config.eval_batches or None)
                problem = _non_finite(valid, _VALID_CHECKS)
                if problem:
                    run.stop_reason = _stopped_message(run, done, problem)
                    return "diverged"
                run.metrics_log.write("valid", done, valid)
                if run.writer:
                    say(
                        f"step {done}: valid {valid['bpb']:.3f} bits/byte, "
                        f"{valid['solver_steps']:.1f} solver steps, "
                        f"{100 * valid['converged']:.0f}% converged"
                    )
            if config.checkpoint_every and done % config.checkpoint_every == 0 and (
                done < config.steps  # the last one after the final validation (_finish)
            ):
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
    plot, sample and summarise; after an interruption, say how to resume; after a
    divergence, return the last good state and the reason (``main`` prints it)."""
    config, log = run.config, run.log
    final_step = int(to_host(run.state.step))
    if status == "interrupted":
        log(
            f"interrupted after step {final_step}: checkpoint written to "
            f"{str(run.checkpoint_file)!r}; continue with the same flags plus --resume"
        )
        return TrainResult(status, final_step, to_host(run.state), None, run.unigram)
    if status == "completed":
        valid = run.evaluate(None)
        problem = _non_finite(valid, _VALID_CHECKS)
        if problem:
            run.stop_reason, status = _stopped_message(run, final_step, problem), "diverged"
    if status == "diverged":
        return TrainResult(status, final_step, to_host(run.state), None, run.unigram,
                           message=run.stop_reason)

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
        "valid_solver_fevals": valid["solver_fevals"],
        "valid_rel_residual": valid["rel_residual"],
        "valid_converged": valid["converged"],
        **{f"valid_{key}": valid[key] for key in STOPPED_METRICS},
        "train_seconds": run.train_seconds,
        "wall_seconds": time.perf_counter() - run.t_begin,
    }
    if run.writer:
        records = read_metrics(run.metrics_log.path)
        summary.update(_solve_summary([r for r in records if r["split"] == "train"]))
        plot_metrics(records, run.run_dir / PLOT_NAME,
                     baselines={"unigram": run.unigram, "uniform": 8.0})
        if config.sample_len:
            sample = generate(
                run.programs.model, host.params, config.sample_prompt.encode("utf-8"),
                config.sample_len, seq_len=config.seq_len, temperature=config.temperature,
                seed=config.seed,
            )
            with writing(run.run_dir / SAMPLE_NAME):
                atomic_write(run.run_dir / SAMPLE_NAME, sample + "\n")
        summary["sample"] = sample
        with writing(run.run_dir / SUMMARY_NAME):
            atomic_write(run.run_dir / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
        log(
            f"done: {final_step} steps in {summary['wall_seconds']:.0f}s; validation "
            f"{valid['bpb']:.3f} bits/byte (unigram {run.unigram:.3f}, uniform 8.000); forward "
            f"solver {valid['solver_steps']:.1f} steps, relative residual "
            f"{valid['rel_residual']:.1e}, {100 * valid['converged']:.1f}% of sequences "
            f"converged; outputs in {str(run.run_dir)!r}"
        )
        log(_solve_line(summary))
        if sample:
            log("sample:\n" + sample)
    return TrainResult("completed", final_step, host, valid["bpb"], run.unigram, sample, summary)


def _solve_summary(train: list[dict[str, Any]]) -> dict[str, Any]:
    """What the run's solves did, from its train records: the steps whose forward or
    adjoint solve missed its tolerance, the adjoint's mean iterations and converged share,
    and the gradient audit's cosines and relative errors."""
    summary: dict[str, Any] = {"train_steps": len(train)}
    for kind in SOLVE_KINDS:
        summary[f"{kind}_unconverged_steps"] = int(sum(
            r.get(f"{kind}_unconverged", 0) for r in train))
    for key in ("backward_steps", "backward_converged", "backward_fallback"):
        values = [r[key] for r in train if key in r]
        if values:
            summary[f"{key}_mean"] = float(np.mean(values))
    audits = [r for r in train if "audit_cosine" in r]
    if audits:
        cosines = [r["audit_cosine"] for r in audits]
        summary["audit"] = {
            "count": len(audits), "cosine_min": min(cosines),
            "cosine_mean": float(np.mean(cosines)), "cosine_last": cosines[-1],
            "rel_error_max": max(r["audit_rel_error"] for r in audits),
            "reference_converged_min": min(r["audit_reference_converged"] for r in audits),
            "cosine_converged_min": min(r["audit_cosine_converged"] for r in audits),
        }
    return summary


def _solve_line(summary: dict[str, Any]) -> str:
    """The end-of-run line about the solves (and the gradient audit, if any)."""
    steps = summary["train_steps"]
    line = (f"solves: the forward solve missed its tolerance in "
            f"{summary['forward_unconverged_steps']} of {steps} steps, the adjoint in "
            f"{summary['backward_unconverged_steps']}")
    if "backward_steps_mean" in summary:
        line += (f" ({summary['backward_steps_mean']:.1f} adjoint iterations on average, "
                 f"{100 * summary['backward_converged_mean']:.1f}% of sequences converged")
        if "backward_fallback_mean" in summary:
            line += (f", {100 * summary['backward_fallback_mean']:.1f}% fell back to the "
                     "approximate gradient")
        line += ")"
    audit = summary.get("audit")
    if audit:
        line += (f"; gradient audit over {audit['count']} steps: cosine to the exact gradient "
                 f"{audit['cosine_min']:.6f} at worst, {audit['cosine_last']:.6f} at the last")
        if audit["reference_converged_min"] < 1.0:
            line += (f" (the tight reference solve did not converge on up to "
                     f"{100 * (1 - audit['reference_converged_min']):.0f}% of an audited "
                     "batch's sequences, where no gradient is exact; on the others the cosine "
                     f"is {audit['cosine_converged_min']:.6f} at worst)")
    return line


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

    Returns:
      a :class:`TrainResult`; its ``status`` is ``"diverged"`` (and its ``message`` says why)
      when a non-finite loss or state stopped training.

    Raises:
      ConfigError, DataError, CheckpointError, MetricsError, RunDirError: bad settings,
      data (a corpus changed under ``--resume`` included), checkpoint, metrics file or run
      directory, or a write that failed (:data:`EXPECTED_ERRORS`).
      PeerLostError: a multi-process run lost one of its processes.
    """
    run: _Run | None = None
    try:
        with contextlib.ExitStack() as stack:  # holds the run directory's lock
            run = _setup(config, devices, log, compiler_options, stack)
            return _run(run, on_step)
    except Exception as err:
        count = len(run.peers) if run else jax.process_count()
        lost = lost_peer(err, jax.process_index(), count, run.peers if run else None,
                         *_where(run))
        if lost is None:
            raise
        raise lost from err


def _where(run: _Run | None) -> tuple[str, str]:
    """Where a run that lost a process was, and how to go on (for :func:`lost_peer`)."""
    if run is None:
        return "while starting", "Restart every process with the same flags"
    try:
        when = f"after step {int(to_host(run.state.step))}"
    except Exception:  # noqa: BLE001 — the state's buffers went with the failed step
        when = "while training"
    return (when, f"{run.kept()[0].upper()}{run.kept()[1:]}; when every process can run again, "
            "restart them all with the same flags plus --resume")


def _run(run: _Run, on_step: StepHook | None) -> TrainResult:
    """The loop and the end of a set-up run; a failed write says where to continue from."""
    try:
        return _finish(run, _loop(run, on_step))
    except RunDirError as err:
        done = int(to_host(run.state.step))
        then = ("continue with the same flags plus --resume" if run.last_checkpoint
                is not None else "start again with --overwrite")
        raise RunDirError(
            f"training stopped after step {done}: {err}. Nothing half-written was left "
            f"behind, and {run.kept()}: make room (or lift the limit), then {then}"
        ) from err


def _warning_line(message: Warning | str, category: type[Warning], *args: Any,
                  **kwargs: Any) -> None:
    """How the command shows a warning: one line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def _resumed_total(config: TrainConfig) -> TrainConfig:
    """``config`` with the ``--steps`` of the run it resumes: a plain ``--resume`` continues
    the run to its own total; only an explicit, larger ``--steps`` extends it. (An unreadable
    checkpoint is left for :func:`train` to report.)"""
    try:
        saved = read_run_checkpoint(config.run_dir).config
    except CheckpointError:
        return config
    steps = saved.get("steps")
    return dataclasses.replace(config, steps=steps) if isinstance(steps, int) else config


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, train, and map expected failures to a one-line message and an exit code
    (see the module docstring)."""
    config = parse_config(argv)
    if config.resume and "steps" not in given_flags(argv):
        config = _resumed_total(config)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_line
            result = train(config)
    except EXPECTED_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return ERROR_EXIT
    except KeyboardInterrupt:
        print("interrupted (no checkpoint written)", file=sys.stderr)
        return INTERRUPTED_EXIT
    if result.status == "diverged":
        print(f"error: {result.message}", file=sys.stderr)
        return DIVERGED_EXIT
    return INTERRUPTED_EXIT if result.status == "interrupted" else 0


def command(argv: Sequence[str] | None = None) -> int:
    """``python -m models.train``: :func:`main`, in a supervised child process under
    ``--distributed`` (:func:`models.peers.supervise`). A process of a multi-process run that
    fails leaves at once, without JAX's exit barrier (which would wait for the others, and
    they for it): its peers then report it lost instead of waiting."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_supervisor(argv):
        return supervise(argv)
    join_supervisor()
    prefer_memory_schedule()  # before JAX starts: see models.xla_setup
    status = main(argv)
    if status != 0 and jax.distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(command())
