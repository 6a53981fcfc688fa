"""Type-II Anderson acceleration for ``z = f(z)``, safeguarded for single precision.

With the residual ``g(z) = f(z) − z`` and the last ``m`` differences of iterates and
residuals as the columns of ``ΔZ`` and ``ΔG``, each step solves the small least-squares
problem

    γ = argmin ‖g(z) − ΔG γ‖²  (ridge-regularised),
    z⁺ = z + β g(z) − (ΔZ + β ΔG) γ,

with damping ``β`` (``history`` ``m``, ``damping`` ``β``; Walker & Ni 2011, "Anderson
acceleration for fixed-point iterations"). On a linear
map it is GMRES in disguise. Per row, the Gram matrix ``ΔGᴴΔG`` is kept up to date one
column at a time, and the normal equations are solved after Jacobi scaling (unit
diagonal) with a ridge *relative* to that scaled matrix, ``(Ĝ + λ I) γ̂ = ĉ``: unlike an
absolute ridge, it never dominates the system when the residuals become small, so the
iteration keeps converging in float32 down to the precision of ``f``. Cost per
iteration: one evaluation of ``f``, one pass over ``ΔG`` (both inner products of the
new column at once) and one over ``ΔZ + β ΔG``, plus an ``m × m`` Cholesky solve per row.

Safeguards, per row:

* the history restarts, keeping only its newest column, when the scaled Gram matrix is
  ill-conditioned (its Cholesky estimate of the condition number exceeds
  ``max_condition``; default ``1 / (100 ε)`` of the working precision) or when a step
  raised the residual by more than a factor ``restart_increase``; that step is the
  one-column (secant) step;
* columns that are not finite are never stored, and a proposal that is not finite is
  replaced by the plain step, so one bad evaluation of ``f`` does not poison the history.

The history never exceeds the problem size or the iteration budget.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple, Optional

import jax
import jax.numpy as jnp

from solvers.method import FlatMap, Matrix, Method, Restartable, Step
from solvers.options import above, at_least, between, option
from solvers.stopping import Stopping


class AndersonState(NamedTuple):
    dg: jax.Array  # (batch, history, size): ΔG columns, g(z_{j+1}) − g(z_j)
    du: jax.Array  # (batch, history, size): ΔZ + β ΔG columns
    gram: jax.Array  # (batch, history, history): ΔGᴴ ΔG
    coeff: jax.Array  # (batch, history): ΔGᴴ g at the current point
    valid: jax.Array  # (batch, history): the columns each row may use
    g_prev_norm: jax.Array  # (batch,): ‖g‖ at the previous point (inf: none)
    slot: jax.Array  # the column the next difference goes to (shared ring)


def _dot_rows(a: Matrix, b: Matrix) -> jax.Array:
    """Per-row Hermitian inner products ``aᴴ b``."""
    return jnp.sum(jnp.conj(a) * b, axis=1)


@dataclasses.dataclass(frozen=True)
class Anderson(Method, Restartable):
    """Safeguarded type-II Anderson acceleration (see the module docstring).

    A step solves for ``γ`` with the columns and inner products it finds in the state,
    moves, evaluates ``f``, and then stores the difference to the new point with its inner
    products, ready for the next step: so no previous iterate is carried (and copied)
    from one step to the next.
    """

    name: ClassVar[str] = "anderson"
    history: int = option(5, at_least(1), "m: difference columns kept (capped at the problem size)")
    damping: float = option(
        1.0, between(0, 1, low_open=True), "β of z⁺ = z + β g − (ΔZ + β ΔG) γ"
    )
    ridge: float = option(
        1e-6, between(0, 1, high_open=True),
        "λ of (Ĝ + λ I) γ̂ = ĉ, relative to the unit-diagonal scaled Gram matrix Ĝ",
    )
    max_condition: Optional[float] = option(
        None, above(1), "restart the history above this condition number of Ĝ (None: 1/(100 ε))"
    )
    restart_increase: float = option(
        10.0, at_least(1),
        "restart the history after a step that raised ‖f(z) − z‖ by more than this factor",
    )

    def init(self, z: Matrix, fz: Matrix, stopping: Stopping) -> AndersonState:
        batch, size = z.shape
        m = max(1, min(self.history, stopping.max_iter, size))
        buffers = jnp.zeros((batch, m, size), z.dtype)
        real = jnp.finfo(z.dtype).dtype
        return AndersonState(
            dg=buffers, du=buffers, gram=jnp.zeros((batch, m, m), z.dtype),
            coeff=jnp.zeros((batch, m), z.dtype), valid=jnp.zeros((batch, m), bool),
            g_prev_norm=jnp.full((batch,), jnp.inf, real), slot=jnp.zeros((), jnp.int32),
        )

    def restart(self, state: AndersonState, z: Matrix, fz: Matrix, rows: jax.Array) -> AndersonState:
        return state._replace(
            valid=state.valid & ~rows[:, None],
            g_prev_norm=jnp.where(rows, jnp.inf, state.g_prev_norm),
        )

    def condition_limit(self, dtype: Any) -> float:
        """The condition number of the scaled Gram matrix above which the history restarts."""
        if self.max_condition is not None:
            return float(self.max_condition)
        return 0.01 / float(jnp.finfo(dtype).eps)

    def step(
        self, f: FlatMap, z: Matrix, fz: Matrix, state: AndersonState, active: jax.Array,
        stopping: Stopping,
    ) -> Step:
        beta, ridge = self.damping, self.ridge
        m = state.dg.shape[1]
        real = jnp.finfo(z.dtype).dtype
        g = fz - z
        gram, c, valid = state.gram, state.coeff, state.valid
        newest = jnp.arange(m) == (state.slot - 1) % m  # the column stored last step

        # Solve (Ĝ + λ I) γ̂ = ĉ with Ĝ = D⁻¹ G D⁻¹ (unit diagonal), γ = D⁻¹ γ̂.
        diagonal = jnp.real(jnp.diagonal(gram, axis1=1, axis2=2))
        scale = jnp.sqrt(jnp.maximum(diagonal, 0))
        scale = jnp.where(valid & (scale > 0), scale, 1).astype(real)
        pair = valid[:, :, None] & valid[:, None, :]
        eye = jnp.eye(m, dtype=z.dtype)
        scaled = jnp.where(pair, gram / (scale[:, :, None] * scale[:, None, :]), eye)
        rhs = jnp.where(valid, c / scale, 0)
        gamma_scaled, pivots = cholesky_solve(scaled + ridge * eye, rhs)
        condition = (jnp.max(pivots, axis=1) / jnp.min(pivots, axis=1)) ** 2
        gamma = gamma_scaled / scale
        gamma = jnp.where(valid, gamma, 0)

        # A restarted row keeps only the newest column: one secant step, γ_s = Δgᴴg / ‖Δg‖².
        g_norm = jnp.sqrt(jnp.real(_dot_rows(g, g)))
        raised = g_norm > self.restart_increase * state.g_prev_norm
        ill = ~(condition <= self.condition_limit(z.dtype))  # NaN counts as ill
        restart_rows = raised | ill | ~jnp.all(jnp.isfinite(gamma), axis=1)
        only_newest = newest[None, :] & valid
        newest_norm2 = jnp.sum(jnp.where(only_newest, diagonal, 0), axis=1)
        secant = jnp.sum(jnp.where(only_newest, c, 0), axis=1) / jnp.where(
            newest_norm2 > 0, newest_norm2 * (1 + ridge), 1).astype(z.dtype)
        gamma = jnp.where(restart_rows[:, None], jnp.where(only_newest, secant[:, None], 0), gamma)
        valid = jnp.where(restart_rows[:, None], only_newest, valid)

        plain = z + beta * g
        z_new = plain - jnp.einsum("bmn,bm->bn", state.du, gamma)  # one pass over ΔZ + β ΔG
        z_new = jnp.where(jnp.all(jnp.isfinite(z_new), axis=1, keepdims=True), z_new, plain)
        fz_new = f(z_new)

        # Store the difference to the new point, with its inner products for the next step.
        s = state.slot
        g_new = fz_new - z_new
        dz, dg_new = z_new - z, g_new - g
        dg_norm2 = jnp.real(_dot_rows(dg_new, dg_new))
        fresh = active & jnp.isfinite(dg_norm2) & (dg_norm2 > 0)
        fresh = fresh & jnp.all(jnp.isfinite(dz), axis=1)
        dg_new = jnp.where(fresh[:, None], dg_new, 0)
        dg = state.dg.at[:, s].set(dg_new)
        du = state.du.at[:, s].set(jnp.where(fresh[:, None], dz + beta * dg_new, 0))
        # Read from the updated buffer, so XLA updates it in place instead of copying it.
        conj_dg = jnp.conj(dg)
        c_new = jnp.einsum("bmn,bn->bm", conj_dg, g_new)  # ΔGᴴ g at the new point
        column = jnp.einsum("bmn,bn->bm", conj_dg, dg_new).at[:, s].set(dg_norm2.astype(z.dtype))
        gram = gram.at[:, :, s].set(column).at[:, s, :].set(jnp.conj(column))  # ΔGᴴ ΔG
        valid = jnp.where((jnp.arange(m) == s)[None, :], fresh[:, None], valid)
        new_state = AndersonState(
            dg=dg, du=du, gram=gram, coeff=c_new, valid=valid,
            g_prev_norm=jnp.where(active, g_norm, state.g_prev_norm), slot=(s + 1) % m,
        )
        return z_new, fz_new, new_state, jnp.ones(z.shape[:1], jnp.int32)


UNROLLED_SIZE = 8  # systems up to this size are solved by unrolled elementwise code


def cholesky_solve(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Solve the Hermitian positive definite systems ``a x = b`` (``a``: ``(batch, m, m)``,
    ``b``: ``(batch, m)``); return ``x`` and the Cholesky pivots ``diag(L)`` (real).

    For ``m ≤ UNROLLED_SIZE`` the factorisation and both triangular solves are unrolled
    into elementwise operations on the batch, which XLA fuses into a few kernels (a
    library call per tiny system costs more than the arithmetic).
    """
    m = a.shape[-1]
    if m > UNROLLED_SIZE:
        chol = jnp.linalg.cholesky(a)
        x = jax.scipy.linalg.cho_solve((chol, True), b[..., None])[..., 0]
        return x, jnp.real(jnp.diagonal(chol, axis1=1, axis2=2))
    lower = [[None] * m for _ in range(m)]
    for j in range(m):
        pivot = a[:, j, j] - sum((lower[j][k] * jnp.conj(lower[j][k]) for k in range(j)), 0)
        lower[j][j] = jnp.sqrt(jnp.real(pivot)).astype(a.dtype)
        for i in range(j + 1, m):
            entry = a[:, i, j] - sum((lower[i][k] * jnp.conj(lower[j][k]) for k in range(j)), 0)
            lower[i][j] = entry / lower[j][j]
    y = []
    for i in range(m):
        y.append((b[:, i] - sum((lower[i][k] * y[k] for k in range(i)), 0)) / lower[i][i])
    x = [None] * m
    for i in reversed(range(m)):
        rest = sum((jnp.conj(lower[k][i]) * x[k] for k in range(i + 1, m)), 0)
        x[i] = (y[i] - rest) / lower[i][i]
    pivots = jnp.stack([jnp.real(lower[i][i]) for i in range(m)], axis=1)
    return jnp.stack(x, axis=1), pivots
