"""What the tests of the Flax NNX and Equinox layers share: sizes, inputs, the unrolled
reference, the checks of the layer's solver and mode, and a framework made missing.

Their blocks are contractions in z, z ↦ tanh(dropout(W z) + U x + b) with ‖W‖₂ = 0.4 (with
dropout at rate 1/2 too, ‖2W‖₂ = 0.8), so plain iteration converges; :func:`unrolled`
runs it UNROLL times (error 0.4²⁰⁰), the reference for values and gradients.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import pytest
from jax import lax

import solvers
from implicit import GMRES, Implicit, Phantom

D = 4
UNROLL = 200
PLAIN = {"solver": "fixed_point", "tol": 1e-6, "max_iter": 100}  # cheap to compile


def inputs(shape: tuple[int, ...], seed: int = 0, dtype=jnp.float32) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape, dtype)


def unrolled(block: Callable, x: jax.Array) -> jax.Array:
    """Plain iteration z ← block(z, x) from zeros, UNROLL times."""
    return lax.scan(lambda z, _: (block(z, x), None), jnp.zeros_like(x), None, length=UNROLL)[0]


def check_solver_and_mode_are_values_built_once(deq: Callable, block: Callable) -> None:
    """``deq(block, solver=..., backward=..., **options)`` builds its solver and gradient
    mode once, as :class:`implicit.haiku.DEQ` does, and bad names fail at once."""
    layer = deq(block, solver="anderson", backward=Implicit(GMRES(tol=1e-7)), max_iter=7,
                history=3)
    assert layer.solver == solvers.get("anderson", max_iter=7, history=3)
    assert layer.backward == Implicit(GMRES(tol=1e-7))
    tight = solvers.get("broyden", tol=1e-9)
    assert deq(block, solver=tight, max_iter=9).solver == tight.replace(max_iter=9)
    assert deq(block, backward="phantom").backward == Phantom()
    with pytest.raises(TypeError, match="valid options"):
        deq(block, max_iters=3)
    with pytest.raises(ValueError, match="available solvers"):
        deq(block, solver="newton")
    with pytest.raises(ValueError, match="valid backward modes"):
        deq(block, backward="neumann")


_SCRIPT = """
import sys
sys.modules[{framework!r}] = None  # blocks the import, as if it were not installed
import implicit, implicit.haiku    # the toolkit itself does not need it
try:
    import implicit.{framework}
except ImportError as error:
    print(error)
"""


def import_error_without(framework: str) -> str:
    """The message of the ImportError that ``import implicit.<framework>`` raises in a fresh
    interpreter where ``framework`` cannot be imported (after ``import implicit`` worked)."""
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(framework=framework)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
