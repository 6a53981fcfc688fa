"""Data parallelism with ``jax.sharding``: the batch is split over devices, parameters replicated.

One 1-D :class:`jax.sharding.Mesh` with axis ``"data"`` spans the devices (all devices of all
processes by default). A global batch of ``B`` sequences is sharded along its first axis
(``NamedSharding(mesh, P("data"))``), so each device holds ``B / n_devices`` rows; the train
state is replicated (``NamedSharding(mesh, P())``). Under ``jax.jit`` XLA inserts the
all-reduce of the gradients, so one step on ``n`` devices computes the same update as one step
on one device (up to the order of floating-point sums).

Multi-host: after ``jax.distributed.initialize()`` every process builds the same global batch
description but only materialises its own rows (:func:`process_rows`) and
:func:`shard_batch` assembles the global array with
``jax.make_array_from_process_local_data``. The same code runs on one host, where the
process's rows are the whole batch.

Each step is traced inside its mesh (:func:`within_mesh`), so that what the library gathers
for its host callbacks (the solves' per-sequence statistics, :mod:`implicit.reporting`)
is all-gathered to every device rather than rematerialised onto one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "make_mesh",
    "replicated",
    "batch_sharded",
    "process_rows",
    "shard_batch",
    "replicate",
    "to_host",
    "check_batch_divisible",
    "within_mesh",
]

DATA_AXIS: str = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: ``jax.devices()``, all hosts)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis is split over the ``"data"`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
    """Raise ``ValueError`` unless the global batch splits evenly over devices and processes."""
    devices = mesh.devices.size
    if batch_size % devices:
        raise ValueError(
            f"--batch-size {batch_size} must be divisible by the number of devices ({devices})"
        )
    if batch_size % jax.process_count():
        raise ValueError(
            f"--batch-size {batch_size} must be divisible by the number of processes "
            f"({jax.process_count()})"
        )


def process_rows(global_batch_size: int) -> slice:
    """The rows of the global batch this process feeds: a contiguous block of
    ``global_batch_size / process_count`` rows, in process order."""
    per_process = global_batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def shard_batch(local_rows: np.ndarray, mesh: Mesh) -> jax.Array:
    """Assemble the global batch from each process's ``local_rows`` (sharded along axis 0)."""
    global_shape = (local_rows.shape[0] * jax.process_count(), *local_rows.shape[1:])
    return jax.make_array_from_process_local_data(batch_sharded(mesh), local_rows, global_shape)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf of ``tree`` (host values, identical on all processes) on all devices."""
    sharding = replicated(mesh)
    return jax.tree_util.tree_map(
        lambda leaf: jax.make_array_from_callback(
            np.shape(leaf), sharding, lambda index: np.asarray(leaf)[index]
        ),
        tree,
    )


def to_host(tree: Any) -> Any:
    """NumPy copies of a tree of replicated (or fully addressable) arrays, on any process."""

    def fetch(leaf: Any) -> np.ndarray:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return np.asarray(leaf.addressable_shards[0].data)
        return np.asarray(jax.device_get(leaf))

    return jax.tree_util.tree_map(fetch, tree)


def within_mesh(fn: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
    """``fn``, traced with ``mesh`` as the abstract mesh in context, so that a
    ``with_sharding_constraint`` inside it may name a bare ``PartitionSpec``. (JAX versions
    without ``jax.sharding.use_abstract_mesh`` get ``fn`` itself.)"""
    use = getattr(jax.sharding, "use_abstract_mesh", None)
    if use is None:
        return fn

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        with use(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return traced
