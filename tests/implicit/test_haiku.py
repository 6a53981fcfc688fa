"""`implicit.haiku.DEQ` and the seed-style `implicit.deq`.

The linear closed form: with hk.Linear(3) (W = ones(3, 3), b = ones(3)) each row of
z* solves z = z W + b, so every entry is −1/2; for z0 of shape (1, 2, 3) the sum
is −3, and ∂ sum(z*) / ∂W = 1/2 everywhere (∂/∂b = −1).
"""

from __future__ import annotations

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import implicit
import solvers
from implicit import GMRES, Implicit, JacobianPenalty, Phantom, deq
from implicit.haiku import DEQ

X = jnp.ones((1, 2, 3))
ONES = hk.initializers.Constant(1.0)


def linear_block(z, x):
    del x
    return hk.Linear(3, w_init=ONES, b_init=ONES)(z)


def test_linear_closed_form_params_under_the_module_name_and_gradients():
    def forward(x):
        return jnp.sum(DEQ(linear_block, solver="broyden", tol=1e-6)(x, jnp.ones_like(x)))

    model = hk.transform(forward)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), X)
    assert set(params) == {"deq/linear"}
    chex.assert_shape([params["deq/linear"]["w"], params["deq/linear"]["b"]], [(3, 3), (3,)])

    value, grads = jax.jit(jax.value_and_grad(model.apply))(params, None, X)
    np.testing.assert_allclose(value, -3.0, rtol=1e-5)
    np.testing.assert_allclose(grads["deq/linear"]["w"], np.full((3, 3), 0.5), rtol=1e-4)
    np.testing.assert_allclose(grads["deq/linear"]["b"], np.full((3,), -1.0), rtol=1e-4)


def test_seed_style_deq_matches_the_closed_form():
    inner = hk.transform(linear_block)

    def forward(x):
        params = hk.lift(inner.init)(hk.next_rng_key(), x, x)
        return jnp.sum(deq(params, hk.next_rng_key(), jnp.ones_like(x), inner.apply, 30, x,
                           solver="broyden", tol=1e-6))

    model = hk.transform(forward)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), X)
    value, grads = jax.jit(jax.value_and_grad(model.apply))(params, jax.random.PRNGKey(1), X)
    np.testing.assert_allclose(value, -3.0, rtol=1e-5)
    (w_grad,) = [g["w"] for g in grads.values()]
    np.testing.assert_allclose(w_grad, np.full((3, 3), 0.5), rtol=1e-4)


def dropout_block(z, x):
    # Contractive: ‖W‖ small, tanh 1-Lipschitz; the dropout mask needs an rng key.
    h = hk.Linear(4, w_init=hk.initializers.TruncatedNormal(0.1))(z)
    return jnp.tanh(hk.dropout(hk.next_rng_key(), 0.5, h) + x)


def test_one_rng_key_for_the_whole_solve_variational_dropout():
    x = jnp.linspace(-1.0, 1.0, 8).reshape(2, 4)

    def forward(x):
        return DEQ(dropout_block, solver="anderson", return_stats=True, max_iter=60, tol=1e-6)(x)

    model = hk.transform(forward)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    apply = jax.jit(model.apply)
    rng = jax.random.PRNGKey(7)
    z_star, stats = apply(params, rng, x)
    # Converging to 1e-6 needs a fixed map: the same mask at every iteration.
    assert bool(stats.converged), stats
    # It is a fixed point of fn applied with the one key the layer drew.
    key = next(hk.PRNGSequence(rng))
    inner_params = {"linear": params["deq/linear"]}
    again = hk.transform(dropout_block).apply(inner_params, key, z_star, x)
    np.testing.assert_allclose(again, z_star, atol=1e-5)
    z_other, _ = apply(params, jax.random.PRNGKey(8), x)
    assert not np.allclose(z_other, z_star)  # another key, another mask
    with pytest.raises(Exception, match="PRNGKey"):
        model.apply(params, None, x)


def test_stats_state_reuse_and_transform_with_state():
    def forward(x):
        layer = DEQ(lambda z, x: jnp.tanh(hk.Linear(3)(z) * 0.3 + x), solver="fixed_point",
                    record_state=True, max_iter=40)
        return layer(layer(x))  # the same instance twice shares its parameters

    model = hk.transform_with_state(forward)
    params, state = jax.jit(model.init)(jax.random.PRNGKey(0), X)
    assert set(params) == {"deq/linear"}
    assert set(state["deq"]) == set(implicit.haiku.STATS_FIELDS)
    z, state = jax.jit(model.apply)(params, state, None, X)
    chex.assert_shape(z, X.shape)
    assert int(state["deq"]["steps"]) > 0 and bool(state["deq"]["converged"])
    with pytest.raises(ValueError, match="transform_with_state"):
        jax.eval_shape(hk.transform(forward).init, jax.random.PRNGKey(0), X)


def test_solver_and_gradient_mode_are_values_built_once():
    def build():
        layer = DEQ(linear_block, solver="anderson", backward=Implicit(GMRES(tol=1e-7)),
                    max_iter=7, history=3)
        return layer.solver, layer.backward

    solver, backward = hk.transform(build).apply({}, None)
    assert solver == solvers.get("anderson", max_iter=7, history=3)
    assert backward == Implicit(GMRES(tol=1e-7))
    # A Solver value is taken as it is; keyword options change it.
    tight = solvers.get("broyden", tol=1e-9)
    layer = hk.transform(lambda: DEQ(linear_block, solver=tight, max_iter=9).solver).apply({}, None)
    assert layer == tight.replace(max_iter=9) and layer.options["tol"] == 1e-9
    phantom = hk.transform(lambda: DEQ(linear_block, backward="phantom").backward).apply({}, None)
    assert phantom == Phantom()
    with pytest.raises(TypeError, match="valid options"):
        hk.transform(lambda: DEQ(linear_block, max_iters=3)).apply({}, None)
    with pytest.raises(ValueError, match="available solvers"):
        hk.transform(lambda: DEQ(linear_block, solver="newton")).apply({}, None)
    with pytest.raises(ValueError, match="valid backward modes"):
        hk.transform(lambda: DEQ(linear_block, backward="neumann")).apply({}, None)


def test_jacobian_penalty_option_reuses_the_layer_parameters():
    """With ``jacobian_penalty`` the layer also returns ‖∂f/∂z(z*)‖_F² / numel(z*) of its own
    block; for hk.Linear(3) with W = ones that is ‖Wᵀ‖_F² / 3 = 3 per sample row, in
    expectation, and exactly when enough probes are drawn (up to Monte Carlo error)."""

    def forward(x):
        block = lambda z, x: 0.1 * hk.Linear(3, w_init=ONES, b_init=ONES)(z) + x  # noqa: E731
        z, penalty = DEQ(block, jacobian_penalty=JacobianPenalty(num_probes=4000), tol=1e-6)(x)
        return jnp.sum(z), penalty

    model = hk.transform(forward)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), X)
    assert set(params) == {"deq/linear"}
    (_, penalty), grads = jax.jit(jax.value_and_grad(model.apply, has_aux=True))(
        params, jax.random.PRNGKey(1), X
    )
    # J = 0.1 W per row: ‖J‖_F² = 0.01 · 9 per row, 2 rows, numel 6 → 0.03.
    np.testing.assert_allclose(penalty, 0.03, rtol=0.1)
    assert np.all(np.isfinite(grads["deq/linear"]["w"]))


def test_an_integer_input_is_named_before_haiku_initialises_the_block():
    def forward(x):
        return DEQ(lambda z, x: hk.Linear(3)(z) + x)(x)

    with pytest.raises(TypeError, match="DEQ's z0.*int32.*floating point"):
        hk.transform(forward).init(jax.random.PRNGKey(0), jnp.ones((2, 3), jnp.int32))
