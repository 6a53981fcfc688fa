"""Broyden takes a trial point unless it raises ``‖g‖ = ‖f(z) − z‖`` by more than
``reject_increase`` (default 2); a rejected trial leaves ``z`` where it was.

The map ``f(z) = A z + b`` with ``A = diag(1.5, 0.5)`` and ``z0`` chosen so that
``g(z0) = (1, 0)``: the first trial is the plain step ``z1 = f(z0)``, where
``g(z1) = A g(z0) = (1.5, 0)``, so it raises ``‖g‖`` by exactly 1.5. The final rule state
says whether the row moved (``g_norm2`` is ``‖g‖²`` at the current point) and how many
trials in a row were rejected.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import solvers

A = jnp.diag(jnp.array([1.5, 0.5]))
B = jnp.array([1.0, 0.0])
Z0 = jnp.zeros(2)  # g(z0) = A z0 + b − z0 = b = (1, 0)
Z_STAR = np.linalg.solve(np.eye(2) - np.asarray(A), np.asarray(B))  # (−2, 0)


def linear(z: jnp.ndarray) -> jnp.ndarray:
    return A @ z + B


@pytest.mark.parametrize(
    "options, moved",
    [({}, True), ({"reject_increase": 1.6}, True), ({"reject_increase": 1.4}, False),
     ({"reject_increase": 1.0}, False)],
)
def test_a_trial_is_taken_only_within_reject_increase(options: dict, moved: bool) -> None:
    solve = solvers.get("broyden", tol=0.0, max_iter=1, **options)
    _, state = solve.run(linear, Z0, ())
    expected_g_norm2 = 1.5**2 if moved else 1.0
    np.testing.assert_allclose(np.asarray(state.g_norm2), expected_g_norm2, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(state.rejections), 0 if moved else 1)


@pytest.mark.parametrize("reject_increase", [1.0, 2.0])
def test_either_way_the_solve_reaches_the_closed_form_fixed_point(reject_increase: float) -> None:
    sol = solvers.get("broyden", tol=1e-6, max_iter=20, reject_increase=reject_increase)(linear, Z0)
    assert bool(sol.stats.converged), solvers.explain(sol.stats)
    np.testing.assert_allclose(np.asarray(sol.value), Z_STAR, atol=1e-5)
