"""Every solver on every state dtype, with JAX's x64 mode off and on.

The map ``z ↦ ½ tanh(z) + b`` is a contraction with a unique fixed point, real for a
real ``b`` and complex for a complex one; the reference is plain iteration in NumPy's
complex128. A solver either returns that point in the state's own dtype, to a tolerance
fit for the dtype, or (jaxopt's, for complex states) refuses with an error that names
the dtype and the solvers to use instead.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import solvers

DTYPES = ("float16", "bfloat16", "float32", "float64", "complex64")
TOL = {"float16": 1e-2, "bfloat16": 5e-2, "float32": 1e-5, "float64": 1e-10,
       "complex64": 1e-5}
JAXOPT = ("jaxopt_anderson", "jaxopt_broyden", "jaxopt_fixed_point")


def offset(dtype: str) -> complex:
    return 1.0 + 0.5j if dtype.startswith("complex") else 1.0


def reference(dtype: str) -> np.ndarray:
    z = np.zeros(3, np.complex128)
    for _ in range(200):
        z = 0.5 * np.tanh(z) + offset(dtype)
    return z


@functools.lru_cache(maxsize=None)
def compiled(name: str, tol: float):
    solve = solvers.get(name, tol=tol, stop_mode="rel", max_iter=60)
    return jax.jit(lambda z0, b: solve(lambda z, b: 0.5 * jnp.tanh(z) + b, z0, b))


@pytest.mark.parametrize("x64", [False, True], ids=["x64-off", "x64-on"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", solvers.available(general=True))
def test_every_solver_on_every_dtype(name, dtype, x64):
    with jax.enable_x64(x64):
        state_dtype = jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.dtype(dtype)))
        z0 = jnp.zeros(3, state_dtype)
        b = jnp.asarray(offset(dtype), state_dtype)
        run = compiled(name, TOL[str(state_dtype)])
        if name in JAXOPT and jnp.issubdtype(state_dtype, jnp.complexfloating):
            with pytest.raises(TypeError, match=rf"{name}.*{state_dtype}.*'broyden'"):
                run(z0, b)
            return
        sol = run(z0, b)
        chex.assert_type(sol.value, state_dtype)
        chex.assert_shape(sol.value, (3,))
        assert bool(sol.stats.converged), (name, dtype, x64, solvers.explain(sol.stats))
        expected = reference(dtype)
        if not jnp.issubdtype(state_dtype, jnp.complexfloating):
            expected = expected.real
        error = np.max(np.abs(np.asarray(sol.value).astype(np.complex128) - expected))
        assert error <= 10 * TOL[str(state_dtype)] * np.max(np.abs(expected)), error
