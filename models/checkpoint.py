"""Checkpoints: one ``.npz`` file, written atomically, refused on resume if the config differs.

A checkpoint holds the leaves of a pytree (the train state) as NumPy arrays ``leaf_00000``,
``leaf_00001``, ... in ``jax.tree_util`` flattening order, plus a JSON record ``__meta__``
with the step, the training config and the tree structure (as text). No pickle: loading
executes no code. It is written to a temporary file in the same folder, flushed to disk,
then renamed over the old one (``os.replace`` is atomic on POSIX), so a crash mid-write
leaves the previous checkpoint intact.

Restoring needs a *template* of the state (e.g. a freshly initialised one): the leaves are
unflattened into its structure after checking that the structure, shapes and dtypes match.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from models.config import config_differences

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointError",
    "checkpoint_path",
    "save_checkpoint",
    "load_checkpoint",
    "read_meta",
    "check_config",
]

CHECKPOINT_NAME: str = "checkpoint.npz"

_META = "__meta__"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the run that wants it."""


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    """Where the run in ``run_dir`` keeps its (latest) checkpoint."""
    return Path(run_dir) / CHECKPOINT_NAME


def save_checkpoint(
    path: str | os.PathLike, tree: Any, *, step: int, config: dict[str, Any]
) -> Path:
    """Write ``tree`` (host or device arrays) with its ``step`` and ``config`` to ``path``,
    atomically (write to a temporary file, fsync, rename). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    arrays = {f"leaf_{i:05d}": np.asarray(jax.device_get(leaf)) for i, leaf in enumerate(leaves)}
    meta = {"step": int(step), "config": config, "treedef": str(treedef), "num_leaves": len(leaves)}
    arrays[_META] = np.array(json.dumps(meta, sort_keys=True))
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``{"step", "config", "treedef", "num_leaves"}`` record of a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return json.loads(str(archive[_META]))
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} is unreadable: {err}") from err


def check_config(saved: dict[str, Any], current: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse to resume when a result-affecting setting differs; the message names each key."""
    diffs = config_differences(saved, current)
    if diffs:
        details = "; ".join(
            f"{key}: checkpoint {a!r} vs now {b!r}" for key, (a, b) in diffs.items()
        )
        raise CheckpointError(
            f"cannot resume from {str(path)!r}: the configuration differs in "
            f"{', '.join(diffs)} ({details}). Rerun with the checkpoint's settings, or use "
            "another --run-dir to start afresh."
        )


def load_checkpoint(path: str | os.PathLike, template: Any) -> tuple[Any, dict[str, Any]]:
    """Load the tree saved at ``path`` into the structure of ``template``.

    ``template`` may hold arrays or ``jax.ShapeDtypeStruct`` leaves. Returns
    ``(tree of NumPy arrays, meta)``. Raises :class:`CheckpointError` if the file is
    missing or unreadable, or its structure, shapes or dtypes differ from ``template``'s.
    """
    path = Path(path)
    meta = read_meta(path)
    leaves, treedef = jax.tree_util.tree_flatten(template)
    if meta["num_leaves"] != len(leaves) or meta["treedef"] != str(treedef):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a different state structure "
            f"({meta['num_leaves']} leaves) from this run's ({len(leaves)} leaves)"
        )
    with np.load(path, allow_pickle=False) as archive:
        loaded = [archive[f"leaf_{i:05d}"] for i in range(len(leaves))]
    for i, (want, got) in enumerate(zip(leaves, loaded, strict=True)):
        shape, dtype = tuple(want.shape), np.dtype(want.dtype)
        if shape != got.shape or dtype != got.dtype:
            raise CheckpointError(
                f"checkpoint {str(path)!r} leaf {i} has shape {got.shape} dtype {got.dtype}, "
                f"but this run expects shape {shape} dtype {dtype}"
            )
    return jax.tree_util.tree_unflatten(treedef, loaded), meta
