"""The exact derivative of the reversible iteration, in memory that does not grow with its steps.

The forward solve (:class:`solvers.ReversibleFixedPoint`, damping ``β``) runs, from
``y₀ = z₀``,

    y_{n+1} = (1 − β) y_n + β f(z_n, θ),      z_{n+1} = (1 − β) z_n + β f(y_{n+1}, θ),

and returns, per sample, its best iterate ``z_k`` (``k ≤ N``, the steps it took; ``k = N``
for a sample that converged). That value is an explicit function of ``θ`` and ``z₀``, and
its derivative is the one of these ``k`` steps, with nothing approximated:

* **reverse mode** (:func:`reverse`) runs the steps backwards from the final pair
  ``(y_N, z_N)``, rebuilding each earlier pair by the inverse step

      z_{n−1} = (z_n − β f(y_n)) / (1 − β),      y_{n−1} = (y_n − β f(z_{n−1})) / (1 − β),

  and backpropagates through the step it has just rebuilt. With ``ȳ, z̄`` the cotangents of
  ``(y_n, z_n)``, one step back is (``Jᵀ·`` and ``∂_θfᵀ·`` from one VJP of ``f`` at each
  point, whose value is the ``f`` the inverse step needs):

      ū = ȳ + β J(y_n)ᵀ z̄,                      θ̄ += β ∂_θf(y_n)ᵀ z̄,
      z̄ ← (1 − β) z̄ + β J(z_{n−1})ᵀ ū,         θ̄ += β ∂_θf(z_{n−1})ᵀ ū,
      ȳ ← (1 − β) ū.

  The cotangent of the value enters ``z̄`` at step ``k``; at step 0, ``z̄₀ = ȳ + z̄``. Two
  evaluations and two VJPs of ``f`` per step, and nothing is stored but the current pair
  and its cotangents: memory is constant in ``N``, and no linear system is solved;
* **forward mode** (:func:`replay`) runs the ``k`` steps again under ``jax.jvp``.

Rounding. In exact arithmetic the inverse steps rebuild the forward iterates exactly. In
floating point each rebuilt pair carries a rounding error of a few ulps, and the inverse
steps amplify it by as much as the forward steps contracted, fastest along the directions
they contracted fastest (by up to ``1/(1 − β)`` per step): the rebuilt start can lie far
from ``z₀``. The cotangents shrink on the way back by the same factors, direction by
direction, so to first order the two cancel and the gradient keeps an error of order
``N·ε``; what survives comes through the nonlinearity of ``f``, which mixes the large
rebuild errors of fast directions into the slow ones, whose cotangents have shrunk only by
about the factor ``r_k / r₀`` by which the forward solve reduced its residual.
:func:`gradient_error` turns that into a per-sample estimate from two numbers the backward
pass has for free (the rebuilt start's distance from the true ``z₀``, and the residual
trace). It stays small when the forward solve stops at its tolerance; it grows
exponentially with steps taken after the iteration stalled at rounding level (``tol = 0``
with a fixed ``max_iter``, a tolerance below what the dtype resolves), which contract
nothing and whose inverses amplify noise with nothing to cancel it, and faster for ``β``
near 1. A sample whose rebuilt pair overflows stops there, keeping the contributions of the
steps rebuilt before, and is reported as failed. McCallum et al. (2025) discuss the same
trade-off; ``python -m benchmarks.backward_modes`` shows it in float32 (its ``reversible``
row, against the float64 exact gradient).

McCallum, Arora and Foster (2025), "Reversible deep equilibrium models", arXiv:2509.12917.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from solvers import ReversibleFixedPoint, ReversibleState
from solvers.pytree import scaled_row_norms
from solvers.types import PyTree

Matrix = jax.Array
ThetaMap = Callable[[Matrix, PyTree], Matrix]
"""``F(Z, θ)``: ``f`` on the ``(batch, size)`` matrix view of the state (:mod:`solvers.flat`)."""


def best_steps(trace: jax.Array) -> jax.Array:
    """Per row, the iteration at which the loop's best iterate was found: the first column of
    the residual trace (``(batch, max_iter + 1)``, non-increasing) equal to its last."""
    return jnp.argmax(trace == trace[:, -1:], axis=1).astype(jnp.int32)


def _finite_rows(*matrices: Matrix) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(m), axis=1) for m in matrices]), axis=0)


def replay(method: ReversibleFixedPoint, F: ThetaMap, theta: PyTree, z0: Matrix,
           best: jax.Array) -> Matrix:
    """``z_k`` of every row (``k = best``) from ``y₀ = z₀``: the forward iteration again, as a
    function of ``z0`` and ``theta`` to run under ``jax.jvp``."""

    def f(z: Matrix) -> Matrix:
        return F(z, theta)

    def body(carry: tuple) -> tuple:
        j, y, z, fz = carry
        live = (j < best)[:, None]
        y_new, z_new, fz_new = method.advance(f, y, z, fz)
        return (j + 1, jnp.where(live, y_new, y), jnp.where(live, z_new, z),
                jnp.where(live, fz_new, fz))

    start = (jnp.zeros((), jnp.int32), z0, z0, f(z0))
    return lax.while_loop(lambda c: c[0] < jnp.max(best, initial=0), body, start)[2]


class Reversed(NamedTuple):
    """What :func:`reverse` returns: the cotangents, and how faithful the rebuild was."""

    z0_bar: Matrix
    theta_bar: PyTree
    start_error: jax.Array  # per row: ‖rebuilt start − z0‖ / max(‖z0‖, ‖z_N‖); inf if lost
    lost: jax.Array  # per row: the rebuilt pair went non-finite; the gradient is truncated


def gradient_error(start_error: jax.Array, trace: jax.Array) -> jax.Array:
    """Per row, an estimate of the relative error that rounding leaves in the gradient:
    the rebuilt start's relative error times the factor ``r_k / r₀`` by which the forward
    solve reduced its residual (the residual trace's last and first columns).

    Rebuild errors grow backwards fastest along the directions the forward steps contracted
    fastest, where the cotangents shrink as fast, so the two cancel to first order; what
    remains comes from the slowest directions, whose cotangents shrink only by about the
    residual's own reduction. Against float64 references the estimate is of the order of the
    actual error, and above it where the rebuild lost the trajectory.
    """
    first, last = trace[:, 0], trace[:, -1]
    reduction = jnp.where(jnp.isfinite(first) & (first > 0), last / first, 0)
    return jnp.where(start_error > 0, start_error * reduction, 0)


def reverse(method: ReversibleFixedPoint, F: ThetaMap, theta: PyTree, z0: Matrix,
            final: ReversibleState, best: jax.Array, cotangent: Matrix) -> Reversed:
    """Backpropagate ``cotangent`` (of ``z_k``, ``k = best``, per row) through the iteration,
    rebuilding it backwards from ``final`` (see the module docstring); rows run in lockstep,
    each from its own ``N`` (``final.steps``)."""
    beta = method.damping
    scale = 1 / (1 - beta)
    zeros = jnp.zeros_like(z0)

    def body(carry: tuple) -> tuple:
        j, y, z, y_bar, z_bar, theta_bar, lost = carry
        z_bar = z_bar + jnp.where((best == j)[:, None], cotangent, 0)
        live = (j <= final.steps) & ~lost
        fy, pull_y = jax.vjp(F, y, theta)
        z_prev = (z - beta * fy) * scale
        ok_z = live & _finite_rows(z_prev)
        z_prev = jnp.where(ok_z[:, None], z_prev, z)
        y_cot, theta_1 = pull_y(beta * jnp.where(live[:, None], z_bar, 0))
        u = y_bar + y_cot
        fz, pull_z = jax.vjp(F, z_prev, theta)
        y_prev = (y - beta * fz) * scale
        ok = ok_z & _finite_rows(y_prev)
        z_cot, theta_2 = pull_z(beta * jnp.where(ok_z[:, None], u, 0))
        keep, drop = ok[:, None], (live & ~ok)[:, None]
        theta_bar = jax.tree_util.tree_map(lambda a, b, c: a + b + c, theta_bar, theta_1, theta_2)
        return (
            j - 1,
            jnp.where(keep, y_prev, y),
            jnp.where(keep, z_prev, z),
            jnp.where(keep, (1 - beta) * u, jnp.where(drop, 0, y_bar)),
            jnp.where(keep, (1 - beta) * z_bar + z_cot, jnp.where(drop, 0, z_bar)),
            theta_bar,
            lost | (live & ~ok),
        )

    start = (jnp.max(final.steps, initial=0), final.y, final.z, zeros, zeros,
             jax.tree_util.tree_map(jnp.zeros_like, theta),
             jnp.zeros(z0.shape[:1], bool))
    _, y, z, y_bar, z_bar, theta_bar, lost = lax.while_loop(lambda c: c[0] > 0, body, start)
    at_start = (best == 0)[:, None]
    z0_bar = jnp.where(lost[:, None], jnp.where(at_start, cotangent, 0),
                       y_bar + z_bar + jnp.where(at_start, cotangent, 0))
    y_off, z_off, start_norm, end_norm = scaled_row_norms([y - z0], [z - z0], [z0], [final.z])
    reach = jnp.maximum(jnp.maximum(start_norm, end_norm), jnp.finfo(start_norm.dtype).tiny)
    start_error = jnp.where(lost, jnp.inf, jnp.maximum(y_off, z_off) / reach)
    return Reversed(z0_bar, theta_bar, start_error, lost)
