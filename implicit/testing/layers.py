"""The weight-tied tanh layer of the tests and the benchmarks, defined at module level so
that jitted checks compiled for one example are reused for the next one of the same shape.

Both layers are ``f(z, params, x) = tanh(z Wᵀ + x Uᵀ + b)`` row by row; ``tanh`` is
1-Lipschitz, so ``f`` is a contraction in ``z`` with factor ``‖W‖₂`` when
``‖W‖₂ < 1``, and the fixed point is unique. ``params`` is ``{"w": W, "u": U, "b": b}``;
without ``"u"`` the injection ``x`` enters as it is (``U = I``: a DEQ that computed
``x Uᵀ`` once, outside the solve), without ``"b"`` there is no bias. Importing this module
needs neither hypothesis nor any other test dependency.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from solvers.types import PyTree


def tanh_layer(z: jax.Array, params: dict, x: jax.Array) -> jax.Array:
    """``tanh(z Wᵀ + x Uᵀ + b)`` for ``z`` and ``x`` of shape ``(..., d)`` (``U = I`` and
    ``b = 0`` when ``params`` lacks them)."""
    injection = x @ params["u"].T if "u" in params else x
    if "b" in params:
        injection = injection + params["b"]
    return jnp.tanh(z @ params["w"].T + injection)


def pytree_tanh_layer(z: PyTree, params: dict, x: jax.Array) -> PyTree:
    """:func:`tanh_layer` on a pytree state: its leaves ``(..., dᵢ)`` are joined along the
    last axis into ``(..., Σdᵢ)`` and the result is split back into the same pytree."""
    leaves, treedef = jax.tree_util.tree_flatten(z)
    sizes = [leaf.shape[-1] for leaf in leaves]
    joined = tanh_layer(jnp.concatenate(leaves, axis=-1), params, x)
    parts = jnp.split(joined, np.cumsum(sizes)[:-1].tolist(), axis=-1)
    return jax.tree_util.tree_unflatten(treedef, parts)
