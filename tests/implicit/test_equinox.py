"""`implicit.equinox.DEQ`, the Equinox layer, and `implicit.equinox.as_fixed_point`.

The block maps one sample (batches go through `jax.vmap`); it and the reference (plain
iteration unrolled with `lax.scan`, differentiated by backprop) are described in
`tests/implicit/layer_kit.py`. Exactness checks run in float64 inside
`jax.enable_x64(True)` (a per-test context).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import solvers
from implicit.equinox import DEQ, as_fixed_point
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


class Block(eqx.Module):
    """z ↦ tanh(dropout(W z) + U x + b) for one sample, ‖W‖₂ = 0.4."""

    w: jax.Array
    u: eqx.nn.Linear
    dropout: eqx.nn.Dropout

    def __init__(self, d: int, key: jax.Array, *, rate: float = 0.0, dtype=jnp.float32):
        kw, ku = jax.random.split(key)
        self.w = 0.4 * jax.nn.initializers.orthogonal()(kw, (d, d), dtype)
        self.u = eqx.nn.Linear(d, d, dtype=dtype, key=ku)
        self.dropout = eqx.nn.Dropout(rate)

    def __call__(self, z, x, *, key=None):
        return jnp.tanh(self.dropout(self.w @ z, key=key) + self.u(x))


@eqx.filter_jit
def call(layer, x, key=None):
    return layer(x, key=key)


def test_gradient_equals_the_unrolled_block_in_float64(x64):
    xs, c = inputs((3, D), 0, jnp.float64), inputs((3, D), 1, jnp.float64)
    layer = DEQ(Block(D, jax.random.key(0), dtype=jnp.float64), tol=1e-12, stop_mode="abs")

    value, grads = eqx.filter_jit(
        eqx.filter_value_and_grad(lambda layer: jnp.sum(c * jax.vmap(layer)(xs)))
    )(layer)
    expected_value, expected = eqx.filter_jit(
        eqx.filter_value_and_grad(
            lambda block: jnp.sum(c * jax.vmap(lambda x: unrolled(block, x))(xs))
        )
    )(layer.block)

    np.testing.assert_allclose(value, expected_value, rtol=1e-10)
    got, want = jax.tree_util.tree_leaves(grads.block), jax.tree_util.tree_leaves(expected)
    assert len(got) == len(want) == 3  # W, U, b
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype == jnp.float64 and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-12)


def test_check_fixed_point_grads_through_as_fixed_point(x64):
    block = Block(3, jax.random.key(1), dtype=jnp.float64)
    x = inputs((3,), 2, jnp.float64)
    f, params = as_fixed_point(block)
    np.testing.assert_array_equal(f(x, params, x), block(x, x))
    report = check_fixed_point_grads(
        f, jnp.zeros_like(x), params, x, argnums=(0,), solver="fixed_point", unroll_steps=UNROLL
    )
    assert report.num_directions == 3 * 3 + 3 * 3 + 3  # W, U and b
    report.assert_close(1e-6)


def test_tiny_regression_trains_with_optax():
    xs = inputs((16, D), 3)
    ys = jnp.tanh(xs @ inputs((D, D), 4))  # a random regression target
    layer = DEQ(Block(D, jax.random.key(0)), max_iter=60, tol=1e-5, return_stats=True)
    optimizer = optax.adam(3e-2)

    def loss(layer):
        zs, stats = jax.vmap(layer)(xs)
        return jnp.mean((zs - ys) ** 2), stats

    @eqx.filter_jit
    def step(layer, state):
        (value, stats), grads = eqx.filter_value_and_grad(loss, has_aux=True)(layer)
        updates, state = optimizer.update(grads, state, layer)
        return eqx.apply_updates(layer, updates), state, value, stats

    state = optimizer.init(eqx.filter(layer, eqx.is_inexact_array))
    losses = []
    for _ in range(200):
        layer, state, value, stats = step(layer, state)
        losses.append(value)
    losses = np.array(losses)
    assert losses[0] / losses[-1] >= 10, (losses[0], losses[-1])
    assert isinstance(stats, solvers.Stats) and np.all(stats.converged), stats


def test_one_dropout_mask_per_solve_from_the_key():
    x = inputs((D,), 5)
    layer = DEQ(Block(D, jax.random.key(0), rate=0.5), return_stats=True, **PLAIN)

    z, stats = call(layer, x, jax.random.key(1))
    # Converging needs a fixed map: with a new mask at every iteration it could not.
    assert bool(stats.converged)
    # And z* = tanh(m ⊙ W z* / (1 − rate) + U x + b) for ONE mask m: every entry of
    # arctanh(z*) − (U x + b) is either 0 (dropped) or 2 (W z*)ᵢ (kept).
    t, h = np.arctanh(np.asarray(z)) - layer.block.u(x), 2 * layer.block.w @ z
    dropped, kept = np.abs(t) < 1e-3, np.abs(t - h) < 1e-3
    assert np.all(dropped | kept) and dropped.any() and kept.any()

    np.testing.assert_array_equal(call(layer, x, jax.random.key(1))[0], z)  # the same key
    assert not np.allclose(call(layer, x, jax.random.key(2))[0], z)  # another key
    with pytest.raises(RuntimeError, match="requires a key"):
        layer(x)  # without a key the block is called without one


def test_jit_and_vmap_over_a_batch():
    xs = inputs((5, D), 7)
    block = Block(D, jax.random.key(2))
    reference = jax.vmap(lambda x: unrolled(block, x))(xs)

    layer = DEQ(block, **PLAIN)
    np.testing.assert_allclose(call(layer, xs[0]), reference[0], atol=1e-5)

    with_stats = DEQ(block, return_stats=True, **PLAIN)
    zs, stats = eqx.filter_jit(lambda layer, xs: jax.vmap(layer)(xs))(with_stats, xs)
    assert zs.shape == (5, D)
    np.testing.assert_allclose(zs, reference, atol=1e-5)
    assert stats.steps.shape == stats.converged.shape == (5,) and np.all(stats.converged)


def test_solver_and_gradient_mode_are_values_built_once():
    block = Block(D, jax.random.key(0))
    check_solver_and_mode_are_values_built_once(DEQ, block)
    # The solver and the mode are static: only the block's arrays are leaves.
    assert len(jax.tree_util.tree_leaves(eqx.filter(DEQ(block), eqx.is_array))) == 3

def test_missing_equinox_gives_an_import_error_naming_the_extra():
    assert "pip install -e '.[equinox]'" in import_error_without("equinox")
