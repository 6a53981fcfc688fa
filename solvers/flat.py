"""A pytree state seen as a ``(batch, size)`` matrix, one row per independent system.

Solvers do their algebra on that matrix. With ``batch_axis=None`` the whole pytree
is one row; with ``batch_axis=0`` row ``i`` holds sample ``i`` of every leaf,
flattened and concatenated.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from solvers.types import PyTree


class FlatView(NamedTuple):
    """Maps between a pytree shaped like ``z0`` and its ``(batch, size)`` matrix."""

    to_matrix: Callable[[PyTree], jax.Array]
    from_matrix: Callable[[jax.Array], PyTree]
    batch: int
    size: int
    dtype: jnp.dtype


def flat_view(z0: PyTree, batch_axis: Optional[int]) -> FlatView:
    """The :class:`FlatView` of pytrees with the structure, shapes and dtypes of ``z0``."""
    leaves, treedef = jax.tree_util.tree_flatten(z0)
    shapes = [jnp.shape(leaf) for leaf in leaves]
    dtypes = [jnp.result_type(leaf) for leaf in leaves]
    dtype = jnp.result_type(*dtypes)
    batch = 1 if batch_axis is None else shapes[0][0]
    row_sizes = [int(np.prod(shape[0 if batch_axis is None else 1:])) for shape in shapes]
    offsets = np.cumsum(row_sizes)[:-1].tolist()

    def to_matrix(tree: PyTree) -> jax.Array:
        rows = [
            jnp.reshape(leaf, (batch, size)).astype(dtype)
            for leaf, size in zip(jax.tree_util.tree_leaves(tree), row_sizes, strict=True)
        ]
        return rows[0] if len(rows) == 1 else jnp.concatenate(rows, axis=1)

    def from_matrix(matrix: jax.Array) -> PyTree:
        parts = jnp.split(matrix, offsets, axis=1) if offsets else [matrix]
        leaves = [
            jnp.reshape(part, shape).astype(leaf_dtype)
            for part, shape, leaf_dtype in zip(parts, shapes, dtypes, strict=True)
        ]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    return FlatView(to_matrix, from_matrix, batch, sum(row_sizes), dtype)
