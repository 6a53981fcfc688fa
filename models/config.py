"""The training configuration: one frozen dataclass, its command-line flags, and resume checks.

Every field of :class:`TrainConfig` is a flag of ``python -m models.train`` (``d_model`` is
``--d-model``); its help text is the field's ``help`` metadata and ``--help`` prints its
default. The defaults are the project's main job: a DEQ Transformer on the CPython
documentation that learns visibly in about five minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from implicit import BACKWARD_MODES
from models.transformer import BlockConfig

__all__ = [
    "MODELS",
    "BACKWARDS",
    "TrainConfig",
    "build_parser",
    "parse_config",
    "config_differences",
    "RESUMABLE_KEYS",
    "DATA_KEYS",
    "ConfigError",
    "validate_config",
]

MODELS: tuple[str, ...] = ("deq", "explicit", "untied")
"""``deq``: the DEQ Transformer; ``explicit``: the weight-tied stack of ``depth`` blocks
(the DEQ's unrolled twin); ``untied``: the same stack with separate weights per layer."""

BACKWARDS: tuple[str, ...] = BACKWARD_MODES
"""Backward modes of ``implicit.haiku.DEQ`` (the library's own names)."""


def _flag(default: Any, help: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (one flag per field)."""

    # data
    data: str = _flag(
        "pydoc",
        "corpus: 'pydoc' (CPython's documentation topics, ~0.46 MB), 'stdlib' (the standard "
        "library's source), 'tfds:<name>' (a locally prepared TFDS text dataset), or a path to "
        "a UTF-8 text file or folder of text files",
    )
    max_bytes: int = _flag(
        0, "keep at most this many bytes of the corpus (0: the source's default)"
    )
    valid_fraction: float = _flag(0.05, "share of the corpus (its end) held out for validation")
    # model
    model: str = _flag("deq", "which model", choices=MODELS)
    d_model: int = _flag(96, "width of the residual stream")
    num_heads: int = _flag(4, "attention heads (must divide --d-model)")
    block_layers: int = _flag(1, "attention+MLP layers inside the weight-tied block f")
    mlp_ratio: int = _flag(4, "MLP hidden width as a multiple of --d-model")
    dropout: float = _flag(0.0, "variational dropout rate inside the block (one mask per solve)")
    depth: int = _flag(8, "layers of the explicit stacks (--model explicit / untied)")
    init_std: float = _flag(0.02, "std of the truncated-normal weight initialisation")
    embed_std: float = _flag(1.0, "std of the token and position embeddings at initialisation")
    out_init_scale: float = _flag(
        1.0, "extra factor on the init std of the projections that write into the state"
    )
    spectral_norm: float = _flag(
        0.0, "bound on the spectral norm of every matrix of the block (0: off); a bound keeps "
        "f contractive and the solves short"
    )
    qk_norm: bool = _flag(
        False, "RMS-normalise queries and keys, which bounds the attention logits (and how "
        "sharply f can react to z)"
    )
    # DEQ solver
    solver: str = _flag(
        "anderson", "forward fixed-point solver, by registry name (with 'broyden' the default "
        "run's training loss jumps from 5 to 11 bits per byte near step 25; with Anderson "
        "acceleration it does not)"
    )
    max_iter: int = _flag(16, "forward solver iteration limit")
    tol: float = _flag(1e-3, "forward solver tolerance on the stop-mode residual")
    stop_mode: str = _flag(
        "rel", "solver residual: 'abs' ‖f(z)−z‖ or 'rel' ‖f(z)−z‖/‖f(z)‖", choices=("abs", "rel")
    )
    per_sample: bool = _flag(
        True, "solve each sequence as its own system (batch_axis=0) instead of one joint system"
    )
    history: int = _flag(
        4, "forward solver history: Anderson's difference columns or Broyden's rank-one "
        "terms (memory grows with it)"
    )
    backward: str = _flag("implicit", "how to differentiate the fixed point", choices=BACKWARDS)
    backward_solver: str = _flag(
        "anderson", "solver of the adjoint equation (--backward implicit): a registry name or "
        "a Krylov solver (gmres, bicgstab, normal_cg)"
    )
    backward_max_iter: int = _flag(24, "adjoint solver iteration limit")
    backward_tol: float = _flag(1e-3, "adjoint solver tolerance (on the stop-mode residual)")
    backward_history: int = _flag(
        4, "adjoint solver history (a Broyden adjoint that reuses the forward's terms keeps "
        "this many of its own after them)"
    )
    reuse_inverse: bool = _flag(
        True, "when both solvers are 'broyden', start the adjoint Broyden from the forward "
        "solve's inverse-Jacobian estimate (SHINE; Implicit(reuse_inverse=...))"
    )
    phantom_steps: int = _flag(5, "damped unrolled steps of the phantom gradient")
    phantom_damping: float = _flag(0.5, "damping λ of the phantom gradient")
    remat: bool = _flag(
        True, "DEQ: recompute the block's activations in the backward pass instead of storing them"
    )
    jac_reg: float = _flag(
        5.0,
        "DEQ: weight of the Hutchinson Jacobian regulariser ‖∂f/∂z(z*)‖²_F / numel(z*), which "
        "keeps f contractive and the solves short (0: off; explicit stacks ignore it)",
    )
    warmup_unrolled: int = _flag(
        0, "DEQ: train the first this many steps as the weight-tied stack of "
        "--warmup-depth blocks (the same parameters, f applied that many times from z = 0, "
        "backpropagated through), before the equilibrium takes over (0: off)"
    )
    warmup_depth: int = _flag(4, "DEQ: blocks of the unrolled warm-up stack")
    jac_batch: int = _flag(
        4, "sequences of each batch the Jacobian penalty is estimated on (0: all of them)"
    )
    # optimisation
    steps: int = _flag(
        900, "training steps in all (with --resume, a larger value extends the run and re-lays "
        "the learning-rate schedule for the new total)"
    )
    batch_size: int = _flag(32, "global batch size (sequences per step, split across devices)")
    seq_len: int = _flag(64, "bytes per training sequence")
    lr: float = _flag(5e-3, "peak learning rate of AdamW")
    warmup_steps: int = _flag(100, "linear warmup steps from 0 to --lr")
    min_lr_ratio: float = _flag(0.1, "final learning rate of the cosine decay, as a share of --lr")
    weight_decay: float = _flag(0.01, "AdamW decoupled weight decay (matrices only)")
    clip_norm: float = _flag(1.0, "global-norm gradient clipping threshold")
    seed: int = _flag(0, "seed of the initialisation, the data order and dropout")
    # evaluation, logging, checkpoints
    eval_every: int = _flag(100, "validate every this many steps (0: only at the end)")
    eval_batches: int = _flag(4, "validation batches per periodic evaluation (0: all)")
    eval_max_iter: int = _flag(
        0, "DEQ: forward solver iteration limit when validating (0: --max-iter); the "
        "test-time depth knob"
    )
    audit_every: int = _flag(
        0, "DEQ: every this many steps, compare the step's gradient with a reference implicit "
        "gradient solved to a tight tolerance, and log their cosine and relative error (0: off)"
    )
    checkpoint_every: int = _flag(
        200, "write a checkpoint every this many steps (0: only at the end)"
    )
    run_dir: str = _flag("runs/deq_lm", "output folder: metrics, checkpoint, plot, sample")
    resume: bool = _flag(False, "continue from the checkpoint in --run-dir")
    overwrite: bool = _flag(
        False, "start afresh in a --run-dir that holds a run, replacing its files (without "
        "--resume or --overwrite, that is refused)"
    )
    allow_data_change: bool = _flag(
        False, "with --resume, continue although the corpus differs from the one the "
        "checkpoint was trained on (the SHA-256 of the data is recorded in config.json and "
        "the checkpoint; without this flag a changed corpus is refused)"
    )
    sample_len: int = _flag(200, "bytes of text sampled from the model at the end (0: none)")
    sample_prompt: str = _flag("The ", "prompt of the final sample")
    temperature: float = _flag(0.8, "sampling temperature of the final sample")
    progress: bool = _flag(True, "show a progress bar")
    # multi-host
    distributed: bool = _flag(
        False, "call jax.distributed.initialize() first (multi-host data parallelism)"
    )
    coordinator_address: str = _flag(
        "", "host:port of process 0 (--distributed; '' to auto-detect)"
    )
    num_processes: int = _flag(0, "number of processes (--distributed; 0 to auto-detect)")
    process_id: int = _flag(-1, "this process's index (--distributed; -1 to auto-detect)")
    peer_timeout: int = _flag(
        60, "(--distributed) seconds after which a process that stopped answering counts as "
        "lost, and the others stop with an error instead of waiting for it (a killed "
        "process is noticed at once)"
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def block_config(self) -> BlockConfig:
        """The settings of the model's weight-tied block."""
        return BlockConfig(
            d_model=self.d_model, num_heads=self.num_heads, block_layers=self.block_layers,
            mlp_ratio=self.mlp_ratio, dropout_rate=self.dropout, init_std=self.init_std,
            out_init_scale=self.out_init_scale, spectral_norm=self.spectral_norm,
            qk_norm=self.qk_norm,
        )

    def compile_key(self) -> TrainConfig:
        """This config with every :data:`RESUMABLE_KEYS` and :data:`DATA_KEYS` field at its
        default: the settings that determine the model and its compiled steps, so runs that
        differ only in where they write, how they report or which text they read share one
        compilation."""
        defaults = TrainConfig()
        return dataclasses.replace(
            self, **{k: getattr(defaults, k) for k in RESUMABLE_KEYS | DATA_KEYS}
        )


RESUMABLE_KEYS: frozenset[str] = frozenset(
    {
        "resume",
        "overwrite",
        "run_dir",
        "checkpoint_every",
        "progress",
        "sample_len",
        "sample_prompt",
        "temperature",
        "distributed",
        "coordinator_address",
        "num_processes",
        "process_id",
        "peer_timeout",
        "allow_data_change",
    }
)
"""Fields that may differ between a checkpoint and the run that resumes it: they change
neither the parameters nor the metrics."""

DATA_KEYS: frozenset[str] = frozenset({"data", "max_bytes", "valid_fraction"})
"""Fields that choose the text, not the model: the compiled steps do not depend on them."""


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple]:
    """``{key: (saved, current)}`` for every result-affecting key whose values differ."""
    keys = (set(saved) | set(current)) - RESUMABLE_KEYS
    missing = object()
    diffs = {}
    for key in sorted(keys):
        a, b = saved.get(key, missing), current.get(key, missing)
        if a != b:
            diffs[key] = ("<absent>" if a is missing else a, "<absent>" if b is missing else b)
    return diffs


class ConfigError(ValueError):
    """A training setting is out of range or inconsistent with another."""


_POSITIVE = (
    "d_model", "num_heads", "block_layers", "mlp_ratio", "depth", "max_iter", "history",
    "backward_max_iter", "backward_history", "phantom_steps", "steps", "batch_size", "seq_len",
    "warmup_depth", "peer_timeout",
)
_NON_NEGATIVE = (
    "max_bytes", "jac_batch", "warmup_steps", "warmup_unrolled", "eval_every", "eval_batches",
    "eval_max_iter",
    "audit_every", "checkpoint_every", "sample_len",
    "seed",
)


def validate_config(config: TrainConfig) -> None:
    """Raise :class:`ConfigError` naming the flag of the first invalid setting."""

    def fail(name: str, message: str) -> None:
        raise ConfigError(f"--{name.replace('_', '-')} {message}")

    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            fail(f.name, f"must be a finite number, got {value}")
    for name in _POSITIVE:
        if getattr(config, name) < 1:
            fail(name, f"must be at least 1, got {getattr(config, name)}")
    for name in _NON_NEGATIVE:
        if getattr(config, name) < 0:
            fail(name, f"must be non-negative, got {getattr(config, name)}")
    positive = ("tol", "backward_tol", "lr", "clip_norm", "init_std", "out_init_scale", "embed_std")
    for name in positive:
        if not getattr(config, name) > 0:
            fail(name, f"must be positive, got {getattr(config, name)}")
    if config.d_model % config.num_heads:
        fail("num_heads", f"must divide --d-model {config.d_model}, got {config.num_heads}")
    if not 0.0 <= config.dropout < 1.0:
        fail("dropout", f"must be in [0, 1), got {config.dropout}")
    if not 0.0 < config.valid_fraction < 1.0:
        fail("valid_fraction", f"must be in (0, 1), got {config.valid_fraction}")
    if not 0.0 <= config.min_lr_ratio <= 1.0:
        fail("min_lr_ratio", f"must be in [0, 1], got {config.min_lr_ratio}")
    if not 0.0 < config.phantom_damping <= 1.0:
        fail("phantom_damping", f"must be in (0, 1], got {config.phantom_damping}")
    for name in ("weight_decay", "jac_reg", "temperature", "spectral_norm"):
        if getattr(config, name) < 0:
            fail(name, f"must be non-negative, got {getattr(config, name)}")
    if config.model not in MODELS:
        fail("model", f"must be one of {', '.join(MODELS)}, got {config.model!r}")
    if config.backward not in BACKWARDS:
        fail("backward", f"must be one of {', '.join(BACKWARDS)}, got {config.backward!r}")
    if config.resume and config.overwrite:
        fail("overwrite", "contradicts --resume: continue the run in --run-dir, or replace it")


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    """The parser of ``python -m models.train``: one flag per :class:`TrainConfig` field
    (with ``defaults=False`` a flag that is not given is left out of the namespace)."""
    parser = argparse.ArgumentParser(
        prog="python -m models.train",
        description="Train the byte-level DEQ Transformer language model (or an explicit "
        "baseline): periodic validation bits-per-byte, metrics JSONL, plot, atomic "
        "checkpoints, exact resume, data parallelism over all devices.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Ctrl-C writes a checkpoint and exits (status 130); rerun with the same flags "
        "plus --resume to continue exactly where it stopped, or with a larger --steps as well "
        "to extend the run. One process at a time per --run-dir (its lock file is run.lock); "
        "starting afresh in a run directory that holds a run needs --overwrite. --resume "
        "without --steps continues to the checkpoint's total. The checkpoint "
        "before the latest is kept as checkpoint.prev.npz: if checkpoint.npz is damaged, "
        "--resume says so and names it; rename it to checkpoint.npz to resume from it. A "
        "non-finite training or validation loss, or parameters, stop training (status 3) "
        "without overwriting the last good checkpoint. Bad settings, data, checkpoints, metrics or run directories print "
        "one 'error:' line (status 2). Multi-host: run the same command on every host with "
        "--distributed (and --coordinator-address, --num-processes, --process-id unless the "
        "cluster is auto-detected); --batch-size is global.",
    )
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        default = f.default if defaults else argparse.SUPPRESS
        if f.type in ("bool", bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
            continue
        kind = {"int": int, "float": float, "str": str}[str(f.type)]
        parser.add_argument(flag, type=kind, default=default, help=help_text, **meta)
    return parser


def given_flags(argv: Sequence[str] | None = None) -> frozenset[str]:
    """The :class:`TrainConfig` fields that ``argv`` sets explicitly."""
    return frozenset(vars(build_parser(defaults=False).parse_args(argv)))


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse command-line flags into a :class:`TrainConfig` (``argv=None``: ``sys.argv``)."""
    namespace = build_parser().parse_args(argv)
    return TrainConfig(**vars(namespace))
