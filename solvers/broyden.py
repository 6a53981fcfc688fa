"""Limited-memory ("good") Broyden for ``z = f(z)``: the root of ``g(z) = f(z) − z``.

The inverse Jacobian of ``g`` is approximated per row by ``J⁻¹ ≈ −I + Σᵢ uᵢ vᵢᵀ``
with at most ``history`` rank-one terms in a ring buffer (memory
``O(history · size)``). From ``z`` with ``d = −J⁻¹ g(z)`` the trial point is
``z⁺ = z + α d`` (``α = 1``, or backtracking on ``‖g‖``), and with
``Δz = z⁺ − z``, ``Δg = g(z⁺) − g(z)`` the good-Broyden (Sherman–Morrison) update is

    v = J⁻ᵀ Δz,   u = (Δz − J⁻¹ Δg) / (vᵀ Δg),   J⁻¹ ← J⁻¹ + u vᵀ.

The first step (``J⁻¹ = −I``) is one plain fixed-point step ``z⁺ = f(z)``.

Cost: ``J⁻¹ g(z) = −d`` is already known, so ``J⁻¹ Δg = J⁻¹ g(z⁺) + d`` and the next
direction ``d⁺ = −(J⁻¹ g(z⁺) + u (vᵀ g(z⁺)))`` need no extra pass: an iteration
reads each buffer twice, plus one evaluation of ``f``.

Safeguards:
* when the buffer is full, the slot of the newest term is reused, so the earliest
  terms (which capture the slowest modes) are kept (``when_full="replace_newest"``;
  ``"replace_oldest"`` is the classic FIFO). The term leaving the buffer is removed
  from ``J⁻¹`` before the update, so the buffer always represents exactly the
  inverse that produced the current direction;
* a trial point whose ``‖g‖`` exceeds ``max_increase`` times the current one is
  rejected: ``z`` stays and the secant pair still updates ``J⁻¹``, so the next
  trial follows a new direction; after two rejections in a row the trials also
  shrink (``α`` halves with each further rejection, back to 1 once a step is
  accepted). This backtracking costs no evaluation of ``f`` beyond the trials;
* a rank-one term that is not finite or has a vanishing denominator is dropped,
  never stored; a non-finite direction is replaced by zero.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from solvers.loop import FlatMap, Matrix, Rule, bounded_while, row_norm
from solvers.options import Option, choice, flag, positive_int
from solvers.solver import rule_solver

ARMIJO_C = 1e-4  # sufficient decrease of ‖g‖ asked of a line-search step
FULL_STEP_REJECTIONS = 2  # rejections in a row after which trials start to shrink
MIN_STEP = 2.0**-10  # the shortest trial, as a fraction of the direction


class BroydenState(NamedTuple):
    u: jax.Array  # (batch, history, size): the u of each stored rank-one term
    v: jax.Array  # (batch, history, size): the v of each stored rank-one term
    direction: Matrix  # d = −J⁻¹ g(z) at the current point
    rejections: jax.Array  # (batch,): trial points rejected in a row
    slot: jax.Array  # the ring-buffer slot the next term goes to


def _line_search(
    f: FlatMap,
    z: Matrix,
    g_norm: jax.Array,
    direction: Matrix,
    active: jax.Array,
    max_trials: int,
    fixed_length: bool,
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
    fevals = jnp.ones(g_norm.shape, jnp.int32)

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

    best_norm = jnp.where(jnp.isfinite(norm), norm, jnp.inf)
    carry = (alpha, searching, fevals, z_t, fz_t, best_norm)
    carry = bounded_while(lambda c: jnp.any(c[1]), body, carry, max_trials - 1, fixed_length)
    _, _, fevals, z_best, fz_best, _ = carry
    return z_best, fz_best, fevals


def broyden_rule(options: Mapping[str, Any]) -> Rule:
    """The :class:`Rule` of limited-memory good Broyden (see the module docstring)."""
    history = min(options["history"], options["max_iter"])
    keep_earliest = options["when_full"] == "replace_newest"

    def init(z: Matrix, fz: Matrix) -> BroydenState:
        batch, size = z.shape
        buffers = jnp.zeros((batch, history, size), z.dtype)
        rejections = jnp.zeros((batch,), jnp.int32)
        return BroydenState(buffers, buffers, fz - z, rejections, jnp.zeros((), jnp.int32))

    def step(
        f: FlatMap, z: Matrix, fz: Matrix, state: BroydenState, active: jax.Array
    ) -> tuple[Matrix, Matrix, BroydenState, jax.Array]:
        g = fz - z
        direction = jnp.where(active[:, None], state.direction, 0)
        if options["line_search"]:
            z_new, fz_new, fevals = _line_search(
                f,
                z,
                row_norm(g),
                direction,
                active,
                options["ls_max_steps"],
                options["fixed_length"],
            )
        else:
            # After r > 2 rejections in a row the trial goes 2^(2 − r) of the way.
            shrink = jnp.maximum(state.rejections - FULL_STEP_REJECTIONS, 0).astype(z.dtype)
            step_size = jnp.maximum(2.0**-shrink, MIN_STEP)
            z_new = z + step_size[:, None] * direction
            fz_new = f(z_new)
            fevals = jnp.ones(z.shape[:1], jnp.int32)
        g_new = fz_new - z_new
        dz, dg = z_new - z, g_new - g

        # Remove the term in the slot about to be written (zero while the buffer fills),
        # so every product below uses the same inverse J⁻¹' = J⁻¹ − u_old v_oldᵀ.
        kept = (jnp.arange(history) != state.slot).astype(z.dtype)
        u_old, v_old = state.u[:, state.slot], state.v[:, state.slot]
        inv_j_g = -direction - u_old * jnp.sum(v_old * g, axis=1, keepdims=True)
        inv_j_g_new = -g_new + jnp.einsum(
            "bm,bmn->bn", jnp.einsum("bmn,bn->bm", state.v, g_new) * kept, state.u
        )
        v = -dz + jnp.einsum("bm,bmn->bn", jnp.einsum("bmn,bn->bm", state.u, dz) * kept, state.v)
        denominator = jnp.sum(v * dg, axis=1)
        usable = jnp.isfinite(denominator) & (jnp.abs(denominator) > jnp.finfo(z.dtype).tiny)
        u = (dz - (inv_j_g_new - inv_j_g)) / jnp.where(usable, denominator, 1)[:, None]
        keep = active & usable & jnp.all(jnp.isfinite(u) & jnp.isfinite(v), axis=1)
        u = jnp.where(keep[:, None], u, 0)
        v = jnp.where(keep[:, None], v, 0)

        accept = row_norm(g_new) <= options["max_increase"] * row_norm(g)
        g_next = jnp.where(accept[:, None], g_new, g)
        inv_j_g_next = jnp.where(accept[:, None], inv_j_g_new, inv_j_g)
        next_direction = -(inv_j_g_next + u * jnp.sum(v * g_next, axis=1, keepdims=True))
        next_direction = jnp.where(jnp.isfinite(next_direction), next_direction, 0)
        if keep_earliest:
            next_slot = jnp.minimum(state.slot + 1, history - 1)
        else:
            next_slot = (state.slot + 1) % history
        new_state = BroydenState(
            u=state.u.at[:, state.slot].set(u),
            v=state.v.at[:, state.slot].set(v),
            direction=next_direction,
            rejections=jnp.where(accept, 0, state.rejections + 1),
            slot=next_slot,
        )
        z_next = jnp.where(accept[:, None], z_new, z)
        fz_next = jnp.where(accept[:, None], fz_new, fz)
        return z_next, fz_next, new_state, fevals

    return Rule(init, step)


broyden = rule_solver(
    "broyden",
    {
        "history": positive_int(30, "rank-one terms kept in the inverse-Jacobian ring buffer"),
        "when_full": choice(
            "replace_newest",
            ("replace_newest", "replace_oldest"),
            "which term a full buffer gives up: the newest (keeps the slow modes) or the oldest",
        ),
        "max_increase": Option(
            1.0,
            (int, float),
            lambda v: v >= 1,
            "a number >= 1",
            "reject a trial point whose ‖f(z) − z‖ grows by more than this factor",
        ),
        "line_search": flag(False, "backtrack on ‖f(z) − z‖ instead of always taking α = 1"),
        "ls_max_steps": positive_int(6, "line-search trials per iteration (α = 1, 1/2, ...)"),
    },
    broyden_rule,
)
