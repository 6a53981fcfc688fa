"""Tests of the solver registry and every registered solver.

Truth comes from outside the solvers: residuals are re-measured here, solvers are
compared with each other, batch mode with ``vmap`` of the single-system solve, and
the linear cases with their closed-form fixed points.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings

import solvers
from solvers.options import between, option

BUILTIN = (
    "anderson", "broyden", "fixed_point", "jaxopt_anderson", "jaxopt_broyden", "jaxopt_fixed_point"
)
OURS = ("anderson", "broyden", "fixed_point")
TOL = 1e-5


# ----------------------------------------------------------------------------------------
# Problems: a contractive tanh layer z = tanh(W z + U x) over three kinds of pytree state.


def contractive_layer(key: jax.Array, dim: int, batch: int, scale: float = 0.7):
    """Weights of z ↦ tanh(z Wᵀ + x Uᵀ) with ‖W‖₂ = scale < 1, and an input batch x."""
    k_w, k_u, k_x = jax.random.split(key, 3)
    w = jax.random.normal(k_w, (dim, dim))
    w = scale * w / jnp.linalg.norm(w, 2)
    u = jax.random.normal(k_u, (dim, dim)) / jnp.sqrt(dim)
    x = jax.random.normal(k_x, (batch, dim))
    return w, u, x


def layer(z, w, u, x):
    """The same contraction on every leaf layout: an array, a dict, a (hidden, memory) tuple."""
    if isinstance(z, dict):
        h = jnp.concatenate([z["left"], z["right"]], axis=-1)
        out = jnp.tanh(h @ w.T + x @ u.T)
        half = z["left"].shape[-1]
        return {"left": out[..., :half], "right": out[..., half:]}
    if isinstance(z, tuple):
        hidden, memory = z
        new_hidden = jnp.tanh(hidden @ w.T + x @ u.T + 0.1 * memory)
        return new_hidden, 0.5 * memory + 0.1 * jnp.tanh(hidden)
    return jnp.tanh(z @ w.T + x @ u.T)


def zeros_state(kind: str, batch: int, dim: int):
    if kind == "dict":
        return {"left": jnp.zeros((batch, dim // 2)), "right": jnp.zeros((batch, dim - dim // 2))}
    if kind == "tuple":
        return jnp.zeros((batch, dim)), jnp.zeros((batch, dim))
    return jnp.zeros((batch, dim))


def measured_residual(z, fz) -> np.ndarray:
    """Per-sample ‖f(z) − z‖ / ‖f(z)‖, recomputed here from the pytrees."""
    diff = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a, b: a - b, fz, z))
    batch = diff[0].shape[0]
    num = sum(np.sum(np.reshape(np.asarray(d), (batch, -1)) ** 2, axis=1) for d in diff)
    den = sum(
        np.sum(np.reshape(np.asarray(v), (batch, -1)) ** 2, axis=1)
        for v in jax.tree_util.tree_leaves(fz)
    )
    return np.sqrt(num) / np.sqrt(den)


@functools.lru_cache(maxsize=None)
def batched_solver(name: str, **options):
    """One jitted batch solve per solver and options, shared by tests to reuse compilations."""
    solve = solvers.get(name, batch_axis=0, tol=TOL, max_iter=200, **options)
    return jax.jit(lambda z0, w, u, x: solve(layer, z0, w, u, x))


# ----------------------------------------------------------------------------------------
# Registry and options.


def test_available_lists_builtins_sorted():
    names = solvers.available()
    assert set(BUILTIN) <= set(names)
    assert list(names) == sorted(names)


def test_unknown_solver_lists_available():
    with pytest.raises(ValueError, match="unknown solver 'newton'") as err:
        solvers.get("newton")
    for name in BUILTIN:
        assert name in str(err.value)


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize(
    "options, error, words",
    [
        (dict(tol=-1), ValueError, "'tol'"),
        (dict(tol=float("nan")), ValueError, "'tol'"),
        (dict(max_iter=0), ValueError, "'max_iter'"),
        (dict(max_iter=2.5), TypeError, "'max_iter'"),
        (dict(max_iter=True), TypeError, "'max_iter'"),
        (dict(stop_mode="relative"), ValueError, "'stop_mode'"),
        (dict(batch_axis=1), ValueError, "'batch_axis'"),
        (dict(tol="small"), TypeError, "'tol'"),
        (dict(tolerance=1e-3), TypeError, "'tolerance'"),
    ],
)
def test_bad_options_fail_at_get_time_naming_the_option(name, options, error, words):
    with pytest.raises(error, match=words):
        solvers.get(name, **options)


def test_solver_specific_options_are_checked():
    with pytest.raises(ValueError, match="'history'"):
        solvers.get("broyden", history=0)
    with pytest.raises(ValueError, match="'history'"):
        solvers.get("anderson", history=0)
    with pytest.raises(ValueError, match="'history'"):
        solvers.get("jaxopt_anderson", history=1)
    with pytest.raises(ValueError, match="'damping'"):
        solvers.get("anderson", damping=1.5)
    with pytest.raises(ValueError, match="'damping'"):
        solvers.get("fixed_point", damping=0.0)
    with pytest.raises(TypeError, match="'history'.*valid options"):
        solvers.get("fixed_point", history=3)
    with pytest.raises(ValueError, match="unknown solver 'newton'"):
        solvers.get("broyden", fallback="newton")
    with pytest.raises(ValueError, match="cannot be a fallback"):
        solvers.get("broyden", fallback="jaxopt_anderson")
    with pytest.raises(ValueError, match="'when_full'"):
        solvers.get("broyden", when_full="drop_all")


def test_register_rejects_duplicates_unless_overwrite():
    with pytest.raises(ValueError, match="already registered"):
        solvers.register("broyden", solvers.get)
    solvers.register("test_dummy", lambda **o: solvers.get("broyden", max_iter=3))
    try:
        with pytest.raises(ValueError, match="overwrite=True"):
            solvers.register("test_dummy", lambda **o: solvers.get("broyden", max_iter=4))
        solvers.register("test_dummy", lambda **o: solvers.get("broyden", max_iter=4),
                         overwrite=True)
        assert solvers.get("test_dummy").options["max_iter"] == 4
        solvers.register("test_dummy", lambda **o: "not a solver", overwrite=True)
        with pytest.raises(TypeError, match="not a Solver"):
            solvers.get("test_dummy")
    finally:
        solvers.unregister("test_dummy")
    assert "test_dummy" not in solvers.available()


def test_solvers_are_frozen_hashable_values():
    solve = solvers.get("broyden", tol=1e-6, history=7)
    assert isinstance(solve, solvers.Solver)
    assert solve.name == "broyden" and solve.options["history"] == 7
    assert solve == solvers.get("broyden", history=7, tol=1e-6)
    assert hash(solve) == hash(solvers.get("broyden", history=7, tol=1e-6))
    assert solve != solvers.get("broyden", tol=1e-6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        solve.name = "other"
    with pytest.raises(TypeError):
        solve.options["tol"] = 1.0  # read-only
    tighter = solve.replace(tol=1e-9)
    assert tighter.options["tol"] == 1e-9 and solve.options["tol"] == 1e-6
    assert tighter.options["history"] == 7
    assert solve == solvers.Solver(solvers.Broyden(history=7), solvers.Stopping(tol=1e-6))
    assert solve.method.history == 7 and solve.stopping.tol == 1e-6  # typed fields
    assert solvers.get(solve) is solve and solvers.get(solve, tol=1e-9) == tighter
    with pytest.raises(ValueError, match="'tol'"):
        solve.replace(tol=-1.0)
    # jit takes a solver as a static argument and compiles once per distinct value.
    traces = []

    @functools.partial(jax.jit, static_argnums=0)
    def run(solver, x):
        traces.append(solver)
        return solver(lambda z: 0.5 * jnp.cos(z) + x, jnp.zeros(3)).value

    run(solve, 1.0)
    run(solvers.get("broyden", tol=1e-6, history=7), 2.0)
    assert len(traces) == 1


def test_declared_lists_every_option_with_its_default_and_help():
    declared = solvers.declared("broyden")
    assert set(solvers.COMMON_OPTIONS) <= set(declared)
    assert declared["history"].default == 30 and declared["history"].doc
    assert "history" not in solvers.declared("fixed_point")
    assert set(declared) == set(solvers.get("broyden").options)
    with pytest.raises(ValueError, match="unknown solver"):
        solvers.declared("newton")


@dataclasses.dataclass(frozen=True)
class Damped(solvers.Method):
    """A damped iteration z ← (1 − β) z + β f(z): a user's method."""

    name: ClassVar[str] = "damped"
    beta: float = option(0.5, between(0, 1, low_open=True), "β")

    def init(self, z, fz, stopping):
        return ()

    def step(self, f, z, fz, state, active, stopping):
        z_new = (1 - self.beta) * z + self.beta * fz
        return z_new, f(z_new), state, jnp.ones(z.shape[:1], jnp.int32)


def test_a_users_method_reuses_the_shared_loop():
    with pytest.raises(ValueError, match="'beta'"):
        Damped(beta=2.0)
    with pytest.raises(TypeError, match="'gamma'.*valid options: beta"):
        Damped(gamma=0.5)
    # f(z) = -z + 2 oscillates under plain iteration; β = 1/2 lands on z* = 1 in one step.
    solve = solvers.Solver(Damped(beta=0.5), solvers.Stopping(tol=1e-6))
    assert "damped" not in solvers.available()  # a value needs no registration
    sol = solve(lambda z: -z + 2.0, jnp.zeros(4))
    np.testing.assert_allclose(sol.value, np.ones(4), atol=1e-6)
    assert int(sol.stats.steps) == 1 and bool(sol.stats.converged)
    assert solvers.get(Damped(), beta=0.5, tol=1e-6) == solve
    with pytest.raises(ValueError, match="cannot restart single samples"):
        solvers.get("broyden", fallback=Damped())
    solvers.register("damped", Damped)
    try:
        assert solvers.get("damped", beta=0.5, tol=1e-6) == solve
        assert solvers.declared("damped")["beta"].default == 0.5
        assert set(solvers.declared("damped")) == {*solvers.COMMON_OPTIONS, "beta"}
    finally:
        solvers.unregister("damped")


# ----------------------------------------------------------------------------------------
# Every solver on random contractive layers: tolerance reached, agreement, vmap equality.


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    kind=st.sampled_from(["array", "dict", "tuple"]),
    batch_and_dim=st.sampled_from([(1, 7), (3, 4)]),
)
def test_contractive_layers_every_solver_converges_and_agrees(seed, kind, batch_and_dim):
    batch, dim = batch_and_dim
    w, u, x = contractive_layer(jax.random.PRNGKey(seed), dim, batch)
    z0 = zeros_state(kind, batch, dim)
    values = {}
    for name in BUILTIN:
        sol = batched_solver(name)(z0, w, u, x)
        chex.assert_trees_all_equal_shapes_and_dtypes(sol.value, z0)
        assert bool(jnp.all(sol.stats.converged)), (name, sol.stats)
        residual = measured_residual(sol.value, layer(sol.value, w, u, x))
        assert np.all(residual <= TOL * 1.01), (name, residual)
        np.testing.assert_allclose(residual, sol.stats.rel_residual, rtol=1e-3, atol=1e-7)
        values[name] = sol.value
    # ‖z − z*‖ ≤ ‖f(z) − z‖ / (1 − L) with L ≤ 0.7 (+ the memory's 0.5): a few tol apart.
    for name in BUILTIN[1:]:
        chex.assert_trees_all_close(values[name], values[BUILTIN[0]], atol=2e-4)


@pytest.mark.parametrize("name", BUILTIN)
def test_batch_mode_equals_vmap_of_single_solve(name):
    w, u, x = contractive_layer(jax.random.PRNGKey(1), 6, 5, scale=0.9)
    z0 = zeros_state("tuple", 5, 6)
    batched = batched_solver(name)(z0, w, u, x)
    single_solve = solvers.get(name, tol=TOL, max_iter=200)

    def one(z0_i, x_i):
        f_i = lambda z, w, u, x: jax.tree_util.tree_map(  # noqa: E731
            lambda leaf: leaf[0],
            layer(jax.tree_util.tree_map(lambda leaf: leaf[None], z), w, u, x[None]),
        )
        return single_solve(f_i, z0_i, w, u, x_i)

    mapped = jax.jit(jax.vmap(one))(z0, x)
    chex.assert_trees_all_close(batched.value, mapped.value, atol=1e-5)
    chex.assert_trees_all_close(batched.stats.converged, mapped.stats.converged)
    chex.assert_trees_all_equal_shapes(batched.stats, mapped.stats)
    # Per-sample stopping: steps are per sample and agree up to one step of rounding.
    assert np.max(np.abs(np.asarray(batched.stats.steps) - np.asarray(mapped.stats.steps))) <= 2


class StatsTest(parameterized.TestCase):
    """Stats are consistent with themselves and with the solution, with and without jit."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*[(name,) for name in BUILTIN])
    def test_stats_are_consistent(self, name):
        w, u, x = contractive_layer(jax.random.PRNGKey(2), 5, 4, scale=0.9)
        max_iter = 40
        solve = solvers.get(name, batch_axis=0, tol=1e-4, max_iter=max_iter, stop_mode="abs")
        sol = self.variant(lambda z0, w, u, x: solve(layer, z0, w, u, x))(
            jnp.zeros((4, 5)), w, u, x
        )
        stats = jax.tree_util.tree_map(np.asarray, sol.stats)
        chex.assert_shape(stats.trace, (4, max_iter + 1))
        chex.assert_shape([stats.steps, stats.fevals, stats.abs_residual, stats.converged], (4,))
        chex.assert_type([stats.steps, stats.fevals], int)
        chex.assert_type(stats.converged, bool)
        # converged ⇔ stop-mode residual ≤ tol, and the residual is the returned point's.
        np.testing.assert_array_equal(stats.converged, stats.abs_residual <= 1e-4)
        fz = layer(sol.value, w, u, x)
        np.testing.assert_allclose(
            np.linalg.norm(np.asarray(fz - sol.value), axis=1), stats.abs_residual, rtol=1e-3
        )
        # The trace is the best residual so far: non-increasing, from the residual of z0 to
        # the final residual at index `steps`, then padded with it.
        assert np.all(np.diff(stats.trace, axis=1) <= 0)
        np.testing.assert_allclose(
            stats.trace[:, 0], np.linalg.norm(np.tanh(x @ u.T), axis=1), rtol=1e-5
        )
        for i in range(4):
            np.testing.assert_allclose(stats.trace[i, stats.steps[i] :], stats.abs_residual[i])
        assert np.all(stats.fevals >= stats.steps + 1)
        assert np.all(stats.steps <= max_iter)


def test_single_system_stats_are_scalars():
    sol = solvers.get("broyden", max_iter=20)(lambda z: 0.5 * z + 1.0, jnp.zeros((2, 3)))
    chex.assert_rank([sol.stats.steps, sol.stats.converged, sol.stats.rel_residual], 0)
    chex.assert_shape(sol.stats.trace, (21,))
    np.testing.assert_allclose(sol.value, 2.0 * np.ones((2, 3)), rtol=1e-5)


# ----------------------------------------------------------------------------------------
# Non-contractive but solvable linear maps: closed forms.


@pytest.mark.parametrize("name", ["broyden", "anderson", "jaxopt_broyden"])
def test_scalar_map_with_slope_minus_two(name):
    """f(z) = −2z + 1 has z* = 1/3; plain iteration diverges from it."""
    solve = solvers.get(name, tol=1e-7, max_iter=50, stop_mode="abs")
    sol = jax.jit(lambda b: solve(lambda z, b: -2.0 * z + b, jnp.zeros(3), b))(jnp.ones(3))
    np.testing.assert_allclose(sol.value, np.full(3, 1 / 3), atol=1e-6)
    assert bool(sol.stats.converged)


@pytest.mark.parametrize("line_search", [False, True])
def test_broyden_on_all_ones_matrix(line_search):
    """f(z) = z W + b with W = ones(3, 3), b = 1: eigenvalue 3, z* = −1/2 everywhere."""
    w = jnp.ones((3, 3))
    solve = solvers.get("broyden", tol=1e-7, stop_mode="abs", line_search=line_search)
    sol = solve(lambda z, w, b: z @ w + b, jnp.zeros((1, 2, 3)), w, jnp.ones(3))
    np.testing.assert_allclose(sol.value, np.full((1, 2, 3), -0.5), atol=1e-6)
    assert bool(sol.stats.converged)


def test_broyden_float64_reaches_tight_tolerance():
    with jax.enable_x64(True):
        a = jnp.array([[1.5, 0.3, 0.0], [0.0, -2.0, 0.4], [0.2, 0.0, 0.5]], jnp.float64)
        b = jnp.array([1.0, -1.0, 0.5], jnp.float64)
        sol = solvers.get("broyden", tol=1e-12, stop_mode="abs", max_iter=60)(
            lambda z: z @ a + b, jnp.zeros(3, jnp.float64)
        )
        exact = np.linalg.solve(np.eye(3) - np.asarray(a).T, np.asarray(b))
        assert sol.value.dtype == jnp.float64
        np.testing.assert_allclose(sol.value, exact, atol=1e-10)


def test_fixed_point_iteration_takes_exactly_k_steps():
    """After k steps plain iteration returns f^k(z0): z_k = 2 − 2^(1−k) for f(z) = z/2 + 1."""
    for k in (1, 3, 6):
        solve = solvers.get("fixed_point", max_iter=k, tol=1e-12, stall_window=0)
        sol = solve(lambda z: 0.5 * z + 1.0, jnp.zeros(2))
        np.testing.assert_allclose(sol.value, np.full(2, 2.0 - 2.0 ** (1 - k)), rtol=1e-6)
        assert int(sol.stats.steps) == k and int(sol.stats.fevals) == k + 1


def test_fixed_point_iteration_fails_gracefully_where_broyden_succeeds():
    solve = solvers.get("fixed_point", tol=1e-6, max_iter=50, stop_mode="abs")
    sol = solve(lambda z: -2.0 * z + 1.0, jnp.zeros(3))
    assert not bool(sol.stats.converged)
    assert bool(jnp.all(jnp.isfinite(sol.value)))
    np.testing.assert_allclose(sol.stats.abs_residual, np.sqrt(3.0))  # z0 stayed the best


# ----------------------------------------------------------------------------------------
# Guards: divergence, stall, non-finite values.


def test_divergence_guard_stops_early_and_returns_best_iterate():
    solve = solvers.get("fixed_point", stop_mode="abs", max_iter=200, divergence_factor=100.0)
    sol = solve(lambda z: 3.0 * z + 1.0, jnp.zeros(2))
    assert int(sol.stats.steps) < 10  # residual grows 3x a step: stops once it is 100x
    np.testing.assert_array_equal(sol.value, np.zeros(2))
    assert not bool(sol.stats.converged)


@pytest.mark.parametrize("name", OURS)
def test_the_stall_guard_fires_at_the_default_settings(name):
    """z ↦ z + 1 has no fixed point and its residual never falls: at the defaults the stall
    window (half of max_iter) stops every method there, before the iteration budget."""
    solve = solvers.get(name)
    assert solve.stopping.stall_window is None and solve.stopping.window < solve.stopping.max_iter
    sol = solve(lambda z: z + 1.0, jnp.zeros(3))
    assert int(sol.stats.reason) == solvers.Reason.STALLED, solvers.explain(sol.stats)
    assert int(sol.stats.steps) == solve.stopping.window < solve.stopping.max_iter
    # The window follows max_iter when only max_iter is given.
    assert solvers.get(name, max_iter=200).stopping.window == 100


def test_stall_guard_fires_on_a_map_without_fixed_point():
    """z ↦ z + 1 never gets closer: the stall window must fire (not wait for max_iter)."""
    shifted = lambda z: z + 1.0  # noqa: E731
    stalled = solvers.get("fixed_point", max_iter=100, stall_window=5, stop_mode="abs")
    assert int(stalled(shifted, jnp.zeros(2)).stats.steps) == 5
    unguarded = solvers.get("fixed_point", max_iter=100, stall_window=0, stop_mode="abs")
    assert int(unguarded(shifted, jnp.zeros(2)).stats.steps) == 100


@pytest.mark.parametrize("name", BUILTIN)
def test_nan_from_f_never_reaches_the_solution(name):
    """f returns NaN away from a neighbourhood of z0: the best finite iterate comes back."""

    def f(z):
        return jnp.where(jnp.abs(z) < 1.5, -3.0 * z + 1.0, jnp.nan)

    sol = jax.jit(lambda z0: solvers.get(name, max_iter=30)(f, z0))(jnp.zeros(4))
    assert bool(jnp.all(jnp.isfinite(sol.value)))
    assert bool(jnp.isfinite(sol.stats.rel_residual))


def test_batch_nan_sample_is_isolated():
    """A sample whose f is NaN does not disturb the other samples of the batch."""
    scale = jnp.array([0.5, jnp.nan, 0.5])[:, None]
    solve = solvers.get("broyden", batch_axis=0, tol=1e-6)
    sol = jax.jit(lambda z0: solve(lambda z: scale * z + 1.0, z0))(jnp.zeros((3, 2)))
    np.testing.assert_array_equal(sol.stats.converged, [True, False, True])
    np.testing.assert_allclose(sol.value[0], [2.0, 2.0], rtol=1e-5)
    assert bool(jnp.all(jnp.isfinite(sol.value)))


def test_fixed_length_matches_while_loop_and_is_differentiable():
    a = jnp.array([[0.3, 0.1], [-0.2, 0.4]])
    common = dict(tol=1e-6, max_iter=60, stop_mode="abs")
    f = lambda z, b: z @ a + b  # noqa: E731
    b = jnp.array([1.0, 2.0])
    for name in ("broyden", "anderson", "jaxopt_anderson"):  # our rules and jaxopt's
        loop_solve = solvers.get(name, **common)
        scan_solve = solvers.get(name, fixed_length=True, **common)
        loop = jax.jit(lambda b: loop_solve(f, jnp.zeros(2), b))(b)  # noqa: B023
        scan = jax.jit(lambda b: scan_solve(f, jnp.zeros(2), b))(b)  # noqa: B023
        np.testing.assert_allclose(loop.value, scan.value, rtol=1e-6)
        np.testing.assert_array_equal(loop.stats.steps, scan.stats.steps)
    # Reverse mode through the iterations: d(sum z*)/db = (I − a)⁻¹ 1, z* = b (I − a)⁻¹.
    solve = solvers.get("broyden", fixed_length=True, **common)
    grad = jax.jit(jax.grad(lambda b: jnp.sum(solve(f, jnp.zeros(2), b).value)))(b)
    exact = np.linalg.solve(np.eye(2) - np.asarray(a), np.ones(2))
    np.testing.assert_allclose(grad, exact, rtol=1e-4)


# ----------------------------------------------------------------------------------------
# Validation at the boundary.


def test_f_changing_a_leaf_shape_is_named():
    f = lambda z: {"a": z["a"], "b": jnp.concatenate([z["b"], z["b"]])}  # noqa: E731
    z0 = {"a": jnp.zeros(2), "b": jnp.zeros(3)}
    with pytest.raises(ValueError, match=r"\['b'\].*\(3,\).*\(6,\)"):
        solvers.get("broyden")(f, z0)


def test_f_changing_dtype_or_structure_is_rejected():
    with pytest.raises(ValueError, match="dtype"):
        solvers.get("anderson")(lambda z: z.astype(jnp.float16), jnp.zeros(3))
    with pytest.raises(TypeError, match="pytree structure"):
        solvers.get("fixed_point")(lambda z: (z, z), jnp.zeros(3))


def test_non_floating_state_is_rejected():
    with pytest.raises(TypeError, match="floating"):
        solvers.get("broyden")(lambda z: z, jnp.zeros(3, jnp.int32))


def test_inconsistent_batch_sizes_are_named():
    z0 = {"h": jnp.zeros((4, 2)), "m": jnp.zeros((3, 2))}
    with pytest.raises(ValueError, match=r"\['m'\].*\(3, 2\)"):
        solvers.get("broyden", batch_axis=0)(lambda z: z, z0)


def test_non_finite_inputs_raise_outside_jit():
    solve = solvers.get("broyden")
    with pytest.raises(ValueError, match="z0.*non-finite"):
        solve(lambda z: 0.5 * z, jnp.array([0.0, jnp.nan]))
    with pytest.raises(ValueError, match=r"args\[1\].*\['w'\].*non-finite"):
        solve(
            lambda z, a, p: 0.5 * z + a * p["w"],
            jnp.zeros(2),
            1.0,
            {"w": jnp.array([jnp.inf, 0.0])},
        )


def test_non_finite_inputs_under_jit_are_flagged_not_raised():
    solve = solvers.get("broyden", batch_axis=0)
    sol = jax.jit(lambda z0, b: solve(lambda z, b: 0.5 * z + b, z0, b))(
        jnp.zeros((2, 3)), jnp.array([[1.0, 1.0, 1.0], [1.0, jnp.nan, 1.0]])
    )
    np.testing.assert_array_equal(sol.stats.converged, [True, False])
    np.testing.assert_allclose(sol.value[0], 2.0 * np.ones(3), rtol=1e-5)
