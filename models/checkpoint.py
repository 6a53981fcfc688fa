"""Checkpoints: one sealed ``.npz`` file, written atomically, verified before it is used.

A checkpoint holds the leaves of a pytree (the train state) as NumPy arrays ``leaf_00000``,
``leaf_00001``, ... in ``jax.tree_util`` flattening order, plus a JSON record ``__meta__``
with the step, the training config, the tree structure (as text) and each leaf's path. No
pickle: loading executes no code.

**Sealed.** The archive's zip comment holds the SHA-256 of the whole file (with an empty
comment), so any changed byte, anywhere, is detected, as are a truncated or empty file. A
checkpoint that fails a check, or whose floating-point leaves are not all finite, is refused
with one :class:`CheckpointError` line naming the file and what is wrong.

**Atomic, one generation kept.** It is written to a temporary file in the same folder,
flushed to disk, then renamed over the old one (:func:`models.rundir.atomic_write`). In a run
directory the old one is first renamed to ``checkpoint.prev.npz``; when ``checkpoint.npz`` is
damaged or missing (a crash between the two renames), :func:`read_run_checkpoint` names the
intact previous one in its error so that it can be renamed back. We keep this small format
rather than depend on orbax-checkpoint: one file, no heavy dependency, easy to validate.

Restoring needs a *template* of the state (e.g. a freshly initialised one): the leaves are
unflattened into its structure after checking that the structure, shapes and dtypes match.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from models.config import config_differences
from models.rundir import atomic_write

__all__ = [
    "CHECKPOINT_NAME",
    "PREVIOUS_NAME",
    "Checkpoint",
    "CheckpointError",
    "checkpoint_path",
    "previous_checkpoint_path",
    "save_checkpoint",
    "read_checkpoint",
    "read_run_checkpoint",
    "restore",
    "load_checkpoint",
    "read_meta",
    "check_config",
]

CHECKPOINT_NAME: str = "checkpoint.npz"
PREVIOUS_NAME: str = "checkpoint.prev.npz"

_META = "__meta__"
_META_KEYS: dict[str, type] = {"step": int, "config": dict, "treedef": str, "num_leaves": int}
_EOCD = b"PK\x05\x06"  # signature of the zip's end-of-central-directory record (22 bytes)
_SEAL_SIZE = 64  # a hex SHA-256 digest
_UNSEALED = "it has no checksum (not written by models.checkpoint, or damaged)"
_MISMATCH = "its checksum does not match its content (a changed byte or a partial write)"
_READ_ERRORS = (
    zipfile.BadZipFile, EOFError, KeyError, ValueError, OSError, NotImplementedError,
    RuntimeError, struct.error,
)


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, or does not fit the run that wants it."""


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: its file, its ``__meta__`` record and its leaves (NumPy)."""

    path: Path
    meta: dict[str, Any]
    leaves: list[np.ndarray]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    """Where the run in ``run_dir`` keeps its (latest) checkpoint."""
    return Path(run_dir) / CHECKPOINT_NAME


def previous_checkpoint_path(run_dir: str | os.PathLike) -> Path:
    """Where the run in ``run_dir`` keeps the checkpoint before its latest one."""
    return Path(run_dir) / PREVIOUS_NAME


# ------------------------------------------------------------------------------ the seal


def _seal(data: bytes) -> bytes:
    """``data`` (a zip archive without comment) with the SHA-256 of ``data`` as its comment."""
    if data[-22:-18] != _EOCD or data[-2:] != b"\0\0":
        raise ValueError("not a zip archive without comment")
    digest = hashlib.sha256(data).hexdigest().encode("ascii")
    return data[:-2] + struct.pack("<H", len(digest)) + digest


def _seal_problem(data: bytes) -> str | None:
    """What is wrong with the seal of ``data``, or None if its digest matches."""
    end = len(data) - _SEAL_SIZE
    if end < 22 or data[end - 22:end - 18] != _EOCD or data[end - 2:end] != struct.pack(
        "<H", _SEAL_SIZE
    ):
        return _UNSEALED
    unsealed = data[:end - 2] + b"\0\0"
    if hashlib.sha256(unsealed).hexdigest().encode("ascii") != data[end:]:
        return _MISMATCH
    return None


# ---------------------------------------------------------------------------- writing


def save_checkpoint(
    path: str | os.PathLike,
    tree: Any,
    *,
    step: int,
    config: dict[str, Any],
    previous: str | os.PathLike | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``tree`` (host or device arrays) with its ``step`` and ``config`` to ``path``,
    sealed and atomically (see the module docstring). With ``previous``, the checkpoint
    already at ``path`` is kept there. ``extra`` adds JSON entries to the ``__meta__`` record
    (a run records the SHA-256 of its data there); it cannot replace the standard ones.
    Returns the path. A write that fails (``OSError``: a full disk, a file-size limit) leaves
    the files at ``path`` and ``previous`` as they were."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    arrays = {
        f"leaf_{i:05d}": np.asarray(jax.device_get(leaf)) for i, (_, leaf) in enumerate(with_paths)
    }
    meta = {
        **(extra or {}),
        "step": int(step),
        "config": config,
        "treedef": str(treedef),
        "num_leaves": len(with_paths),
        "paths": [jax.tree_util.keystr(key) for key, _ in with_paths],
    }
    arrays[_META] = np.array(json.dumps(meta, sort_keys=True))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write(
        path, _seal(buffer.getvalue()), previous=None if previous is None else Path(previous)
    )


# ---------------------------------------------------------------------------- reading


def _damaged(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {str(path)!r} is damaged: {what}")


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn whatever a damaged archive makes NumPy or zipfile raise into a CheckpointError."""
    try:
        yield
    except _READ_ERRORS as err:
        detail = " ".join(str(err).split())
        raise _damaged(path, f"it is not a readable .npz archive ({type(err).__name__}: "
                             f"{detail}); truncated or overwritten?") from err


def _meta_problem(meta: Any) -> str | None:
    """What is missing or malformed in a ``__meta__`` record, or None."""
    if not isinstance(meta, dict):
        return "its metadata is not a JSON object"
    for key, kind in _META_KEYS.items():
        if key not in meta:
            return f"its metadata has no {key!r}"
        if not isinstance(meta[key], kind):
            return f"its metadata's {key!r} is not a {kind.__name__}"
    return None


def _non_finite_problem(meta: dict[str, Any], leaves: list[np.ndarray]) -> str | None:
    """Name the first floating-point leaf holding NaN or infinity, or None."""
    names = meta.get("paths") or [f"leaf {i}" for i in range(len(leaves))]
    for name, leaf in zip(names, leaves, strict=False):
        if np.issubdtype(leaf.dtype, np.inexact) and not np.all(np.isfinite(leaf)):
            bad = int(np.size(leaf) - np.count_nonzero(np.isfinite(leaf)))
            return (f"it holds non-finite values (NaN or infinity) in {name} ({bad} of "
                    f"{np.size(leaf)} entries)")
    return None


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and verify the checkpoint at ``path``: present, a readable archive, complete
    metadata, an intact seal, finite values. Raises :class:`CheckpointError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    with _reading(path):
        data = path.read_bytes()
    if not data:
        raise _damaged(path, "it is empty (0 bytes)")
    seal = _seal_problem(data)
    if seal == _MISMATCH:  # an unsealed file is read on, so that what else is wrong is named
        raise _damaged(path, seal)
    with _reading(path), np.load(io.BytesIO(data), allow_pickle=False) as archive:
        meta = json.loads(str(archive[_META]))
        problem = _meta_problem(meta) or seal
        leaves = [] if problem else [
            archive[f"leaf_{i:05d}"] for i in range(meta["num_leaves"])
        ]
    problem = problem or _non_finite_problem(meta, leaves)
    if problem:
        raise _damaged(path, problem)
    return Checkpoint(path, meta, leaves)


def read_run_checkpoint(run_dir: str | os.PathLike) -> Checkpoint:
    """The verified checkpoint of the run in ``run_dir``. If it is missing or damaged, the
    error also names ``checkpoint.prev.npz`` when that one is intact."""
    try:
        return read_checkpoint(checkpoint_path(run_dir))
    except CheckpointError as err:
        previous = previous_checkpoint_path(run_dir)
        try:
            older = read_checkpoint(previous)
        except CheckpointError:
            raise err from None
        raise CheckpointError(
            f"{err}; an older intact checkpoint at step {older.step} exists: "
            f"{str(previous)!r}; rename it to {CHECKPOINT_NAME} to resume from it"
        ) from err


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``{"step", "config", "treedef", "num_leaves", "paths"}`` record of a verified
    checkpoint."""
    return read_checkpoint(path).meta


def restore(checkpoint: Checkpoint, template: Any) -> Any:
    """The checkpoint's leaves in the structure of ``template`` (arrays or
    ``jax.ShapeDtypeStruct`` leaves), after checking structure, shapes and dtypes."""
    path, meta = checkpoint.path, checkpoint.meta
    leaves, treedef = jax.tree_util.tree_flatten(template)
    if meta["num_leaves"] != len(leaves) or meta["treedef"] != str(treedef):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a different state structure "
            f"({meta['num_leaves']} leaves) from this run's ({len(leaves)} leaves)"
        )
    for i, (want, got) in enumerate(zip(leaves, checkpoint.leaves, strict=True)):
        shape, dtype = tuple(want.shape), np.dtype(want.dtype)
        if shape != got.shape or dtype != got.dtype:
            raise CheckpointError(
                f"checkpoint {str(path)!r} leaf {i} has shape {got.shape} dtype {got.dtype}, "
                f"but this run expects shape {shape} dtype {dtype}"
            )
    return jax.tree_util.tree_unflatten(treedef, checkpoint.leaves)


def load_checkpoint(path: str | os.PathLike, template: Any) -> tuple[Any, dict[str, Any]]:
    """Load the tree saved at ``path`` into the structure of ``template``: ``(tree of NumPy
    arrays, meta)``. Raises :class:`CheckpointError` (see :func:`read_checkpoint` and
    :func:`restore`)."""
    checkpoint = read_checkpoint(path)
    return restore(checkpoint, template), checkpoint.meta


# ------------------------------------------------------------------------ resume checks


def check_config(
    saved: dict[str, Any], current: dict[str, Any], path: str | os.PathLike
) -> int | None:
    """Refuse to resume when a result-affecting setting differs; the message names each key.

    ``steps`` may grow: the run is then extended, and the checkpoint's total is returned (else
    None). A smaller ``steps`` than the checkpoint's is refused.
    """
    diffs = config_differences(saved, current)
    old, new = diffs.get("steps", (None, None))
    extends = isinstance(old, int) and isinstance(new, int) and new > old
    if extends:
        del diffs["steps"]
    if diffs:
        details = "; ".join(
            f"{key}: checkpoint {a!r} vs now {b!r}" for key, (a, b) in diffs.items()
        )
        shrink = (" (--steps may grow on resume, to extend the run, but not shrink)"
                  if "steps" in diffs else "")
        raise CheckpointError(
            f"cannot resume from {str(path)!r}: the configuration differs in "
            f"{', '.join(diffs)} ({details}){shrink}. Rerun with the checkpoint's settings, "
            "or use another --run-dir to start afresh."
        )
    return old if extends else None
