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

:func:`apply_norm` is the general form, with the norms of :mod:`implicit.norms` (weight
norm, spectral norm by power iteration or exact, learnable or fixed scale, clip), for
``DEQ(fn, transform_params=apply_norm(...))``: the learnable scales are Haiku parameters,
the power-iteration vectors Haiku state (``hk.transform_with_state``), re-estimated at
every call of the layer, i.e. whenever the weights may have changed (torchdeq's
``reset_norm`` at the start of each forward pass).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Union

import haiku as hk
import jax
import jax.numpy as jnp

from implicit.norms import (
    Norm,
    Normalization,
    NormState,
    as_norm,
    largest_singular_value,
    weights,
)

Where = Callable[[str, str, tuple], bool]
"""``where(module_name, name, shape) -> bool``: which parameters to normalise."""


def linear_weights(module_name: str, name: str, shape: tuple) -> bool:
    """The default selection: every 2-D parameter named ``w`` (``hk.Linear`` and alike)."""
    return name == "w" and len(shape) == 2


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


def _name(path: str, what: str) -> str:
    """A Haiku name for the ``what`` of the parameter at ``path``: ``"['mlp/~/linear']['w']"``
    gives ``"mlp/~/linear/w:scale"``."""
    return "/".join(part.strip("'\"") for part in path.strip("[]").split("][")) + ":" + what


def apply_norm(
    norm: Union[str, Norm] = "weight_norm", *,
    where: Optional[Callable[[str, Any], bool]] = None, axis: int = -1, **options: Any,
) -> Callable[[hk.Params], hk.Params]:
    """``params ↦ params`` with weight or spectral normalisation (:mod:`implicit.norms`) of
    the selected parameters, for ``DEQ(fn, transform_params=...)``; call it inside a Haiku
    transform.

    Args:
      norm: ``"weight_norm"``, ``"spectral_norm"`` or a :class:`implicit.norms.WeightNorm`
        / :class:`implicit.norms.SpectralNorm` value.
      where: which parameters (``where(path, value)``, ``path`` as ``"['deq/~/linear']['w']"``;
        default: every floating parameter of rank ≥ 2, such as ``hk.Linear``'s ``w``).
      axis: the output axis of the selected parameters (default ``-1``, Haiku's).
      **options: options of the norm (``learn_scale``, ``target``, ``clip``,
        ``power_iterations``, ``exact``).

    Each selected parameter ``P`` gets a learnable scale ``"P:scale"`` (a Haiku parameter of
    the calling module) and, for a spectral norm by power iteration, a vector ``"P:u"`` (Haiku
    state, drawn at init with ``hk.next_rng_key()``), re-estimated at every call.
    """
    normalization = Normalization(as_norm(norm, **options), where or weights, axis)
    norm_value = normalization.norm

    def transform(params: hk.Params) -> hk.Params:
        chosen = normalization.selected(params)
        scales, vectors = {}, {}
        for path, w in chosen.items():
            size = (w.shape[axis],)
            if norm_value.learn_scale:
                def start(shape: tuple, dtype: Any, w: jax.Array = w) -> jax.Array:
                    return norm_value.initial_scale(w, axis).astype(dtype)

                scales[path] = hk.get_parameter(_name(path, "scale"), size, w.dtype, init=start)
            if norm_value.needs_vector():
                def draw(shape: tuple, dtype: Any) -> jax.Array:
                    u = jax.random.normal(hk.next_rng_key(), shape, dtype)
                    return u / jnp.linalg.norm(u)

                vectors[path] = hk.get_state(_name(path, "u"), size,
                                             jnp.promote_types(w.dtype, jnp.float32), init=draw)
        state = normalization.reset(params, NormState(scales, vectors))
        for path, vector in state.vectors.items():
            hk.set_state(_name(path, "u"), vector)
        return normalization.apply(params, state)

    return transform
