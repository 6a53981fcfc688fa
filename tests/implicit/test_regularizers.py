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


def test_jacobian_penalty_power_estimates_the_k_step_jacobian(x64):
    """``JacobianPenalty(power=k)`` is Hutchinson's estimate of ``‖Jᵏ‖_F² / n``: against the
    dense ``Jᵏ`` of a linear map, with enough probes; and exactly 0 on a nilpotent ``J`` of
    index ≤ k (a chain of dependences shorter than k), where ``power=1`` is not."""
    from implicit import JacobianPenalty

    rng = np.random.default_rng(3)
    n = 6
    a = jnp.asarray(0.4 * rng.standard_normal((n, n)))
    b = jnp.zeros(n)

    def linear(z, a, b):
        return a @ z + b

    z = jnp.zeros(n)
    for k in (1, 2, 3):
        penalty = JacobianPenalty(num_probes=8000, power=k)
        value = jax.jit(lambda a, p=penalty, k=k: p(linear, z, a, b, key=jax.random.PRNGKey(k)))(a)
        dense = np.linalg.matrix_power(np.asarray(a), k)
        np.testing.assert_allclose(value, np.sum(dense ** 2) / n, rtol=0.06)
    chain = jnp.asarray(np.diag(rng.standard_normal(n - 1) + 2.0, k=-1))  # J³ ≠ 0, Jⁿ = 0
    chain = chain.at[3:, :].set(0.0)  # rows 3.. cut the chain: J has nilpotency index 3
    for k, zero in ((1, False), (2, False), (3, True)):
        value = JacobianPenalty(num_probes=16, power=k)(linear, z, chain, b,
                                                        key=jax.random.PRNGKey(0))
        assert (float(value) == 0.0) == zero, (k, float(value))
    with pytest.raises(ValueError, match="power"):
        JacobianPenalty(power=0)
