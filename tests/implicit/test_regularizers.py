"""Regularisers against dense Jacobians and closed forms on small problems (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from implicit import (
    fixed_point_correction_loss,
    jacobian_frobenius_sq,
    solver_trajectory,
    spectral_radius,
)


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


def test_trajectory_and_fixed_point_correction_closed_forms(x64):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 4))
    a *= 0.5 / np.linalg.norm(a, 2)
    a, b, y = jnp.asarray(a), jnp.asarray(rng.standard_normal(4)), jnp.asarray(np.ones(4))

    def linear(z, a, b):
        return a @ z + b

    def loss_fn(z):
        return 0.5 * jnp.sum((z - y) ** 2)

    @jax.jit
    def run(a, b):
        # Broyden's first step is the plain step, so segments of one step give z_k = f(z_{k−1}).
        states = solver_trajectory(linear, jnp.zeros(4), a, b, num_states=3, steps_per_state=1,
                                   solver_options={"tol": 1e-14})
        def loss(a, b):
            return fixed_point_correction_loss(linear, states, a, b, loss_fn=loss_fn, gamma=0.5)

        return states, loss(a, b), jax.grad(loss, argnums=(0, 1))(a, b)

    states, loss, (grad_a, grad_b) = run(a, b)
    a, b, y = map(np.asarray, (a, b, y))
    z, expected_states = np.zeros(4), []
    for _ in range(3):
        z = a @ z + b
        expected_states.append(z)
    np.testing.assert_allclose(states, np.stack(expected_states), rtol=1e-12)
    weights = [0.25, 0.5, 1.0]  # γ^(K−1−k)
    residuals = [a @ z + b - y for z in expected_states]
    np.testing.assert_allclose(
        loss, sum(w * 0.5 * r @ r for w, r in zip(weights, residuals, strict=True)), rtol=1e-12
    )
    np.testing.assert_allclose(
        grad_a, sum(w * np.outer(r, z) for w, r, z in zip(weights, residuals, expected_states,
                                                          strict=True)), rtol=1e-12
    )
    np.testing.assert_allclose(
        grad_b, sum(w * r for w, r in zip(weights, residuals, strict=True)), rtol=1e-12
    )
