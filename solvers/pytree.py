"""Arithmetic on pytrees of arrays: the one home for norms, inner products and probes.

Every function treats a pytree as one long vector (all leaves flattened and joined),
except where a ``batch_axis`` makes axis 0 of every leaf index independent samples.
Complex leaves use the Hermitian inner product ``⟨a, b⟩ = Σ conj(a)·b``.
"""

from __future__ import annotations

import math
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


def _rows(x: jax.Array, rows: int) -> jax.Array:
    """``x`` as a ``(rows, n)`` matrix (explicit sizes, so an empty batch reshapes too)."""
    return jnp.reshape(x, (rows, math.prod(jnp.shape(x)) // max(rows, 1)))


def _squares(x: jax.Array, dtype: Any) -> jax.Array:
    """``|x|²`` elementwise, in the real ``dtype``."""
    if jnp.iscomplexobj(x):
        return jnp.square(x.real.astype(dtype)) + jnp.square(x.imag.astype(dtype))
    return jnp.square(x.astype(dtype))


def sum_squares(tree: PyTree) -> jax.Array:
    """``‖tree‖² = Σ |x|²`` over every leaf (real, at least single precision)."""
    leaves = _leaves(tree)
    dtype = _real_dtype(*leaves)
    return sum((jnp.sum(_squares(x, dtype)) for x in leaves), jnp.zeros((), dtype))


def scaled_row_norms(*groups: list[jax.Array]) -> tuple[jax.Array, ...]:
    """For each group of ``(batch, n)`` blocks, the Euclidean norm of every row across the
    group's blocks, accumulated in at least single precision.

    The sums of squares are formed directly; only if one overflows are they formed again
    as ``m·sqrt(Σ(|x|/m)²)`` with ``m`` the row's largest magnitude (held constant under
    differentiation), so a representable norm is never ``inf``. The groups share that one
    check, so several norms cost one branch.
    """
    dtype = _real_dtype(*[x for rows in groups for x in rows])
    totals = tuple(sum(jnp.sum(_squares(x, dtype), axis=1) for x in rows) for rows in groups)

    def rescaled(_: None) -> tuple[jax.Array, ...]:
        norms = []
        for rows in groups:
            magnitudes = [jnp.abs(x).astype(dtype) for x in rows]
            m = jnp.max(jnp.stack([jnp.max(x, axis=1, initial=0) for x in magnitudes]), axis=0)
            m = jax.lax.stop_gradient(jnp.where((m > 0) & jnp.isfinite(m), m, 1))
            norms.append(
                m * jnp.sqrt(sum(jnp.sum(jnp.square(x / m[:, None]), axis=1) for x in magnitudes))
            )
        return tuple(norms)

    overflow = jnp.any(jnp.stack([jnp.any(jnp.isinf(t)) for t in totals]))
    return jax.lax.cond(overflow, rescaled, lambda _: tuple(map(jnp.sqrt, totals)), None)


def norm(tree: PyTree) -> jax.Array:
    """The Euclidean norm ``‖tree‖`` over every leaf (overflow-safe, at least single precision)."""
    return scaled_row_norms([jnp.reshape(x, (1, -1)) for x in _leaves(tree)])[0][0]


def row_norms(tree: PyTree) -> jax.Array:
    """Per-sample Euclidean norms of a batched pytree (axis 0 of every leaf is the sample),
    overflow-safe and in at least single precision."""
    return scaled_row_norms([_rows(x, jnp.shape(x)[0]) for x in _leaves(tree)])[0]


def residuals(
    z: PyTree, fz: PyTree, batch_axis: Optional[int] = None
) -> tuple[jax.Array, jax.Array]:
    """``(‖f(z) − z‖, ‖f(z) − z‖ / ‖f(z)‖)``, per sample with ``batch_axis=0``; 0/0 counts as 0."""
    diff = jax.tree_util.tree_map(lambda a, b: a - b, fz, z)
    rows = 1 if batch_axis is None else jnp.shape(_leaves(z)[0])[0]
    absolute, scale = scaled_row_norms(*[[_rows(x, rows) for x in _leaves(t)] for t in (diff, fz)])
    if batch_axis is None:
        absolute, scale = absolute[0], scale[0]
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
