"""Limited-memory ("good") Broyden for ``z = f(z)``: the root of ``g(z) = f(z) − z``.

The inverse Jacobian of ``g`` is approximated per row by ``J⁻¹ ≈ −I + Σᵢ uᵢ vᵢᴴ``
with at most ``history`` rank-one terms in a buffer (memory ``O(history · size)``).
From ``z`` with ``d = −J⁻¹ g(z)`` the trial point is ``z⁺ = z + α d`` (``α = 1``, or
backtracking on ``‖g‖``), and with ``Δz = z⁺ − z``, ``Δg = g(z⁺) − g(z)`` the
good-Broyden (Sherman–Morrison) update is

    v = J⁻ᴴ Δz,   u = (Δz − J⁻¹ Δg) / (vᴴ Δg),   J⁻¹ ← J⁻¹ + u vᴴ

(``ᴴ`` is the conjugate transpose; for real states, the transpose). The first step
(``J⁻¹ = −I``) is one plain fixed-point step ``z⁺ = f(z)``.

Cost: ``J⁻¹ g(z) = −d`` is already known, so ``J⁻¹ Δg = J⁻¹ g(z⁺) + d`` and the next
direction ``d⁺ = −(J⁻¹ g(z⁺) + u (vᴴ g(z⁺)))`` need no extra pass: an iteration
reads the stored terms twice, plus one evaluation of ``f``. The ``u`` and ``v`` of the
terms share one buffer, so each of the two passes is a single batched product
(``Uᴴ Δz`` with ``Vᴴ g(z⁺)``, then ``V (Uᴴ Δz)`` with ``U (Vᴴ g(z⁺))``).

Safeguards:
* when the buffer is full, the slot of the newest term is reused, so the earliest
  terms (which capture the slowest modes) are kept (``when_full="replace_newest"``;
  ``"replace_oldest"`` is the classic FIFO). The term leaving the buffer is removed
  from ``J⁻¹`` before the update, so the buffer always represents exactly the
  inverse that produced the current direction;
* a trial point whose ``‖g‖`` exceeds ``reject_increase`` times the current one is
  rejected: ``z`` stays and the secant pair still updates ``J⁻¹``, so the next trial
  follows a new direction; after two rejections in a row the trials also shrink (``α``
  halves with each further rejection, back to 1 once a step is accepted). This
  backtracking costs no evaluation of ``f`` beyond the trials. The test is not monotone
  on purpose: on slowly contracting maps Broyden's residual may rise for a step before
  it falls (``docs/results.md`` measures ``reject_increase=1`` against the default);
* a rank-one term that is not finite or has a vanishing denominator is dropped,
  never stored; a non-finite direction is replaced by zero.

``history`` is capped at the problem size and at ``max_iter``. The buffers start with
``initial_history`` slots and grow to ``history`` only when a solve fills them
(:class:`solvers.method.Growable`): a solve that stops within a few iterations never
allocates, zero-fills or touches the full ``O(history · size)`` buffers.

Broyden (1965), "A class of methods for solving nonlinear simultaneous equations";
the limited-memory form as in Bai, Kolter and Koltun (2019), "Deep Equilibrium Models".
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple, Optional

import jax
import jax.numpy as jnp

from solvers.loop import bounded_while
from solvers.method import FlatMap, Growable, Matrix, Method, Restartable, Step, WarmStartable
from solvers.options import at_least, one_of, option
from solvers.pytree import row_norms
from solvers.stopping import Stopping

ARMIJO_C = 1e-4  # sufficient decrease of ‖g‖ asked of a line-search step
FULL_STEP_REJECTIONS = 2  # rejections in a row after which trials start to shrink
MIN_STEP = 2.0**-10  # the shortest trial, as a fraction of the direction


U, V = 0, 1  # where the u and the v of the terms sit on axis 1 of BroydenState.terms


class BroydenState(NamedTuple):
    terms: jax.Array  # (batch, 2, history, size): the u (index U) and v (index V) of each term
    direction: Matrix  # d = −J⁻¹ g(z) at the current point
    g_norm2: jax.Array  # (batch,): ‖g(z)‖² at the current point (kept, not recomputed)
    rejections: jax.Array  # (batch,): trial points rejected in a row
    slot: jax.Array  # the buffer slot the next term goes to
    filled: jax.Array  # how many slots hold terms (the rest are zero)


def _vdot_rows(a: Matrix, b: Matrix) -> jax.Array:
    """Per-row ``aᴴ b`` as a column ``(batch, 1)``."""
    return jnp.sum(jnp.conj(a) * b, axis=1, keepdims=True)


def _sum_squares_rows(x: Matrix) -> jax.Array:
    """Per-row ``‖x‖²`` (for comparisons within one precision; no overflow guard)."""
    return jnp.sum(jnp.real(x * jnp.conj(x)), axis=1)


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
        return z_t, fz_t, row_norms(fz_t - z_t)

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


class _Update(NamedTuple):
    u: Matrix  # the new rank-one term (zero where it is dropped)
    v: Matrix
    direction: Matrix  # d⁺ at the point the row moves to
    g_norm2: jax.Array  # (batch,): ‖g‖² at the point the row moves to
    accept: jax.Array  # (batch,): whether the row moves to the trial point


def _update(
    state: BroydenState, z_step: Matrix, g: Matrix, g_new: Matrix, active: jax.Array,
    reject_increase: float,
) -> _Update:
    """The good-Broyden update from the stored terms (unfilled slots are zero)."""
    terms = state.terms
    kept = (jnp.arange(terms.shape[2]) != state.slot).astype(g.dtype)
    # Remove the term in the slot about to be written (zero while the buffer fills),
    # so every product below uses the same inverse J⁻¹' = J⁻¹ − u_old v_oldᴴ.
    old = terms[:, :, state.slot]
    inv_j_g = -state.direction - old[:, U] * _vdot_rows(old[:, V], g)
    # Pass 1: (Uᴴ Δz, Vᴴ g⁺); pass 2: (V (Uᴴ Δz), U (Vᴴ g⁺)), each one batched product.
    coeff = jnp.einsum("bkmn,bkn->bkm", jnp.conj(terms), jnp.stack([z_step, g_new], axis=1))
    combined = jnp.einsum("bkm,bkmn->bkn", coeff[:, ::-1] * kept, terms)
    inv_j_g_new = combined[:, U] - g_new
    v = combined[:, V] - z_step
    dg = g_new - g
    denominator = _vdot_rows(v, dg)
    usable = jnp.isfinite(denominator) & (jnp.abs(denominator) > jnp.finfo(g.dtype).tiny)
    u = (z_step - (inv_j_g_new - inv_j_g)) / jnp.where(usable, denominator, 1)
    keep = (active[:, None] & usable) & jnp.all(jnp.isfinite(u) & jnp.isfinite(v), axis=1,
                                                keepdims=True)
    u, v = jnp.where(keep, u, 0), jnp.where(keep, v, 0)
    g_new_norm2 = _sum_squares_rows(g_new)
    accept = g_new_norm2 <= reject_increase**2 * state.g_norm2
    g_next = jnp.where(accept[:, None], g_new, g)
    inv_j_g_next = jnp.where(accept[:, None], inv_j_g_new, inv_j_g)
    next_direction = -(inv_j_g_next + u * _vdot_rows(v, g_next))
    next_direction = jnp.where(jnp.isfinite(next_direction), next_direction, 0)
    return _Update(u, v, next_direction, jnp.where(accept, g_new_norm2, state.g_norm2), accept)


@dataclasses.dataclass(frozen=True)
class Broyden(Method, Restartable, WarmStartable, Growable):
    """Limited-memory good Broyden (see the module docstring), with its settings."""

    name: ClassVar[str] = "broyden"
    history: int = option(30, at_least(1), "rank-one terms kept in the inverse-Jacobian buffer")
    initial_history: int = option(
        8, at_least(0), "slots the buffers start with; they grow to history only when a "
        "solve fills them (0: all history slots from the start)",
    )
    when_full: str = option(
        "replace_newest", one_of("replace_newest", "replace_oldest"),
        "which term a full buffer gives up: the newest (keeps the slow modes) or the oldest",
    )
    reject_increase: float = option(
        2.0, at_least(1), "reject a trial point whose ‖f(z) − z‖ grows by more than this "
        "factor (1: only trials that do not raise it are taken)",
    )
    line_search: bool = option(False, None, "backtrack on ‖f(z) − z‖ instead of always α = 1")
    ls_max_steps: int = option(6, at_least(1), "line-search trials per iteration (α = 1, 1/2, ...)")

    def slots(self, size: int, stopping: Stopping) -> tuple[int, int]:
        """``(first, full)``: the slots the buffers start with and the most they grow to, for
        rows of ``size`` (``history`` capped at ``size`` and at ``max_iter``)."""
        full = max(1, min(self.history, stopping.max_iter, size))
        return min(self.initial_history or full, full), full

    def _empty(self, z: Matrix, fz: Matrix, slots: int) -> BroydenState:
        batch, size = z.shape
        zero = jnp.zeros((), jnp.int32)
        g = fz - z
        return BroydenState(jnp.zeros((batch, 2, slots, size), z.dtype), g,
                            _sum_squares_rows(g), jnp.zeros((batch,), jnp.int32), zero, zero)

    def init(self, z: Matrix, fz: Matrix, stopping: Stopping) -> BroydenState:
        return self._empty(z, fz, self.slots(z.shape[1], stopping)[0])

    def room(self, state: BroydenState) -> jax.Array:
        return state.filled < state.terms.shape[2]

    def grow(self, state: BroydenState, stopping: Stopping) -> Optional[BroydenState]:
        """The state in buffers of ``history`` slots (``None`` if they already are); the
        next term goes to the first new slot. Only called on a state that never wrapped."""
        slots, size = state.terms.shape[2:]
        full = self.slots(size, stopping)[1]
        if slots >= full:
            return None
        pad = ((0, 0), (0, 0), (0, full - slots), (0, 0))
        return state._replace(terms=jnp.pad(state.terms, pad), slot=state.filled)

    def warm(self, prior: BroydenState, z: Matrix, fz: Matrix, stopping: Stopping) -> BroydenState:
        """Start from ``prior``'s terms (kept in front of this solve's own ``history``
        slots), with the first direction ``d = −J⁻¹ g(z)`` of that inverse."""
        own = self._empty(z, fz, self.slots(z.shape[1], stopping)[1])
        terms = jnp.concatenate([prior.terms.astype(z.dtype), own.terms], axis=2)
        g = fz - z
        coeff = jnp.einsum("bmn,bn->bm", jnp.conj(terms[:, V]), g)
        inv_j_g = jnp.einsum("bm,bmn->bn", coeff, terms[:, U]) - g
        start = jnp.asarray(prior.terms.shape[2], jnp.int32)
        return BroydenState(terms, -inv_j_g, own.g_norm2, own.rejections, start, start)

    def transpose(self, state: BroydenState) -> BroydenState:
        """The terms of ``(J⁻¹)ᵀ = −I + Σ conj(vᵢ) conj(uᵢ)ᴴ``: the prior of the adjoint."""
        return state._replace(terms=jnp.conj(state.terms[:, ::-1]))

    def restart(self, state: BroydenState, z: Matrix, fz: Matrix, rows: jax.Array) -> BroydenState:
        g = fz - z
        return state._replace(
            terms=jnp.where(rows[:, None, None, None], 0, state.terms),
            direction=jnp.where(rows[:, None], g, state.direction),
            g_norm2=jnp.where(rows, _sum_squares_rows(g), state.g_norm2),
            rejections=jnp.where(rows, 0, state.rejections),
        )

    def step(
        self, f: FlatMap, z: Matrix, fz: Matrix, state: BroydenState, active: jax.Array,
        stopping: Stopping,
    ) -> Step:
        g = fz - z
        direction = state.direction
        if self.line_search:
            z_new, fz_new, fevals = _line_search(
                f, z, row_norms(g), direction, active, self.ls_max_steps, stopping.fixed_length,
            )
        else:
            # After r > 2 rejections in a row the trial goes 2^(2 − r) of the way.
            shrink = jnp.maximum(state.rejections - FULL_STEP_REJECTIONS, 0)
            step_size = jnp.maximum(2.0 ** -shrink.astype(jnp.float32), MIN_STEP)
            z_new = z + step_size.astype(z.dtype)[:, None] * direction
            fz_new = f(z_new)
            fevals = jnp.ones(z.shape[:1], jnp.int32)
        g_new = fz_new - z_new
        new = _update(state, z_new - z, g, g_new, active, self.reject_increase)
        history = state.terms.shape[2]
        if self.when_full == "replace_newest":
            next_slot = jnp.minimum(state.slot + 1, history - 1)
        else:
            next_slot = (state.slot + 1) % history
        new_state = BroydenState(
            terms=state.terms.at[:, :, state.slot].set(jnp.stack([new.u, new.v], axis=1)),
            direction=new.direction,
            g_norm2=new.g_norm2,
            rejections=jnp.where(new.accept, 0, state.rejections + 1),
            slot=next_slot,
            filled=jnp.minimum(state.filled + 1, history),
        )
        z_next = jnp.where(new.accept[:, None], z_new, z)
        fz_next = jnp.where(new.accept[:, None], fz_new, fz)
        return z_next, fz_next, new_state, fevals
