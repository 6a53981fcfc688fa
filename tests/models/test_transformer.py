"""Tests for the Transformer language models of `models.transformer` (tiny shapes)."""

from __future__ import annotations

import functools

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
    SOLVE_STAT_KEYS,
    BlockConfig,
    DEQTransformerLM,
    ExplicitTransformerLM,
    causal_attention_mask,
)

VOCAB, D, HEADS, SEQ, BATCH = 256, 16, 2, 8, 2
DEQ_TOL = 1e-6
fast_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


def _compiled(model: hk.Transformed, *init_args):
    """``(apply, params)``: ``apply(params, rng, tokens, mask, is_training)`` compiled fast."""
    params = fast_jit(model.init)(jax.random.key(0), *init_args)
    return fast_jit(model.apply, static_argnums=4), params


def _explicit(depth: int = 3, tied: bool = True, dropout: float = 0.0) -> hk.Transformed:
    def forward(tokens, mask=None, is_training=False):
        model = ExplicitTransformerLM(
            VOCAB, BlockConfig(D, HEADS, dropout_rate=dropout), depth=depth, tied=tied,
            max_seq_len=SEQ,
        )
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
def explicit():
    return _compiled(_explicit(), _tokens())


@pytest.fixture(scope="module")
def deq():
    return _compiled(_deq(), _tokens())


def test_causal_attention_mask() -> None:
    mask = np.array([[0, 1, 1]], np.float32)
    allowed = np.asarray(causal_attention_mask(jnp.asarray(mask)))[0, 0]
    expected = np.array([[0, 0, 0], [0, 1, 0], [0, 1, 1]], bool)
    np.testing.assert_array_equal(allowed, expected)


@pytest.mark.parametrize("which", ["explicit", "deq"])
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
    model = _explicit()
    with pytest.raises(ValueError, match="max_seq_len"):
        model.init(jax.random.key(0), np.zeros((1, SEQ + 1), np.int32))
    with pytest.raises(AssertionError):
        model.init(jax.random.key(0), np.zeros((SEQ,), np.int32))
    with pytest.raises(ValueError, match="divisible"):
        BlockConfig(10, 3)


@pytest.mark.parametrize("which,atol", [("explicit", 0.0), ("deq", 1e-4)])
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


@pytest.mark.parametrize("which", ["explicit", "deq"])
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


def test_tied_stack_shares_weights_untied_does_not() -> None:
    tokens = _tokens()
    key = jax.random.key(0)
    tied = jax.eval_shape(_explicit(depth=3, tied=True).init, key, tokens)
    untied = jax.eval_shape(_explicit(depth=3, tied=False).init, key, tokens)
    block = sum(x.size for k, v in tied.items() if "/block/" in k for x in v.values())
    assert block > 0
    assert _count(untied) == _count(tied) + 2 * block


def test_explicit_dropout_is_one_mask_per_pass() -> None:
    """With variational dropout, a tied stack of depth 1 applied twice by hand with the same
    key equals the stack of depth 2 (same mask on both layers)."""
    tokens = _tokens()
    apply, params = _compiled(_explicit(depth=2, dropout=0.5), tokens)
    key = jax.random.key(3)
    a = apply(params, key, tokens, None, True).logits
    b = apply(params, key, tokens, None, True).logits
    c = apply(params, jax.random.key(4), tokens, None, True).logits
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3

    def by_hand(tokens):
        config = BlockConfig(D, HEADS, dropout_rate=0.5)
        lm = ExplicitTransformerLM(VOCAB, config, depth=2, max_seq_len=SEQ)
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


@pytest.mark.parametrize("which", ["explicit", "deq"])
def test_tiny_model_overfits_one_batch(which) -> None:
    model = _explicit(depth=2) if which == "explicit" else _deq(tol=1e-4, max_iter=20)
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
