"""The training configuration: one frozen dataclass, its command-line flags, and resume checks.

Every field of :class:`TrainConfig` is a flag of ``python -m models.train`` (``d_model`` is
``--d-model``), declared with :func:`solvers.options.option`: its help text is the field's
``doc`` and ``--help`` prints its default; :func:`validate_config` checks every field by
its declared rule, with the toolkit's one validator (:func:`solvers.options.validate`).
The solver flags are read off the fields of :class:`solvers.Stopping` and
:class:`implicit.Phantom` (their rules and help, with training defaults); a method's own
options, which depend on the method chosen, go through ``--solver-options`` and
``--backward-solver-options`` as ``KEY=VALUE`` lists. The defaults are the project's main
job: a DEQ Transformer language model on the CPython documentation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from implicit import BACKWARD_MODES, Phantom
from models.transformer import BLOCK_FORMS, INITIAL_STATES, BlockConfig
from solvers import Stopping
from solvers.options import Check, OptionError, above, at_least, between, one_of, option, validate

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

MODELS: tuple[str, ...] = ("deq", "transformer", "unrolled")
"""``deq``: the DEQ Transformer; ``transformer``: the standard pre-LN Transformer of ``depth``
layers (the model a user would pick instead); ``unrolled``: the DEQ's block applied ``depth``
times with one set of weights (the DEQ's unrolled twin)."""

BACKWARDS: tuple[str, ...] = BACKWARD_MODES
"""Backward modes of ``implicit.haiku.DEQ`` (the library's own names)."""


def _flag(default: Any, help: str, check: Check | None = None, **kwargs: Any) -> Any:
    """A flag: its default, help, rule (``choices`` become one) and argparse extras."""
    if "choices" in kwargs:
        check = one_of(*kwargs.pop("choices"))
    return option(default, check, help, **kwargs)


def _from(owner: type, name: str, default: Any, what: str = "") -> Any:
    """The flag of the option ``name`` of ``owner`` (:class:`solvers.Stopping`,
    :class:`implicit.Phantom`) with a training default: its rule and help are the field's."""
    declared = owner.__dataclass_fields__[name].metadata
    return _flag(default, what + declared["doc"], declared["check"])


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (one flag per field)."""

    # data
    data: str = _flag(
        "pydoc",
        "corpus: 'pydoc' (CPython's documentation topics), 'stdlib' (the standard "
        "library's source), 'tfds:<name>' (a locally prepared TFDS text dataset), or a path to "
        "a UTF-8 text file or folder of text files",
    )
    max_bytes: int = _flag(
        0, "keep at most this many bytes of the corpus (0: the source's default)", at_least(0)
    )
    valid_fraction: float = _flag(0.05, "share of the corpus (its end) held out for validation",
                                  between(0, 1, low_open=True, high_open=True))
    # model
    model: str = _flag("deq", "which model", choices=MODELS)
    d_model: int = _flag(96, "width of the residual stream", at_least(1))
    num_heads: int = _flag(4, "attention heads (must divide --d-model)", at_least(1))
    block_layers: int = _flag(1, "attention+MLP layers inside the weight-tied block f", at_least(1))
    mlp_ratio: int = _flag(4, "MLP hidden width as a multiple of --d-model", at_least(1))
    dropout: float = _flag(0.0, "variational dropout rate inside the block (one mask per solve)",
                           between(0, 1, high_open=True))
    depth: int = _flag(
        2, "layers of the explicit models: the standard Transformer (--model transformer) or "
        "the DEQ's unrolled twin (--model unrolled)", at_least(1),
    )
    block: str = _flag(
        "sum", "equations of the DEQ's block f(z, x) (models.transformer.DEQBlock)",
        choices=BLOCK_FORMS,
    )
    initial_state: str = _flag(
        "zeros", "DEQ and unrolled twin: start from z = 0 ('zeros') or z = x ('input')",
        choices=INITIAL_STATES,
    )
    init_std: float = _flag(0.02, "std of the truncated-normal weight initialisation", above(0))
    embed_std: float = _flag(1.0, "std of the token and position embeddings at initialisation",
                             above(0))
    out_init_scale: float = _flag(
        1.0, "extra factor on the init std of the projections that write into the state", above(0)
    )
    spectral_norm: float = _flag(
        0.0, "bound on the spectral norm of every matrix of the block (0: off); a bound keeps "
        "f contractive and the solves short", at_least(0)
    )
    qk_norm: bool = _flag(
        False, "RMS-normalise queries and keys, which bounds the attention logits (and how "
        "sharply f can react to z)"
    )
    # DEQ solver: the flags of solvers.Stopping and implicit.Phantom fields, and the method's
    # own options as KEY=VALUE lists (solvers.declared(NAME) lists them)
    solver: str = _flag("anderson", "forward fixed-point method, by registry name")
    solver_options: str = _flag(
        "history=4", "the forward method's own options, KEY=VALUE[,KEY=VALUE...] ('': its "
        "defaults); an option of this default that the method lacks is left out"
    )
    max_iter: int = _from(Stopping, "max_iter", 16, "forward solver: ")
    tol: float = _from(Stopping, "tol", 1e-3, "forward solver: ")
    stop_mode: str = _from(Stopping, "stop_mode", "rel", "forward and adjoint solvers: ")
    per_sample: bool = _flag(
        True, "solve each sequence as its own system (batch_axis=0) instead of one joint system"
    )
    backward: str = _flag(
        "implicit", "how to differentiate the fixed point; 'reversible' differentiates the "
        "reversible iteration exactly, so it makes that iteration the forward solver (with "
        "--solver reversible it keeps its --solver-options, e.g. damping=0.8; any other "
        "--solver is replaced by it)", choices=BACKWARDS,
    )
    backward_solver: str = _flag(
        "anderson", "solver of the adjoint equation (--backward implicit): a registry name or "
        "a Krylov solver (gmres, bicgstab, normal_cg)"
    )
    backward_solver_options: str = _flag(
        "history=4", "the adjoint solver's own options, KEY=VALUE[,KEY=VALUE...] ('': its "
        "defaults); an option of this default that the solver lacks is left out"
    )
    backward_fallback: str = _flag(
        "none", "--backward implicit: the gradient of each sequence whose adjoint solve misses "
        "its tolerance falls back to this approximate mode ('phantom' with --phantom-steps and "
        "--phantom-damping, or 'jfb'); 'none' keeps the unconverged adjoint (both are counted "
        "in the metrics)", choices=("none", "phantom", "jfb"),
    )
    backward_max_iter: int = _from(Stopping, "max_iter", 24, "adjoint solver: ")
    backward_tol: float = _from(Stopping, "tol", 1e-3, "adjoint solver: ")
    reuse_inverse: bool = _flag(
        True, "when both solvers are 'broyden', start the adjoint Broyden from the forward "
        "solve's inverse-Jacobian estimate (SHINE; Implicit(reuse_inverse=...))"
    )
    phantom_steps: int = _from(Phantom, "steps", 5, "phantom gradient: ")
    phantom_damping: float = _from(Phantom, "damping", 0.5, "phantom gradient: ")
    remat: bool = _flag(
        True, "DEQ: recompute the block's activations in the backward pass instead of storing them"
    )
    jac_reg: float = _flag(
        5.0,
        "DEQ: weight of the Hutchinson Jacobian regulariser ‖∂f/∂z(z*)‖²_F / numel(z*), which "
        "keeps f contractive and the solves short (0: off; explicit stacks ignore it)",
        at_least(0),
    )
    jac_power: int = _flag(
        1, "DEQ: the Jacobian regulariser penalises ‖(∂f/∂z)ᵏ‖²_F with k = --jac-power (1: "
        "Bai et al. 2021); k > 1 leaves dependence chains shorter than k free", at_least(1),
    )
    fp_correction: int = _flag(
        1, "DEQ: fixed-point correction (Bai et al. 2022) with this many states of the forward "
        "solve, evenly spaced from z0 (k = j·max_iter // K); each state's one-step image "
        "f(z_k, x) is read out and its loss added with weight gamma^(K+1-j) (0: off)",
        at_least(0),
    )
    fp_correction_gamma: float = _flag(
        0.8, "DEQ: the weight gamma of the fixed-point correction's losses",
        between(0, 1, low_open=True),
    )
    warmup_unrolled: int = _flag(
        0, "DEQ: train the first this many steps as the weight-tied stack of "
        "--warmup-depth blocks (the same parameters, f applied that many times from z = 0, "
        "backpropagated through), before the equilibrium takes over (0: off)", at_least(0)
    )
    warmup_depth: int = _flag(4, "DEQ: blocks of the unrolled warm-up stack", at_least(1))
    jac_batch: int = _flag(
        4, "sequences of each batch the Jacobian penalty is estimated on (0: all of them)",
        at_least(0),
    )
    # optimisation
    steps: int = _flag(
        900, "training steps in all (with --resume, a larger value extends the run and re-lays "
        "the learning-rate schedule for the new total)", at_least(1)
    )
    batch_size: int = _flag(32, "global batch size (sequences per step, split across devices)",
                            at_least(1))
    seq_len: int = _flag(64, "bytes per training sequence", at_least(1))
    lr: float = _flag(8e-3, "peak learning rate of AdamW", above(0))
    warmup_steps: int = _flag(100, "linear warmup steps from 0 to --lr", at_least(0))
    min_lr_ratio: float = _flag(0.1, "final learning rate of the cosine decay, as a share of --lr",
                                between(0, 1))
    weight_decay: float = _flag(0.01, "AdamW decoupled weight decay (matrices only)", at_least(0))
    clip_norm: float = _flag(1.0, "global-norm gradient clipping threshold", above(0))
    seed: int = _flag(0, "seed of the initialisation, the data order and dropout", at_least(0))
    # evaluation, logging, checkpoints
    eval_every: int = _flag(100, "validate every this many steps (0: only at the end)",
                            at_least(0))
    eval_batches: int = _flag(4, "validation batches per periodic evaluation (0: all)",
                              at_least(0))
    eval_max_iter: int = _flag(
        0, "DEQ: forward solver iteration limit when validating (0: --max-iter); the "
        "test-time depth knob", at_least(0)
    )
    audit_every: int = _flag(
        0, "DEQ: every this many steps, compare the step's gradient with a reference implicit "
        "gradient solved to a tight tolerance, and log their cosine and relative error (0: off)",
        at_least(0),
    )
    checkpoint_every: int = _flag(
        200, "write a checkpoint every this many steps (0: only at the end)", at_least(0)
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
    sample_len: int = _flag(200, "bytes of text sampled from the model at the end (0: none)",
                            at_least(0))
    sample_prompt: str = _flag("The ", "prompt of the final sample")
    temperature: float = _flag(0.8, "sampling temperature of the final sample", at_least(0))
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
        "process is noticed at once)", at_least(1)
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
            qk_norm=self.qk_norm, form=self.block,
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


def validate_config(config: TrainConfig) -> None:
    """Raise :class:`ConfigError` naming the flag of the first invalid setting: each field
    by its declared rule (:func:`solvers.options.validate`), then the rules between fields."""

    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    try:
        validate(config)
    except OptionError as error:
        raise ConfigError(f"{flag(error.option)} must be {error.rule}, got {error.value}") from None
    if config.d_model % config.num_heads:
        raise ConfigError(f"--num-heads must divide --d-model {config.d_model}, got "
                          f"{config.num_heads}")
    if config.resume and config.overwrite:
        raise ConfigError("--overwrite contradicts --resume: continue the run in --run-dir, or "
                          "replace it")


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
        help_text, check = meta.pop("doc"), meta.pop("check")
        default = f.default if defaults else argparse.SUPPRESS
        if f.type in ("bool", bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
            continue
        if check is not None and check.choices:
            meta["choices"] = check.choices
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
