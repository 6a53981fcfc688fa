"""The reversible fixed-point iteration of reversible deep equilibrium models.

Two coupled sequences start together, ``y₀ = z₀``, and move by damped steps in turn, each
step evaluating ``f`` at the other sequence's newest iterate:

    y_{n+1} = (1 − β) y_n + β f(z_n),
    z_{n+1} = (1 − β) z_n + β f(y_{n+1}).

For a contractive ``f`` both sequences converge to its fixed point ``z*``; the solver
returns the ``z`` sequence (the loop's best iterate, as for every solver). Each step is
invertible in closed form, with no solve,

    z_n = (z_{n+1} − β f(y_{n+1})) / (1 − β),
    y_n = (y_{n+1} − β f(z_n)) / (1 − β),

so the whole trajectory can be rebuilt backwards from the final pair ``(y_N, z_N)``: the
reversible gradient mode (:class:`implicit.Reversible`) backpropagates through the
iteration that way, exactly and in memory that does not depend on ``N``. That is why the
final pair and its number of steps are this method's state. Two evaluations of ``f`` per
step; ``0 < β < 1`` (the inverse divides by ``1 − β``).

McCallum, Arora and Foster (2025), "Reversible deep equilibrium models", arXiv:2509.12917.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from solvers.loop import residuals
from solvers.method import FlatMap, Matrix, Method, Restartable, Step
from solvers.options import between, option
from solvers.stopping import Stopping


class ReversibleState(NamedTuple):
    """The final pair ``(y_n, z_n)`` of each row and its ``n``, the steps it took.

    A row moves only while it is active and its new pair is finite (the loop's own rule for
    moving a row), so ``(y, z)`` is always the pair reached after ``steps`` steps.
    """

    y: Matrix
    z: Matrix
    steps: jax.Array  # (batch,) int32


def _finite_rows(*matrices: Matrix) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(m), axis=1) for m in matrices]), axis=0)


@dataclasses.dataclass(frozen=True)
class ReversibleFixedPoint(Method, Restartable):
    """The coupled, algebraically invertible iteration (see the module docstring)."""

    name: ClassVar[str] = "reversible"
    damping: float = option(
        0.8, between(0, 1, low_open=True, high_open=True),
        "β of y ← (1 − β) y + β f(z), z ← (1 − β) z + β f(y); the inverse divides by 1 − β",
    )

    def init(self, z: Matrix, fz: Matrix, stopping: Stopping) -> ReversibleState:
        return ReversibleState(z, z, jnp.zeros(z.shape[:1], jnp.int32))

    def restart(self, state: ReversibleState, z: Matrix, fz: Matrix,
                rows: jax.Array) -> ReversibleState:
        keep = rows[:, None]
        return ReversibleState(jnp.where(keep, z, state.y), jnp.where(keep, z, state.z),
                               jnp.where(rows, 0, state.steps))

    def advance(self, f: FlatMap, y: Matrix, z: Matrix, fz: Matrix) -> tuple[Matrix, ...]:
        """One step from ``(y_n, z_n)`` with ``fz = f(z_n)``: ``(y_{n+1}, z_{n+1},
        f(z_{n+1}))``."""
        beta = self.damping
        y_new = (1 - beta) * y + beta * fz
        z_new = (1 - beta) * z + beta * f(y_new)
        return y_new, z_new, f(z_new)

    def step(
        self, f: FlatMap, z: Matrix, fz: Matrix, state: ReversibleState, active: jax.Array,
        stopping: Stopping,
    ) -> Step:
        y_new, z_new, fz_new = self.advance(f, state.y, z, fz)
        # A row whose y went non-finite must not move, although its z may still be finite
        # (tanh(inf) is 1): poison its z, so that the loop stops it as non-finite as well.
        z_new = jnp.where(_finite_rows(y_new)[:, None], z_new, jnp.nan)
        absolute, relative = residuals(z_new, fz_new)
        moved = active & jnp.isfinite(absolute) & jnp.isfinite(relative)  # the loop's rule
        keep = moved[:, None]
        state = ReversibleState(jnp.where(keep, y_new, state.y), jnp.where(keep, z_new, state.z),
                                state.steps + moved.astype(jnp.int32))
        return z_new, fz_new, state, jnp.full(z.shape[:1], 2, jnp.int32)
