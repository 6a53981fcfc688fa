"""The DEQ-Transformer block of :mod:`models` as a benchmark problem.

The problem is the model's weight-tied block ``z ↦ f(z, x, mask)``
(``models.transformer.DEQBlock``, in the form the configuration selects) with the model's
own parameters, at initialisation (``TrainConfig()`` defaults and seed) or loaded from a
training checkpoint, and the injection ``x = E[tokens] + P`` of byte windows of the
model's default corpus. The state of one sample is ``(seq_len, d_model)``; the block's
parameters and ``x`` are differentiated.

Everything here goes through the public pieces of :mod:`models` (config, model,
optimiser, checkpoint, data); when one is missing or incompatible the problem is
reported unavailable with the reason, and the benchmark carries on without it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.problems import Problem, ProblemUnavailable

PREFIX = "lm/deq/"  # where the DEQ language model keeps its block's parameters


def _load(checkpoint: Optional[str], seed: int) -> tuple:
    """``(config, params)`` at initialisation or from ``checkpoint`` (a file or a run folder)."""
    from models.checkpoint import checkpoint_path, load_checkpoint, read_meta
    from models.config import TrainConfig
    from models.lm import make_model
    from models.optim import make_optimizer
    from models.step import init_state

    if checkpoint is None:
        config = TrainConfig(seed=seed)
        model = make_model(config)
        tokens = jnp.zeros((1, config.seq_len), jnp.int32)
        return config, model.init(jax.random.key(config.seed), tokens)
    path = checkpoint_path(checkpoint) if os.path.isdir(checkpoint) else checkpoint
    saved = read_meta(path)["config"]
    config = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__})
    if config.model != "deq":
        raise ProblemUnavailable(f"checkpoint {checkpoint!r} holds a {config.model!r} model, not deq")
    model = make_model(config)
    template = jax.device_get(init_state(model, make_optimizer(config), config))
    state, _ = load_checkpoint(path, template)
    return config, jax.tree_util.tree_map(jnp.asarray, state.params)


def build(batch: int, seed: int = 0, checkpoint: Optional[str] = None) -> Problem:
    """The transformer problem (see the module docstring); :class:`ProblemUnavailable` if not."""
    try:
        import haiku as hk

        from models.data import VOCAB_SIZE, load_corpus
        from models.transformer import DEQBlock, DEQTransformerLM
    except Exception as err:  # noqa: BLE001 — a package in progress may fail in many ways
        raise ProblemUnavailable(f"models is not usable here ({type(err).__name__}: {err})") from None
    try:
        config, params = _load(checkpoint, seed)
    except ProblemUnavailable:
        raise
    except Exception as err:  # noqa: BLE001
        raise ProblemUnavailable(f"cannot build the model's parameters ({type(err).__name__}: {err})") from None

    block_config = dataclasses.replace(config.block_config(), dropout_rate=0.0)
    block_params = {k[len(PREFIX):]: v for k, v in params.items() if k.startswith(PREFIX)}
    if not block_params:
        raise ProblemUnavailable(f"no parameters under {PREFIX!r} in the model's parameter tree")
    block = hk.without_apply_rng(hk.transform(
        lambda z, x, mask: DEQBlock(block_config, name="block")(z, x, mask)))
    embed = hk.without_apply_rng(hk.transform(
        lambda tokens: DEQTransformerLM(
            VOCAB_SIZE, block_config, max_seq_len=config.seq_len, embed_std=config.embed_std,
            name="lm",
        ).embed(tokens, None)))

    corpus = np.frombuffer(load_corpus(), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, corpus.size - config.seq_len, size=batch)
    tokens = jnp.asarray(np.stack([corpus[s:s + config.seq_len] for s in starts]), jnp.int32)
    try:
        x, mask = embed.apply(params, tokens)
        block.apply(block_params, x, x, mask)  # fail here, not inside a solver, if names moved
    except Exception as err:  # noqa: BLE001
        raise ProblemUnavailable(f"the model's block does not run standalone ({type(err).__name__}: {err})") from None

    def f(z: jax.Array, p: dict, x: jax.Array, mask: jax.Array) -> jax.Array:
        return block.apply(p, z, x, mask)

    source = f"checkpoint {checkpoint}" if checkpoint else "initialisation"
    return Problem(
        name="transformer", family="transformer", dim=config.seq_len * config.d_model, f=f,
        z0=jnp.zeros_like(x), args=(block_params, x, mask), in_axes=(None, 0, 0),
        diff_argnums=(0, 1),
        note=(f"DEQ-Transformer block at {source}: seq {config.seq_len} × d_model "
              f"{config.d_model}, {config.num_heads} heads, byte windows of the default corpus"),
    )
