"""Regularisers against dense Jacobians and closed forms on small problems (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from implicit import jacobian_frobenius_sq, spectral_radius


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def tanh_layer(z, w, x):
    return jnp.tanh(w @ z + x)


def data(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal((n, n)) * 0.4), jnp.asarray(rng.standard_normal(n)),
            jnp.asarray(rng.standard_normal(n)))


def test_hutchinson_frobenius_estimate_against_the_dense_jacobian(x64):
    w, x, z = data()
    n = z.shape[0]

    def dense(w, x):
        return jnp.sum(jax.jacfwd(tanh_layer)(z, w, x) ** 2)

    # Probes √n·eᵢ make the estimate exact: mean ‖√n eᵢᵀ J‖² = ‖J‖_F².
    exact_probes = jnp.sqrt(n) * jnp.eye(n)

    def estimate(w, x):
        return jacobian_frobenius_sq(tanh_layer, z, w, x, probes=exact_probes)

    @jax.jit
    def compare(w, x):
        sampled = jacobian_frobenius_sq(tanh_layer, z, w, x, key=jax.random.PRNGKey(0),
                                        num_samples=4000)
        return (estimate(w, x), jax.grad(estimate, argnums=(0, 1))(w, x), sampled,
                dense(w, x), jax.grad(dense, argnums=(0, 1))(w, x))

    value, grads, sampled, value_ref, grads_ref = compare(w, x)
    np.testing.assert_allclose(value, value_ref, rtol=1e-12)
    for got, ref in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-14)
    # Gaussian probes: unbiased, relative standard deviation ≤ √(2/4000) ≈ 2.2 %.
    np.testing.assert_allclose(sampled, value_ref, rtol=0.1)


def test_power_method_spectral_radius_and_its_gradient(x64):
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    eigenvalues = np.array([-0.9, 0.5, 0.3, -0.2, 0.1])  # dominant −0.9, clear gap
    a = jnp.asarray(q @ np.diag(eigenvalues) @ q.T)
    b = jnp.ones(5)

    def linear(z, a, b):
        return a @ z + b

    @jax.jit
    def radius_and_grad(a):
        return jax.value_and_grad(
            lambda a: spectral_radius(linear, jnp.zeros(5), a, b, key=jax.random.PRNGKey(0),
                                      num_iters=60)
        )(a)

    radius, grad = radius_and_grad(a)
    np.testing.assert_allclose(radius, 0.9, rtol=1e-9)
    # d|λ|/dA = sign(λ)·v vᵀ for the unit eigenvector v of λ = −0.9 (A symmetric).
    v = q[:, 0]
    np.testing.assert_allclose(grad, -np.outer(v, v), atol=1e-8)

    # A nonlinear layer at its fixed point: against the dense Jacobian's eigenvalues.
    w = jnp.asarray(q @ np.diag([0.8, 0.4, 0.3, 0.2, 0.1]) @ q.T)
    x = jnp.linspace(-0.5, 0.5, 5)
    z = jax.jit(lambda: jax.lax.fori_loop(0, 300, lambda _, z: tanh_layer(z, w, x),
                                          jnp.zeros(5)))()
    rho = jax.jit(lambda: spectral_radius(tanh_layer, z, w, x, num_iters=100))()
    dense = np.max(np.abs(np.linalg.eigvals(np.asarray(jax.jacfwd(tanh_layer)(z, w, x)))))
    np.testing.assert_allclose(rho, dense, rtol=1e-6)
