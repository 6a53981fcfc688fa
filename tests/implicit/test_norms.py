"""Weight normalisation with reset semantics (implicit.norms and each framework's helper).

Independent truths: row norms and singular values in closed form (matrices built from their
SVD), NumPy's SVD, the existing Haiku spectral bound (a second implementation of the
clipped spectral norm), and central finite differences for gradients.
"""

from __future__ import annotations

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
from implicit.haiku import spectral_norm_bound
from implicit.norms import Normalization, NormState, SpectralNorm, WeightNorm, as_norm

W = np.array([[3.0, 4.0], [0.0, 2.0]])  # rows of norm 5 and 2


def known_matrix(singular=(3.0, 2.0, 0.5), shape=(3, 4), seed=0) -> np.ndarray:
    """U diag(s) Vᵀ with orthonormal U and V: its singular values are ``singular``."""
    rng = np.random.RandomState(seed)
    u = np.linalg.qr(rng.randn(shape[0], shape[0]))[0]
    v = np.linalg.qr(rng.randn(shape[1], shape[1]))[0]
    s = np.zeros(shape)
    s[:len(singular), :len(singular)] = np.diag(singular)
    return u @ s @ v.T


def test_weight_norm_is_per_output_row_with_a_fixed_or_learnable_scale():
    params = {"w": jnp.asarray(W), "bias": jnp.ones(2)}
    fixed = Normalization(WeightNorm(learn_scale=False, target=2.0), axis=0)
    out = fixed.apply(params, fixed.init(params))
    np.testing.assert_allclose(out["w"], [[1.2, 1.6], [0.0, 2.0]], rtol=1e-6)
    np.testing.assert_array_equal(out["bias"], params["bias"])  # 1-D: not selected
    learned = Normalization(WeightNorm(), axis=0)
    state = learned.init(params)
    np.testing.assert_allclose(state.scales["['w']"], [5.0, 2.0])  # starts at ‖W_i‖: W itself
    np.testing.assert_allclose(learned.apply(params, state)["w"], W, rtol=1e-6)
    np.testing.assert_allclose(  # the last axis (Haiku's and Flax's output axis) by columns
        Normalization(WeightNorm(learn_scale=False), axis=-1).apply(
            params, NormState({}, {}))["w"], W / np.linalg.norm(W, axis=0), rtol=1e-6)
    clipped = Normalization(WeightNorm(learn_scale=False, target=10.0, clip=1.0), axis=0)
    np.testing.assert_allclose(clipped.apply(params, NormState({}, {}))["w"],
                               W * np.minimum(1.0, 10 / np.array([[5.0], [2.0]])), rtol=1e-6)


def test_spectral_norm_of_a_known_matrix_exact_and_by_power_iteration():
    with jax.enable_x64(True):
        w = jnp.asarray(known_matrix())
        params = {"w": w}
        exact = Normalization(SpectralNorm(exact=True, learn_scale=False, target=0.5), axis=0)
        np.testing.assert_allclose(exact.apply(params, exact.init(params))["w"], w / 6, rtol=1e-12)
        iterated = Normalization(SpectralNorm(learn_scale=False), axis=0)
        apply, reset = jax.jit(iterated.apply), jax.jit(iterated.reset)
        state = iterated.init(params, jax.random.key(0))
        estimates = []
        for _ in range(25):
            estimates.append(float(np.linalg.norm(apply(params, state)["w"], 2)))
            state = reset(params, state)
        # σ̂ ≤ σ, so the normalised norm ≥ 1, falling to 1 at the rate (σ₂/σ₁)² = 4/9 per reset
        assert all(e >= 1 - 1e-12 for e in estimates)
        assert estimates[-1] == pytest.approx(1.0, abs=1e-8)
        assert estimates[8] - 1 < (4 / 9) ** 4 * (estimates[0] - 1) * 10
        learned = Normalization(SpectralNorm(target=2.0, power_iterations=30), axis=0)
        state = learned.init(params, jax.random.key(1))  # init resets once: 30 steps
        np.testing.assert_allclose(state.scales["['w']"], [2.0, 2.0, 2.0])
        np.testing.assert_allclose(np.linalg.norm(learned.apply(params, state)["w"], 2), 2.0,
                                   rtol=1e-8)


@settings(max_examples=8, deadline=None)
@given(shape=st.sampled_from([(3, 5), (6, 6), (8, 2)]), scale=st.floats(0.05, 20.0),
       bound=st.floats(0.2, 5.0), seed=st.integers(0, 2**16))
def test_a_clipped_fixed_spectral_norm_is_the_haiku_bound(shape, scale, bound, seed):
    w = jnp.asarray(scale * np.random.RandomState(seed).randn(*shape), jnp.float32)
    norm = Normalization(SpectralNorm(target=bound, learn_scale=False, clip=1.0, exact=True))
    np.testing.assert_allclose(norm.apply({"w": w}, NormState({}, {}))["w"],
                               spectral_norm_bound(w, bound), rtol=2e-5, atol=1e-6)


def _directional(loss, params, direction, h=1e-6):
    plus = jax.tree_util.tree_map(lambda p, d: p + h * d, params, direction)
    minus = jax.tree_util.tree_map(lambda p, d: p - h * d, params, direction)
    return (loss(plus) - loss(minus)) / (2 * h)


@pytest.mark.parametrize("norm", [WeightNorm(), SpectralNorm(exact=True),
                                  SpectralNorm(power_iterations=50)], ids=repr)
def test_gradients_match_finite_differences(norm):
    with jax.enable_x64(True):
        rng = np.random.RandomState(2)
        w = jnp.asarray(known_matrix(seed=2))
        c = jnp.asarray(rng.randn(*w.shape))
        normalization = Normalization(norm, axis=0)
        state = normalization.init({"w": w}, jax.random.key(0))
        state = normalization.reset({"w": w}, state)  # converged: u is the top vector

        def loss(both):
            params, scales = both
            return jnp.sum(c * normalization.apply(params, NormState(scales, state.vectors))["w"])

        both = ({"w": w}, state.scales)
        direction = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.randn(*a.shape)), both)
        analytic = sum(jnp.sum(g * d) for g, d in zip(
            jax.tree_util.tree_leaves(jax.grad(loss)(both)),
            jax.tree_util.tree_leaves(direction), strict=True))
        # Finite differences with the estimate re-converged at each point (u is a constant
        # of the map; converged, its own derivative does not matter).
        def exact_loss(both):
            params, scales = both
            fresh = normalization.reset(params, NormState(scales, state.vectors))
            return jnp.sum(c * normalization.apply(params, fresh)["w"])

        np.testing.assert_allclose(analytic, _directional(exact_loss, both, direction),
                                   rtol=1e-6)


def test_errors_name_the_norm_the_option_and_the_leaf():
    with pytest.raises(ValueError, match="unknown norm 'batch_norm'.*weight_norm"):
        as_norm("batch_norm")
    with pytest.raises(ValueError, match="'power_iterations'"):
        as_norm("spectral_norm", power_iterations=0)
    with pytest.raises(TypeError, match="'targett'"):
        as_norm("weight_norm", targett=1.0)
    with pytest.raises(ValueError, match="needs a random key"):
        Normalization(SpectralNorm()).init({"w": jnp.ones((2, 2))})
    with pytest.raises(ValueError, match=r"selected leaf \['b'\] of shape \(2,\)"):
        Normalization(WeightNorm(), where=lambda path, leaf: True).init({"b": jnp.ones(2)})
    norm = Normalization(WeightNorm())
    with pytest.raises(ValueError, match="build it with Normalization.init"):
        norm.apply({"w": jnp.ones((2, 2)), "v": jnp.ones((2, 2))},
                   norm.init({"w": jnp.ones((2, 2))}))


# ------------------------------------------------------------------------------------------
# The frameworks: reset re-estimates after the weights change; a normalised block in a DEQ
# (backward="jfb": one cheap compile; the derivative of the solve is tested elsewhere).

OLD = known_matrix((3.0, 1.0), (2, 2), seed=4)
NEW = known_matrix((3.0, 1.0), (2, 2), seed=5)  # other singular vectors
CONVERGED = dict(learn_scale=False, power_iterations=30)  # one reset converges: (1/9)^30


def _sigma(w) -> float:
    return float(np.linalg.norm(np.asarray(w, np.float64), 2))


def test_flax_reset_norm_re_estimates_in_place():
    block = nnx.Linear(2, 2, use_bias=False, rngs=nnx.Rngs(0))
    block.kernel = nnx.Param(jnp.asarray(OLD.T, jnp.float32))  # NNX: (in, out)
    normed = implicit.flax.apply_norm(block, "spectral_norm", rngs=nnx.Rngs(1), **CONVERGED)
    assert not nnx.state(normed, nnx.Param).get("scales")  # a fixed target: no scale
    assert _sigma(normed.normalized_params()["kernel"]) == pytest.approx(1.0, abs=1e-5)
    normed.block.kernel[...] = jnp.asarray(NEW.T, jnp.float32)  # the weights change
    assert abs(_sigma(normed.normalized_params()["kernel"]) - 1) > 1e-3  # a stale estimate
    implicit.flax.reset_norm([normed])  # inside any graph of modules
    assert _sigma(normed.normalized_params()["kernel"]) == pytest.approx(1.0, abs=1e-5)


def test_equinox_reset_norm_returns_the_re_estimated_model():
    linear = eqx.nn.Linear(2, 2, use_bias=False, key=jax.random.key(0))
    linear = eqx.tree_at(lambda m: m.weight, linear, jnp.asarray(OLD, jnp.float32))
    model = [implicit.equinox.apply_norm(linear, "spectral_norm", key=jax.random.key(1),
                                         **CONVERGED)]  # inside any pytree
    assert _sigma(model[0].normalized().weight) == pytest.approx(1.0, abs=1e-5)
    changed = eqx.tree_at(lambda m: m[0].block.weight, model, jnp.asarray(NEW, jnp.float32))
    assert abs(_sigma(changed[0].normalized().weight) - 1) > 1e-3  # a stale estimate
    fresh = implicit.equinox.reset_norm(changed)
    assert _sigma(fresh[0].normalized().weight) == pytest.approx(1.0, abs=1e-5)
    assert abs(_sigma(changed[0].normalized().weight) - 1) > 1e-3  # a new model; the old stays


def test_haiku_re_estimates_at_every_call():
    transform = implicit.haiku.apply_norm("spectral_norm", learn_scale=False)  # 1 step a call
    model = hk.transform_with_state(lambda: transform({"linear": {"w": hk.get_parameter(
        "w", (2, 2), init=jnp.zeros)}}))
    params, state = model.init(jax.random.key(0))
    assert jax.tree_util.tree_map(jnp.shape, state) == {"~": {"linear/w:u": (2,)}}
    apply = jax.jit(model.apply)
    for _ in range(30):
        _, state = apply({"~": {"w": jnp.asarray(OLD.T, jnp.float32)}}, state, None)
    old_u = np.asarray(state["~"]["linear/w:u"], np.float64)
    # The weights change; the next call re-estimates first: one power-iteration step
    # u ← W Wᵀ u / ‖W Wᵀ u‖ for the new W (the (out, in) matrix: NEW), then normalises.
    params = {"~": {"w": jnp.asarray(NEW.T, jnp.float32)}}
    normalised, state = apply(params, state, None)
    u = NEW @ NEW.T @ old_u
    np.testing.assert_allclose(state["~"]["linear/w:u"], u / np.linalg.norm(u), rtol=1e-5)
    v = NEW.T @ u / np.linalg.norm(NEW.T @ u)
    np.testing.assert_allclose(normalised["linear"]["w"], NEW.T / np.linalg.norm(NEW @ v),
                               rtol=1e-5)
    for _ in range(30):
        normalised, state = apply(params, state, None)
    assert _sigma(normalised["linear"]["w"]) == pytest.approx(1.0, abs=1e-5)


class FlaxBlock(nnx.Module):
    def __init__(self, rngs):
        self.w = nnx.Linear(3, 3, use_bias=False, rngs=rngs,
                            kernel_init=nnx.initializers.normal(3.0))  # ‖W‖ ≫ 1

    def __call__(self, z, x):
        return jnp.tanh(self.w(z) + x)


def test_a_normalised_flax_block_in_a_deq_converges_and_trains():
    block = implicit.flax.apply_norm(FlaxBlock(nnx.Rngs(0)), "spectral_norm", target=0.8,
                                     rngs=nnx.Rngs(1), power_iterations=30)
    layer = implicit.flax.DEQ(block, solver="fixed_point", backward="jfb", tol=1e-6,
                              max_iter=100, return_stats=True)
    x = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)

    def loss(layer):
        z, stats = layer(x)
        return jnp.sum(z ** 2), (z, stats)

    @nnx.jit
    def step(layer):
        return nnx.value_and_grad(loss, has_aux=True)(layer)

    (_, (z, stats)), grads = step(layer)
    assert bool(jnp.all(stats.converged))
    kernel = block.normalized_params()["w"]["kernel"]
    np.testing.assert_allclose(_sigma(kernel), 0.8, rtol=1e-5)
    np.testing.assert_allclose(z, jnp.tanh(z @ kernel + x), atol=1e-5)
    state = nnx.state(grads, nnx.Param)  # gradients reach the free weight and the scale
    assert float(jnp.abs(state["block"]["block"]["w"]["kernel"][...]).max()) > 0
    assert float(jnp.abs(state["block"]["scales"]["['w']['kernel']"][...]).max()) > 0


def test_a_normalised_equinox_block_in_a_deq_converges_and_trains():
    class Block(eqx.Module):
        w: eqx.nn.Linear

        def __call__(self, z, x):
            return jnp.tanh(self.w(z) + x)

    linear = eqx.nn.Linear(3, 3, use_bias=False, key=jax.random.key(0))
    linear = eqx.tree_at(lambda m: m.weight, linear, 3.0 * linear.weight)
    block = implicit.equinox.apply_norm(Block(linear), "weight_norm", learn_scale=False,
                                        target=0.5)
    layer = implicit.equinox.DEQ(block, solver="fixed_point", backward="jfb", tol=1e-6,
                                 max_iter=100)
    x = jnp.linspace(-1.0, 1.0, 3)

    def loss(m):
        z = m(x)
        return jnp.sum(z ** 2), z

    (_, z), grads = eqx.filter_jit(eqx.filter_value_and_grad(loss, has_aux=True))(layer)
    weight = block.normalized().w.weight
    np.testing.assert_allclose(np.linalg.norm(weight, axis=1), 0.5, rtol=1e-6)  # per row
    np.testing.assert_allclose(z, jnp.tanh(weight @ z + x), atol=1e-5)
    assert float(jnp.abs(grads.block.block.w.weight).max()) > 0
