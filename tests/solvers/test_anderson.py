"""The native Anderson solver against independent truth: direct linear solves and closed forms.

On a linear map ``f(z) = z Aᵀ + b`` the fixed point is ``z* = b (I − Aᵀ)⁻¹`` (here per
sample), which ``numpy.linalg.solve`` gives in float64; type-II Anderson with a history
of at least the dimension is GMRES in disguise, so it must also get there in about as
many iterations as the dimension.
"""

from __future__ import annotations

import functools

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings

import solvers

DIM, BATCH = 6, 3


def linear(z, a, b):
    return z @ a.T + b


def random_linear_map(seed: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """``A`` with spectral radius ``radius`` (possibly above 1: not a contraction) and ``b``."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((DIM, DIM))
    a *= radius / np.max(np.abs(np.linalg.eigvals(a)))
    return a, rng.standard_normal((BATCH, DIM))


def exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.solve(np.eye(DIM) - a, b.T).T  # z = A z + b per sample


@functools.lru_cache(maxsize=None)
def solve_fn(dtype: str):
    tol = {"float64": 1e-12, "float32": 1e-6}[dtype]
    solve = solvers.get("anderson", history=DIM + 2, tol=tol, stop_mode="rel", max_iter=60,
                        batch_axis=0)
    return jax.jit(lambda z0, a, b: solve(linear, z0, a, b))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), radius=st.floats(0.1, 1.6))
def test_linear_maps_match_the_direct_solve_in_float64(seed, radius):
    a, b = random_linear_map(seed, radius)
    assume(np.linalg.cond(np.eye(DIM) - a) <= 100)  # errors scale with it: keep 1e-10 honest
    with jax.enable_x64(True):
        sol = solve_fn("float64")(jnp.zeros((BATCH, DIM)), jnp.asarray(a), jnp.asarray(b))
        chex.assert_type(sol.value, jnp.float64)
        assert bool(jnp.all(sol.stats.converged)), solvers.explain(sol.stats)
        reference = exact(a, b)
        error = np.linalg.norm(np.asarray(sol.value) - reference) / np.linalg.norm(reference)
        assert error <= 1e-10, error
        # GMRES in disguise: about DIM iterations, not the hundreds plain iteration needs
        # (DIM + 1 in exact arithmetic; at tol 1e-12 round-off has cost up to DIM + 6).
        assert int(sol.stats.steps.max()) <= 2 * DIM + 2, sol.stats.steps


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), radius=st.floats(0.1, 1.6))
def test_linear_maps_match_the_direct_solve_in_float32(seed, radius):
    a, b = random_linear_map(seed, radius)
    assume(np.linalg.cond(np.eye(DIM) - a) <= 100)  # float32 cannot resolve 1e-5 beyond that
    sol = solve_fn("float32")(jnp.zeros((BATCH, DIM), jnp.float32), jnp.asarray(a, jnp.float32),
                              jnp.asarray(b, jnp.float32))
    chex.assert_type(sol.value, jnp.float32)
    assert bool(jnp.all(sol.stats.converged)), solvers.explain(sol.stats)
    reference = exact(a, b)
    error = np.linalg.norm(np.asarray(sol.value) - reference) / np.linalg.norm(reference)
    assert error <= 1e-5, error


def test_minus_two_z_plus_one_closed_form_with_every_history():
    """f(z) = −2z + 1: z* = 1/3, where plain iteration diverges (|f′| = 2)."""
    for history in (1, 2, 5):
        solve = solvers.get("anderson", history=history, tol=1e-7, stop_mode="abs")
        sol = solve(lambda z: -2.0 * z + 1.0, jnp.zeros(()))
        np.testing.assert_allclose(sol.value, 1 / 3, rtol=1e-6)
        assert bool(sol.stats.converged) and int(sol.stats.steps) <= 3


def test_history_beyond_the_problem_size_is_capped():
    """history=2000 on an 8-dimensional problem keeps an 8-column history: it finishes."""
    a, b = random_linear_map(3, 0.9)
    solve = solvers.get("anderson", history=2000, max_iter=200, tol=1e-6)
    state = solve.method.init(jnp.zeros((1, 8)), jnp.ones((1, 8)), solve.stopping)
    assert state.dg.shape == (1, 8, 8)
    sol = solve(lambda z: jnp.tanh(0.5 * z) + 1.0, jnp.zeros(8))
    assert bool(sol.stats.converged)


def test_a_nan_sample_is_isolated_and_the_history_stays_clean():
    """NaN in one sample's f: that sample stops as non-finite, the others converge."""
    scale = jnp.array([0.9, jnp.nan, -1.5])[:, None]
    solve = solvers.get("anderson", batch_axis=0, tol=1e-6, stop_mode="abs")
    sol = jax.jit(lambda z0: solve(lambda z: scale * z + 1.0, z0))(jnp.zeros((3, 2)))
    np.testing.assert_array_equal(sol.stats.converged, [True, False, True])
    assert int(sol.stats.reason[1]) == solvers.Reason.NONFINITE
    np.testing.assert_allclose(sol.value[0], [10.0, 10.0], rtol=1e-5)
    np.testing.assert_allclose(sol.value[2], [0.4, 0.4], rtol=1e-5)
    assert bool(jnp.all(jnp.isfinite(sol.value)))


@pytest.mark.parametrize("damping", [1.0, 0.5])
def test_damping_still_converges_to_the_same_point(damping):
    a, b = random_linear_map(5, 0.8)
    solve = solvers.get("anderson", damping=damping, history=DIM, tol=1e-6, batch_axis=0)
    sol = solve(linear, jnp.zeros((BATCH, DIM)), jnp.asarray(a, jnp.float32),
                jnp.asarray(b, jnp.float32))
    np.testing.assert_allclose(sol.value, exact(a, b), rtol=1e-4, atol=1e-4)
