"""Damped fixed-point iteration (Krasnosel'skii–Mann): ``z ← (1 − β) z + β f(z)``.

With ``damping`` ``β = 1`` (the default) it is plain Picard iteration ``z ← f(z)``,
which converges linearly at the rate ``ρ(∂f/∂z)`` when ``f`` is contractive; a smaller
``β`` trades speed for a wider basin (it also converges for nonexpansive ``f``, and
tames oscillating directions where ``∂f/∂z`` has eigenvalues near −1). One evaluation of
``f`` per iteration and no state: the cheapest step the shared loop can take.

Mann (1953), "Mean value methods in iteration"; Krasnosel'skii (1955).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from solvers.method import FlatMap, Matrix, Method, Restartable, Step
from solvers.options import between, option
from solvers.stopping import Stopping


@dataclasses.dataclass(frozen=True)
class FixedPoint(Method, Restartable):
    """Damped iteration (see the module docstring); it has no state to restart."""

    name: ClassVar[str] = "fixed_point"
    damping: float = option(
        1.0, between(0, 1, low_open=True), "β of z ← (1 − β) z + β f(z); 1 is plain iteration"
    )

    def init(self, z: Matrix, fz: Matrix, stopping: Stopping) -> tuple:
        return ()

    def restart(self, state: tuple, z: Matrix, fz: Matrix, rows: jax.Array) -> tuple:
        return state

    def step(
        self, f: FlatMap, z: Matrix, fz: Matrix, state: tuple, active: jax.Array,
        stopping: Stopping,
    ) -> Step:
        z_new = fz if self.damping == 1.0 else z + self.damping * (fz - z)
        return z_new, f(z_new), state, jnp.ones(z.shape[:1], jnp.int32)
