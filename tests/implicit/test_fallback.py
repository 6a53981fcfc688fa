"""`Implicit(..., fallback=Phantom(...))`: a backward that never fails silently.

A batch of linear layers `f(z) = sᵢ W z + xᵢ`, one contraction factor `sᵢ` per sample, has
the closed-form adjoint `uᵢ = (I − sᵢ Wᵀ)⁻¹ cᵢ` of `L = Σ cᵢ·zᵢ*`. The backward solve is a
plain fixed-point iteration cut at a few steps: the samples with a small `sᵢ` converge in
them, those with `sᵢ` near 1 do not. With a fallback, the converged samples keep the
exact (implicit) derivative and only the failed ones change, to the fallback mode's own
derivative (`Phantom`, computed as its own mode: `f` is linear, so its derivative does not
depend on where it is linearised). The shared parameter `W` gets the sum of the two. The
same holds per system under `vmap`, and for the tangent in forward mode. Float64; every
program is compiled once per module.
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
    JFB,
    BackwardFallbackWarning,
    BackwardSolveWarning,
    Implicit,
    Phantom,
    Unroll,
    fixed_point,
)

SCALES = (0.1, 0.95, 0.2, 0.9)  # per sample: samples 1 and 3 are the hard ones
HARD = np.array([False, True, False, True])
PHANTOM = Phantom(steps=3, damping=0.5)
FORWARD = {"tol": 1e-13, "max_iter": 1000}
BACKWARD = {"tol": 1e-10, "max_iter": 12}  # enough for s = 0.1 and 0.2, not for 0.9 and 0.95

fast_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


@pytest.fixture(scope="module")
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def data(x64):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 4))
    w, x, c = w / np.linalg.norm(w, 2), rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    return jnp.asarray(w), jnp.asarray(x), jnp.asarray(c), jnp.asarray(SCALES)


def batched(z, w, x, s):
    return s[:, None] * (z @ w.T) + x


def single(z, w, x, s):
    return s * (w @ z) + x


def backward_solver(batch_axis):
    return solvers.get("fixed_point", **BACKWARD, batch_axis=batch_axis)


def loss(w, x, c, s, *, mode, batch_axis=0):
    """``Σ c ⊙ z*`` of a batch (``batch_axis=0``) or of one system (``None``)."""
    f = batched if batch_axis == 0 else single
    forward = solvers.get("fixed_point", **FORWARD, batch_axis=batch_axis)
    return jnp.sum(c * fixed_point(f, jnp.zeros_like(x), w, x, s, solver=forward,
                                   backward=mode).value)


gradient = jax.grad(loss, argnums=(0, 1))
grad = fast_jit(gradient, static_argnames=("mode", "batch_axis"))
REPORTS: list = []
FALLING = Implicit(backward_solver(0), fallback=PHANTOM, monitor=REPORTS.append)


def test_converged_samples_keep_the_exact_gradient_and_failed_ones_take_the_fallback(data):
    w, x, c, s = data
    REPORTS.clear()
    with pytest.warns(BackwardFallbackWarning, match=r"2 of 4 system\(s\)\): their derivative "
                      r"fell back to Phantom\(steps=3, damping=0.5\)"):
        mixed = grad(w, x, c, s, mode=FALLING)
        jax.effects_barrier()
    (report,) = REPORTS
    np.testing.assert_array_equal(report.converged, ~HARD)
    np.testing.assert_array_equal(report.fell_back, HARD)
    assert report.fallback == repr(PHANTOM)

    # Per sample (the gradient in x): exact rows equal the closed form, failed rows Phantom's.
    phantom_w, phantom_x = grad(w, x, c, s, mode=PHANTOM)
    for i, scale in enumerate(SCALES):
        exact = np.linalg.solve(np.eye(4) - scale * np.asarray(w).T, np.asarray(c[i]))
        np.testing.assert_allclose(mixed[1][i], phantom_x[i] if HARD[i] else exact,
                                   rtol=1e-8, atol=1e-12)
    assert not np.allclose(phantom_x[~HARD], mixed[1][~HARD], rtol=1e-3)  # a real change

    # The shared W: the exact gradient of the converged samples' losses plus Phantom's of the
    # failed ones' (each a loss with the other samples' weights set to zero).
    keep = jnp.asarray(~HARD)[:, None]
    exact_part = grad(w, x, jnp.where(keep, c, 0), s, mode=Implicit(backward_solver(0)))[0]
    phantom_part = grad(w, x, jnp.where(keep, 0, c), s, mode=PHANTOM)[0]
    np.testing.assert_allclose(mixed[0], exact_part + phantom_part, rtol=1e-8)

    # Without a fallback the failed samples stay as solved, and say so as before.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = grad(w, x, c, s, mode=Implicit(backward_solver(0)))
        jax.effects_barrier()
    kinds = {w.category for w in caught}
    assert BackwardSolveWarning in kinds and BackwardFallbackWarning not in kinds, kinds
    np.testing.assert_allclose(plain[1][~HARD], mixed[1][~HARD], rtol=1e-12)


def test_per_system_under_vmap_and_in_forward_mode(data):
    w, x, c, s = data
    single_mode = Implicit(backward_solver(None), fallback=PHANTOM)
    with pytest.warns(BackwardFallbackWarning):
        mixed = grad(w, x, c, s, mode=FALLING)
        mapped = fast_jit(jax.vmap(functools.partial(gradient, mode=single_mode, batch_axis=None),
                                   in_axes=(None, 0, 0, 0)))(w, x, c, s)
        jax.effects_barrier()
    np.testing.assert_allclose(mapped[1], mixed[1], rtol=1e-10)  # each system on its own
    np.testing.assert_allclose(jnp.sum(mapped[0], 0), mixed[0], rtol=1e-10)

    @functools.partial(fast_jit, static_argnames="mode")
    def tangent(x_dot, *, mode):
        def solve(x):
            forward = solvers.get("fixed_point", **FORWARD, batch_axis=0)
            return fixed_point(batched, jnp.zeros_like(x), w, x, s, solver=forward,
                               backward=mode).value
        return jax.jvp(solve, (x,), (x_dot,))[1]

    with pytest.warns(BackwardFallbackWarning):
        t_mixed = tangent(c, mode=FALLING)
        jax.effects_barrier()
    t_phantom = tangent(c, mode=PHANTOM)
    for i, scale in enumerate(SCALES):
        exact = np.linalg.solve(np.eye(4) - scale * np.asarray(w), np.asarray(c[i]))
        np.testing.assert_allclose(t_mixed[i], t_phantom[i] if HARD[i] else exact, rtol=1e-8)


def test_the_fallback_is_an_approximate_mode():
    assert Implicit(fallback="jfb") == Implicit(fallback=JFB())
    assert Implicit(fallback="phantom").fallback == Phantom()
    for bad, error in ((Unroll(), TypeError), (Implicit(), TypeError), ("unroll", ValueError)):
        with pytest.raises(error, match="'fallback'"):
            Implicit(fallback=bad)
