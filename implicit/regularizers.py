"""Regularisers of a fixed-point layer, all differentiable with respect to ``z`` and ``args``.

With ``J = ∂f/∂z`` evaluated at a state ``z`` (usually ``z*``):

* :func:`jacobian_frobenius_sq` — Hutchinson's estimate of ``‖J‖_F²``, the
  Jacobian regulariser of Bai et al. (2021), which keeps ``f`` contractive and
  the solves short; :class:`JacobianPenalty` is its per-element form as a value,
  the option ``jacobian_penalty=`` of :class:`implicit.haiku.DEQ`;
* :func:`spectral_radius` — a power-method estimate of ``ρ(J)``, the quantity the
  forward and backward fixed-point solves need below 1.

The fixed-point correction of Bai et al. (2022) is in :mod:`implicit.correction`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from solvers import pytree
from solvers.options import Options, at_least, option
from solvers.types import PyTree


def jacobian_frobenius_sq(
    f: Callable[..., PyTree],
    z: PyTree,
    *args: PyTree,
    key: Optional[jax.Array] = None,
    num_samples: int = 1,
    probes: Optional[PyTree] = None,
) -> jax.Array:
    """Hutchinson's unbiased estimate of ``‖∂f/∂z‖_F²`` at ``z``.

    ``‖J‖_F² = tr(JᵀJ) = E‖εᵀJ‖²`` for any probe with ``E[εεᵀ] = I``; the estimate
    is the mean of ``‖εᵢᵀJ‖²`` (one VJP each) over ``num_samples`` standard normal
    probes drawn from ``key``, or over the given ``probes`` (pytrees shaped like
    ``z`` stacked on a leading axis). Bai et al. (2021) divide it by the state size.
    """
    if probes is None:
        if key is None:
            raise ValueError("jacobian_frobenius_sq needs a PRNG key or explicit probes")
        probes = pytree.gaussian_like(key, z, num_samples)
    _, vjp = jax.vjp(lambda state: f(state, *args), z)
    return jnp.mean(jax.vmap(lambda probe: pytree.sum_squares(vjp(probe)[0]))(probes))


@dataclasses.dataclass(frozen=True)
class JacobianPenalty(Options):
    """``‖(∂f/∂z(z*))ᵏ‖_F² / numel(z*)`` by Hutchinson's estimator: with ``power = k = 1`` the
    Jacobian regulariser of Bai et al. (2021) in their per-element scale.

    ``num_probes`` Gaussian probes ``ε``, each giving ``‖εᵀJᵏ‖²`` from ``k`` VJPs. A power
    ``k > 1`` penalises how much ``k`` iterations amplify a perturbation rather than one:
    since ``ρ(J)ᵏ ≤ ‖Jᵏ‖₂ ≤ ‖Jᵏ‖_F`` it still bounds the contraction the solvers need, but a
    chain of dependences shorter than ``k`` (``J`` nilpotent on it, as when one attention
    head reads what another wrote) costs nothing. With ``batch = m > 0`` it is estimated on
    the first ``m`` samples, i.e. axis 0 of every leaf of ``z*`` and of every argument (close
    over what is not batched, such as parameters): when ``f`` acts on each sample separately
    this is the same expectation, and its second-order backward pass holds ``m`` samples'
    activations instead of the whole batch's.
    """

    num_probes: int = option(1, at_least(1), "Gaussian probes of Hutchinson's estimator")
    batch: int = option(0, at_least(0), "estimate on the first this many samples (0: all)")
    power: int = option(1, at_least(1), "k: penalise the k-step Jacobian Jᵏ")

    def __call__(
        self, f: Callable[..., PyTree], z: PyTree, *args: PyTree, key: jax.Array
    ) -> jax.Array:
        """The penalty of ``f(·, *args)`` at ``z``, differentiable in ``z``, ``args`` and
        what ``f`` closes over."""
        if self.batch:
            z, args = jax.tree_util.tree_map(lambda a: a[: self.batch], (z, args))
        size = sum(math.prod(jnp.shape(leaf)) for leaf in jax.tree_util.tree_leaves(z))
        if self.power == 1:
            estimate = jacobian_frobenius_sq(f, z, *args, key=key, num_samples=self.num_probes)
        else:
            _, vjp = jax.vjp(lambda state: f(state, *args), z)

            def amplified(probe: PyTree) -> jax.Array:
                for _ in range(self.power):
                    probe = vjp(probe)[0]
                return pytree.sum_squares(probe)

            probes = pytree.gaussian_like(key, z, self.num_probes)
            estimate = jnp.mean(jax.vmap(amplified)(probes))
        return estimate / size


def spectral_radius(
    f: Callable[..., PyTree],
    z: PyTree,
    *args: PyTree,
    key: Optional[jax.Array] = None,
    num_iters: int = 20,
) -> jax.Array:
    """Power-method estimate of the spectral radius ``ρ(∂f/∂z)`` at ``z``.

    Iterates ``v ← J v / ‖J v‖`` ``num_iters`` times from a normal ``v`` (drawn from
    ``key``; all ones without one) and returns ``‖J v‖``. It converges to ``ρ(J)``
    when the eigenvalue of largest modulus is unique and real, or when ``J`` is
    normal; it never exceeds ``‖J‖₂``. The iterations are not differentiated: the
    derivative is that of ``‖J v‖`` at the final (fixed) ``v``, which for a
    symmetric ``J`` is the derivative of ``|λ_max|``.
    """
    fixed_args = lax.stop_gradient(args)
    _, jvp_fixed = jax.linearize(lambda state: f(state, *fixed_args), lax.stop_gradient(z))
    if key is None:
        start = jax.tree_util.tree_map(jnp.ones_like, z)
    else:
        start = pytree.gaussian_like(key, z)

    def normalized(v: PyTree) -> PyTree:
        norm = pytree.norm(v)
        scale = jnp.where(norm > 0, 1 / jnp.where(norm > 0, norm, 1), 0)
        return jax.tree_util.tree_map(lambda leaf: leaf * scale.astype(leaf.dtype), v)

    v = lax.fori_loop(0, num_iters, lambda _, v: normalized(jvp_fixed(v)), normalized(start))
    v = lax.stop_gradient(v)
    _, jv = jax.jvp(lambda state: f(state, *args), (z,), (v,))
    return pytree.norm(jv)
