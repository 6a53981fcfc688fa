"""Constant memory: the compiled backward of backward="implicit" and of backward="reversible"
does not grow with the number of forward iterations; backward="unroll" does.

Measured statically on the compiled program (XLA's temporary buffers), forward
solves forced to run exactly 10 or 200 iterations (tol=0 is unreachable; stall
detection off). Broyden keeps `history` rank-one terms, capped at `max_iter`, so
the history is fixed below 10 for both; the backward solve has its own fixed options.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import solvers
from implicit import Implicit, fixed_point

N = 256


def temp_bytes(backward, iterations: int, solver: str) -> int:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((N, N)).astype(np.float32)
    w *= 0.5 / np.linalg.norm(w, 2)
    x = rng.standard_normal(N).astype(np.float32)
    options = {"max_iter": iterations, "tol": 1e-30, "stall_window": 0}
    if solver == "broyden":
        options["history"] = 5

    def loss(w, x):
        sol = fixed_point(lambda z, w, x: jnp.tanh(w @ z + x), jnp.zeros(N, jnp.float32), w, x,
                          solver=solver, solver_options=options, backward=backward)
        return jnp.sum(sol.value)

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(w, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_implicit_backward_memory_is_constant_in_forward_iterations():
    backward = Implicit(solvers.get("broyden", max_iter=50, history=5))
    short = temp_bytes(backward, 10, "broyden")
    long = temp_bytes(backward, 200, "broyden")
    assert short > 0
    assert long / short <= 1.05, (short, long)


def test_reversible_backward_memory_is_constant_in_forward_iterations():
    """It stores no iterate: what grows is the forward statistics' residual trace, one
    number per iteration in every mode, against a state of N numbers per iteration."""
    short = temp_bytes("reversible", 10, "reversible")
    long = temp_bytes("reversible", 200, "reversible")
    assert short > 0
    assert (long - short) / (200 - 10) <= 8, (short, long)


def test_unrolled_backward_memory_grows_with_forward_iterations():
    short = temp_bytes("unroll", 10, "fixed_point")
    long = temp_bytes("unroll", 200, "fixed_point")
    assert long / short >= 5, (short, long)
