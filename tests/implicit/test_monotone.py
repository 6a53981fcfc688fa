"""The monotone operator equilibrium layer (monDEQ, Winston & Kolter 2020):
z* = ReLU(W z* + U x + b) with W = (1 − m) I − AᵀA + B − Bᵀ.

Independent truths: the symmetric part of I − W in closed form (m I + AᵀA); a second solver
(Broyden) for the equilibrium; finite differences and forward-against-reverse mode
(``implicit.testing.check_fixed_point_grads``) for its gradients; and the same parameters in
the three frameworks giving the same z*, and the one-step gradient of its closed form. Parameters come
from NumPy's legacy RandomState (stable across versions).
"""

from __future__ import annotations

import functools
import inspect

import equinox as eqx
import haiku as hk
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings

import implicit.equinox
import implicit.flax
import implicit.haiku
import solvers
from implicit import GMRES, BiCGStab, Correction, Implicit
from implicit.monotone import Monotone, monotone_weight, monotonicity
from implicit.testing import check_fixed_point_grads
from solvers.splitting import MonotoneOperator, monotone_map
from tests.implicit.test_layer_signature import OWN, SHARED
from tests.solvers.test_splitting import BATCH, TIGHT, M, N, solve

D = 4
LAYERS = {implicit.haiku.DEQ: implicit.haiku.MonDEQ, implicit.flax.DEQ: implicit.flax.MonDEQ,
          implicit.equinox.DEQ: implicit.equinox.MonDEQ}


def parameters(seed: int = 0, skew: float = 1.5) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    return {"a": rng.randn(N, N) / np.sqrt(N), "b": skew * rng.randn(N, N) / np.sqrt(N),
            "u": rng.randn(N, D) / np.sqrt(D), "bias": 0.1 * rng.randn(N)}


def inputs(seed: int = 1) -> np.ndarray:
    return np.random.RandomState(seed).randn(BATCH, D)


def operator(dtype=jnp.float64) -> MonotoneOperator:
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), parameters())
    return Monotone(m=M).operator(params, jnp.asarray(inputs(), dtype))


@settings(max_examples=15, deadline=None)
@given(scale=st.floats(0.01, 10.0), m=st.floats(0.01, 2.0), seed=st.integers(0, 2**16))
def test_i_minus_w_is_strongly_monotone_for_any_parameters(scale, m, seed):
    rng = np.random.RandomState(seed)
    a, b = scale * rng.randn(3, N), scale * rng.randn(N, N)
    with jax.enable_x64(True):
        w = np.asarray(monotone_weight(jnp.asarray(a), jnp.asarray(b), m))
        s = np.eye(N) - w
        np.testing.assert_allclose((s + s.T) / 2, m * np.eye(N) + a.T @ a,
                                   atol=1e-12 * (1 + scale ** 2))
        assert float(monotonicity(jnp.asarray(w))) >= m - 1e-9 * (1 + scale ** 2)


def test_the_equilibrium_is_unique_whatever_the_start_and_the_solver():
    with jax.enable_x64(True):
        op = operator()
        reference = solve("broyden", op)
        assert bool(jnp.all(reference.stats.converged))
        np.testing.assert_allclose(op(reference.value), reference.value, atol=1e-10)
        rng = np.random.RandomState(5)
        starts = [jnp.zeros((BATCH, N)), jnp.asarray(10 * rng.randn(BATCH, N)),
                  jnp.asarray(np.full((BATCH, N), -4.0)),  # not weakly typed: no recompile
                  jnp.asarray(100 * rng.rand(BATCH, N))]
        for name in ("peaceman_rachford", "forward_backward"):
            for z0 in starts:
                sol = solve(name, op, z0)
                assert bool(jnp.all(sol.stats.converged)), (name, solvers.explain(sol.stats))
                np.testing.assert_allclose(sol.value, reference.value, atol=1e-8)


def test_it_converges_where_an_unconstrained_layer_of_the_same_size_diverges():
    with jax.enable_x64(True):
        op = operator()
        rng = np.random.RandomState(0)
        g = rng.randn(N, N)
        # The unconstrained layer: a free W0 with the same spectral norm as the monDEQ's W.
        w0 = jnp.asarray(g * float(jnp.linalg.norm(op.weight, 2)) / np.linalg.norm(g, 2))
        free = MonotoneOperator(w0, op.bias)
        np.testing.assert_allclose(jnp.linalg.norm(w0, 2), jnp.linalg.norm(op.weight, 2))
        assert float(jnp.linalg.norm(op.weight, 2)) > 2  # W itself is no contraction
        assert float(monotonicity(op.weight)) >= M - 1e-12 and float(monotonicity(w0)) < 0
        for name in ("peaceman_rachford", "fixed_point"):
            constrained, unconstrained = solve(name, op).stats, solve(name, free).stats
            if name == "peaceman_rachford":
                assert bool(jnp.all(constrained.converged)), solvers.explain(constrained)
            else:  # plain iteration fails on the monDEQ too: only the splitting is guaranteed
                assert not bool(jnp.any(constrained.converged)), solvers.explain(constrained)
            assert not bool(jnp.any(unconstrained.converged)), solvers.explain(unconstrained)
            reasons = set(np.asarray(unconstrained.reason).tolist())
            assert reasons <= {solvers.Reason.DIVERGED, solvers.Reason.STALLED,
                               solvers.Reason.NONFINITE, solvers.Reason.MAX_ITER}


def test_gradients_through_the_splitting_solve_match_finite_differences():
    # The implicit function theorem at the splitting solve's z*, in both modes; the tangent
    # and adjoint equations by a Krylov method, as in the layers (BiCGStab compiles faster
    # than their GMRES).
    with jax.enable_x64(True):
        op = operator()
        solver = solvers.get("peaceman_rachford", **TIGHT)
        report = check_fixed_point_grads(
            monotone_map, jnp.zeros((BATCH, N)), op, solver=solver,
            backward=Implicit(BiCGStab()), unroll_steps=0, max_directions=4)
        assert report.forward_converged
        report.assert_close(1e-6)


def test_the_backward_of_a_splitting_forward_is_gmres_unless_told():
    block = eqx.filter_eval_shape(implicit.equinox.MonotoneBlock, D, N, key=jax.random.key(0))
    layer = implicit.equinox.MonDEQ
    assert layer(block, solver="peaceman_rachford").backward == Implicit(GMRES())
    assert layer(block, solver="broyden", fallback="forward_backward").backward == (
        Implicit(GMRES()))
    assert layer(block).backward == Implicit()
    assert layer(block, solver="peaceman_rachford", backward=Implicit("anderson")).backward == (
        Implicit("anderson"))
    assert layer(block, solver="forward_backward", backward="jfb").backward == (
        implicit.JFB())
    assert "peaceman_rachford" not in implicit.backward_solvers()
    with pytest.raises(ValueError, match="peaceman_rachford' solves monotone operator"):
        Implicit("peaceman_rachford")  # the tangent and adjoint equations have no operator


@pytest.mark.parametrize("deq", list(LAYERS), ids=lambda c: c.__module__)
def test_the_monotone_layers_take_the_deq_signature(deq):
    mon = LAYERS[deq]
    mine = list(inspect.signature(mon.__init__).parameters.values())[1:]
    theirs = list(inspect.signature(deq.__init__).parameters.values())[1:]
    assert mine[0].name == "block" and mine[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert [(p.name, p.kind, p.default) for p in mine[1:]] == [
        (p.name, p.kind, p.default) for p in theirs[1:]]
    assert [p.name for p in mine[1:-1]] == SHARED + OWN[deq]


def test_bad_blocks_and_settings_are_named():
    with pytest.raises(TypeError, match="needs an implicit.equinox.MonotoneBlock"):
        implicit.equinox.MonDEQ(lambda z, x: z)
    with pytest.raises(ValueError, match="'m'"):
        Monotone(m=0.0)
    with pytest.raises(ValueError, match="unknown nonlinearity"):
        Monotone(nonlinearity="tanh")
    params = jax.tree_util.tree_map(jnp.asarray, parameters())
    with pytest.raises(ValueError, match="'u' has shape"):
        Monotone().operator(params, jnp.zeros((2, D + 1)))


# ------------------------------------------------------------------------------------------
# The three frameworks, in float64, with the same parameters: the same z* (against Broyden,
# a second solver), and the gradient that reaches each parameter through each framework's
# plumbing. The exact derivative of the solve is checked above (check_fixed_point_grads);
# here backward="jfb" keeps one cheap compile per framework, against its closed form: the
# gradient of ⟨c, σ(W z* + U x + b)⟩ with z* held fixed.

LAYER = dict(solver="peaceman_rachford", backward="jfb", return_stats=True, **TIGHT)
NAMES = ("a", "b", "u", "bias")


def _projection() -> jax.Array:
    return jnp.asarray(np.random.RandomState(9).randn(BATCH, N))


def _values() -> tuple:
    return tuple(jnp.asarray(parameters()[name]) for name in NAMES)


def _reference() -> jax.Array:
    return solve("broyden", operator()).value


def _check_value(z, stats):
    assert bool(jnp.all(stats.converged)), solvers.explain(stats)
    np.testing.assert_allclose(z, _reference(), atol=1e-9)


@functools.lru_cache(maxsize=None)
def _one_step_gradient() -> dict:
    """∂/∂θ ⟨c, σ(W z* + U x + b)⟩ at the fixed z*: the one-step (JFB) gradient."""
    z_star, x = _reference(), jnp.asarray(inputs())
    params = dict(zip(NAMES, _values(), strict=True))
    return jax.jit(jax.grad(
        lambda p: jnp.sum(_projection() * Monotone(m=M)(z_star, p, x))))(params)


def _check_gradients(grads, scale=None):
    reference = _one_step_gradient()
    for name in NAMES:
        expected = reference[name] * (scale or {}).get(name, 1.0)
        np.testing.assert_allclose(grads[name], expected, rtol=1e-7, atol=1e-10)


def test_equinox_monotone_layer():
    with jax.enable_x64(True):
        shapes = eqx.filter_eval_shape(implicit.equinox.MonotoneBlock, D, N, m=M,
                                       key=jax.random.key(0))
        block = eqx.tree_at(lambda b: tuple(getattr(b, n) for n in NAMES), shapes, _values())
        layer = implicit.equinox.MonDEQ(block, **LAYER)
        x = jnp.asarray(inputs())

        def loss(layer):
            z, stats = layer(x)
            return jnp.sum(_projection() * z), (z, stats)

        (_, (z, stats)), grads = eqx.filter_jit(eqx.filter_value_and_grad(loss, has_aux=True))(
            layer)
        _check_value(z, stats)
        _check_gradients(grads.block.params())


def test_flax_monotone_layer_with_the_correction_states():
    with jax.enable_x64(True):
        block = nnx.eval_shape(lambda: implicit.flax.MonotoneBlock(D, N, m=M, rngs=nnx.Rngs(0)))
        for name, value in zip(NAMES, _values(), strict=True):
            setattr(block, name, nnx.Param(value))  # float64, as the others
        layer = implicit.flax.MonDEQ(block, correction=Correction(states=2), **LAYER)
        x = jnp.asarray(inputs())

        @nnx.jit
        def step(layer):
            def loss(layer):
                z, stats, states = layer(x)
                return jnp.sum(_projection() * z), (z, stats, states)

            return nnx.value_and_grad(loss, has_aux=True)(layer)

        (_, (z, stats, states)), grads = step(layer)
        _check_value(z, stats)
        _check_gradients({name: getattr(grads.block, name)[...] for name in NAMES})
        # The states of iterations 0 and max_iter/2 of the one solve, one step on: Φ(z0) =
        # σ(U x + b) from z0 = 0, and the solution itself (the solve stopped before).
        assert states.shape == (2, BATCH, N)
        np.testing.assert_allclose(states[0], operator()(jnp.zeros((BATCH, N))), atol=1e-12)
        np.testing.assert_allclose(states[1], z, atol=1e-9)


def test_haiku_monotone_layer_with_transform_params():
    with jax.enable_x64(True):
        x = jnp.asarray(inputs())

        def double_a(params):  # the stored A is half the one used
            return {m: {**p, "a": 2 * p["a"]} for m, p in params.items()}

        def forward(x):
            return implicit.haiku.MonDEQ(implicit.haiku.MonotoneBlock(N, m=M),
                                         transform_params=double_a, record_state=True,
                                         **LAYER)(x)

        model = hk.transform_with_state(forward)
        shapes, state = jax.eval_shape(model.init, jax.random.key(0), x)
        assert jax.tree_util.tree_map(jnp.shape, shapes) == {"monotone_block": {
            "a": (N, N), "b": (N, N), "u": (N, D), "bias": (N,)}}
        values = dict(zip(NAMES, _values(), strict=True))
        params = {"monotone_block": {**values, "a": values["a"] / 2}}
        state = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), state)

        def loss(params):
            (z, stats), state_out = model.apply(params, state, None, x)
            return jnp.sum(_projection() * z), (z, stats, state_out)

        (_, (z, stats, state_out)), grads = jax.jit(
            jax.value_and_grad(loss, has_aux=True))(params)
        _check_value(z, stats)
        _check_gradients(grads["monotone_block"], scale={"a": 2.0})
        np.testing.assert_array_equal(state_out["mon_deq"]["steps"], stats.steps)
