"""Honest outcomes: why each sample stopped, the fallback, tol=0, and the cases where a
runaway iterate, an overflowing norm or a low-precision sum used to pass for convergence."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import solvers
from benchmarks import problems
from benchmarks.timing import XLA_DEFAULT_COMPILE
from solvers import Reason

OURS = ("anderson", "broyden", "fixed_point")


def one_per_reason(z, a, b):
    """Per sample ``z ↦ a z + b``, except sample 4, whose ``f`` is NaN after the start."""
    out = a * z + b
    return out.at[4].set(jnp.where(jnp.all(z[4] == 0), out[4], jnp.nan))


def test_every_reason_from_one_batch():
    """Plain iteration on five samples built to end five ways, in one batch."""
    a = jnp.array([0.5, 0.999, 1.0, 3.0, 0.5])[:, None]  # converge, slow, no fixed point, grow
    b = jnp.ones((5, 2))
    solve = solvers.get("fixed_point", batch_axis=0, tol=1e-6, stop_mode="abs", max_iter=60,
                        stall_window=10, divergence_factor=100.0)
    sol = jax.jit(lambda z0: solve(one_per_reason, z0, a, b))(jnp.zeros((5, 2)))
    expected = [Reason.CONVERGED, Reason.MAX_ITER, Reason.STALLED, Reason.DIVERGED,
                Reason.NONFINITE]
    np.testing.assert_array_equal(sol.stats.reason, expected)
    chex.assert_type(sol.stats.reason, jnp.int32)
    np.testing.assert_array_equal(sol.stats.converged, [True, False, False, False, False])
    steps = np.asarray(sol.stats.steps)
    assert steps[1] == 60 and steps[2] == 10 and steps[3] < 10 and steps[4] == 1, steps
    # Every returned iterate is finite, and a failing sample returns its starting point,
    # not a runaway one (the residual of 3z + 1 and z + 1 never fell below the first).
    assert bool(jnp.all(jnp.isfinite(sol.value)))
    np.testing.assert_array_equal(sol.value[2:], np.zeros((3, 2)))
    text = solvers.explain(sol.stats)
    for words in ("1/5 converged", "1 ran out of iterations", "1 stalled", "1 diverged",
                  "1 went non-finite"):
        assert words in text, text


@pytest.mark.parametrize("name", OURS)
def test_a_map_without_fixed_point_never_converges(name):
    """z ↦ z + 1 in "rel" mode: runaway iterates shrink ‖f(z) − z‖ / ‖f(z)‖ = 1/|z + 1|,
    but the guards watch the absolute residual, which never falls."""
    solve = solvers.get(name, max_iter=200, tol=1e-2)
    sol = solve(lambda z: z + 1.0, jnp.zeros(3))
    assert not bool(sol.stats.converged)
    assert int(sol.stats.reason) in (Reason.STALLED, Reason.DIVERGED)
    np.testing.assert_array_equal(sol.value, np.zeros(3))  # the start, not z = 30


def test_a_runaway_iterate_is_never_the_best_one():
    """Plain iteration on 2z + 1 runs away from z* = −1; it must return its start."""
    solve = solvers.get("fixed_point", max_iter=100, tol=1e-6)
    sol = solve(lambda z: 2.0 * z + 1.0, jnp.zeros(3))
    assert int(sol.stats.reason) == Reason.DIVERGED
    np.testing.assert_array_equal(sol.value, np.zeros(3))
    exact = solvers.get("broyden", tol=1e-6)(lambda z: 2.0 * z + 1.0, jnp.zeros(3))
    np.testing.assert_allclose(exact.value, -np.ones(3), rtol=1e-6)


@pytest.mark.parametrize("name", OURS)
def test_a_fixed_point_near_the_float32_overflow_of_squares(name):
    """z* = 2e19: its squared norm overflows float32, yet the solve converges."""
    solve = solvers.get(name, tol=1e-6)
    sol = solve(lambda z: 0.5 * z + 1e19, jnp.full((4,), 1.9e19, jnp.float32))
    assert bool(sol.stats.converged), solvers.explain(sol.stats)
    np.testing.assert_allclose(sol.value, np.full(4, 2e19), rtol=1e-5)  # tol / (1 − 0.5)
    assert np.isfinite(float(sol.stats.abs_residual))


def test_residuals_of_a_large_float16_state_are_accumulated_in_float32():
    """70 000 float16 entries: the relative residual of z ↦ z + 0.03 at z = 1 is 0.03/1.03."""
    solve = solvers.get("fixed_point", tol=1e-2, max_iter=1)
    sol = solve(lambda z: z + jnp.float16(0.03), jnp.ones(70_000, jnp.float16))
    assert sol.value.dtype == jnp.float16
    assert sol.stats.rel_residual.dtype == jnp.float32
    np.testing.assert_allclose(sol.stats.rel_residual, 0.0293, rtol=2e-2)
    assert not bool(sol.stats.converged)


def test_tol_zero_runs_exactly_max_iter():
    for name in OURS:
        solve = solvers.get(name, tol=0.0, max_iter=25, batch_axis=0)
        sol = solve(lambda z: 0.5 * jnp.tanh(z) + 1.0, jnp.zeros((2, 3)))
        np.testing.assert_array_equal(sol.stats.steps, [25, 25])
        np.testing.assert_array_equal(sol.stats.reason, [Reason.MAX_ITER] * 2)
        assert not bool(jnp.any(sol.stats.converged))
    # An exact fixed point reached is converged even at tol = 0: z ↦ 1 is hit in one step.
    exact = solvers.get("fixed_point", tol=0.0, max_iter=25)(lambda z: jnp.ones_like(z),
                                                              jnp.zeros(3))
    assert bool(exact.stats.converged) and int(exact.stats.steps) == 1


def test_fallback_takes_over_the_samples_broyden_leaves_stalled():
    """slow-modes-0.999 (spectral radius just above 1): Broyden stalls on some samples;
    with ``fallback="fixed_point"`` those continue from their best iterate and converge,
    and the samples Broyden solved are unchanged. Monotone trials (``reject_increase=1``)
    and a short stall window (30), neither the default, are the setting under which
    Broyden leaves samples of this batch stalled at iterates that plain iteration can
    finish from."""
    p = problems.build("slow-modes-0.999", 128, 16, 0)
    common = dict(batch_axis=0, tol=1e-5, max_iter=600, reject_increase=1.0, stall_window=30)

    def run(**options):
        solve = solvers.get("broyden", **common, **options)
        # Where Broyden stalls, and so whether plain iteration can finish, depends on the
        # rounding: compile as XLA does by default, not with the suite's fast options.
        return jax.jit(lambda z0, *a: solve(p.f, z0, *a),
                       compiler_options=XLA_DEFAULT_COMPILE)(p.z0, *p.args)

    alone, helped = run(), run(fallback="fixed_point")
    failed = ~np.asarray(alone.stats.converged)
    assert failed.any(), solvers.explain(alone.stats)
    assert np.all(np.asarray(alone.stats.reason)[failed] == Reason.STALLED)
    assert bool(jnp.all(helped.stats.converged)), solvers.explain(helped.stats)
    assert np.all(np.asarray(helped.stats.steps) <= common["max_iter"])
    np.testing.assert_array_equal(np.asarray(helped.value)[~failed],
                                  np.asarray(alone.value)[~failed])
    residual = solvers.residuals(helped.value, p.f(helped.value, *p.args), batch_axis=0)[1]
    assert np.all(np.asarray(residual) <= 1.01e-5)


def test_fallback_value_is_a_solver_option_with_the_same_budget():
    solve = solvers.get("broyden", fallback="fixed_point", max_iter=7, tol=1e-3)
    assert solve.fallback == solvers.get("fixed_point", max_iter=7, tol=1e-3)
    assert "fallback=FixedPoint()" in repr(solve)
    # A fallback given as a value keeps its own method options and runs under this
    # solver's stopping rule and batch axis.
    damped = solvers.get("fixed_point", damping=0.5, max_iter=99)
    solve = solvers.get("broyden", fallback=damped, max_iter=7, batch_axis=0)
    assert solve.fallback.method == solvers.FixedPoint(damping=0.5)
    assert solve.fallback.stopping == solve.stopping and solve.fallback.batch_axis == 0
    assert solve.replace(max_iter=9).fallback.stopping.max_iter == 9
    assert solvers.Solver(solvers.Broyden(), fallback=solvers.FixedPoint()).fallback == (
        solvers.get("fixed_point"))
    with pytest.raises(ValueError, match="has a fallback of its own"):
        solvers.get("broyden", fallback=solvers.get("fixed_point", fallback="fixed_point"))


@pytest.mark.parametrize("name", solvers.available(general=True))
def test_an_empty_batch_solves_to_an_empty_batch(name):
    z0 = {"a": jnp.zeros((0, 3)), "b": jnp.zeros((0, 2, 2))}
    solve = solvers.get(name, batch_axis=0)
    sol = solve(lambda z: jax.tree_util.tree_map(lambda leaf: 0.5 * leaf + 1.0, z), z0)
    chex.assert_trees_all_equal_shapes_and_dtypes(sol.value, z0)
    chex.assert_shape([sol.stats.steps, sol.stats.reason, sol.stats.converged], (0,))
    assert solvers.explain(sol.stats) == "0/0 converged"


def test_a_leaf_that_is_not_an_array_is_named():
    with pytest.raises(TypeError, match=r"leaf \['b'\] is a str .*not an array"):
        solvers.get("broyden")(lambda z: z, {"a": jnp.zeros(3), "b": "text"})


def test_the_default_stall_window_outlasts_broydens_plateaus():
    """slow-modes-0.999, seed 3: one sample's best residual stays flat for more than 30
    iterations and then falls to tol. A 30-iteration stall window gives that sample up
    as stalled; the default window waits it out, and every sample converges."""
    p = problems.build("slow-modes-0.999", 128, 16, 3)

    def run(**options):
        solve = solvers.get("broyden", batch_axis=0, tol=1e-5, max_iter=600, **options)
        return jax.jit(lambda z0, *a: solve(p.f, z0, *a))(p.z0, *p.args).stats

    short, default = run(stall_window=30), run()
    given_up = np.asarray(short.reason) == Reason.STALLED
    assert given_up.any(), solvers.explain(short)
    assert bool(jnp.all(default.converged)), solvers.explain(default)
    assert np.all(np.asarray(default.steps)[given_up] > np.asarray(short.steps)[given_up])
