"""Byte-level Transformer language models: the DEQ Transformer and its explicit twins.

All three models share one weight-tied *input-injection block* ``f(z, x)``:

    h⁰ = x + Attn(LN(z))                  (causal self-attention reads the state z)
    hˡ = hˡ⁻¹ + Attn(LN(hˡ⁻¹)), l < L      (further pre-LN layers when block_layers L > 1)
    f  = (h + MLP(LN(h))) · m             (an MLP after every attention; m the padding mask)

where ``x = E[tokens] + P[positions]`` is the input injection (token plus learned position
embeddings), ``L = block_layers`` and ``m ∈ {0, 1}`` zeroes padded positions. The state enters
only through ``LN(z)``, so ``f`` has bounded output and a fixed point exists; with the small
output-projection initialisation used here ``f`` is a contraction in ``z`` at init.

- :class:`DEQTransformerLM` returns the logits of the equilibrium ``z* = f(z*, x)``, found by a
  named fixed-point solver and differentiated implicitly (``implicit.haiku.DEQ``):
  ``logits = W_out · LN(z*) + b``.
- :class:`ExplicitTransformerLM` stacks ``f`` ``depth`` times from ``z⁰ = 0``:
  ``zᵏ⁺¹ = f(zᵏ, x)``; with ``tied=True`` every layer shares one set of weights (the unrolled
  twin of the DEQ: as ``depth → ∞`` it converges to the same ``z*``), with ``tied=False`` each
  layer has its own (an ordinary deep Transformer with input injection).

Dropout is *variational*: one mask per forward pass, the same at every iteration or layer (one
rng key per solve). Attention is causal (position ``t`` sees ``s ≤ t``) and ignores padded keys.
Both models return :class:`LMOutput` with logits and per-sample solver statistics.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional, Union

import chex
import haiku as hk
import jax
import jax.numpy as jnp

from implicit import JacobianPenalty, Mode
from implicit.haiku import DEQ, spectral_norm, spectral_norm_params
from solvers import Reason, Solver, residuals

__all__ = [
    "SOLVE_STAT_KEYS",
    "BlockConfig",
    "InjectionBlock",
    "LMOutput",
    "DEQTransformerLM",
    "ExplicitTransformerLM",
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
    """The parameters of the explicit weight-tied twin of a :class:`DEQTransformerLM`.

    The DEQ keeps its block under ``<name>/deq/block``, the tied stack under ``<name>/block``;
    with the same model ``name`` (and settings) every other parameter already matches, so
    ``ExplicitTransformerLM(..., tied=True).apply(twin_params(p), ...)`` is the DEQ's unrolled
    twin with the same weights.
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
    """

    logits: jax.Array
    stats: dict[str, jax.Array]
    jac_loss: jax.Array


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


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """The settings of the input-injection block ``f(z, x)``, shared by every model.

    Attributes:
      d_model: width of the residual stream.
      num_heads: attention heads (must divide ``d_model``).
      block_layers: attention + MLP layers inside the block.
      mlp_ratio: MLP hidden width as a multiple of ``d_model``.
      dropout_rate: variational dropout rate inside the block.
      init_std: std of the truncated-normal weight initialisation.
      out_init_scale: extra factor on the init std of the projections that write into
        the residual stream (attention output, MLP output).
      spectral_norm: a bound on the spectral norm of every matrix of the block
        (``implicit.haiku.spectral_norm``); 0 leaves them free.
      qk_norm: RMS-normalise every query and key per head, so the attention logits stay
        within ``±√d_head`` and the softmax cannot sharpen without bound.
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

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}"
            )
        if self.block_layers < 1:
            raise ValueError(f"block_layers must be at least 1, got {self.block_layers}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")


class InjectionBlock(hk.Module):
    """The input-injection block ``f(z, x)`` (see the module docstring for its equations).

    Linear weights are drawn from a truncated normal with std ``config.init_std``; the
    projections that write into the residual stream (attention output, MLP output)
    additionally get ``config.out_init_scale`` times that, which keeps ``‖∂f/∂z‖`` small at
    initialisation.
    """

    def __init__(self, config: BlockConfig, name: str | None = None) -> None:
        super().__init__(name=name)
        self.config = config
        self.out_std = config.init_std * config.out_init_scale

    @hk.experimental.name_like("__call__")
    def _attention(self, h: jax.Array, allowed: jax.Array, layer: int) -> jax.Array:
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
    def _mlp(self, h: jax.Array, layer: int) -> jax.Array:
        c = self.config
        hidden = _linear(c.mlp_ratio * c.d_model, c.init_std, f"mlp_in_{layer}")(h)
        return _linear(c.d_model, self.out_std, f"mlp_out_{layer}")(jax.nn.gelu(hidden))

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
        chex.assert_equal_shape([z, x])
        chex.assert_rank(z, 3)
        chex.assert_shape(mask, z.shape[:2])
        rate = self.config.dropout_rate
        dropout = is_training and rate > 0.0
        if dropout and rng is None:
            rng = hk.next_rng_key()
        allowed = causal_attention_mask(mask)

        def drop(value: jax.Array, index: int) -> jax.Array:
            if not dropout:
                return value
            return hk.dropout(jax.random.fold_in(rng, index), rate, value)

        def layers(z: jax.Array) -> jax.Array:
            h = x + drop(self._attention(_layer_norm("ln_attn_0")(z), allowed, 0), 0)
            h = h + drop(self._mlp(_layer_norm("ln_mlp_0")(h), 0), 1)
            for layer in range(1, self.config.block_layers):
                a = self._attention(_layer_norm(f"ln_attn_{layer}")(h), allowed, layer)
                h = h + drop(a, 2 * layer)
                h = h + drop(self._mlp(_layer_norm(f"ln_mlp_{layer}")(h), layer), 2 * layer + 1)
            return h

        if self.config.spectral_norm:
            layers = spectral_norm(layers, self.config.spectral_norm)
        h = layers(z)
        out = h * mask[..., None].astype(h.dtype)
        chex.assert_equal_shape([out, z])
        return out.astype(z.dtype)


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
    def make_block(self, name: str = "block") -> InjectionBlock:
        """The block ``f`` named as if built in ``__call__`` (``<model>/block``)."""
        return InjectionBlock(self.block, name=name)

    @hk.experimental.name_like("__call__")
    def embed(self, tokens: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """``x = E[tokens] + P[0..seq−1]``; returns ``(x, mask)`` with ``mask`` as float.

        Both embeddings start from a truncated normal with std ``embed_std``: an injection of
        order one keeps ``LN(z)`` near its well-conditioned regime and ``f`` contractive.
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


class DEQTransformerLM(_LMBase):
    """The DEQ Transformer language model: ``logits = readout(z*)``, ``z* = f(z*, x)``.

    The equilibrium is found by ``implicit.haiku.DEQ`` from ``z⁰ = 0`` with ``solver`` (a
    name or a :class:`solvers.Solver`) and differentiated by ``backward`` (a gradient mode
    of :mod:`implicit.modes` or its name). ``jacobian_penalty`` (an
    :class:`implicit.JacobianPenalty`) is evaluated at ``z*`` when training and returned
    as :attr:`LMOutput.jac_loss`.

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
        max_seq_len: int = 512,
        embed_std: float = 1.0,
        jacobian_penalty: Optional[JacobianPenalty] = None,
        remat: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(vocab_size, block, max_seq_len, embed_std, name)
        self.solver = solver
        self.backward = backward
        self.jacobian_penalty = jacobian_penalty
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
            return InjectionBlock(config, name="block")(z, x, mask, is_training=is_training)

        penalty = self.jacobian_penalty if is_training else None
        deq = DEQ(
            hk.remat(block) if self.remat else block,
            solver=self.solver,
            backward=self.backward,
            name="deq",
            return_stats=True,
            jacobian_penalty=penalty,
            transform_params=spectral_norm_params(bound) if bound else None,
        )
        z_star, stats, *jac_loss = deq(x, jnp.zeros_like(x), mask)
        batch = tokens.shape[0]
        summary = {
            key: jnp.broadcast_to(getattr(stats, key), (batch,)) for key in SOLVE_STAT_KEYS
        }
        jac = jac_loss[0] if jac_loss else jnp.zeros((), jnp.float32)
        return LMOutput(self.readout(z_star), summary, jac)


class ExplicitTransformerLM(_LMBase):
    """The explicit stack ``zᵏ⁺¹ = f(zᵏ, x)``, ``z⁰ = 0``, ``k < D = depth``; ``readout(zᴰ)``.

    With ``tied=True`` the layers share one block's weights (the DEQ's unrolled twin), with
    ``tied=False`` each layer has its own. Variational dropout: one key for all layers.
    """

    def __init__(
        self,
        vocab_size: int,
        block: BlockConfig,
        depth: int = 4,
        tied: bool = True,
        *,
        max_seq_len: int = 512,
        embed_std: float = 1.0,
        name: str | None = None,
    ) -> None:
        super().__init__(vocab_size, block, max_seq_len, embed_std, name)
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.depth = depth
        self.tied = tied

    def __call__(
        self, tokens: jax.Array, mask: jax.Array | None = None, *, is_training: bool = False
    ) -> LMOutput:
        """Logits for ``tokens`` (``(batch, seq)`` ints) with optional padding ``mask``."""
        x, mask = self.embed(tokens, mask)
        rng = None
        if is_training and self.block.dropout_rate > 0.0:
            rng = hk.next_rng_key()
        if self.tied:
            blocks = [self.make_block()] * self.depth
        else:
            blocks = [self.make_block(f"block_{k}") for k in range(self.depth)]
        z = jnp.zeros_like(x)
        previous = z
        for block in blocks:
            previous, z = z, block(z, x, mask, is_training=is_training, rng=rng)
        change, relative = residuals(previous, z, batch_axis=0)
        batch = tokens.shape[0]
        summary = {
            "steps": jnp.full((batch,), self.depth, jnp.int32),
            "fevals": jnp.full((batch,), self.depth, jnp.int32),
            "abs_residual": change,
            "rel_residual": relative,
            "converged": jnp.zeros((batch,), bool),
            "reason": jnp.full((batch,), int(Reason.MAX_ITER), jnp.int32),
        }
        return LMOutput(self.readout(z), summary, jnp.zeros((), jnp.float32))
