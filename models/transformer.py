"""Byte-level Transformer language models: the DEQ Transformer, its unrolled twin, and the
standard Transformer it replaces.

Every model embeds the bytes as ``x = E[tokens] + P[positions]`` (token plus learned position
embeddings) and reads out ``logits = W_out · LN(z) + b``. In between:

- :class:`DEQTransformerLM` returns the equilibrium ``z* = f(z*, x)`` of one weight-tied block
  :class:`DEQBlock` (its equations, by ``BlockConfig.form``, are in its docstring; ``x`` is the
  input injection), found by a named fixed-point solver from ``z⁰ = 0`` or ``z⁰ = x`` and
  differentiated implicitly (``implicit.haiku.DEQ``);
- :class:`UnrolledLM` applies the same block ``D`` times from the same ``z⁰``,
  ``zᵏ⁺¹ = f(zᵏ, x)``, with one set of weights: the DEQ's unrolled twin, which reaches the
  same ``z*`` as ``D → ∞``;
- :class:`TransformerLM` is the standard pre-LN Transformer (:class:`TransformerLayer`): a
  residual stream from ``z⁰ = x`` to which ``D`` layers, each with its own weights, add
  ``Attn(LN z)`` and ``MLP(LN z)``. With ``D = 1`` it has the DEQ's parameters exactly.

All share the attention and MLP code (:class:`_Sublayers`) and the initialisation. Attention is
causal (position ``t`` sees ``s ≤ t``) and ignores padded keys. Dropout in the DEQ and its
twin is *variational*: one mask per forward pass, the same at every iteration or layer (one rng
key per solve). Every model returns :class:`LMOutput` with logits and per-sample solver
statistics.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple, Optional, Union

import chex
import haiku as hk
import jax
import jax.numpy as jnp

from implicit import Correction, JacobianPenalty, Mode
from implicit.haiku import DEQ, spectral_norm, spectral_norm_params
from solvers import Reason, Solver, residuals

__all__ = [
    "SOLVE_STAT_KEYS",
    "BLOCK_FORMS",
    "INITIAL_STATES",
    "BlockConfig",
    "DEQBlock",
    "TransformerLayer",
    "LMOutput",
    "DEQTransformerLM",
    "UnrolledLM",
    "TransformerLM",
    "causal_attention_mask",
    "twin_params",
]

SOLVE_STAT_KEYS: tuple[str, ...] = (
    "steps", "fevals", "abs_residual", "rel_residual", "converged", "reason"
)
"""The per-sample statistics every model reports in :attr:`LMOutput.stats` (``reason``: a
:class:`solvers.Reason` code; an explicit stack's is ``MAX_ITER``, it never converges)."""

_NEG_INF = -1e9  # finite "minus infinity" so a fully masked row gives a uniform, not NaN, softmax


def twin_params(deq_params: hk.Params) -> hk.Params:
    """The parameters of the unrolled weight-tied twin of a :class:`DEQTransformerLM`.

    The DEQ keeps its block under ``<name>/deq/block``, the tied stack under ``<name>/block``;
    with the same model ``name`` (and settings) every other parameter already matches, so
    ``UnrolledLM(...).apply(twin_params(p), ...)`` is the DEQ's unrolled twin with the same
    weights.
    """
    return {key.replace("/deq/block", "/block"): value for key, value in deq_params.items()}


class LMOutput(NamedTuple):
    """What a language model returns.

    Attributes:
      logits: ``(batch, seq, vocab)`` next-byte logits.
      stats: per-sample solve statistics, ``{"steps", "fevals", "abs_residual",
        "rel_residual", "converged", "reason"}`` (:data:`SOLVE_STAT_KEYS`), each of shape
        ``(batch,)``. For the DEQ they come from
        the forward solver; for an explicit stack ``steps`` and ``fevals`` are its depth and
        the residuals are those of its last layer, ``‖zᴰ − zᴰ⁻¹‖`` and
        ``‖zᴰ − zᴰ⁻¹‖ / ‖zᴰ‖``.
      jac_loss: scalar Jacobian-regularisation term (0 unless the DEQ was built with
        ``jac_reg > 0`` and called with ``is_training=True``); the caller adds
        ``jac_reg · jac_loss`` to its loss.
      correction_logits: ``(K, batch, seq, vocab)`` logits of the fixed-point correction's
        ``K`` states (a DEQ built with a ``correction``, called with ``is_training=True``),
        else ``None``; the caller adds their weighted losses
        (:func:`implicit.fixed_point_correction_loss`).
    """

    logits: jax.Array
    stats: dict[str, jax.Array]
    jac_loss: jax.Array
    correction_logits: Optional[jax.Array] = None


def causal_attention_mask(mask: jax.Array) -> jax.Array:
    """Boolean ``(batch, 1, seq, seq)`` mask: query ``t`` may attend key ``s`` iff ``s ≤ t`` and
    ``mask[b, s]`` (the key is not padding). ``mask`` is ``(batch, seq)``, nonzero = valid."""
    seq = mask.shape[-1]
    causal = jnp.tril(jnp.ones((seq, seq), dtype=bool))
    return causal[None, None] & (mask[:, None, None, :] > 0)


def _linear(size: int, std: float, name: str, with_bias: bool = True) -> hk.Linear:
    init = hk.initializers.TruncatedNormal(std)
    return hk.Linear(size, with_bias=with_bias, w_init=init, name=name)


def _rms_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """``x / rms(x)`` over the last axis (no gain): every vector gets norm ``√dim``."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def _layer_norm(name: str) -> hk.LayerNorm:
    return hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, name=name)


BLOCK_FORMS: tuple[str, ...] = ("sum", "injection", "update", "postln", "normalized")
"""The forms of the weight-tied block ``f(z, x)`` (see :class:`DEQBlock`)."""

INITIAL_STATES: tuple[str, ...] = ("zeros", "input")
"""Where the DEQ's solve (and its unrolled twin) starts: ``z⁰ = 0`` or ``z⁰ = x``."""


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """The settings of a Transformer layer: the DEQ's block ``f(z, x)`` and every layer of the
    standard Transformer.

    Attributes:
      d_model: width of the residual stream.
      num_heads: attention heads (must divide ``d_model``).
      block_layers: attention + MLP layers inside the DEQ's block.
      mlp_ratio: MLP hidden width as a multiple of ``d_model``.
      dropout_rate: dropout rate of the attention and MLP outputs (variational in the DEQ).
      init_std: std of the truncated-normal weight initialisation.
      out_init_scale: extra factor on the init std of the projections that write into
        the residual stream (attention output, MLP output).
      spectral_norm: a bound on the spectral norm of every matrix of the block
        (``implicit.haiku.spectral_norm``); 0 leaves them free.
      qk_norm: RMS-normalise every query and key per head, so the attention logits stay
        within ``±√d_head`` and the softmax cannot sharpen without bound.
      form: the DEQ block's equations, one of :data:`BLOCK_FORMS` (see :class:`DEQBlock`).
    """

    d_model: int
    num_heads: int
    block_layers: int = 1
    mlp_ratio: int = 4
    dropout_rate: float = 0.0
    init_std: float = 0.02
    out_init_scale: float = 1.0
    spectral_norm: float = 0.0
    qk_norm: bool = False
    form: str = "sum"

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}"
            )
        if self.block_layers < 1:
            raise ValueError(f"block_layers must be at least 1, got {self.block_layers}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.form not in BLOCK_FORMS:
            raise ValueError(f"unknown block form {self.form!r}; choose one of "
                             f"{', '.join(BLOCK_FORMS)}")


class _Sublayers(hk.Module):
    """Causal self-attention and the MLP, the two sublayers every layer here is built of.

    Linear weights are drawn from a truncated normal with std ``config.init_std``; the
    projections that write into the residual stream (attention output, MLP output)
    additionally get ``config.out_init_scale`` times that.
    """

    def __init__(self, config: BlockConfig, name: str | None = None) -> None:
        super().__init__(name=name)
        self.config = config
        self.out_std = config.init_std * config.out_init_scale

    @hk.experimental.name_like("__call__")
    def attention(self, h: jax.Array, allowed: jax.Array, layer: int) -> jax.Array:
        """``Attn(h) = W_o · softmax(q kᵀ / √d_head + mask) v`` with ``q, k, v = W_qkv h``."""
        batch, seq, _ = h.shape
        c = self.config
        head = c.d_model // c.num_heads
        qkv = _linear(3 * c.d_model, c.init_std, f"qkv_{layer}")(h)
        q, k, v = jnp.split(qkv.reshape(batch, seq, 3 * c.num_heads, head), 3, axis=2)
        if c.qk_norm:
            q, k = _rms_normalize(q), _rms_normalize(k)
        logits = jnp.einsum("bthd,bshd->bhts", q, k) / math.sqrt(head)
        logits = jnp.where(allowed, logits, _NEG_INF)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhts,bshd->bthd", weights, v).reshape(batch, seq, c.d_model)
        return _linear(c.d_model, self.out_std, f"attn_out_{layer}")(out)

    @hk.experimental.name_like("__call__")
    def mlp(self, h: jax.Array, layer: int) -> jax.Array:
        """``MLP(h) = W₂ · gelu(W₁ h + b₁) + b₂``."""
        c = self.config
        hidden = _linear(c.mlp_ratio * c.d_model, c.init_std, f"mlp_in_{layer}")(h)
        return _linear(c.d_model, self.out_std, f"mlp_out_{layer}")(jax.nn.gelu(hidden))


def _dropout(rate: float, rng: jax.Array | None) -> Callable[[jax.Array, int], jax.Array]:
    """``drop(value, index)``: dropout with the key ``fold_in(rng, index)`` (identity when
    ``rng`` is None or the rate is 0), so one ``rng`` gives one fixed set of masks."""

    def drop(value: jax.Array, index: int) -> jax.Array:
        if rng is None or rate == 0.0:
            return value
        return hk.dropout(jax.random.fold_in(rng, index), rate, value)

    return drop


def _check_layer_inputs(z: jax.Array, x: jax.Array | None, mask: jax.Array) -> None:
    chex.assert_rank(z, 3)
    if x is not None:
        chex.assert_equal_shape([z, x])
    chex.assert_shape(mask, z.shape[:2])


class DEQBlock(_Sublayers):
    """The weight-tied block ``f(z, x)`` whose equilibrium ``z* = f(z*, x)`` the DEQ finds.

    ``x = E[tokens] + P[positions]`` is the input injection, ``m ∈ {0, 1}`` zeroes padded
    positions, and ``config.form`` picks the equations. Every form has the parameters of
    one standard Transformer layer (``"normalized"``: one LayerNorm more).

    ``"sum"`` (the injection added to the attention's input; the residual stream is ``x``)::

        h = x + Attn(LN(z + x));  f = (h + MLP(LN(h))) · m

    so ``f(0, x)`` is exactly one standard pre-LN Transformer layer applied to ``x``, and
    the context can reach position ``t`` through ``x`` directly, not only through ``∂f/∂z``.

    ``"injection"`` (attention reads the state alone)::

        h⁰ = x + Attn(LN(z));  hˡ = hˡ⁻¹ + Attn(LN(hˡ⁻¹)), 0 < l < L
        f  = (h + MLP(LN(h))) · m

    with ``L = block_layers`` (further pre-LN layers inside the block; this form only).

    ``"update"`` (the injection plus a whole pre-LN layer's update of the state)::

        a = Attn(LN(z));  f = (x + a + MLP(LN(z + a))) · m

    ``"postln"`` (Bai, Kolter and Koltun 2019's DEQ-Transformer layer: post-LN, the injection
    inside the attention's input)::

        h = LN(z + Attn(z + x));  f = LN(h + MLP(h)) · m

    ``"normalized"`` (a pre-LN layer on ``z + x`` whose output is normalised)::

        u = z + x;  h = u + Attn(LN(u));  f = LN(h + MLP(LN(h))) · m

    In ``"sum"``, ``"injection"`` and ``"update"`` the state enters only through
    LayerNorms, and in the last two the output is normalised, so ``f`` is bounded and a
    fixed point exists.
    """

    def __call__(
        self,
        z: jax.Array,
        x: jax.Array,
        mask: jax.Array,
        *,
        is_training: bool = False,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """Apply ``f``.

        Args:
          z: ``(batch, seq, d_model)`` state.
          x: ``(batch, seq, d_model)`` input injection.
          mask: ``(batch, seq)`` padding mask, 1 for real tokens and 0 for padding.
          is_training: apply dropout (needs an rng).
          rng: the dropout key; ``None`` draws ``hk.next_rng_key()``. Either way one key
            gives one set of masks, so passing the same key to every call is variational
            dropout.

        Returns:
          ``f(z, x)``, same shape and dtype as ``z``, zero at padded positions.
        """
        _check_layer_inputs(z, x, mask)
        c = self.config
        if is_training and c.dropout_rate > 0.0 and rng is None:
            rng = hk.next_rng_key()
        drop = _dropout(c.dropout_rate, rng if is_training else None)
        allowed = causal_attention_mask(mask)
        equations = {"injection": self._injection, "postln": self._postln,
                     "normalized": self._normalized, "sum": self._sum,
                     "update": self._update}[c.form]

        def layers(z: jax.Array) -> jax.Array:
            return equations(z, x, allowed, drop)

        if c.spectral_norm:
            layers = spectral_norm(layers, c.spectral_norm)
        h = layers(z)
        out = h * mask[..., None].astype(h.dtype)
        chex.assert_equal_shape([out, z])
        return out.astype(z.dtype)

    @hk.experimental.name_like("__call__")
    def _injection(self, z, x, allowed, drop) -> jax.Array:
        h = x + drop(self.attention(_layer_norm("ln_attn_0")(z), allowed, 0), 0)
        h = h + drop(self.mlp(_layer_norm("ln_mlp_0")(h), 0), 1)
        for layer in range(1, self.config.block_layers):
            h = h + drop(self.attention(_layer_norm(f"ln_attn_{layer}")(h), allowed, layer),
                         2 * layer)
            h = h + drop(self.mlp(_layer_norm(f"ln_mlp_{layer}")(h), layer), 2 * layer + 1)
        return h

    @hk.experimental.name_like("__call__")
    def _postln(self, z, x, allowed, drop) -> jax.Array:
        h = _layer_norm("ln_attn_0")(z + drop(self.attention(z + x, allowed, 0), 0))
        return _layer_norm("ln_mlp_0")(h + drop(self.mlp(h, 0), 1))

    @hk.experimental.name_like("__call__")
    def _sum(self, z, x, allowed, drop) -> jax.Array:
        h = x + drop(self.attention(_layer_norm("ln_attn_0")(z + x), allowed, 0), 0)
        return h + drop(self.mlp(_layer_norm("ln_mlp_0")(h), 0), 1)

    @hk.experimental.name_like("__call__")
    def _update(self, z, x, allowed, drop) -> jax.Array:
        a = drop(self.attention(_layer_norm("ln_attn_0")(z), allowed, 0), 0)
        return x + a + drop(self.mlp(_layer_norm("ln_mlp_0")(z + a), 0), 1)

    @hk.experimental.name_like("__call__")
    def _normalized(self, z, x, allowed, drop) -> jax.Array:
        u = z + x
        h = u + drop(self.attention(_layer_norm("ln_attn_0")(u), allowed, 0), 0)
        h = h + drop(self.mlp(_layer_norm("ln_mlp_0")(h), 0), 1)
        return _layer_norm("ln_out")(h)


class TransformerLayer(_Sublayers):
    """One layer of the standard pre-LN Transformer (Radford et al. 2019; Xiong et al. 2020),
    with the same attention and MLP as :class:`DEQBlock`::

        z ← z + Attn(LN(z));   z ← z + MLP(LN(z))

    where each sublayer adds to the residual stream ``z`` (zeroed at padded positions).
    """

    def __call__(self, z: jax.Array, mask: jax.Array, *, drop: Callable) -> jax.Array:
        """The layer applied to ``z`` (``(batch, seq, d_model)``) under the padding ``mask``;
        ``drop(value, index)`` is the dropout of the two sublayer outputs."""
        _check_layer_inputs(z, None, mask)
        allowed = causal_attention_mask(mask)
        z = z + drop(self.attention(_layer_norm("ln_attn_0")(z), allowed, 0), 0)
        z = z + drop(self.mlp(_layer_norm("ln_mlp_0")(z), 0), 1)
        return z * mask[..., None].astype(z.dtype)


class _LMBase(hk.Module):
    """Embeddings in, logits out: the parts every model shares."""

    def __init__(
        self,
        vocab_size: int,
        block: BlockConfig,
        max_seq_len: int,
        embed_std: float,
        name: str | None,
    ) -> None:
        super().__init__(name=name)
        self.vocab_size = vocab_size
        self.block = block
        self.max_seq_len = max_seq_len
        self.embed_std = embed_std

    @hk.experimental.name_like("__call__")
    def make_block(self, name: str = "block") -> DEQBlock:
        """The block ``f`` named as if built in ``__call__`` (``<model>/block``)."""
        return DEQBlock(self.block, name=name)

    @hk.experimental.name_like("__call__")
    def embed(self, tokens: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """``x = E[tokens] + P[0..seq−1]``; returns ``(x, mask)`` with ``mask`` as float.

        Both embeddings start from a truncated normal with std ``embed_std``.
        """
        chex.assert_rank(tokens, 2)
        batch, seq = tokens.shape
        if seq > self.max_seq_len:
            raise ValueError(f"sequence length {seq} exceeds max_seq_len={self.max_seq_len}")
        if mask is None:
            mask = jnp.ones((batch, seq), jnp.float32)
        chex.assert_shape(mask, (batch, seq))
        mask = mask.astype(jnp.float32)
        d_model = self.block.d_model
        init = hk.initializers.TruncatedNormal(self.embed_std)
        token_embed = hk.Embed(self.vocab_size, d_model, w_init=init, name="token_embed")
        positions = hk.get_parameter("pos_embed", (self.max_seq_len, d_model), init=init)
        x = token_embed(tokens) + positions[None, :seq]
        chex.assert_shape(x, (batch, seq, d_model))
        return x, mask

    @hk.experimental.name_like("__call__")
    def readout(self, z: jax.Array) -> jax.Array:
        """``logits = W_out · LN(z) + b`` (untied from the token embedding)."""
        logits = _linear(self.vocab_size, self.block.init_std, "logits")(
            _layer_norm("ln_final")(z)
        )
        chex.assert_shape(logits, (*z.shape[:2], self.vocab_size))
        return logits


def _initial_state(x: jax.Array, initial_state: str) -> jax.Array:
    if initial_state not in INITIAL_STATES:
        raise ValueError(f"unknown initial state {initial_state!r}; choose one of "
                         f"{', '.join(INITIAL_STATES)}")
    return x if initial_state == "input" else jnp.zeros_like(x)


def _layer_stats(batch: int, depth: int, previous: jax.Array, z: jax.Array) -> dict:
    """The statistics of an explicit stack of ``depth`` layers, in the DEQ's format: the
    residual is its last layer's change ``zᴰ − zᴰ⁻¹``, and it never converges."""
    change, relative = residuals(previous, z, batch_axis=0)
    return {
        "steps": jnp.full((batch,), depth, jnp.int32),
        "fevals": jnp.full((batch,), depth, jnp.int32),
        "abs_residual": change,
        "rel_residual": relative,
        "converged": jnp.zeros((batch,), bool),
        "reason": jnp.full((batch,), int(Reason.MAX_ITER), jnp.int32),
    }


class DEQTransformerLM(_LMBase):
    """The DEQ Transformer language model: ``logits = readout(z*)``, ``z* = f(z*, x)``.

    The equilibrium is found by ``implicit.haiku.DEQ`` from ``z⁰`` (``initial_state``:
    ``"zeros"`` or ``"input"``, ``z⁰ = x``) with ``solver`` (a name or a
    :class:`solvers.Solver`) and differentiated by ``backward`` (a gradient mode of
    :mod:`implicit.modes` or its name). ``jacobian_penalty`` (an
    :class:`implicit.JacobianPenalty`) is evaluated at ``z*`` when training and returned as
    :attr:`LMOutput.jac_loss`. With a ``correction`` (an :class:`implicit.Correction`), the
    training forward solve also hands out some of its iterates ``z_k``, and
    :attr:`LMOutput.correction_logits` are the readouts of their one-step images
    ``f(z_k, x)`` (Bai et al. 2022's fixed-point correction, from the one solve). The gradient with respect to ``z⁰`` is zero, so starting from
    ``x`` changes where the solver starts, not the derivative.

    With ``remat`` (default) the block is wrapped in ``hk.remat``: the VJPs of the backward
    pass recompute its activations from ``(z*, x)`` instead of keeping them, which trades
    one extra block evaluation per adjoint iteration for a train-step memory that is a few
    states rather than a few layers' activations.
    """

    def __init__(
        self,
        vocab_size: int,
        block: BlockConfig,
        *,
        solver: Union[str, Solver] = "broyden",
        backward: Union[str, Mode] = "implicit",
        initial_state: str = "zeros",
        max_seq_len: int = 512,
        embed_std: float = 1.0,
        jacobian_penalty: Optional[JacobianPenalty] = None,
        correction: Optional[Correction] = None,
        remat: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(vocab_size, block, max_seq_len, embed_std, name)
        self.solver = solver
        self.backward = backward
        self.initial_state = initial_state
        self.jacobian_penalty = jacobian_penalty
        self.correction = correction
        self.remat = remat

    def __call__(
        self, tokens: jax.Array, mask: jax.Array | None = None, *, is_training: bool = False
    ) -> LMOutput:
        """Logits for ``tokens`` (``(batch, seq)`` ints) with optional padding ``mask``.

        With a ``jacobian_penalty`` and ``is_training``, ``jac_loss`` is its estimate of
        ``‖∂f/∂z(z*)‖²_F / numel(z*)`` (Bai et al. 2021), with gradients to the parameters
        and through ``z*``.
        """
        x, mask = self.embed(tokens, mask)
        # f must not close over this (outer) module. The spectral bound, if any, is applied
        # by the DEQ to the block's parameters once per call, not at every iteration.
        config = dataclasses.replace(self.block, spectral_norm=0.0)
        bound = self.block.spectral_norm

        def block(z: jax.Array, x: jax.Array, mask: jax.Array) -> jax.Array:
            return DEQBlock(config, name="block")(z, x, mask, is_training=is_training)

        penalty = self.jacobian_penalty if is_training else None
        deq = DEQ(
            hk.remat(block) if self.remat else block,
            solver=self.solver,
            backward=self.backward,
            name="deq",
            return_stats=True,
            jacobian_penalty=penalty,
            correction=self.correction if is_training else None,
            transform_params=spectral_norm_params(bound) if bound else None,
        )
        z0 = _initial_state(x, self.initial_state)
        z_star, stats, *extras = deq(x, z0, mask)
        correction_logits = None
        if self.correction is not None and is_training:
            states = extras.pop()  # (K, batch, seq, d_model)
            flat = self.readout(states.reshape(-1, *states.shape[2:]))
            correction_logits = flat.reshape(*states.shape[:2], *flat.shape[1:])
        batch = tokens.shape[0]
        summary = {
            key: jnp.broadcast_to(getattr(stats, key), (batch,)) for key in SOLVE_STAT_KEYS
        }
        jac = extras[0] if extras else jnp.zeros((), jnp.float32)
        return LMOutput(self.readout(z_star), summary, jac, correction_logits)


class UnrolledLM(_LMBase):
    """The DEQ's weight-tied unrolled twin: ``zᵏ⁺¹ = f(zᵏ, x)`` for ``k < D = depth`` from
    the DEQ's ``z⁰``, all ``D`` layers sharing one block's weights; ``readout(zᴰ)``.

    As ``D → ∞`` it reaches the DEQ's equilibrium with the same parameters
    (:func:`twin_params`); backpropagated layer by layer, it keeps the activations of all
    ``D`` layers. Variational dropout: one key for all layers.
    """

    def __init__(
        self,
        vocab_size: int,
        block: BlockConfig,
        depth: int = 4,
        *,
        initial_state: str = "zeros",
        max_seq_len: int = 512,
        embed_std: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(vocab_size, block, max_seq_len, embed_std, name)
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.depth = depth
        self.initial_state = initial_state

    def __call__(
        self, tokens: jax.Array, mask: jax.Array | None = None, *, is_training: bool = False
    ) -> LMOutput:
        """Logits for ``tokens`` (``(batch, seq)`` ints) with optional padding ``mask``."""
        x, mask = self.embed(tokens, mask)
        rng = None
        if is_training and self.block.dropout_rate > 0.0:
            rng = hk.next_rng_key()
        block = self.make_block()
        z = _initial_state(x, self.initial_state)
        previous = z
        for _ in range(self.depth):
            previous, z = z, block(z, x, mask, is_training=is_training, rng=rng)
        stats = _layer_stats(tokens.shape[0], self.depth, previous, z)
        return LMOutput(self.readout(z), stats, jnp.zeros((), jnp.float32))


class TransformerLM(_LMBase):
    """The standard pre-LN Transformer language model a user would pick instead of a DEQ:
    ``z⁰ = x``, then ``depth`` :class:`TransformerLayer` s, each with its own weights, adding
    to the residual stream; ``readout(zᴰ)``.

    Same embeddings, readout, attention, MLP and initialisation as the DEQ; with
    ``depth = 1`` it has exactly the parameters of the DEQ with a one-layer block. Dropout
    (``block.dropout_rate``) draws a fresh mask for every sublayer of every layer.
    """

    def __init__(
        self,
        vocab_size: int,
        block: BlockConfig,
        depth: int = 2,
        *,
        max_seq_len: int = 512,
        embed_std: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(vocab_size, block, max_seq_len, embed_std, name)
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.depth = depth

    def __call__(
        self, tokens: jax.Array, mask: jax.Array | None = None, *, is_training: bool = False
    ) -> LMOutput:
        """Logits for ``tokens`` (``(batch, seq)`` ints) with optional padding ``mask``."""
        z, mask = self.embed(tokens, mask)
        rng = None
        if is_training and self.block.dropout_rate > 0.0:
            rng = hk.next_rng_key()
        previous = z
        for k in range(self.depth):
            layer_rng = None if rng is None else jax.random.fold_in(rng, k)
            drop = _dropout(self.block.dropout_rate, layer_rng)
            previous, z = z, TransformerLayer(self.block, name=f"layer_{k}")(z, mask, drop=drop)
        stats = _layer_stats(tokens.shape[0], self.depth, previous, z)
        return LMOutput(self.readout(z), stats, jnp.zeros((), jnp.float32))
