"""Text generation: sample bytes one at a time from a trained language model.

With context ``c`` (the last at most ``seq_len`` bytes), the next byte is drawn from
``softmax(logits[len(c) − 1] / τ)`` (temperature ``τ``; ``τ = 0`` takes the argmax). The
context lives in a fixed ``(1, seq_len)`` buffer whose unused tail is masked as padding, so one
compiled forward pass serves every step; once full, the buffer slides left by one byte.
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from models.data import decode_bytes

__all__ = ["generate"]


def generate(
    model: hk.Transformed,
    params: hk.Params,
    prompt: bytes,
    length: int,
    *,
    seq_len: int,
    temperature: float = 0.8,
    seed: int = 0,
) -> str:
    """Return ``prompt`` followed by ``length`` sampled bytes, decoded as UTF-8 (lossy).

    ``model`` is a transformed ``forward(tokens, mask, is_training) -> LMOutput``.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    context = list(prompt or b"\n")[-seq_len:]

    @jax.jit
    def next_token(params: hk.Params, tokens: jax.Array, mask: jax.Array, last: jax.Array,
                   key: jax.Array) -> jax.Array:
        logits = model.apply(params, key, tokens, mask, False).logits[0, last]
        if temperature == 0:
            return jnp.argmax(logits)
        return jax.random.categorical(key, logits / temperature)

    base = jax.random.key(seed)
    out = list(prompt or b"")
    for i in range(length):
        n = len(context)
        tokens = np.zeros((1, seq_len), np.int32)
        tokens[0, :n] = context
        mask = np.zeros((1, seq_len), np.float32)
        mask[0, :n] = 1.0
        token = int(next_token(params, tokens, mask, np.int32(n - 1), jax.random.fold_in(base, i)))
        out.append(token)
        context = (context + [token])[-seq_len:]
    return decode_bytes(np.array(out, np.uint8))
