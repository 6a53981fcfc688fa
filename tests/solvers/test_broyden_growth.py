"""Broyden's buffers start with ``initial_history`` slots and grow to ``history`` on demand.

Growing must not change the solve: with the buffers full size from the start
(``initial_history=0``) every iterate is the same, so the steps, the statistics and the
solution agree exactly (the products over the zero slots add exact zeros). The truth for
the solution itself is a direct linear solve in float64.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import solvers

DIM, BATCH, HISTORY, INITIAL = 24, 3, 16, 4


def linear(z, a, b):
    return z @ a.T + b


def slow_linear_map() -> tuple[np.ndarray, np.ndarray]:
    """Symmetric ``A`` with eigenvalues spread over [−0.5, 0.5] and two slow ones at 0.97
    (Broyden needs more than ``INITIAL`` iterations, so the buffers have to grow), and ``b``."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    eigenvalues = np.concatenate([rng.uniform(-0.5, 0.5, DIM - 2), [0.97, 0.97]])
    return (q * eigenvalues) @ q.T, rng.standard_normal((BATCH, DIM))


def exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.solve(np.eye(DIM) - a, b.T).T


def run(initial_history: int, **options):
    solve = solvers.get("broyden", history=HISTORY, initial_history=initial_history,
                        tol=1e-11, stop_mode="abs", max_iter=80, batch_axis=0, **options)
    a, b = slow_linear_map()
    return solve.run(linear, jnp.zeros((BATCH, DIM)), (jnp.asarray(a), jnp.asarray(b)))


class GrowthTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_growing_buffers_give_the_same_solve_as_full_ones(self):
        with jax.enable_x64(True):
            (grown, grown_state), (full, full_state) = (
                self.variant(lambda: run(INITIAL))(), self.variant(lambda: run(0))()
            )
        a, b = slow_linear_map()
        assert int(np.max(grown.stats.steps)) > INITIAL  # the buffers did have to grow
        assert bool(np.all(grown.stats.converged))
        np.testing.assert_array_equal(grown.stats.steps, full.stats.steps)
        np.testing.assert_array_equal(grown.stats.fevals, full.stats.fevals)
        np.testing.assert_array_equal(grown.stats.reason, full.stats.reason)
        np.testing.assert_allclose(grown.value, full.value, rtol=1e-9)
        np.testing.assert_allclose(grown.value, exact(a, b), atol=1e-9)
        # The final state is full size either way, holding the same terms (compared where
        # they are well conditioned: the last ones, from differences near 1e-11, are not).
        chex.assert_shape([grown_state.terms, full_state.terms], (BATCH, 2, HISTORY, DIM))
        early = slice(0, 2 * INITIAL)
        np.testing.assert_allclose(grown_state.terms[:, :, early], full_state.terms[:, :, early],
                                   rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("when_full", ["replace_newest", "replace_oldest"])
def test_the_final_state_is_full_size_whether_or_not_the_buffers_grew(when_full):
    """A solve that stops in the first stage still returns a full-size state (the prior
    a later solve may start from), as does one that grew."""
    a, b = slow_linear_map()
    for tol, grew in ((0.3, False), (1e-6, True)):
        solve = solvers.get("broyden", history=HISTORY, initial_history=INITIAL, tol=tol,
                            when_full=when_full, batch_axis=0)
        solution, state = solve.run(linear, jnp.zeros((BATCH, DIM)),
                                    (jnp.asarray(a), jnp.asarray(b)))
        assert bool(np.all(solution.stats.converged))
        assert (int(np.max(solution.stats.steps)) > INITIAL) == grew
        chex.assert_shape(state.terms, (BATCH, 2, HISTORY, DIM))


def test_fixed_length_loop_starts_full_size_and_matches_the_growing_one():
    with jax.enable_x64(True):
        (grown, _), (scan, state) = run(INITIAL), run(INITIAL, fixed_length=True)
    np.testing.assert_array_equal(grown.stats.steps, scan.stats.steps)
    np.testing.assert_allclose(grown.value, scan.value, rtol=1e-9)
    chex.assert_shape(state.terms, (BATCH, 2, HISTORY, DIM))


def test_initial_history_is_validated_and_declared():
    with pytest.raises(ValueError, match="'initial_history'"):
        solvers.get("broyden", initial_history=-1)
    declared = solvers.declared("broyden")["initial_history"]
    assert declared.default == 8 and "grow" in declared.doc
