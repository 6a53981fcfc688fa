"""Spectral normalisation of Haiku parameters: a bound on how far ``f`` stretches.

A fixed-point layer converges fast, and its adjoint with it, when ``f`` is a contraction in
``z``; its Lipschitz constant is at most the product of the spectral norms ``σ(W)`` of the
linear maps along each path (times those of the nonlinearities: 1 for tanh and ReLU). Every
matrix ``W`` selected here is used as

    W ↦ W · min(1, bound / σ(W)),

so each map has ``σ ≤ bound`` while the stored parameter stays free; gradients flow through
the rescaling (``∂σ/∂W = u₁v₁ᵀ``, from the same SVD as ``σ``). It is the spirit of
torchdeq's ``apply_norm``, in two forms:

* :func:`spectral_norm_params` — a transformation of a parameter dict, for
  ``implicit.haiku.DEQ(fn, transform_params=...)``: the SVDs run once per call of the
  layer, outside the solver loop, however many times the solve evaluates ``fn``;
* :func:`spectral_norm` — a transformation of a Haiku function (a custom getter), for
  functions applied a few times, such as the layers of an explicit stack.

``σ`` is the exact largest singular value. :func:`linear_weights` (the default selection)
picks the 2-D ``w`` of every ``hk.Linear``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import haiku as hk
import jax
import jax.numpy as jnp

Where = Callable[[str, str, tuple], bool]
"""``where(module_name, name, shape) -> bool``: which parameters to normalise."""


def linear_weights(module_name: str, name: str, shape: tuple) -> bool:
    """The default selection: every 2-D parameter named ``w`` (``hk.Linear`` and alike)."""
    return name == "w" and len(shape) == 2


@jax.custom_jvp
def largest_singular_value(w: jax.Array) -> jax.Array:
    """``σ₁(w)``, the spectral norm of the matrix ``w``; its derivative is ``u₁ᵀ dW v₁``."""
    return jnp.linalg.svd(w, compute_uv=False)[0]


@largest_singular_value.defjvp
def _largest_singular_value_jvp(primals: tuple, tangents: tuple) -> tuple:
    (w,), (dw,) = primals, tangents
    u, s, vt = jnp.linalg.svd(w, full_matrices=False)
    return s[0], u[:, 0] @ dw @ vt[0]


def spectral_norm_bound(w: jax.Array, bound: float) -> jax.Array:
    """``w · min(1, bound / σ₁(w))``: the matrix ``w`` with spectral norm at most ``bound``."""
    sigma = largest_singular_value(w.astype(jnp.promote_types(w.dtype, jnp.float32)))
    scale = jnp.minimum(1.0, bound / jnp.maximum(sigma, jnp.finfo(sigma.dtype).tiny))
    return (w * scale).astype(w.dtype)


def _check(bound: float) -> None:
    if not bound > 0:
        raise ValueError(f"spectral norm bound must be positive, got {bound!r}")


def spectral_norm_params(
    bound: float = 1.0, *, where: Optional[Where] = None
) -> Callable[[hk.Params], hk.Params]:
    """``params ↦ params`` with every selected matrix (``where``, default
    :func:`linear_weights`) given spectral norm at most ``bound``; for
    ``DEQ(transform_params=...)``."""
    _check(bound)
    selected = where or linear_weights

    def transform(params: hk.Params) -> hk.Params:
        return {
            module: {
                name: spectral_norm_bound(value, bound)
                if selected(module, name, tuple(jnp.shape(value))) else value
                for name, value in entries.items()
            }
            for module, entries in params.items()
        }

    return transform


def spectral_norm(
    fn: Callable[..., Any], bound: float = 1.0, *, where: Optional[Where] = None
) -> Callable[..., Any]:
    """``fn`` with every selected matrix parameter (``where``, default
    :func:`linear_weights`) used with spectral norm at most ``bound``, each time it is read.

    ``fn`` builds Haiku modules; ``init`` and ``apply`` see the same bounded maps.
    """
    _check(bound)
    selected = where or linear_weights

    def getter(next_getter: Callable, value: jax.Array, context: hk.GetterContext) -> jax.Array:
        if selected(context.module_name, context.name, tuple(context.original_shape)):
            value = spectral_norm_bound(value, bound)
        return next_getter(value)

    @functools.wraps(fn)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        with hk.custom_getter(getter):
            return fn(*args, **kwargs)

    return bounded
