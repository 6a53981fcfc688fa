"""The operator-splitting solvers of monotone operator equilibria z* = σ(W z* + c).

Independent truths: for σ = identity the equilibrium is the linear solve (I − W)⁻¹ c, done by
NumPy; for ReLU, both splitting methods from any start and Broyden (a second, unrelated
solver) agree (tests/implicit/test_monotone.py).
The operators are drawn with NumPy's legacy RandomState (stable across versions) and
W = (1 − m) I − AᵀA + B − Bᵀ, so I − W ⪰ m I.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import solvers
from solvers.splitting import (
    ForwardBackward,
    Identity,
    MonotoneOperator,
    PeacemanRachford,
    ReLU,
    as_prox,
    monotone_map,
)

N, BATCH, M = 6, 8, 0.5  # the shapes of tests/implicit/test_monotone.py: one compile each
SPLITTING = ("forward_backward", "peaceman_rachford")


def monotone_w(seed: int = 0, n: int = N, m: float = M, scale: float = 1.0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    a, b = scale * rng.randn(n, n) / np.sqrt(n), scale * rng.randn(n, n) / np.sqrt(n)
    return (1 - m) * np.eye(n) - a.T @ a + b - b.T


def bias(seed: int = 1, shape=(BATCH, N)) -> np.ndarray:
    """c, shifted so that no sample has z* = 0 (where every solver stops at once)."""
    return np.random.RandomState(seed).randn(*shape) + 0.5


TIGHT = {"tol": 1e-10, "max_iter": 4000, "stop_mode": "abs", "batch_axis": 0}


@functools.lru_cache(maxsize=None)
def compiled(name: str, options: tuple):
    solver = solvers.get(name, **{**TIGHT, **dict(options)})
    return jax.jit(lambda z0, op: solver(monotone_map, z0, op))


def solve(name: str, op: MonotoneOperator, z0=None, **options):
    """Solve op's equilibrium from z0 (zeros), compiled once per solver and options (and
    shared with tests/implicit/test_monotone.py)."""
    z0 = jnp.zeros_like(op.bias) if z0 is None else z0
    return compiled(name, tuple(sorted(options.items())))(z0, op)


@pytest.mark.parametrize("name", SPLITTING)
def test_a_linear_equilibrium_is_the_linear_solve(name):
    with jax.enable_x64(True):
        w, c = monotone_w(), bias()
        op = MonotoneOperator(jnp.asarray(w), jnp.asarray(c), "identity")
        sol = solve(name, op)
        expected = np.linalg.solve(np.eye(N) - w, c.T).T  # z = W z + c
        np.testing.assert_allclose(sol.value, expected, rtol=1e-8, atol=1e-9)
        assert bool(jnp.all(sol.stats.converged))
        # one f evaluation per iteration, plus f(z0)
        np.testing.assert_array_equal(sol.stats.fevals, sol.stats.steps + 1)


def test_one_system_and_per_sample_systems_agree():
    with jax.enable_x64(True):
        op = MonotoneOperator(jnp.asarray(monotone_w()), jnp.asarray(bias()))
        per_sample = solve("peaceman_rachford", op)
        whole = jax.vmap(lambda c: solve("peaceman_rachford", MonotoneOperator(op.weight, c),
                                         jnp.zeros(N), batch_axis=None))(op.bias)
        chex.assert_shape(per_sample.stats.steps, (BATCH,))
        chex.assert_shape(whole.stats.steps, (BATCH,))  # one system each, mapped
        np.testing.assert_allclose(whole.value, per_sample.value, atol=1e-8)


def test_forward_backward_needs_a_small_step_and_its_default_is_safe():
    with jax.enable_x64(True):
        op = MonotoneOperator(jnp.asarray(monotone_w()), jnp.asarray(bias()))
        s = jnp.eye(N) - op.weight
        bound = 2 * float(jnp.linalg.eigvalsh((s + s.T) / 2)[0]) / float(jnp.linalg.norm(s, 2)) ** 2
        assert bool(jnp.all(solve("forward_backward", op).stats.converged))
        too_long = solve("forward_backward", op, alpha=20 * bound).stats
        assert not bool(jnp.any(too_long.converged))


def test_a_splitting_method_takes_over_as_a_fallback():
    with jax.enable_x64(True):
        w = monotone_w(seed=3, scale=2.0)  # I − W ⪰ m I still; W is far from a contraction
        op = MonotoneOperator(jnp.asarray(w), jnp.asarray(bias()))
        plain = solve("fixed_point", op).stats
        assert not bool(jnp.any(plain.converged))
        rescued = solve("fixed_point", op, fallback="peaceman_rachford").stats
        assert bool(jnp.all(rescued.converged)), solvers.explain(rescued)


def test_the_registry_lists_them_apart():
    assert set(SPLITTING) <= set(solvers.available())
    assert not set(SPLITTING) & set(solvers.available(general=True))
    assert solvers.get("peaceman_rachford", alpha=2.0).method == PeacemanRachford(alpha=2.0)
    assert solvers.get("forward_backward").method == ForwardBackward(alpha=None)
    with pytest.raises(ValueError, match="'alpha'"):
        solvers.get("peaceman_rachford", alpha=0.0)
    assert as_prox("relu") == ReLU() and as_prox(Identity()) == Identity()
    with pytest.raises(ValueError, match="unknown nonlinearity 'tanh'"):
        as_prox("tanh")


def test_a_problem_without_its_operator_is_refused_with_a_reason():
    solve_pr = solvers.get("peaceman_rachford")
    with pytest.raises(TypeError, match="MonotoneOperator among the arguments.*found none"):
        solve_pr(lambda z: 0.5 * z, jnp.zeros(3))
    op = MonotoneOperator(jnp.eye(3) * 0.5, jnp.ones(3))
    with pytest.raises(ValueError, match="found 2"):
        solve_pr(lambda z, a, b: a(z), jnp.zeros(3), op, op)
    with pytest.raises(ValueError, match=r"W must be \(4, 4\)"):
        solve_pr(monotone_map, jnp.zeros(4), op)
    with pytest.raises(ValueError, match="does not broadcast"):
        solve_pr(monotone_map, jnp.zeros(3), MonotoneOperator(op.weight, jnp.ones(2)))
    with pytest.raises(ValueError, match="one array"):
        solve_pr(lambda z, op: {"a": op(z["a"]), "b": z["b"]},
                 {"a": jnp.zeros(3), "b": jnp.zeros(3)}, op)
