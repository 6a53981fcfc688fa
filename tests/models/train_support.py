"""What the tests of ``python -m models.train`` share: a tiny configuration that compiles in
seconds, an in-process runner with fast XLA options, and subprocess helpers."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.timing import FAST_COMPILE as FAST
from benchmarks.timing import FAST_COMPILE_XLA_FLAGS as FAST_XLA_FLAGS
from models.config import TrainConfig
from models.metrics import TIMING_KEYS
from models.train import TrainResult, train

ROOT = Path(__file__).resolve().parents[2]

TINY: dict[str, Any] = dict(
    model="unrolled",
    depth=2,
    d_model=16,
    num_heads=2,
    seq_len=8,
    batch_size=4,
    steps=6,
    warmup_steps=2,
    eval_every=2,
    eval_batches=1,
    checkpoint_every=0,
    sample_len=0,
    progress=False,
    max_bytes=8000,
    valid_fraction=0.1,
)


def tiny_config(run_dir: Path, **overrides: Any) -> TrainConfig:
    """:data:`TINY` writing to ``run_dir``, with ``overrides``."""
    return TrainConfig(**{**TINY, "run_dir": str(run_dir), **overrides})


def run_fast(config: TrainConfig, **kwargs: Any) -> TrainResult:
    """``train(config)`` with fast-compiling XLA options and, unless given, no log."""
    kwargs.setdefault("log", lambda message: None)
    return train(config, compiler_options=FAST, **kwargs)


def flags(config: TrainConfig) -> list[str]:
    """The command-line flags of ``config`` (those that differ from the defaults)."""
    defaults = TrainConfig()
    argv = []
    for f in dataclasses.fields(TrainConfig):
        value, flag = getattr(config, f.name), "--" + f.name.replace("_", "-")
        if value == getattr(defaults, f.name):
            continue
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv


def comparable(records: list[dict]) -> list[dict]:
    """Metrics records without their wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment, with the repository importable and fast XLA flags."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["XLA_FLAGS"] = FAST_XLA_FLAGS
    env.update(extra)
    return env


def start_process(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """Start ``args`` in the background with piped, text-mode output."""
    return subprocess.Popen(
        args, cwd=cwd, env=subprocess_env(**env), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )

