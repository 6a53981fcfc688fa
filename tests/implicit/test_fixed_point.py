"""`implicit.fixed_point`: closed forms, gradient modes, transformations, errors.

Exactness checks run in float64 inside `jax.enable_x64(True)` (a per-test context,
so x64 does not leak into other modules). Linear maps `f(z) = A z + b` have the
closed forms z* = (I − A)⁻¹ b, dz*/db = (I − A)⁻¹, ∂(cᵀz*)/∂A = u z*ᵀ with
u = (I − A)⁻ᵀ c. Computations are jitted: one compile per program keeps the
module fast.
"""

from __future__ import annotations

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import solvers
from implicit import GMRES, JFB, BackwardSolveWarning, Implicit, Phantom, fixed_point

TIGHT = {"tol": 1e-12, "max_iter": 100}


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def linear(z, a, b):
    return a @ z + b


def tanh_layer(z, w, x):
    return jnp.tanh(w @ z + x)


def problem(n=4, rho=0.6, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    a *= rho / np.linalg.norm(a, 2)
    return jnp.asarray(a), jnp.asarray(rng.standard_normal(n)), jnp.asarray(rng.standard_normal(n))


def closed_form(a, b, c):
    """z*, u = (I − A)⁻ᵀ c and ∂(cᵀz*)/∂A = u z*ᵀ for f(z) = A z + b."""
    a, b, c = map(np.asarray, (a, b, c))
    eye = np.eye(a.shape[0])
    z = np.linalg.solve(eye - a, b)
    u = np.linalg.solve((eye - a).T, c)
    return z, u, np.outer(u, z)


def unrolled(f, z0, *args, steps=500):
    return lax.scan(lambda z, _: (f(z, *args), None), z0, None, length=steps)[0]


# ----------------------------------------------------------------------------- closed forms


def test_scalar_noncontractive_closed_form(x64):
    # f(z) = w z + b with w = −2: plain iteration diverges, Broyden solves it;
    # z* = b / (1 − w), dz*/db = 1 / (1 − w) = 1/3, dz*/dw = b / (1 − w)².
    def z_star(w, b):
        return fixed_point(lambda z, w, b: w * z + b, jnp.zeros(()), w, b,
                           solver_options=TIGHT).value

    @jax.jit
    def derivatives(w, b):
        one = jnp.ones(())
        return (z_star(w, b), jax.grad(z_star, argnums=(0, 1))(w, b),
                jax.jvp(z_star, (w, b), (one, one))[1])

    value, (dz_dw, dz_db), tangent = derivatives(jnp.asarray(-2.0), jnp.asarray(1.5))
    np.testing.assert_allclose(value, 1.5 / 3, rtol=1e-12)
    np.testing.assert_allclose(dz_db, 1 / 3, rtol=1e-10)
    np.testing.assert_allclose(dz_dw, 1.5 / 9, rtol=1e-10)
    np.testing.assert_allclose(tangent, 1.5 / 9 + 1 / 3, rtol=1e-10)


@pytest.mark.parametrize(
    "backward_solver", [None, "fixed_point", "anderson", "gmres", "bicgstab", "normal_cg"]
)
def test_linear_closed_form_every_backward_solver(x64, backward_solver):
    a, b, c = problem()
    _, u_ref, da_ref = closed_form(a, b, c)
    # A name stands for the solver at its defaults under the forward stopping rule; a value
    # says more (its own stopping rule).
    backward = {
        "fixed_point": Implicit(solvers.get("fixed_point", **{**TIGHT, "max_iter": 400})),
        "anderson": Implicit(solvers.get("anderson", **{**TIGHT, "tol": 1e-9})),
    }.get(backward_solver, Implicit(backward_solver))

    def loss(a, b):
        z = fixed_point(linear, jnp.zeros(4), a, b, solver_options=TIGHT,
                        backward=backward).value
        return c @ z

    da, db = jax.jit(jax.grad(loss, argnums=(0, 1)))(a, b)
    rtol = 1e-7 if backward_solver == "anderson" else 1e-9
    np.testing.assert_allclose(db, u_ref, rtol=rtol)
    np.testing.assert_allclose(da, da_ref, rtol=rtol, atol=1e-12)


def test_forward_mode_and_hessian_closed_form(x64):
    a, b, _ = problem(n=3)
    inv = np.linalg.inv(np.eye(3) - np.asarray(a))

    def z_star(b):
        return fixed_point(linear, jnp.zeros(3), a, b, solver="fixed_point",
                           solver_options={"tol": 1e-13, "max_iter": 200}).value

    @jax.jit
    def derivatives(b):
        # L(b) = ½‖z*‖² = ½ bᵀ M b with M = (I − A)⁻ᵀ (I − A)⁻¹.
        hessian = jax.hessian(lambda b: 0.5 * jnp.sum(z_star(b) ** 2))(b)
        return jax.jacfwd(z_star)(b), jax.jacrev(z_star)(b), hessian

    jacfwd, jacrev, hessian = derivatives(b)
    np.testing.assert_allclose(jacfwd, inv, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(jacrev, inv, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hessian, inv.T @ inv, rtol=1e-8, atol=1e-12)


def test_nonlinear_matches_unrolled_backprop_in_both_modes(x64):
    w, x, c = problem(n=5, rho=0.9, seed=3)
    tangent = (jnp.ones_like(w), jnp.linspace(-1, 1, 5))

    def derivatives(solve):
        def loss(w, x):
            return c @ solve(w, x)

        return jax.jit(lambda w, x: (jax.grad(loss, argnums=(0, 1))(w, x),
                                     jax.jvp(loss, (w, x), tangent)[1]))(w, x)

    grads, jvp = derivatives(
        lambda w, x: fixed_point(tanh_layer, jnp.zeros(5), w, x, solver_options=TIGHT).value
    )
    grads_ref, jvp_ref = derivatives(lambda w, x: unrolled(tanh_layer, jnp.zeros(5), w, x))
    for got, ref in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(jvp, jvp_ref, rtol=1e-9)


# ----------------------------------------------------------------------------- gradient modes


def solve_in_mode(backward, options=TIGHT):
    """The solution and the gradients of cᵀz* with respect to (z0, A, b), jitted."""
    a, b, c = problem()

    def loss(z0, a, b):
        sol = fixed_point(linear, z0, a, b, solver_options=options, backward=backward)
        return c @ sol.value, sol

    (_, sol), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
        jnp.ones(4), a, b
    )
    return sol, grads, tuple(map(np.asarray, (a, b, c)))


def test_implicit_jfb_phantom_values_closed_forms_and_zero_z0_gradient(x64):
    steps, lam = 4, 0.7
    cases = {"implicit": "implicit", "jfb": JFB(), "phantom": Phantom(steps, lam)}
    for backward, mode in cases.items():
        sol, (dz0, _, db), (a, b, c) = solve_in_mode(mode)
        z_ref, u_ref, _ = closed_form(a, b, c)
        np.testing.assert_allclose(sol.value, z_ref, rtol=1e-10)  # the value is z* in every mode
        assert bool(sol.stats.converged)
        np.testing.assert_array_equal(dz0, np.zeros(4))  # exactly zero, not just small
        if backward == "implicit":
            np.testing.assert_allclose(db, u_ref, rtol=1e-9)
        elif backward == "jfb":
            np.testing.assert_allclose(db, c, rtol=1e-12)  # J taken as 0: dz*/db ≈ ∂f/∂b = I
        else:  # k steps u ← (1 − λ) u + λ (A u + b): du/db = λ Σ_{j<k} ((1 − λ) I + λ A)^j
            step = (1 - lam) * np.eye(4) + lam * a
            expected = lam * sum(np.linalg.matrix_power(step, j) for j in range(steps))
            np.testing.assert_allclose(db, expected.T @ c, rtol=1e-10)


def test_unroll_differentiates_the_iterations_including_z0(x64):
    sol, (_, _, db), (a, b, c) = solve_in_mode("unroll")
    z_ref, u_ref, _ = closed_form(a, b, c)
    np.testing.assert_allclose(sol.value, z_ref, rtol=1e-10)
    np.testing.assert_allclose(db, u_ref, rtol=1e-8)
    # Broyden's first step is the plain step z1 = f(z0) = A z0 + b.
    _, (dz0, _, db), _ = solve_in_mode("unroll", options={"max_iter": 1, "tol": 1e-12})
    np.testing.assert_allclose(dz0, a.T @ c, rtol=1e-12)
    np.testing.assert_allclose(db, c, rtol=1e-12)


# ----------------------------------------------------------------------------- transformations


class VariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_value_and_grad_closed_form(self):
        with jax.enable_x64(True):
            a, b, c = problem()
            z_ref, u_ref, _ = closed_form(a, b, c)

            @self.variant
            def value_and_grad(b):
                return jax.value_and_grad(
                    lambda b: c @ fixed_point(linear, jnp.zeros(4), a, b, solver="fixed_point",
                                              solver_options=TIGHT).value
                )(b)

            value, grad = value_and_grad(b)
            chex.assert_shape(grad, (4,))
            chex.assert_type(grad, jnp.float64)
            np.testing.assert_allclose(grad, u_ref, rtol=1e-9)
            np.testing.assert_allclose(value, np.asarray(c) @ z_ref, rtol=1e-10)


def test_vmap_and_nesting_in_scan(x64):
    a, b, c = problem()
    _, u_ref, _ = closed_form(a, b, c)

    def loss(b):
        return c @ fixed_point(linear, jnp.zeros(4), a, b, solver_options=TIGHT).value

    batch = jnp.stack([b, 2 * b, -b])
    grads = jax.jit(jax.vmap(jax.grad(loss)))(batch)
    chex.assert_shape(grads, (3, 4))
    np.testing.assert_allclose(grads, np.broadcast_to(u_ref, (3, 4)), rtol=1e-9)

    # Nested in lax.scan, the previous fixed point as the next initial guess.
    def scanned(b):
        def step(z, scale):
            z = fixed_point(linear, z, a, scale * b, solver_options=TIGHT).value
            return z, c @ z

        return jnp.sum(lax.scan(step, jnp.zeros(4), jnp.arange(1.0, 4.0))[1])

    np.testing.assert_allclose(jax.jit(jax.grad(scanned))(b), 6 * u_ref, rtol=1e-9)


def test_closure_over_traced_values_and_pytree_state_and_args(x64):
    a, b, c = problem()
    _, u_ref, da_ref = closed_form(a, b, c)

    # f closes over the traced `scale`: z = A z + scale·b.
    def closure_loss(scale):
        return c @ fixed_point(lambda z: a @ z + scale * b, jnp.zeros(4),
                               solver_options=TIGHT).value

    # Pytree state and args: z = {"p": z[:2], "q": z[2:]}, args = ({"a": A}, (b,)).
    def f(z, params, rest):
        flat = params["a"] @ jnp.concatenate([z["p"], z["q"]]) + rest[0]
        return {"p": flat[:2], "q": flat[2:]}

    def tree_loss(params, rest):
        z0 = {"p": jnp.zeros(2), "q": jnp.zeros(2)}
        z = fixed_point(f, z0, params, rest, solver_options=TIGHT).value
        return c @ jnp.concatenate([z["p"], z["q"]])

    @jax.jit
    def derivatives(params, rest):
        return jax.grad(closure_loss)(1.0), jax.grad(tree_loss, argnums=(0, 1))(params, rest)

    d_scale, (d_params, d_rest) = derivatives({"a": a}, (b,))
    np.testing.assert_allclose(d_scale, u_ref @ np.asarray(b), rtol=1e-9)
    np.testing.assert_allclose(d_rest[0], u_ref, rtol=1e-9)
    np.testing.assert_allclose(d_params["a"], da_ref, rtol=1e-9, atol=1e-12)


def test_batch_axis_per_sample_stats_without_gradient(x64):
    a, b, c = problem()
    batch = jnp.stack([b, 3 * b])

    def f(z, a, x):  # per sample: z_i = A z_i + x_i
        return z @ a.T + x

    def loss(x):
        sol = fixed_point(f, jnp.zeros((2, 4)), a, x, solver_options={**TIGHT, "batch_axis": 0})
        # The statistics carry no gradient, so adding them leaves the gradient unchanged.
        stats_terms = jnp.sum(sol.stats.abs_residual + sol.stats.rel_residual) + jnp.sum(
            sol.stats.trace
        )
        return jnp.sum(sol.value @ c) + stats_terms, sol.stats

    grad, stats = jax.jit(jax.grad(loss, has_aux=True))(batch)
    chex.assert_shape([stats.steps, stats.fevals, stats.converged, stats.abs_residual], (2,))
    chex.assert_shape(stats.trace, (2, 101))
    chex.assert_type([stats.steps, stats.fevals, stats.converged], [jnp.int32, jnp.int32, bool])
    assert bool(jnp.all(stats.converged))
    _, u_ref, _ = closed_form(a, b, c)
    np.testing.assert_allclose(grad, np.stack([u_ref, u_ref]), rtol=1e-9)


# ----------------------------------------------------------------------------- errors


def test_unknown_names_fail_at_call_time_listing_the_valid_ones():
    a, b, _ = problem()
    z0 = jnp.zeros(4)
    with pytest.raises(ValueError, match="implicit, phantom, jfb, unroll"):
        fixed_point(linear, z0, a, b, backward="neumann")
    with pytest.raises(ValueError, match="gmres") as info:
        Implicit("cg")
    assert "broyden" in str(info.value)
    with pytest.raises(ValueError, match="available solvers"):
        fixed_point(linear, z0, a, b, solver="newton")
    with pytest.raises(TypeError, match="max_iter"):
        fixed_point(linear, z0, a, b, solver_options={"maxiter": 3})
    with pytest.raises(TypeError, match="valid options: fallback, monitor, reuse_inverse, solver"):
        Implicit("broyden", iters=3)  # options belong to the solver value, not to the mode
    with pytest.raises(TypeError, match="restart"):
        GMRES(restarts=3)
    with pytest.raises(ValueError, match="'tol'"):
        GMRES(tol=0.0)
    with pytest.raises(TypeError, match="'solver'"):
        Implicit(3)
    with pytest.raises(ValueError, match="damping"):
        Phantom(damping=1.5)
    with pytest.raises(ValueError, match="steps"):
        Phantom(steps=0)
    with pytest.raises(TypeError, match="steps"):
        Phantom(steps=2.5)


def test_an_unregistered_solver_value_solves_and_differentiates(x64):
    """A user's method is passed as a value, forward and backward, without registering."""
    from tests.solvers.test_solvers import Damped

    solve = solvers.Solver(Damped(beta=0.7), solvers.Stopping(tol=1e-12, max_iter=500))
    a, b, c = problem()
    z_ref, u_ref, _ = closed_form(a, b, c)

    @jax.jit
    def value_and_grad(b):
        return jax.value_and_grad(
            lambda b: c @ fixed_point(linear, jnp.zeros(4), a, b, solver=solve).value)(b)

    value, grad = value_and_grad(b)
    np.testing.assert_allclose(value, np.asarray(c) @ z_ref, rtol=1e-10)
    np.testing.assert_allclose(grad, u_ref, rtol=1e-9)  # backward: the same kind, by default


def test_maps_that_change_the_state_are_rejected_naming_the_leaf():
    z0 = {"h": jnp.zeros(3), "c": jnp.zeros(2)}
    with pytest.raises(ValueError, match=r"\['h'\].*shape \(3,\).*shape \(4,\)"):
        fixed_point(lambda z: {"h": jnp.zeros(4), "c": z["c"]}, z0)
    with pytest.raises(ValueError, match=r"\['c'\].*int32"):
        fixed_point(lambda z: {"h": z["h"], "c": z["c"].astype(jnp.int32)}, z0)
    with pytest.raises(TypeError, match="pytree structure"):
        fixed_point(lambda z: (z["h"], z["c"]), z0)


def test_backward_nonconvergence_is_reported_inside_and_outside_jit():
    a, b, c = problem(rho=0.9)

    def loss(b, backward_solver):
        return c @ fixed_point(linear, jnp.zeros(4), a, b, solver="fixed_point",
                               backward=Implicit(backward_solver)).value

    failing = jax.grad(lambda b: loss(b, solvers.get("fixed_point", max_iter=2)))
    for grad in (failing, jax.jit(failing)):
        with pytest.warns(BackwardSolveWarning, match="'fixed_point' did not converge"):
            grad(b).block_until_ready()
            jax.effects_barrier()
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackwardSolveWarning)
        jax.jit(jax.grad(lambda b: loss(b, None)))(b).block_until_ready()
        jax.effects_barrier()
