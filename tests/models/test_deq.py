"""The DEQ Transformer against its explicit weight-tied twin, and its Jacobian regulariser."""

from __future__ import annotations

import functools

import haiku as hk
import jax
import numpy as np

import solvers
from benchmarks.timing import FAST_COMPILE
from implicit import Correction, Implicit, JacobianPenalty
from models.lm import next_byte_loss
from models.transformer import BlockConfig, DEQTransformerLM, UnrolledLM, twin_params

VOCAB, D, HEADS, SEQ = 256, 16, 2, 8
BLOCK = BlockConfig(D, HEADS)
fast_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


def _batch(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(2, SEQ + 1)).astype(np.int32)


def _loss(model: hk.Transformed):
    def loss(params, batch):
        logits = model.apply(params, None, batch[:, :-1]).logits
        return next_byte_loss(logits, batch[:, 1:])[0]

    return fast_jit(jax.value_and_grad(loss))


def test_deq_gradients_equal_those_of_the_twin_unrolled_to_convergence() -> None:
    """On a contractive init, dL/dθ through the DEQ (implicit backward) equals backprop
    through the weight-tied stack iterated to convergence, parameter by parameter."""
    tight = solvers.get("broyden", max_iter=60, tol=1e-6, stop_mode="abs", batch_axis=0)
    deq = hk.transform(
        lambda t: DEQTransformerLM(VOCAB, BLOCK, max_seq_len=SEQ, name="lm", solver=tight,
                                   backward=Implicit(tight))(t)
    )
    twin = hk.transform(
        lambda t: UnrolledLM(VOCAB, BLOCK, depth=7, max_seq_len=SEQ, name="lm")(t)
    )
    batch = _batch()
    params = fast_jit(deq.init)(jax.random.key(0), batch[:, :-1])
    loss_deq, grads_deq = _loss(deq)(params, batch)
    loss_twin, grads_twin = _loss(twin)(twin_params(params), batch)
    stats = fast_jit(deq.apply)(params, None, batch[:, :-1]).stats
    assert np.all(stats["converged"])
    twin_stats = fast_jit(twin.apply)(twin_params(params), None, batch[:, :-1]).stats
    assert np.all(twin_stats["abs_residual"] < 1e-5), "the twin is not converged at depth 7"
    np.testing.assert_allclose(loss_deq, loss_twin, rtol=1e-5)
    grads_deq = twin_params(grads_deq)
    assert set(grads_deq) == set(grads_twin)
    for module in grads_twin:
        for name in grads_twin[module]:
            a, b = np.asarray(grads_deq[module][name]), np.asarray(grads_twin[module][name])
            scale = np.abs(b).max()
            assert scale > 0, f"{module}/{name} has a zero gradient"
            np.testing.assert_allclose(a, b, atol=2e-3 * scale, rtol=0, err_msg=f"{module}/{name}")


def test_jacobian_regulariser_is_positive_differentiable_and_training_only() -> None:
    deq = hk.transform(
        lambda t, training: DEQTransformerLM(
            VOCAB, BLOCK, max_seq_len=SEQ, jacobian_penalty=JacobianPenalty(),
            solver=solvers.get("broyden", max_iter=20, tol=1e-4, batch_axis=0),
        )(t, is_training=training)
    )
    tokens = _batch()[:, :-1]
    params = fast_jit(deq.init, static_argnums=2)(jax.random.key(0), tokens, True)
    key = jax.random.key(1)
    assert float(fast_jit(deq.apply, static_argnums=3)(params, key, tokens, False).jac_loss) == 0

    def penalty(params):
        return deq.apply(params, key, tokens, True).jac_loss

    value, grads = fast_jit(jax.value_and_grad(penalty))(params)
    assert np.isfinite(value) and value > 0
    block = {k: v for k, v in grads.items() if "/deq/block/" in k}
    assert block, "the DEQ's block parameters are missing from the gradient"
    assert max(float(np.abs(g).max()) for v in block.values() for g in v.values()) > 0
    # the penalty reuses the DEQ's parameters; it does not create a second copy
    plain = jax.eval_shape(lambda key: deq.init(key, tokens, False), jax.random.key(0))
    assert set(params) == set(plain)


def test_the_first_correction_state_is_the_twin_of_depth_one() -> None:
    """With ``correction=Correction(states=2)`` a training call also returns the logits of
    ``f(z_k, x)`` for ``k = 0`` and ``k = max_iter // 2``: the first is exactly the unrolled
    twin of depth 1 (one application of the block from ``z0 = 0``), the second is past the
    solve's stop and so reads out ``f(z*) ≈ z*``; evaluation returns none."""
    config = BlockConfig(D, HEADS, form="sum")
    solve = solvers.get("anderson", max_iter=20, tol=1e-6, batch_axis=0)
    deq = hk.transform(
        lambda t, training: DEQTransformerLM(
            VOCAB, config, max_seq_len=SEQ, name="lm", solver=solve,
            correction=Correction(states=2))(t, is_training=training))
    twin = hk.transform(lambda t: UnrolledLM(VOCAB, config, depth=1, max_seq_len=SEQ,
                                             name="lm")(t).logits)
    tokens = _batch()[:, :-1]
    params = fast_jit(deq.init, static_argnums=2)(jax.random.key(0), tokens, True)
    out = fast_jit(deq.apply, static_argnums=3)(params, jax.random.key(1), tokens, True)
    assert out.correction_logits.shape == (2, *out.logits.shape)
    np.testing.assert_allclose(out.correction_logits[0],
                               fast_jit(twin.apply)(twin_params(params), None, tokens),
                               atol=1e-5)
    np.testing.assert_allclose(out.correction_logits[1], out.logits, atol=1e-3)
    assert fast_jit(deq.apply, static_argnums=3)(params, None, tokens, False).correction_logits \
        is None
