"""The fixed-point correction from the one forward solve: recorded iterates, their
derivatives, the loss, against closed forms (float64) and the solver's own trajectory."""

from __future__ import annotations

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import implicit
import solvers
from implicit import JFB, Correction, Phantom, correction_states, fixed_point_correction_loss


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _linear_problem(seed: int = 2, n: int = 4):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    a *= 0.6 / np.linalg.norm(a, 2)
    return jnp.asarray(a), jnp.asarray(rng.standard_normal(n))


def linear(z, a, b):
    return a @ z + b


def test_recorded_states_are_the_iterates_of_plain_iteration(x64) -> None:
    """``z_k = A z_{k−1} + b`` from ``z0``: the closed form of the iterates; a count
    beyond the solve's stop gives the solution."""
    a, b = _linear_problem()
    solve = solvers.get("fixed_point", max_iter=60, tol=1e-12, record=(0, 1, 3, 60))
    sol = solve(linear, jnp.ones(4), a, b)
    z, iterates = np.ones(4), [np.ones(4)]
    for _ in range(3):
        z = np.asarray(a) @ z + np.asarray(b)
        iterates.append(z)
    np.testing.assert_allclose(sol.states[:3], np.stack([iterates[0], iterates[1], iterates[3]]),
                               rtol=1e-13)
    assert int(sol.stats.steps) < 60
    np.testing.assert_array_equal(sol.states[3], sol.value)


@pytest.mark.parametrize("name", ["anderson", "broyden"])
def test_recorded_states_are_the_solvers_own_iterates(name) -> None:
    """Per sample (``batch_axis=0``) and for a pytree state, the state recorded after ``k``
    iterations is the iterate a solve truncated to ``k`` iterations ends at (no early stop,
    so the truncated solve's best iterate is its last: the residual falls monotonically on
    this contraction), and samples are not coupled."""
    rng = np.random.default_rng(0)
    w = jnp.asarray(0.3 * rng.standard_normal((6, 6)) / np.sqrt(6))
    x = {"a": jnp.asarray(rng.standard_normal((5, 4))), "b": jnp.asarray(rng.standard_normal((5, 2)))}

    def f(z, w, x):
        joined = jnp.concatenate([z["a"], z["b"]], axis=1)
        out = jnp.tanh(joined @ w.T + jnp.concatenate([x["a"], x["b"]], axis=1))
        return {"a": out[:, :4], "b": out[:, 4:]}

    z0 = jax.tree_util.tree_map(jnp.zeros_like, x)
    solve = solvers.get(name, max_iter=12, tol=1e-7, batch_axis=0, record=(2, 4))
    sol = jax.jit(lambda w, x: solve(f, z0, w, x))(w, x)
    chex.assert_shape([sol.states["a"], sol.states["b"]], [(2, 5, 4), (2, 5, 2)])
    for j, k in enumerate((2, 4)):
        truncated = solvers.get(name, max_iter=k, tol=0.0, batch_axis=0)(f, z0, w, x)
        for leaf in ("a", "b"):
            np.testing.assert_allclose(sol.states[leaf][j], truncated.value[leaf], atol=1e-6)
    one = solvers.get(name, max_iter=12, tol=1e-7, batch_axis=0, record=(2, 4))(
        f, jax.tree_util.tree_map(lambda leaf: leaf[:1], z0), w,
        jax.tree_util.tree_map(lambda leaf: leaf[:1], x))
    np.testing.assert_allclose(one.states["a"][:, 0], sol.states["a"][:, 0], atol=1e-6)


def test_record_options_are_checked() -> None:
    with pytest.raises(ValueError, match="beyond max_iter=10"):
        solvers.get("anderson", max_iter=10, record=(0, 11))
    with pytest.raises(ValueError, match="'record'"):
        solvers.get("anderson", record=(-1,))
    with pytest.raises(ValueError, match="'states'"):
        Correction(states=0)
    assert Correction(states=3).iterations(16) == (0, 5, 10)
    assert Correction(states=(0, 7)).iterations(16) == (0, 7)
    assert solvers.get("anderson").replace(record=(1,)).record == (1,)


def test_the_solve_runs_once_with_a_correction() -> None:
    """Recording states adds no evaluation of ``f``: the same count as without, and as the
    forward statistics report; the correction's one step per state is all it adds."""
    a, b = _linear_problem()
    calls = []

    def counted(z, a, b):
        jax.debug.callback(lambda: calls.append(1))
        return linear(z, a, b)

    def run(correction):
        calls.clear()
        sol = implicit.fixed_point(counted, jnp.zeros(4), a, b, solver="anderson",
                                   solver_options=dict(max_iter=30, tol=1e-6),
                                   correction=correction)
        jax.effects_barrier()
        return sol, len(calls)

    plain, plain_calls = run(None)
    recorded, recorded_calls = run(Correction(states=2))
    assert plain.states is None and recorded.states is not None
    assert recorded_calls == plain_calls == int(plain.stats.fevals)
    images = correction_states(counted, recorded, a, b)
    jax.effects_barrier()
    assert len(calls) == recorded_calls + 1  # one step from the states, mapped over them
    np.testing.assert_allclose(images, jax.vmap(lambda z: linear(z, a, b))(recorded.states),
                               rtol=1e-6)


def test_correction_loss_and_gradients_match_their_definition(x64) -> None:
    """``L = ℓ(z*) + Σⱼ γ^(K+1−j) ℓ(A z_{kⱼ} + b)`` with ``z_{kⱼ}`` held fixed: its value and
    gradients in closed form (``∂ℓ/∂z* `` through ``(I − A)⁻¹`` for the final term)."""
    a, b = _linear_problem()
    y = jnp.ones(4)

    def loss_fn(z):
        return 0.5 * jnp.sum((z - y) ** 2)

    def loss(a, b):
        sol = implicit.fixed_point(linear, jnp.zeros(4), a, b, solver="fixed_point",
                                   solver_options=dict(max_iter=200, tol=1e-13),
                                   correction=Correction(states=(0, 1, 2)))
        return fixed_point_correction_loss(linear, sol, a, b, loss_fn=loss_fn, gamma=0.5)

    value, (grad_a, grad_b) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(a, b)
    a, b, y = map(np.asarray, (a, b, y))
    states, z = [], np.zeros(4)
    for _ in range(3):
        states.append(z)
        z = a @ z + b
    z_star = np.linalg.solve(np.eye(4) - a, b)
    weights = [0.125, 0.25, 0.5]  # γ^(K+1−j), j = 1..3
    residuals = [a @ s + b - y for s in states]
    expected = 0.5 * (z_star - y) @ (z_star - y) + sum(
        w * 0.5 * r @ r for w, r in zip(weights, residuals, strict=True))
    np.testing.assert_allclose(value, expected, rtol=1e-10)
    u = np.linalg.solve((np.eye(4) - a).T, z_star - y)  # the adjoint of the final term
    np.testing.assert_allclose(grad_b, u + sum(w * r for w, r in zip(weights, residuals,
                                                                      strict=True)), rtol=1e-9)
    np.testing.assert_allclose(
        grad_a, np.outer(u, z_star) + sum(w * np.outer(r, s) for w, r, s in
                                          zip(weights, residuals, states, strict=True)),
        rtol=1e-9, atol=1e-12)


def test_phantom_states_differentiate_damped_steps(x64) -> None:
    """With ``Phantom(2, λ)`` a state's image is two damped steps from it, differentiated
    through both: against the closed form of the two steps on a linear map."""
    a, b = _linear_problem()
    z_k = jnp.asarray(np.random.default_rng(5).standard_normal(4))
    mode = Phantom(steps=2, damping=0.5)

    def image_sum(b):
        return jnp.sum(correction_states(linear, z_k[None], a, b, mode=mode))

    lam, an, bn = 0.5, np.asarray(a), np.asarray(b)
    step = (1 - lam) * np.eye(4) + lam * an
    expected_image = step @ (step @ np.asarray(z_k) + lam * bn) + lam * bn
    np.testing.assert_allclose(correction_states(linear, z_k[None], a, b, mode=mode)[0],
                               expected_image, rtol=1e-12)
    np.testing.assert_allclose(jax.grad(image_sum)(b), lam * (step.T @ np.ones(4)) + lam,
                               rtol=1e-12)
    assert JFB() == Correction().mode


def test_the_haiku_layer_returns_correction_states_with_gradients() -> None:
    """``implicit.haiku.DEQ(..., correction=Correction(states=2))`` appends the states
    ``f(z_{kⱼ})`` (here ``k = 0, 15``): the first is one application of the block to
    ``z0 = 0``, and they carry gradients to the block's parameters."""

    def forward(x):
        block = lambda z, x: jnp.tanh(hk.Linear(4, name="lin")(z) + x)  # noqa: E731
        return implicit.haiku.DEQ(block, solver="anderson", max_iter=30, tol=1e-6,
                                  batch_axis=0, correction=Correction(states=2))(x)

    model = hk.without_apply_rng(hk.transform(forward))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 4)), jnp.float32)
    params = model.init(jax.random.key(0), x)
    z_star, states = model.apply(params, x)
    chex.assert_shape(states, (2, 3, 4))
    b = params["deq/lin"]["b"]
    np.testing.assert_allclose(states[0], jnp.tanh(b + x), atol=1e-6)  # f(0) = tanh(b + x)
    np.testing.assert_allclose(states[1], z_star, atol=1e-5)  # past the stop: f(z*) ≈ z*
    grads = jax.grad(lambda p: jnp.sum(model.apply(p, x)[1][0]))(params)
    np.testing.assert_allclose(grads["deq/lin"]["b"], jnp.sum(1 - jnp.tanh(b + x) ** 2, 0),
                               rtol=1e-5)
