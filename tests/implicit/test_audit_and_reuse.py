"""The gradient audit, the reuse of the forward inverse in the adjoint (SHINE), the monitor of
backward solves, and the warning for differentiating an unconverged forward solve."""

from __future__ import annotations

import functools
import warnings

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import solvers
from implicit import (
    JFB,
    ForwardSolveWarning,
    Implicit,
    audit_gradient,
    fixed_point,
    reference_configuration,
)
from implicit.testing import Layer
from implicit.testing.layers import tanh_layer


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def layer_loss(params, x, *, solver, backward):
    """⟨1, z*⟩ for the batched layer z = tanh(z Wᵀ + x Uᵀ + b)."""
    def f(z, params, x):
        return jnp.tanh(z @ params["w"].T + x @ params["u"].T + params["b"])

    return jnp.sum(fixed_point(f, jnp.zeros_like(x), params, x, solver=solver,
                               backward=backward).value)


def random_layer(seed: int, d: int = 6, rho: float = 0.9) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d, d))
    params = {"w": rho * w / np.linalg.norm(w, 2),
              "u": rng.standard_normal((d, d)) / np.sqrt(d),
              "b": rng.standard_normal(d)}
    return params, rng.standard_normal((4, d))


def test_audit_is_one_for_a_converged_implicit_mode_and_below_for_jfb(x64):
    params, x = random_layer(0)
    solver = solvers.get("broyden", tol=1e-10, stop_mode="abs", max_iter=100, batch_axis=0)
    audit = jax.jit(audit_gradient, static_argnames=("loss", "solver", "backward"))
    exact = audit(layer_loss, params, x, solver=solver, backward="implicit")
    assert float(exact.cosine) > 1 - 1e-9 and float(exact.relative_error) < 1e-7, exact
    jfb = audit(layer_loss, params, x, solver=solver, backward=JFB())
    assert float(jfb.cosine) < 0.99 and float(jfb.relative_error) > 0.05, jfb
    # The reference is an independent, tight configuration of the same kind.
    tight, mode = reference_configuration(solver, dtype=jnp.float64)
    assert tight.name == "broyden" and tight.options["tol"] == 1e-12
    assert mode == Implicit(tight)


REPORTS: list = []  # what the monitor of the adjoint solves below received


@functools.partial(jax.jit, static_argnames=("f", "batched", "reuse"))
def _gradient(args, z0, c, *, f, batched, reuse):
    solve = solvers.get("broyden", tol=1e-12, stop_mode="abs", max_iter=200, history=10,
                        batch_axis=0 if batched else None)
    backward = Implicit(reuse_inverse=reuse, monitor=REPORTS.append)

    def loss(args):
        value = fixed_point(f, z0, *args, solver=solve, backward=backward).value
        return sum(jnp.sum(a * b) for a, b in zip(jax.tree_util.tree_leaves(value),
                                                  jax.tree_util.tree_leaves(c), strict=True))

    return jax.grad(loss)(args)


def adjoint_steps(layer, reuse: bool) -> tuple[object, int]:
    """The gradient of ⟨c, z*⟩ and the adjoint iterations it took (from the monitor)."""
    REPORTS.clear()
    c = jax.tree_util.tree_map(lambda z: jnp.linspace(-1.0, 1.0, z.size).reshape(z.shape),
                               layer.z0)
    grad = _gradient(layer.args, layer.z0, c, f=layer.f,
                     batched=bool(layer.solver_options), reuse=reuse)
    jax.effects_barrier()
    (report,) = REPORTS
    assert np.all(report.converged), report
    return grad, int(np.sum(report.steps))


def _layer(seed: int, rho: float, batched: bool) -> Layer:
    params, x = random_layer(seed, rho=rho)
    return Layer(tanh_layer, np.zeros(x.shape if batched else x.shape[1:]),
                 (params, x if batched else x[0]), {"batch_axis": 0} if batched else {}, rho)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), rho=st.floats(0.7, 0.95), batched=st.booleans())
def test_reusing_the_forward_inverse_gives_the_same_gradient(seed, rho, batched):
    """On random tanh layers with a non-trivial input (so the forward solve learns
    something), the adjoint started from the forward inverse gives the same gradient, to
    1e-6 in float64."""
    with jax.enable_x64(True):
        layer = _layer(seed, rho, batched)
        plain, _ = adjoint_steps(layer, reuse=False)
        shared, _ = adjoint_steps(layer, reuse=True)
    for a, b in zip(jax.tree_util.tree_leaves(shared), jax.tree_util.tree_leaves(plain),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("batched", [False, True])
def test_reusing_the_forward_inverse_takes_fewer_adjoint_steps(batched):
    """On three fixed random layers, the adjoint started from the forward inverse takes
    fewer Broyden iterations than the one started from −I (a single layer can tie)."""
    with jax.enable_x64(True):
        for seed in range(3):
            layer = _layer(seed, 0.85, batched)
            _, plain_steps = adjoint_steps(layer, reuse=False)
            _, shared_steps = adjoint_steps(layer, reuse=True)
            assert shared_steps < plain_steps, (seed, shared_steps, plain_steps)


def test_reuse_needs_two_broyden_solves_when_insisted_on():
    params, x = random_layer(1)
    with pytest.raises(ValueError, match="reuse_inverse=True"):
        jax.grad(layer_loss)(params, x, solver=solvers.get("anderson", batch_axis=0),
                             backward=Implicit(reuse_inverse=True))


def test_differentiating_an_unconverged_forward_solve_warns_and_solving_alone_does_not():
    params, x = random_layer(2)
    short = solvers.get("broyden", max_iter=2, tol=1e-6, batch_axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer_loss(params, x, solver=short, backward="implicit")  # no derivative: no warning
        jax.effects_barrier()
    for backward in (Implicit(short.replace(max_iter=100)), "phantom", "jfb"):
        with pytest.warns(ForwardSolveWarning, match="forward solve with 'broyden'"):
            jax.jit(jax.grad(layer_loss), static_argnames=("solver", "backward"))(
                params, x, solver=short, backward=backward)
            jax.effects_barrier()
    converged = solvers.get("broyden", max_iter=100, tol=1e-5, batch_axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.grad(layer_loss)(params, x, solver=converged, backward="implicit")
        jax.effects_barrier()
