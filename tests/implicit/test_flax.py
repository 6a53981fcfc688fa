"""`implicit.flax.DEQ`, the Flax NNX layer, and `implicit.flax.as_fixed_point`.

The block and the reference (plain iteration unrolled with `lax.scan`, differentiated by
backprop) are described in `tests/implicit/layer_kit.py`. Exactness checks run in float64
inside `jax.enable_x64(True)` (a per-test context).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import solvers
from implicit import JacobianPenalty
from implicit.flax import DEQ, as_fixed_point
from implicit.testing import check_fixed_point_grads
from tests.implicit.layer_kit import (
    PLAIN,
    UNROLL,
    D,
    check_solver_and_mode_are_values_built_once,
    import_error_without,
    inputs,
    unrolled,
)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


class Block(nnx.Module):
    """z ↦ tanh(dropout(W z) + U x + b), ‖W‖₂ = 0.4."""

    def __init__(self, d: int, *, rngs: nnx.Rngs, rate: float = 0.0, dtype=jnp.float32):
        self.w = nnx.Linear(
            d, d, use_bias=False, kernel_init=nnx.initializers.orthogonal(scale=0.4),
            dtype=dtype, param_dtype=dtype, rngs=rngs,
        )
        self.u = nnx.Linear(d, d, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(rate, rngs=rngs)

    def __call__(self, z, x):
        return jnp.tanh(self.dropout(self.w(z)) + self.u(x))


def rng_counts(module) -> list[int]:
    return [int(c) for c in jax.tree_util.tree_leaves(nnx.state(module, nnx.RngCount))]


call = nnx.jit(lambda layer, x: layer(x))


def test_gradient_equals_the_unrolled_block_in_float64(x64):
    x, c = inputs((3, D), 0, jnp.float64), inputs((3, D), 1, jnp.float64)
    layer = DEQ(Block(D, rngs=nnx.Rngs(0), dtype=jnp.float64), tol=1e-12, stop_mode="abs",
                return_stats=True)

    def loss(layer):
        z, stats = layer(x)
        return jnp.sum(c * z), stats

    (value, stats), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(layer)
    expected_value, expected = nnx.jit(
        nnx.value_and_grad(lambda block: jnp.sum(c * unrolled(block, x)))
    )(layer.block)

    assert bool(stats.converged)
    np.testing.assert_allclose(value, expected_value, rtol=1e-10)
    got, want = jax.tree_util.tree_leaves(grads["block"]), jax.tree_util.tree_leaves(expected)
    assert len(got) == len(want) == 3  # W, U, b
    chex.assert_trees_all_equal_shapes_and_dtypes(got, want)
    chex.assert_type(got, jnp.float64)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-12)


def test_check_fixed_point_grads_through_as_fixed_point(x64):
    block = Block(3, rngs=nnx.Rngs(1), dtype=jnp.float64)
    x = inputs((2, 3), 2, jnp.float64)
    f, params = as_fixed_point(block)
    np.testing.assert_array_equal(f(x, params, x), block(x, x))
    # The parameters only: the RNG state is not an argument.
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float64)}
    report = check_fixed_point_grads(
        f, jnp.zeros_like(x), params, x, argnums=(0,), solver="fixed_point", unroll_steps=UNROLL
    )
    assert report.num_directions == 3 * 3 + 3 * 3 + 3  # W, U and b
    report.assert_close(1e-6)


def test_tiny_regression_trains_with_an_nnx_optimizer():
    x = inputs((16, D), 3)
    y = jnp.tanh(x @ inputs((D, D), 4))  # a random regression target
    layer = DEQ(Block(D, rngs=nnx.Rngs(0)), max_iter=30, tol=1e-5, return_stats=True)
    optimizer = nnx.Optimizer(layer, optax.adam(3e-2), wrt=nnx.Param)

    def loss(layer):
        z, stats = layer(x)
        return jnp.mean((z - y) ** 2), stats

    @nnx.jit
    def step(layer, optimizer):
        (value, stats), grads = nnx.value_and_grad(loss, has_aux=True)(layer)
        optimizer.update(layer, grads)
        return value, stats

    losses, stats = [], None
    for _ in range(200):
        value, stats = step(layer, optimizer)
        losses.append(value)
    losses = np.array(losses)
    assert losses[0] / losses[-1] >= 10, (losses[0], losses[-1])
    assert isinstance(stats, solvers.Stats) and bool(stats.converged), stats
    assert int(optimizer.step[...]) == 200


def test_one_dropout_mask_per_solve_from_the_layer_rngs():
    x = inputs((2, D), 5)

    def layer(seed):
        block = Block(D, rngs=nnx.Rngs(0), rate=0.5)
        return DEQ(block, rngs=nnx.Rngs(dropout=seed), return_stats=True, **PLAIN)

    first = layer(1)
    z, stats = call(first, x)
    # Converging needs a fixed map: with a new mask at every iteration it could not.
    assert bool(stats.converged)
    # And z* = tanh(m ⊙ W z* / (1 − rate) + U x + b) for ONE mask m: every entry of
    # arctanh(z*) − (U x + b) is either 0 (dropped) or 2 (W z*)ᵢ (kept).
    block = first.block
    t, h = np.arctanh(np.asarray(z)) - block.u(x), 2 * block.w(z)
    dropped, kept = np.abs(t) < 1e-3, np.abs(t - h) < 1e-3
    assert np.all(dropped | kept) and dropped.any() and kept.any()
    assert rng_counts(block) == [0]  # the block's own stream did not advance

    np.testing.assert_array_equal(call(layer(1), x)[0], z)  # the same key: the same output
    assert not np.allclose(call(layer(2), x)[0], z)  # another key: another mask
    assert not np.allclose(call(first, x)[0], z)  # the next call draws the next key


def test_without_rngs_the_block_streams_advance_once_per_call():
    x = inputs((2, D), 6)
    layer = DEQ(Block(D, rngs=nnx.Rngs(0), rate=0.5), return_stats=True, **PLAIN)
    assert rng_counts(layer.block) == [0]
    z1, stats = call(layer, x)
    assert rng_counts(layer.block) == [1] and bool(stats.converged)
    z2, stats = call(layer, x)
    assert rng_counts(layer.block) == [2] and bool(stats.converged)
    assert not np.allclose(z1, z2)


def test_jit_and_vmap_over_a_batch():
    xs = inputs((5, D), 7)
    block = Block(D, rngs=nnx.Rngs(2))
    reference = unrolled(block, xs)

    single = call(DEQ(block, **PLAIN), xs[0])
    chex.assert_shape(single, (D,))
    np.testing.assert_allclose(single, reference[0], atol=1e-5)

    fresh = DEQ(block, return_stats=True, **PLAIN)  # statistics per sample under nnx.vmap
    vmapped, stats = nnx.jit(nnx.vmap(lambda layer, x: layer(x), in_axes=(None, 0)))(fresh, xs)
    chex.assert_shape(vmapped, (5, D))
    np.testing.assert_allclose(vmapped, reference, atol=1e-5)
    chex.assert_shape([stats.steps, stats.converged], (5,))
    assert np.all(stats.converged)

    per_sample = DEQ(block, batch_axis=0, return_stats=True, **PLAIN)  # per-sample stopping
    z, stats = call(per_sample, xs)
    np.testing.assert_allclose(z, reference, atol=1e-5)
    chex.assert_shape(stats.steps, (5,))


def test_solver_and_gradient_mode_are_values_built_once():
    block = Block(D, rngs=nnx.Rngs(0))
    check_solver_and_mode_are_values_built_once(DEQ, block)
    with pytest.raises(TypeError, match="rngs"):
        DEQ(block, rngs=0)
    with pytest.raises(ValueError, match="needs rngs"):
        DEQ(block, jacobian_penalty=JacobianPenalty())

def test_missing_flax_gives_an_import_error_naming_the_extra():
    assert "pip install -e '.[flax]'" in import_error_without("flax")
