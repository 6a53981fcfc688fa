"""`backward=Reversible()`: the exact derivative of the reversible iteration, rebuilt backwards.

The independent truth is `Unroll()` of the same solver: JAX's own reverse (and forward) mode
through the solver's fixed-length loop, which stores every iterate. The two must agree to
float64 round-off (amplified by the rebuild over the steps taken, so the problems here take
a few dozen steps at most), on a batch of pytree states with per-sample stopping, on a
single system under `vmap`, in forward mode, and in the derivative with respect to `z0`.
Programs are jitted once per module with `FAST_COMPILE`; examples of one shape reuse them.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import solvers
from benchmarks.timing import FAST_COMPILE
from implicit import (
    BACKWARD_MODES,
    ReconstructionWarning,
    Reversible,
    Unroll,
    audit_gradient,
    fixed_point,
)
from implicit.testing.layers import pytree_tanh_layer, tanh_layer
from solvers import pytree

fast_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def layer(seed: int, d: int = 5, batch: int = 3, rho: float = 0.5, dtype=np.float64) -> tuple:
    """Parameters of `tanh_layer`, an injection, a nonzero start and a loss weight."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d, d))
    params = {"w": rho * w / np.linalg.norm(w, 2), "u": rng.standard_normal((d, d)) / np.sqrt(d),
              "b": rng.standard_normal(d)}
    shape = (batch, d) if batch else (d,)
    x, z0, c = (rng.standard_normal(shape) for _ in range(3))
    cast = functools.partial(jax.tree_util.tree_map, lambda a: jnp.asarray(a, dtype))
    return cast(params), cast(x), cast(0.3 * z0), cast(c)


def split(z: jax.Array) -> dict:
    """A batch of states as a pytree of two leaves."""
    return {"a": z[..., :2], "b": z[..., 2:]}


def gradients(params, x, z0, c, *, f, solver, mode, steps=False):
    """∂(Σ c ⊙ z*)/∂(params, x, z0) (and the steps of the forward solve with ``steps``)."""

    def loss(params, x, z0):
        solution = fixed_point(f, z0, params, x, solver=solver, backward=mode)
        return sum(jnp.sum(a * b) for a, b in zip(jax.tree_util.tree_leaves(solution.value),
                                                  jax.tree_util.tree_leaves(c), strict=True)
                   ), solution.stats.steps

    grads, taken = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(params, x, z0)
    return (grads, taken) if steps else grads


grads = fast_jit(gradients, static_argnames=("f", "solver", "mode", "steps"))


def relative(a, b) -> float:
    return float(pytree.relative_error(a, b))


BATCHED = solvers.get("reversible", damping=0.5, tol=1e-6, max_iter=60, batch_axis=0)


def test_gradient_equals_unroll_on_a_batch_of_pytrees_with_per_sample_stopping(x64):
    params, x, z0, c = layer(0)
    z0, c = split(z0), split(c)
    kwargs = dict(f=pytree_tanh_layer, solver=BATCHED, steps=True)
    exact, steps = grads(params, x, z0, c, **kwargs, mode=Unroll())
    rebuilt, same = grads(params, x, z0, c, **kwargs, mode=Reversible())
    np.testing.assert_array_equal(steps, same)
    assert len(set(np.asarray(steps).tolist())) > 1, steps  # the samples stop apart
    assert relative(rebuilt[:2], exact[:2]) < 1e-10
    # The iteration starts from z0, so z0 has a derivative too: small, and the same.
    scale = float(pytree.norm(exact))
    assert 0 < float(pytree.norm(exact[2])) < 1e-2 * scale
    assert float(pytree.norm(jax.tree_util.tree_map(jnp.subtract, rebuilt[2], exact[2]))) \
        < 1e-12 * scale


FIXED = solvers.get("reversible", tol=0.0, max_iter=10, stall_window=0)  # β = 0.8, 10 steps


def test_gradient_equals_unroll_on_random_single_systems_under_vmap(x64):
    """Sixteen random layers, contraction factors spread over [0.1, 0.95], each a single
    system (no batch axis), all at once under `vmap`. Ten steps at β = 0.8 rebuilt backwards
    amplify the round-off of some layers' fast directions by up to ~1e6 (the worst of 64 such
    layers is at 4e-10), hence the bound."""
    rng = np.random.default_rng(7)
    layers = [layer(int(seed), batch=0, rho=float(rho))
              for seed, rho in zip(rng.integers(0, 2**31, 16), rng.uniform(0.1, 0.95, 16),
                                   strict=True)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *layers)

    def mapped(mode):
        return fast_jit(jax.vmap(functools.partial(gradients, f=tanh_layer, solver=FIXED,
                                                   mode=mode)))(*stacked)

    exact, rebuilt = mapped(Unroll()), mapped(Reversible())
    errors = jax.vmap(pytree.relative_error)(rebuilt, exact)
    assert float(jnp.max(errors)) < 1e-8 and float(jnp.median(errors)) < 1e-13, errors


def test_forward_mode_equals_unroll(x64):
    params, x, z0, _ = layer(1)
    tangent = jax.tree_util.tree_map(jnp.ones_like, params)

    @functools.partial(fast_jit, static_argnames="mode")
    def jvp(params, tangent, *, mode):
        def value(params):
            return fixed_point(tanh_layer, z0, params, x, solver=BATCHED, backward=mode).value
        return jax.jvp(value, (params,), (tangent,))

    (value, t_exact), (same, t_rebuilt) = jvp(params, tangent, mode=Unroll()), jvp(
        params, tangent, mode=Reversible())
    np.testing.assert_allclose(same, value, rtol=1e-14)
    assert relative(t_rebuilt, t_exact) < 1e-10


def test_audit_measures_the_distance_to_the_implicit_gradient(x64):
    """The reversible gradient is the iteration's; at a tight tolerance the implicit one's."""
    params, x, _, c = layer(2, rho=0.8)

    def loss(params, x, *, solver, backward):
        return jnp.sum(c * fixed_point(tanh_layer, jnp.zeros_like(x), params, x, solver=solver,
                                       backward=backward).value)

    audit = fast_jit(audit_gradient, static_argnames=("loss", "solver", "backward"))(
        loss, params, x, solver=BATCHED, backward="reversible")
    assert 1e-9 < float(audit.relative_error) < 1e-4 and float(audit.cosine) > 1 - 1e-8, audit


def test_float32_rebuild_is_accurate_at_a_tolerance_and_flagged_when_it_is_not():
    """In float32 the rebuild stays accurate when the solve stops at its tolerance; steps
    run after the iteration stalled amplify rounding, which the estimate flags."""
    params, x, z0, c = layer(3, dtype=np.float32)
    reports = []
    mode = Reversible(monitor=reports.append)
    solver = solvers.get("reversible", tol=1e-4, max_iter=100, batch_axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReconstructionWarning)
        rebuilt = grads(params, x, z0, c, f=tanh_layer, solver=solver, mode=mode)
        jax.effects_barrier()
    with jax.enable_x64(True):
        wide = functools.partial(jax.tree_util.tree_map, lambda a: jnp.asarray(a, jnp.float64))
        exact = grads(*wide((params, x, z0, c)), f=tanh_layer, solver=solver, mode=Unroll())
        error = relative(wide(rebuilt[:2]), exact[:2])
    (report,) = reports
    assert error < 1e-4 and report.converged.all() and report.residual.max() < 1e-4, \
        (error, report)

    # 120 steps at β = 0.8, most of them after the iteration stalled: the rebuild overflows.
    stalled = solvers.get("reversible", tol=0.0, max_iter=120, stall_window=0, batch_axis=0)
    reports.clear()
    with pytest.warns(ReconstructionWarning, match="missed its start"):
        result = grads(params, x, z0, c, f=tanh_layer, solver=stalled, mode=mode)
        jax.effects_barrier()
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(result))
    assert not reports[-1].converged.any() and np.isinf(reports[-1].residual).all()


def test_the_mode_implies_its_iteration_and_names_what_it_refuses():
    assert "reversible" in BACKWARD_MODES and "reversible" in solvers.available()
    anderson = solvers.get("anderson", tol=1e-7, batch_axis=0)
    prepared = Reversible().prepare(anderson)
    assert prepared == solvers.get("reversible", tol=1e-7, batch_axis=0)
    assert Reversible(0.3).prepare(anderson).method == solvers.ReversibleFixedPoint(0.3)
    own = solvers.get("reversible", damping=0.6)
    assert Reversible().prepare(own) == own  # damping=None keeps the solver's own β
    with pytest.raises(ValueError, match="fallback"):
        Reversible().prepare(solvers.get("anderson", fallback="fixed_point"))
    with pytest.raises(ValueError, match="damping"):
        Reversible(damping=1.0)
    with pytest.raises(ValueError, match="damping"):
        solvers.ReversibleFixedPoint(damping=0.0)
