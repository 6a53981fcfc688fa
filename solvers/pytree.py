"""Arithmetic on pytrees of arrays: the one home for norms, inner products and probes.

Every function treats a pytree as one long vector (all leaves flattened and joined),
except where a ``batch_axis`` makes axis 0 of every leaf index independent samples.
Complex leaves use the Hermitian inner product ``⟨a, b⟩ = Σ conj(a)·b``.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from solvers.types import PyTree


def _leaves(tree: PyTree) -> list[Any]:
    return jax.tree_util.tree_leaves(tree)


def _real_dtype(*leaves: Any) -> Any:
    """The real dtype of at least single precision that holds every leaf's values."""
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    return jnp.promote_types(jnp.finfo(dtype).dtype, jnp.float32)


def vdot(a: PyTree, b: PyTree) -> jax.Array:
    """``⟨a, b⟩ = Σ conj(a)·b`` over every leaf, in at least single precision."""
    pairs = list(zip(_leaves(a), _leaves(b), strict=True))
    dtype = jnp.promote_types(jnp.result_type(*[x for pair in pairs for x in pair]), jnp.float32)
    return sum(
        (jnp.vdot(x.astype(dtype), y.astype(dtype)) for x, y in pairs), jnp.zeros((), dtype)
    )


def sum_squares(tree: PyTree) -> jax.Array:
    """``‖tree‖² = Σ |x|²`` over every leaf (real, at least single precision)."""
    leaves = _leaves(tree)
    dtype = _real_dtype(*leaves)
    return sum((jnp.sum(jnp.abs(x).astype(dtype) ** 2) for x in leaves), jnp.zeros((), dtype))


def _scaled_norm(rows: list[jax.Array], dtype: Any) -> jax.Array:
    """``‖x‖`` of each row of the ``(batch, n)`` blocks ``rows``, as ``m·sqrt(Σ(|x|/m)²)`` with
    ``m`` the largest magnitude in the row, so that squaring neither overflows nor underflows.
    ``m`` is held constant under differentiation (the derivative of the norm is unchanged)."""
    magnitudes = [jnp.abs(x).astype(dtype) for x in rows]
    m = jnp.max(jnp.stack([jnp.max(x, axis=1, initial=0) for x in magnitudes]), axis=0)
    m = jax.lax.stop_gradient(jnp.where((m > 0) & jnp.isfinite(m), m, 1))
    total = sum(jnp.sum(jnp.square(x / m[:, None]), axis=1) for x in magnitudes)
    return m * jnp.sqrt(total)


def norm(tree: PyTree) -> jax.Array:
    """The Euclidean norm ``‖tree‖`` over every leaf (overflow-safe, at least single precision)."""
    leaves = _leaves(tree)
    return _scaled_norm([jnp.reshape(x, (1, -1)) for x in leaves], _real_dtype(*leaves))[0]


def row_norms(tree: PyTree) -> jax.Array:
    """Per-sample Euclidean norms of a batched pytree (axis 0 of every leaf is the sample),
    overflow-safe and in at least single precision."""
    leaves = _leaves(tree)
    rows = [jnp.reshape(x, (x.shape[0], -1)) for x in leaves]
    return _scaled_norm(rows, _real_dtype(*leaves))


def residuals(
    z: PyTree, fz: PyTree, batch_axis: Optional[int] = None
) -> tuple[jax.Array, jax.Array]:
    """``(‖f(z) − z‖, ‖f(z) − z‖ / ‖f(z)‖)``, per sample with ``batch_axis=0``; 0/0 counts as 0."""
    diff = jax.tree_util.tree_map(lambda a, b: a - b, fz, z)
    measure = norm if batch_axis is None else row_norms
    absolute, scale = measure(diff), measure(fz)
    return absolute, absolute / jnp.maximum(scale, jnp.finfo(scale.dtype).tiny)


def cosine_similarity(a: PyTree, b: PyTree) -> jax.Array:
    """``Re⟨a, b⟩ / (‖a‖ ‖b‖)`` (NaN when either is zero)."""
    denominator = norm(a) * norm(b)
    return jnp.where(denominator > 0, jnp.real(vdot(a, b)) / denominator, jnp.nan)


def relative_error(value: PyTree, reference: PyTree) -> jax.Array:
    """``‖value − reference‖ / ‖reference‖``; ``inf`` for a non-finite ``value`` or a zero
    ``reference`` with a non-zero error, 0 when both are zero."""
    error = norm(jax.tree_util.tree_map(lambda v, r: v - r, value, reference))
    scale = norm(reference)
    ratio = error / jnp.where(scale > 0, scale, 1)
    ratio = jnp.where(scale > 0, ratio, jnp.where(error == 0, 0.0, jnp.inf))
    return jnp.where(jnp.isfinite(error), ratio, jnp.inf)


def gaussian_like(key: jax.Array, like: PyTree, num: Optional[int] = None) -> PyTree:
    """A standard normal pytree shaped like ``like`` (``num`` of them stacked on a new
    leading axis when ``num`` is given), each leaf in its own dtype."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    keys = jax.random.split(key, len(leaves))
    prefix = () if num is None else (num,)
    return jax.tree_util.tree_unflatten(treedef, [
        jax.random.normal(k, (*prefix, *jnp.shape(x)), jnp.result_type(x))
        for k, x in zip(keys, leaves, strict=True)
    ])
