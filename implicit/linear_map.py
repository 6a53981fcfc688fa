"""A linear map with a transpose of our own, for the derivative rules of the gradient modes.

A mode's ``jax.custom_jvp`` rule returns a tangent ``t = L ẋ`` that is linear in the input
tangents ``ẋ``. JAX differentiates in reverse by transposing the operations that compute
it, which fails for a map computed by a loop whose transpose is not a loop JAX can build
(a ``lax.while_loop``), and would store the loop's iterates if it could. :func:`linear_map`
computes ``L ẋ`` with a function of ours, and ``Lᵀ ȳ`` with another (a loop run backwards,
say), so that one rule serves ``jvp``, ``grad`` and ``vmap``.

It rides on ``lax.custom_linear_solve``, whose value is ``solve(b)`` and whose transpose is
``transpose_solve``: with ``b = (ẋ, 0)`` and ``x = (0, L ẋ)`` the pair of functions

    solve:            (ẋ, ·) ↦ (0, L ẋ),        transpose_solve:  (·, ȳ) ↦ (Lᵀ ȳ, 0)

are transposes of each other. JAX transposes that primitive only when every leaf of ``b``
is linear in the differentiated inputs, and a tangent that does not depend on them (a zero
that an outer rule instantiated, an argument that is not differentiated) is a constant:
every leaf of ``b`` gets ``0 · Σ ẋ`` added, a zero that depends on all of ``ẋ``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from solvers.types import PyTree


def _zeros(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map(jnp.zeros_like, tree)


def linear_map(
    apply: Callable[[PyTree], PyTree], transpose: Callable[[PyTree], PyTree], inputs: PyTree,
    output_like: PyTree,
) -> PyTree:
    """``apply(inputs)``, a linear function of ``inputs`` shaped like ``output_like``,
    transposed in reverse mode by ``transpose`` (``ȳ ↦ Lᵀ ȳ``, shaped like ``inputs``).

    ``inputs`` are tangents of floating dtypes (no ``float0`` leaves); ``apply`` and
    ``transpose`` may close over primal values, which are not differentiated again (the
    map is a first derivative: higher derivatives through it are not supported).
    """
    leaves = jax.tree_util.tree_leaves(inputs)
    if not leaves:
        return _zeros(output_like)
    anchor = 0 * sum(jnp.sum(leaf).real for leaf in leaves)

    def anchored(tree: PyTree) -> PyTree:
        return jax.tree_util.tree_map(lambda a: a + anchor.astype(a.dtype), tree)

    b = (anchored(inputs), anchored(_zeros(output_like)))

    def solve(_: Callable, b: PyTree) -> PyTree:
        return _zeros(b[0]), apply(b[0])

    def transpose_solve(_: Callable, c: PyTree) -> PyTree:
        return transpose(c[1]), _zeros(c[1])

    return lax.custom_linear_solve(lambda x: x, b, solve, transpose_solve)[1]
