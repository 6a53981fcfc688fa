"""Limited-memory ("good") Broyden for ``z = f(z)``: the root of ``g(z) = f(z) − z``.

The inverse Jacobian of ``g`` is approximated per row by ``J⁻¹ ≈ −I + Σᵢ uᵢ vᵢᵀ``
with the last ``history`` rank-one terms kept in a ring buffer (memory
``O(history · size)``). From ``z`` with ``d = −J⁻¹ g(z)`` the step is
``z⁺ = z + α d`` (``α = 1``, or backtracking on ``‖g‖``), and with
``Δz = z⁺ − z``, ``Δg = g(z⁺) − g(z)`` the good-Broyden (Sherman–Morrison) update is

    v = J⁻ᵀ Δz,   u = (Δz − J⁻¹ Δg) / (vᵀ Δg),   J⁻¹ ← J⁻¹ + u vᵀ.

Because ``J⁻¹ g(z) = −d`` is already known, ``J⁻¹ Δg = J⁻¹ g(z⁺) + d`` and the next
direction ``d⁺ = −(J⁻¹ g(z⁺) + u (vᵀ g(z⁺)))`` needs no further pass over the
buffers: one step reads each buffer twice. The first step (``J⁻¹ = −I``) is one
plain fixed-point step ``z⁺ = f(z)``. A rank-one term that is not finite or has a
vanishing denominator is dropped, never stored.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from solvers.factory import rule_solver
from solvers.loop import FlatMap, Matrix, Rule, bounded_while, row_norm
from solvers.options import flag, positive_int

ARMIJO_C = 1e-4  # sufficient decrease of ‖g‖ asked of a line-search step


class BroydenState(NamedTuple):
    u: jax.Array  # (batch, history, size): the u of each stored rank-one term
    v: jax.Array  # (batch, history, size): the v of each stored rank-one term
    direction: Matrix  # d = −J⁻¹ g(z) at the current point
    slot: jax.Array  # the ring-buffer slot the next term goes to


def _line_search(
    f: FlatMap, z: Matrix, g_norm: jax.Array, direction: Matrix, active: jax.Array,
    max_trials: int, fixed_length: bool,
) -> tuple[Matrix, Matrix, jax.Array]:
    """Halve ``α`` from 1 until ``‖g(z + α d)‖ ≤ (1 − c α) ‖g(z)‖``; keep the best trial."""

    def trial(alpha: jax.Array) -> tuple[Matrix, Matrix, jax.Array]:
        z_t = z + alpha[:, None] * direction
        fz_t = f(z_t)
        return z_t, fz_t, row_norm(fz_t - z_t)

    def accepted(alpha: jax.Array, norm: jax.Array) -> jax.Array:
        return norm <= (1 - ARMIJO_C * alpha) * g_norm

    alpha = jnp.ones_like(g_norm)
    z_t, fz_t, norm = trial(alpha)
    searching = active & ~accepted(alpha, norm)
    fevals = jnp.ones_like(g_norm, dtype=jnp.int32)

    def body(c: tuple) -> tuple:
        alpha, searching, fevals, z_best, fz_best, best_norm = c
        alpha = jnp.where(searching, alpha / 2, alpha)
        z_t, fz_t, norm = trial(alpha)
        better = searching & (norm < best_norm)
        return (
            alpha,
            searching & ~accepted(alpha, norm),
            fevals + searching,
            jnp.where(better[:, None], z_t, z_best),
            jnp.where(better[:, None], fz_t, fz_best),
            jnp.where(better, norm, best_norm),
        )

    carry = (alpha, searching, fevals, z_t, fz_t, jnp.where(jnp.isfinite(norm), norm, jnp.inf))
    carry = bounded_while(
        lambda c: jnp.any(c[1]), body, carry, max_trials - 1, fixed_length
    )
    _, _, fevals, z_best, fz_best, _ = carry
    return z_best, fz_best, fevals


def broyden_rule(options: Mapping[str, Any]) -> Rule:
    """The :class:`Rule` of limited-memory good Broyden with ``options['history']`` terms."""
    history = min(options["history"], options["max_iter"])

    def init(z: Matrix, fz: Matrix) -> BroydenState:
        batch, size = z.shape
        buffers = jnp.zeros((batch, history, size), z.dtype)
        return BroydenState(buffers, buffers, fz - z, jnp.zeros((), jnp.int32))

    def step(
        f: FlatMap, z: Matrix, fz: Matrix, state: BroydenState, active: jax.Array
    ) -> tuple[Matrix, Matrix, BroydenState, jax.Array]:
        g = fz - z
        direction = jnp.where(active[:, None], state.direction, 0)
        if options["line_search"]:
            z_new, fz_new, fevals = _line_search(
                f, z, row_norm(g), direction, active, options["ls_max_steps"],
                options["fixed_length"],
            )
        else:
            z_new = z + direction
            fz_new = f(z_new)
            fevals = jnp.ones(z.shape[:1], jnp.int32)
        g_new = fz_new - z_new
        dz, dg = z_new - z, g_new - g

        inv_j_g_new = -g_new + jnp.einsum("bm,bmn->bn", jnp.einsum("bmn,bn->bm", state.v, g_new), state.u)
        inv_j_dg = inv_j_g_new + direction
        v = -dz + jnp.einsum("bm,bmn->bn", jnp.einsum("bmn,bn->bm", state.u, dz), state.v)
        denominator = jnp.sum(v * dg, axis=1)
        tiny = jnp.finfo(z.dtype).tiny
        usable = jnp.isfinite(denominator) & (jnp.abs(denominator) > tiny)
        u = (dz - inv_j_dg) / jnp.where(usable, denominator, 1)[:, None]
        keep = active & usable & jnp.all(jnp.isfinite(u) & jnp.isfinite(v), axis=1)
        u = jnp.where(keep[:, None], u, 0)
        v = jnp.where(keep[:, None], v, 0)
        next_direction = -(inv_j_g_new + u * jnp.sum(v * g_new, axis=1, keepdims=True))
        next_direction = jnp.where(jnp.isfinite(next_direction), next_direction, 0)
        new_state = BroydenState(
            u=state.u.at[:, state.slot].set(u),
            v=state.v.at[:, state.slot].set(v),
            direction=next_direction,
            slot=(state.slot + 1) % history,
        )
        return z_new, fz_new, new_state, fevals

    return Rule(init, step)


broyden = rule_solver(
    "broyden",
    {
        "history": positive_int(30, "rank-one terms kept in the inverse-Jacobian ring buffer"),
        "line_search": flag(False, "backtrack on ‖f(z) − z‖ instead of always taking α = 1"),
        "ls_max_steps": positive_int(6, "line-search trials per iteration (α = 1, 1/2, ...)"),
    },
    broyden_rule,
)
