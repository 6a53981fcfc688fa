"""Weight normalisation with reset semantics, on parameter pytrees: the framework-free core
of ``apply_norm`` / ``reset_norm`` (as torchdeq has them) for Haiku, Flax NNX and Equinox.

A DEQ converges, and its backward with it, when its layer does not stretch too much;
normalising its weights bounds that (Bai et al. 2021, "Stabilizing equilibrium models by
Jacobian regularization"; torchdeq's ``apply_norm``). Each selected weight ``W`` (any
floating array of rank ≥ 2 by default), with rows ``W_i`` along its output axis, is used as

* :class:`WeightNorm` (Salimans & Kingma 2016): ``W_i ↦ g_i · W_i / ‖W_i‖``;
* :class:`SpectralNorm` (Miyato et al. 2018): ``W_i ↦ g_i · W_i / σ(W)``, with ``σ(W)``
  the largest singular value of ``W`` viewed as a matrix (output axis first, the others
  flattened),

where the scale ``g`` is learnable (``learn_scale=True``: a parameter per output unit,
started at ``‖W_i‖`` for weight norm, so the normalised weight starts equal to ``W``, and
at ``target`` for spectral norm) or fixed at ``target``; with ``clip`` the factor is capped,
``min(clip, g_i / ‖·‖)`` (``SpectralNorm(target=b, learn_scale=False, clip=1)`` is
``W · min(1, b/σ(W))``: spectral norm at most ``b``). Gradients flow through the
normalisation to ``W`` and ``g``.

``σ`` comes from an SVD at every use (``exact=True``; derivative ``u₁v₁ᵀ``) or from power
iteration (the default), whose estimate is carried as state: a unit vector ``u`` per
weight, with ``σ̂ = ‖W v‖``, ``v = Wᵀu / ‖Wᵀu‖`` (``u`` and ``v`` carry no derivative, so
``∂σ̂/∂W = û v̂ᵀ``, the exact derivative once ``u`` has converged). **Reset** re-estimates
it: :meth:`Normalization.reset` runs ``power_iterations`` steps ``u ← W Wᵀ u / ‖W Wᵀ u‖``
from the carried ``u`` for the current weights. As torchdeq's ``reset_norm``, call it once
per training step, when the weights have changed (not at every evaluation of the layer
inside a solve: there the layer must stay one fixed map); a stale ``u`` underestimates
``σ``.

A :class:`Normalization` (what: a norm, a selection, the output axis) acts on any parameter
pytree with pure functions, as optax's transformations do: ``init(params, key) ->
NormState``, ``apply(params, state) -> params``, ``reset(params, state) -> NormState``. The
:class:`NormState` holds the learnable scales (trainable parameters, by leaf path) and the
power-iteration vectors (state, not trained). The framework helpers keep them where their
framework keeps parameters and state: ``implicit.haiku.apply_norm``,
``implicit.flax.apply_norm`` / ``reset_norm``, ``implicit.equinox.apply_norm`` /
``reset_norm``.
"""

from __future__ import annotations

import dataclasses
import functools
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Mapping, Optional, Union

import jax
import jax.numpy as jnp
from jax import lax

from solvers.options import Options, above, at_least, option
from solvers.types import PyTree

__all__ = [
    "NORMS",
    "NormState",
    "Normalization",
    "SpectralNorm",
    "WeightNorm",
    "as_norm",
    "largest_singular_value",
    "weights",
]

Where = Callable[[str, Any], bool]
"""``where(path, leaf) -> bool``: which leaves to normalise (``path`` as
``jax.tree_util.keystr`` writes it, e.g. ``"['linear']['w']"`` or ``".linear.weight"``)."""


def weights(path: str, leaf: Any) -> bool:
    """The default selection: every floating array of rank ≥ 2 (matrices, kernels)."""
    return (jnp.ndim(leaf) >= 2 and hasattr(leaf, "dtype")
            and jnp.issubdtype(jnp.result_type(leaf), jnp.floating))


@jax.custom_jvp
def largest_singular_value(w: jax.Array) -> jax.Array:
    """``σ₁(w)``, the spectral norm of the matrix ``w``; its derivative is ``u₁ᵀ dW v₁``."""
    return jnp.linalg.svd(w, compute_uv=False)[0]


@largest_singular_value.defjvp
def _largest_singular_value_jvp(primals: tuple, tangents: tuple) -> tuple:
    (w,), (dw,) = primals, tangents
    u, s, vt = jnp.linalg.svd(w, full_matrices=False)
    return s[0], u[:, 0] @ dw @ vt[0]


@dataclasses.dataclass(frozen=True)
class _Norm(Options):
    """What both norms share."""

    name: ClassVar[str]
    learn_scale: bool = option(
        True, None, "learn the scale g per output unit (else fixed at target)")
    target: float = option(1.0, above(0), "the fixed scale, or the learnable one's start "
                           "(spectral norm)")
    clip: Optional[float] = option(None, above(0), "cap the factor g/‖·‖ at this value")

    @classmethod
    def describe(cls) -> str:
        return f"norm {cls.name!r}"

    def initial_scale(self, w: jax.Array, axis: int) -> jax.Array:
        """The learnable scale at the start, one per output unit."""
        return jnp.full((w.shape[axis],), self.target, w.dtype)

    def needs_vector(self) -> bool:
        """Whether the norm carries a power-iteration vector."""
        return False

    def denominator(self, w: jax.Array, axis: int, vector: Optional[jax.Array]) -> jax.Array:
        """``‖W_i‖`` (broadcast along ``axis``) or ``σ(W)``."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class WeightNorm(_Norm):
    """``W_i ↦ g_i · W_i / ‖W_i‖`` per output unit (Salimans & Kingma 2016, "Weight
    normalization"); a learnable ``g`` starts at ``‖W_i‖``."""

    name: ClassVar[str] = "weight_norm"

    def initial_scale(self, w: jax.Array, axis: int) -> jax.Array:
        return _row_norms(w, axis)

    def denominator(self, w: jax.Array, axis: int, vector: Optional[jax.Array]) -> jax.Array:
        return _along(_row_norms(w, axis), w, axis)


@dataclasses.dataclass(frozen=True)
class SpectralNorm(_Norm):
    """``W_i ↦ g_i · W_i / σ(W)`` (Miyato et al. 2018, "Spectral normalization for
    generative adversarial networks"), ``σ`` exact or a power-iteration estimate that
    :meth:`Normalization.reset` refreshes (see the module docstring)."""

    name: ClassVar[str] = "spectral_norm"
    power_iterations: int = option(1, at_least(1), "power-iteration steps per reset")
    exact: bool = option(False, None, "σ from an SVD at every use, with no state to reset")

    def needs_vector(self) -> bool:
        return not self.exact

    def denominator(self, w: jax.Array, axis: int, vector: Optional[jax.Array]) -> jax.Array:
        matrix = _matrix(w, axis)
        if self.exact:
            return largest_singular_value(matrix)
        v = lax.stop_gradient(_unit(matrix.T @ lax.stop_gradient(vector)))
        return jnp.linalg.norm(matrix @ v)

    def iterate(self, w: jax.Array, axis: int, vector: jax.Array) -> jax.Array:
        """``power_iterations`` steps ``u ← W Wᵀ u / ‖W Wᵀ u‖`` (no derivative)."""
        matrix = lax.stop_gradient(_matrix(w, axis))
        return _power_iteration(matrix, vector.astype(matrix.dtype), self.power_iterations)


NORMS: Mapping[str, type[_Norm]] = MappingProxyType(
    {cls.name: cls for cls in (WeightNorm, SpectralNorm)})
"""The norms by name: ``"weight_norm"``, ``"spectral_norm"``."""

Norm = Union[WeightNorm, SpectralNorm]


def as_norm(norm: Union[str, Norm], **options: Any) -> Norm:
    """The norm ``norm`` names (with ``options``), or the value ``norm`` (with ``options``
    changed); unknown names and options are named in the error."""
    if isinstance(norm, _Norm):
        return dataclasses.replace(norm, **options) if options else norm
    if isinstance(norm, str) and norm in NORMS:
        return NORMS[norm](**options)
    raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)} or a "
                     "WeightNorm/SpectralNorm value")


def _compute(w: jax.Array) -> jax.Array:
    return w.astype(jnp.promote_types(w.dtype, jnp.float32))


def _eps(x: jax.Array) -> jax.Array:
    return jnp.finfo(x.dtype).tiny


def _unit(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x), _eps(x))


def _matrix(w: jax.Array, axis: int) -> jax.Array:
    """``w`` as an ``(outputs, rest)`` matrix."""
    moved = jnp.moveaxis(w, axis, 0)
    return moved.reshape(moved.shape[0], -1)


@functools.partial(jax.jit, static_argnames="steps")
def _power_iteration(matrix: jax.Array, u: jax.Array, steps: int) -> jax.Array:
    """``steps`` steps ``u ← M Mᵀ u / ‖M Mᵀ u‖``; jitted, so a reset outside ``jit`` (once
    per training step) compiles once per shape."""

    def step(u: jax.Array, _: None) -> tuple[jax.Array, None]:
        return _unit(matrix @ _unit(matrix.T @ u)), None

    return lax.scan(step, u, None, length=steps)[0]


def _row_norms(w: jax.Array, axis: int) -> jax.Array:
    """``‖W_i‖`` for each output unit ``i``."""
    return jnp.linalg.norm(_matrix(w, axis), axis=1)


def _along(values: jax.Array, w: jax.Array, axis: int) -> jax.Array:
    """``values`` (one per output unit) shaped to broadcast against ``w`` along ``axis``."""
    shape = [1] * w.ndim
    shape[axis] = w.shape[axis]
    return values.reshape(shape)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["scales", "vectors"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class NormState:
    """What a :class:`Normalization` keeps beside the parameters, by leaf path:
    ``scales`` (the learnable ``g``: train them) and ``vectors`` (the power-iteration
    ``u``: state, refreshed by :meth:`Normalization.reset`, never trained)."""

    scales: dict[str, jax.Array]
    vectors: dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Normalization:
    """A norm applied to the selected leaves of a parameter pytree (see the module
    docstring).

    Attributes:
      norm: :class:`WeightNorm` or :class:`SpectralNorm`.
      where: which leaves (:data:`Where`; default :func:`weights`, every floating array of
        rank ≥ 2).
      axis: the output axis of the selected weights (``-1`` for Haiku and Flax kernels,
        ``0`` for Equinox weights and torch-style ``(out, in)`` matrices).
    """

    norm: Norm
    where: Where = weights
    axis: int = -1

    def __post_init__(self) -> None:
        if not isinstance(self.norm, _Norm):
            raise TypeError(f"norm must be a WeightNorm or a SpectralNorm, got {self.norm!r}")
        if not callable(self.where):
            raise TypeError(f"where must be callable as where(path, leaf), got {self.where!r}")

    def selected(self, params: PyTree) -> dict[str, jax.Array]:
        """The selected leaves of ``params`` by path; a selected leaf of rank < 2 is named
        in a ``ValueError``."""
        found = {}
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            key = jax.tree_util.keystr(path)
            if self.where(key, leaf):
                if jnp.ndim(leaf) < 2 or not -jnp.ndim(leaf) <= self.axis < jnp.ndim(leaf):
                    raise ValueError(
                        f"{self.norm.describe()} selected leaf {key} of shape {jnp.shape(leaf)}; "
                        f"it normalises arrays of rank >= 2 along axis {self.axis}")
                found[key] = leaf
        return found

    def init(self, params: PyTree, key: Optional[jax.Array] = None) -> NormState:
        """The state for ``params``: learnable scales, and power-iteration vectors drawn
        from ``key`` (needed then) and refined by one :meth:`reset`."""
        chosen = self.selected(params)
        scales = ({k: self.norm.initial_scale(_compute(w), self.axis).astype(w.dtype)
                   for k, w in chosen.items()} if self.norm.learn_scale else {})
        vectors = {}
        if self.norm.needs_vector() and chosen:
            if key is None:
                raise ValueError(f"{self.norm.describe()} with power iteration needs a random "
                                 "key to start its vectors (or exact=True)")
            for i, (k, w) in enumerate(chosen.items()):
                start = jax.random.normal(jax.random.fold_in(key, i), (w.shape[self.axis],))
                vectors[k] = _unit(start.astype(_compute(w).dtype))
        return self.reset(params, NormState(scales, vectors))

    def apply(self, params: PyTree, state: NormState) -> PyTree:
        """``params`` with every selected weight normalised (differentiable with respect to
        ``params`` and ``state.scales``)."""
        self._check(params, state)

        def normalise(path: Any, w: Any) -> Any:
            key = jax.tree_util.keystr(path)
            if not self.where(key, w):
                return w
            work = _compute(w)
            scale = state.scales.get(key)
            scale = jnp.asarray(self.norm.target, work.dtype) if scale is None else (
                _along(scale.astype(work.dtype), work, self.axis))
            denominator = self.norm.denominator(work, self.axis, state.vectors.get(key))
            factor = scale / jnp.maximum(denominator, _eps(work))
            if self.norm.clip is not None:
                factor = jnp.minimum(factor, self.norm.clip)
            return (work * factor).astype(w.dtype)

        return jax.tree_util.tree_map_with_path(normalise, params)

    def reset(self, params: PyTree, state: NormState) -> NormState:
        """``state`` with its power-iteration vectors re-estimated for ``params`` (the
        identity for weight norm and exact spectral norm)."""
        if not state.vectors:
            return state
        self._check(params, state)
        chosen = self.selected(params)
        vectors = {k: self.norm.iterate(_compute(chosen[k]), self.axis, u)
                   for k, u in state.vectors.items()}
        return NormState(state.scales, vectors)

    def _check(self, params: PyTree, state: NormState) -> None:
        chosen = self.selected(params)
        wanted = [(state.scales, self.norm.learn_scale, "scale"),
                  (state.vectors, self.norm.needs_vector(), "power-iteration vector")]
        for held, needed, what in wanted:
            if needed and set(held) != set(chosen):
                raise ValueError(
                    f"the {self.norm.describe()} state holds a {what} for "
                    f"{sorted(held)} but the parameters select {sorted(chosen)}; "
                    "build it with Normalization.init for these parameters")
