"""Spectral normalisation keeps the bound it promises: σ(W) ≤ bound, checked against
``jnp.linalg.norm(W, 2)`` (the exact largest singular value), and its derivative is right."""

from __future__ import annotations

import haiku as hk
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import implicit
from implicit.haiku import (
    largest_singular_value,
    spectral_norm,
    spectral_norm_bound,
    spectral_norm_params,
)

SHAPES = ((3, 5), (6, 6), (8, 2))


@settings(max_examples=20, deadline=None)
@given(shape=st.sampled_from(SHAPES), scale=st.floats(0.01, 100.0), bound=st.floats(0.1, 5.0),
       seed=st.integers(0, 2**16))
def test_the_bounded_matrix_has_at_most_the_promised_spectral_norm(shape, scale, bound, seed):
    w = scale * jax.random.normal(jax.random.PRNGKey(seed), shape)
    sigma = float(jnp.linalg.norm(w, 2))
    bounded = spectral_norm_bound(w, bound)
    assert float(jnp.linalg.norm(bounded, 2)) <= bound * (1 + 1e-5)
    if sigma <= bound:  # already within the bound: unchanged
        np.testing.assert_array_equal(bounded, w)
    else:  # rescaled onto the bound exactly
        np.testing.assert_allclose(jnp.linalg.norm(bounded, 2), bound, rtol=1e-5)


def test_the_derivative_of_the_largest_singular_value_is_u1_v1():
    with jax.enable_x64(True):
        w = jax.random.normal(jax.random.PRNGKey(0), (4, 6), jnp.float64)
        u, s, vt = np.linalg.svd(np.asarray(w))
        np.testing.assert_allclose(largest_singular_value(w), s[0], rtol=1e-12)
        np.testing.assert_allclose(jax.grad(largest_singular_value)(w), np.outer(u[:, 0], vt[0]),
                                   rtol=1e-9, atol=1e-12)
        # and through the bound: against central differences of σ(W·min(1, b/σ(W))) · c
        c = jax.random.normal(jax.random.PRNGKey(1), (4, 6), jnp.float64)
        loss = lambda w: jnp.sum(c * spectral_norm_bound(w, 0.5))  # noqa: E731
        direction = jax.random.normal(jax.random.PRNGKey(2), (4, 6), jnp.float64)
        h = 1e-6
        numeric = (loss(w + h * direction) - loss(w - h * direction)) / (2 * h)
        np.testing.assert_allclose(jnp.sum(jax.grad(loss)(w) * direction), numeric, rtol=1e-6)


def _block(z, x):
    return jnp.tanh(hk.Linear(6, w_init=hk.initializers.RandomNormal(2.0), name="mix")(z) + x)


@pytest.mark.parametrize("form", ["function", "params"])
def test_haiku_forms_bound_every_linear_weight_and_leave_the_stored_ones_free(form):
    x = jnp.linspace(-1.0, 1.0, 12).reshape(2, 6)
    if form == "function":
        model = hk.transform(lambda x: implicit.haiku.DEQ(spectral_norm(_block, 0.8), tol=1e-6,
                                                          max_iter=60, return_stats=True)(x))
    else:
        model = hk.transform(lambda x: implicit.haiku.DEQ(
            _block, tol=1e-6, max_iter=60, return_stats=True,
            transform_params=spectral_norm_params(0.8))(x))
    params = model.init(jax.random.PRNGKey(0), x)
    stored = params["deq/mix"]["w"]
    assert float(jnp.linalg.norm(stored, 2)) > 5  # the parameter itself is not rescaled
    z, stats = jax.jit(model.apply)(params, None, x)
    assert bool(jnp.all(stats.converged))
    # z* is the fixed point of the block with the bounded weight, which is a contraction.
    effective = spectral_norm_bound(stored, 0.8)
    np.testing.assert_allclose(z, jnp.tanh(z @ effective + params["deq/mix"]["b"] + x),
                               atol=1e-5)
    assert float(jnp.linalg.norm(effective, 2)) <= 0.8 * (1 + 1e-5)


def test_a_non_positive_bound_is_refused():
    with pytest.raises(ValueError, match="positive"):
        spectral_norm_params(0.0)
    with pytest.raises(ValueError, match="positive"):
        spectral_norm(_block, -1.0)
