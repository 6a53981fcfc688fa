"""Damped fixed-point iteration (Krasnosel'skii–Mann): ``z ← (1 − β) z + β f(z)``.

With ``damping`` ``β = 1`` (the default) it is plain Picard iteration ``z ← f(z)``,
which converges linearly at the rate ``ρ(∂f/∂z)`` when ``f`` is contractive; a smaller
``β`` trades speed for a wider basin (it also converges for nonexpansive ``f``, and
tames oscillating directions where ``∂f/∂z`` has eigenvalues near −1). One evaluation of
``f`` per iteration and no state: the cheapest step the shared loop can take.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from solvers.loop import FlatMap, Matrix, Rule
from solvers.options import Option
from solvers.solver import rule_solver


def fixed_point_rule(options: Mapping[str, Any]) -> Rule:
    """The :class:`Rule` of the damped iteration (see the module docstring)."""
    beta = float(options["damping"])

    def step(
        f: FlatMap, z: Matrix, fz: Matrix, state: tuple, active: jax.Array
    ) -> tuple[Matrix, Matrix, tuple, jax.Array]:
        z_new = fz if beta == 1.0 else z + beta * (fz - z)
        return z_new, f(z_new), state, jnp.ones(z.shape[:1], jnp.int32)

    return Rule(init=lambda z, fz: (), step=step, restart=lambda state, z, fz, rows: state)


fixed_point = rule_solver(
    "fixed_point",
    {
        "damping": Option(
            1.0,
            (int, float),
            lambda v: 0 < v <= 1,
            "a number in (0, 1]",
            "β of z ← (1 − β) z + β f(z); 1 is plain iteration",
        ),
    },
    fixed_point_rule,
)
