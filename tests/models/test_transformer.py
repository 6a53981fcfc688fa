"""Tests for the Transformer language models of `models.transformer` (tiny shapes)."""

from __future__ import annotations

import functools

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import solvers
from benchmarks.timing import FAST_COMPILE
from models.lm import next_byte_loss
from models.transformer import (
    BLOCK_FORMS,
    SOLVE_STAT_KEYS,
    BlockConfig,
    DEQBlock,
    DEQTransformerLM,
    TransformerLM,
    UnrolledLM,
    causal_attention_mask,
)

VOCAB, D, HEADS, SEQ, BATCH = 256, 16, 2, 8, 2
DEQ_TOL = 1e-6
fast_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


def _compiled(model: hk.Transformed, *init_args):
    """``(apply, params)``: ``apply(params, rng, tokens, mask, is_training)`` compiled fast."""
    params = fast_jit(model.init)(jax.random.key(0), *init_args)
    return fast_jit(model.apply, static_argnums=4), params


def _unrolled(depth: int = 3, dropout: float = 0.0) -> hk.Transformed:
    def forward(tokens, mask=None, is_training=False):
        model = UnrolledLM(VOCAB, BlockConfig(D, HEADS, dropout_rate=dropout), depth=depth,
                           max_seq_len=SEQ)
        return model(tokens, mask, is_training=is_training)

    return hk.transform(forward)


def _transformer(depth: int = 2, dropout: float = 0.0) -> hk.Transformed:
    def forward(tokens, mask=None, is_training=False):
        model = TransformerLM(VOCAB, BlockConfig(D, HEADS, dropout_rate=dropout), depth=depth,
                              max_seq_len=SEQ, name="lm")
        return model(tokens, mask, is_training=is_training)

    return hk.transform(forward)


def _deq(dropout: float = 0.0, **options) -> hk.Transformed:
    options = {"max_iter": 40, "tol": DEQ_TOL, "stop_mode": "abs", "batch_axis": 0, **options}

    def forward(tokens, mask=None, is_training=False):
        model = DEQTransformerLM(
            VOCAB, BlockConfig(D, HEADS, dropout_rate=dropout), max_seq_len=SEQ,
            solver=solvers.get("broyden", **options),
        )
        return model(tokens, mask, is_training=is_training)

    return hk.transform(forward)


def _count(params: hk.Params) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(params))


def _tokens(seed: int = 0, batch: int = BATCH) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(batch, SEQ)).astype(np.int32)


@pytest.fixture(scope="module")
def unrolled():
    return _compiled(_unrolled(), _tokens())


@pytest.fixture(scope="module")
def transformer():
    return _compiled(_transformer(), _tokens())


@pytest.fixture(scope="module")
def deq():
    return _compiled(_deq(), _tokens())


def test_causal_attention_mask() -> None:
    mask = np.array([[0, 1, 1]], np.float32)
    allowed = np.asarray(causal_attention_mask(jnp.asarray(mask)))[0, 0]
    expected = np.array([[0, 0, 0], [0, 1, 0], [0, 1, 1]], bool)
    np.testing.assert_array_equal(allowed, expected)


@pytest.mark.parametrize("which", ["unrolled", "transformer", "deq"])
def test_shapes_and_stats(which, request) -> None:
    apply, params = request.getfixturevalue(which)
    out = apply(params, None, _tokens(), None, False)
    assert out.logits.shape == (BATCH, SEQ, VOCAB)
    assert set(out.stats) == set(SOLVE_STAT_KEYS)
    for value in out.stats.values():
        assert value.shape == (BATCH,)
    assert out.jac_loss.shape == ()
    assert np.all(np.isfinite(out.logits))


def test_deq_converges_and_reports_per_sample_stats(deq) -> None:
    apply, params = deq
    stats = apply(params, None, _tokens(), None, False).stats
    assert np.all(stats["converged"])
    assert np.all(stats["abs_residual"] <= DEQ_TOL)
    assert np.all((stats["steps"] >= 1) & (stats["steps"] < 40))


def test_bad_shapes_are_rejected() -> None:
    model = _unrolled()
    with pytest.raises(ValueError, match="max_seq_len"):
        model.init(jax.random.key(0), np.zeros((1, SEQ + 1), np.int32))
    with pytest.raises(AssertionError):
        model.init(jax.random.key(0), np.zeros((SEQ,), np.int32))
    with pytest.raises(ValueError, match="divisible"):
        BlockConfig(10, 3)
    with pytest.raises(ValueError, match="unknown block form 'resnet'; choose one of"):
        BlockConfig(D, HEADS, form="resnet")


@pytest.mark.parametrize("which,atol", [("unrolled", 0.0), ("transformer", 0.0), ("deq", 1e-4)])
def test_future_tokens_do_not_change_past_logits(which, atol, request) -> None:
    apply, params = request.getfixturevalue(which)
    tokens = _tokens()
    cut = SEQ // 2
    changed = tokens.copy()
    changed[:, cut:] = (changed[:, cut:] + 1 + np.arange(SEQ - cut)) % VOCAB
    a = np.asarray(apply(params, None, tokens, None, False).logits)
    b = np.asarray(apply(params, None, changed, None, False).logits)
    np.testing.assert_allclose(a[:, :cut], b[:, :cut], atol=atol, rtol=0)
    assert np.abs(a[:, cut:] - b[:, cut:]).max() > 1e-3  # the change is visible where allowed


@pytest.mark.parametrize("which", ["unrolled", "transformer", "deq"])
def test_padding_mask_is_honoured(which, request) -> None:
    apply, params = request.getfixturevalue(which)
    pad = 3
    mask = np.ones((BATCH, SEQ), np.float32)
    mask[:, :pad] = 0.0  # left padding: without the mask, later positions would attend to it
    tokens = _tokens()
    changed = tokens.copy()
    changed[:, :pad] = (changed[:, :pad] + 7) % VOCAB
    a = np.asarray(apply(params, None, tokens, mask, False).logits)
    b = np.asarray(apply(params, None, changed, mask, False).logits)
    np.testing.assert_allclose(a[:, pad:], b[:, pad:], atol=1e-7, rtol=0)
    unmasked_a = np.asarray(apply(params, None, tokens, None, False).logits)
    unmasked_b = np.asarray(apply(params, None, changed, None, False).logits)
    assert np.abs(unmasked_a[:, pad:] - unmasked_b[:, pad:]).max() > 1e-5  # the mask matters


def test_the_twin_shares_one_block_and_the_transformer_has_one_per_layer() -> None:
    """The unrolled twin of any depth and the one-layer Transformer have the DEQ's parameter
    count exactly; each further Transformer layer adds one block's worth."""
    tokens = _tokens()
    key = jax.random.key(0)
    deq = _count(jax.eval_shape(_deq().init, key, tokens))
    twin = jax.eval_shape(_unrolled(depth=3).init, key, tokens)
    block = sum(x.size for k, v in twin.items() if "/block/" in k for x in v.values())
    assert block > 0 and _count(twin) == deq
    one, three = (_count(jax.eval_shape(_transformer(depth=d).init, key, tokens)) for d in (1, 3))
    assert one == deq and three == one + 2 * block


def test_the_transformer_adds_every_layer_to_a_residual_stream(transformer) -> None:
    """A layer whose output projections are zero is the identity: the Transformer of two
    layers with layer 1 silenced gives exactly the one-layer Transformer's logits, and with
    both silenced, the readout of the embeddings. (An injection stack that restarts every
    layer from x fails this: its second layer would discard the first.)"""
    apply, params = transformer
    tokens = _tokens()

    def silenced(params, layer):
        return {k: (jax.tree_util.tree_map(jnp.zeros_like, v)
                    if f"layer_{layer}/" in k and ("attn_out" in k or "mlp_out" in k) else v)
                for k, v in params.items()}

    one_apply, _ = _compiled(_transformer(depth=1), tokens)
    one_params = {k: v for k, v in params.items() if "layer_1/" not in k}
    expected = one_apply(one_params, None, tokens, None, False).logits
    got = apply(silenced(params, 1), None, tokens, None, False).logits
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert np.abs(np.asarray(apply(params, None, tokens, None, False).logits - expected)).max() > 1e-4

    def readout_of_embeddings(tokens):
        lm = TransformerLM(VOCAB, BlockConfig(D, HEADS), depth=2, max_seq_len=SEQ, name="lm")
        x, _ = lm.embed(tokens, None)
        return lm.readout(x)

    bare = fast_jit(hk.transform(readout_of_embeddings).apply)(params, None, tokens)
    both = apply(silenced(silenced(params, 0), 1), None, tokens, None, False).logits
    np.testing.assert_allclose(both, bare, atol=1e-6, rtol=0)


def test_unrolled_dropout_is_one_mask_per_pass() -> None:
    """With variational dropout, a tied stack of depth 1 applied twice by hand with the same
    key equals the stack of depth 2 (same mask on both layers)."""
    tokens = _tokens()
    apply, params = _compiled(_unrolled(depth=2, dropout=0.5), tokens)
    key = jax.random.key(3)
    a = apply(params, key, tokens, None, True).logits
    b = apply(params, key, tokens, None, True).logits
    c = apply(params, jax.random.key(4), tokens, None, True).logits
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3

    def by_hand(tokens):
        config = BlockConfig(D, HEADS, dropout_rate=0.5)
        lm = UnrolledLM(VOCAB, config, depth=2, max_seq_len=SEQ)
        x, mask = lm.embed(tokens, None)
        block = lm.make_block()
        rng = hk.next_rng_key()
        z = block(jnp.zeros_like(x), x, mask, is_training=True, rng=rng)
        z = block(z, x, mask, is_training=True, rng=rng)
        return lm.readout(z)

    manual = fast_jit(hk.transform(by_hand).apply)(params, key, tokens)
    np.testing.assert_allclose(a, manual, atol=1e-6)


def test_deq_dropout_is_a_fixed_map() -> None:
    """One dropout mask per solve: the solver still converges with dropout on."""
    tokens = _tokens()
    apply, params = _compiled(_deq(dropout=0.3, tol=1e-5), tokens)
    out = apply(params, jax.random.key(1), tokens, None, True)
    assert np.all(out.stats["converged"])
    again = apply(params, jax.random.key(1), tokens, None, True)
    np.testing.assert_array_equal(out.logits, again.logits)


@pytest.mark.parametrize("which", ["transformer", "deq"])
def test_tiny_model_overfits_one_batch(which) -> None:
    model = _transformer(depth=2) if which == "transformer" else _deq(tol=1e-4, max_iter=20)
    batch = np.random.default_rng(1).integers(0, VOCAB, size=(2, SEQ + 1)).astype(np.int32)
    params = fast_jit(model.init)(jax.random.key(0), batch[:, :-1])
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    def loss_fn(params):
        out = model.apply(params, None, batch[:, :-1], None, False)
        return next_byte_loss(out.logits, batch[:, 1:])[0]

    @fast_jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    first = None
    for _ in range(80):
        params, opt_state, loss = step(params, opt_state)
        first = float(loss) if first is None else first
    assert first > 4.5  # about log(256) = 5.5 nats at init
    assert float(loss) < 0.3, f"did not overfit: loss {float(loss):.3f} (from {first:.3f})"


def _block_fn(form: str):
    def apply(z, x, mask):
        return DEQBlock(BlockConfig(D, HEADS, form=form), name="block")(z, x, mask)

    return hk.without_apply_rng(hk.transform(apply))


def _normal(seed: int, shape=(BATCH, SEQ, D)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("form", BLOCK_FORMS)
def test_every_block_form_is_causal_masks_padding_and_keeps_shape(form) -> None:
    """``f(z, x)`` at position t depends on z and x at positions ≤ t only, is zero at padded
    positions, ignores what padded positions hold, and depends on both z and x."""
    block = _block_fn(form)
    z, x = _normal(0), _normal(1)
    mask = np.ones((BATCH, SEQ), np.float32)
    params = block.init(jax.random.key(0), z, x, mask)
    apply = fast_jit(block.apply)
    out = np.asarray(apply(params, z, x, mask))
    chex.assert_shape(out, (BATCH, SEQ, D))
    chex.assert_type(out, np.float32)
    cut = SEQ // 2
    later_z, later_x = z.copy(), x.copy()
    later_z[:, cut:] += _normal(4)[:, cut:]
    later_x[:, cut:] += _normal(5)[:, cut:]
    changed = np.asarray(apply(params, later_z, later_x, mask))
    np.testing.assert_allclose(changed[:, :cut], out[:, :cut], atol=1e-6, rtol=0)
    assert np.abs(changed[:, cut:] - out[:, cut:]).max() > 1e-3
    for moved in (z + _normal(2), None):
        other = np.asarray(apply(params, moved, x, mask) if moved is not None
                           else apply(params, z, x + _normal(3), mask))
        assert np.abs(other - out).max() > 1e-3  # f reads both the state and the injection
    pad = 3
    padded = mask.copy()
    padded[:, :pad] = 0.0
    a = np.asarray(apply(params, z, x, padded))
    noisy_z, noisy_x = z.copy(), x.copy()
    noisy_z[:, :pad] += 5.0 * _normal(6)[:, :pad]
    noisy_x[:, :pad] += 5.0 * _normal(7)[:, :pad]
    b = np.asarray(apply(params, noisy_z, noisy_x, padded))
    assert np.all(a[:, :pad] == 0.0)
    np.testing.assert_allclose(a[:, pad:], b[:, pad:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("form", ["postln", "normalized"])
def test_normalised_forms_return_layer_normalised_states(form) -> None:
    """At initialisation (LayerNorm gain 1, offset 0) every position of ``f`` has mean 0
    and variance 1 over the features."""
    block = _block_fn(form)
    z, x, mask = _normal(0), _normal(1), np.ones((BATCH, SEQ), np.float32)
    out = np.asarray(block.apply(block.init(jax.random.key(0), z, x, mask), z, x, mask))
    np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.var(-1), 1.0, atol=1e-3)


def test_the_sum_block_at_zero_is_the_one_layer_transformer() -> None:
    """``f(0, x) = x + Attn(LN x) + MLP(LN(x + Attn(LN x)))``: with the same weights, the
    first iterate of the ``sum`` block from ``z = 0`` is the standard one-layer Transformer,
    so the unrolled twin of depth 1 and ``TransformerLM`` of depth 1 give the same logits."""
    tokens = _tokens()

    def twin(tokens):
        config = BlockConfig(D, HEADS, form="sum")
        return UnrolledLM(VOCAB, config, depth=1, max_seq_len=SEQ, name="lm")(tokens).logits

    twin = hk.transform(twin)
    apply, params = _compiled(_transformer(depth=1), tokens)
    mapped = {k.replace("lm/layer_0/", "lm/block/"): v for k, v in params.items()}
    assert set(mapped) == set(jax.eval_shape(twin.init, jax.random.key(0), tokens))
    expected = apply(params, None, tokens, None, False).logits
    np.testing.assert_allclose(fast_jit(twin.apply)(mapped, None, tokens), expected, atol=1e-5,
                               rtol=0)
