"""The one iteration loop that every solver shares; solvers differ only in their :class:`Rule`.

The loop solves ``z = f(z)`` for a ``(batch, size)`` matrix of independent rows
(see :mod:`solvers.flat`). A :class:`Rule` proposes the next point and evaluates
``f`` there; the loop owns everything else, identically for every solver:

* the stop-mode residual ``r(z) = ‖f(z) − z‖`` (``"abs"``) or
  ``‖f(z) − z‖ / ‖f(z)‖`` (``"rel"``), per row;
* per-row stopping: a row stops when ``r ≤ tol`` (converged), when its residual
  is non-finite or exceeds ``divergence_factor`` times its initial residual
  (diverged), or when its best residual fell by less than a fraction
  ``stall_tol`` over the last ``stall_window`` iterations (stalled);
* stopped rows are frozen, and the loop ends when every row has stopped or after
  ``max_iter`` iterations;
* best-iterate tracking: the returned row is the lowest-residual point seen, so a
  finite iterate is returned whenever one was seen;
* statistics (:class:`solvers.types.Stats`), per row.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from solvers.types import Stats

Matrix = jax.Array  # (batch, size)
FlatMap = Callable[[Matrix], Matrix]


class Rule(NamedTuple):
    """How a solver moves from one point to the next.

    ``init(z, fz) -> state`` starts the solver's own state from ``z0`` and
    ``f(z0)``. ``step(f, z, fz, state, active) -> (z_new, fz_new, state, fevals)``
    returns the next point, ``f`` at it, the new state and the per-row number of
    evaluations of ``f`` it spent. Rows where ``active`` is false are discarded
    by the loop; the rule may compute anything finite for them.
    """

    init: Callable[[Matrix, Matrix], Any]
    step: Callable[[FlatMap, Matrix, Matrix, Any, jax.Array], tuple[Matrix, Matrix, Any, jax.Array]]


class LoopOptions(NamedTuple):
    max_iter: int
    tol: float
    stop_mode: str
    stall_window: int
    stall_tol: float
    divergence_factor: float
    fixed_length: bool


def row_norm(x: Matrix) -> jax.Array:
    """The Euclidean norm of every row of ``x``."""
    return jnp.sqrt(jnp.sum(jnp.real(x * jnp.conj(x)), axis=1))


def residuals(z: Matrix, fz: Matrix) -> tuple[jax.Array, jax.Array]:
    """Per-row ``(‖f(z) − z‖, ‖f(z) − z‖ / ‖f(z)‖)``; the relative one is 0/0 = 0 safe."""
    absolute = row_norm(fz - z)
    scale = row_norm(fz)
    tiny = jnp.finfo(absolute.dtype).tiny
    relative = absolute / jnp.maximum(scale, tiny)
    return absolute, relative


def bounded_while(
    cond: Callable[[Any], jax.Array],
    body: Callable[[Any], Any],
    carry: Any,
    max_steps: int,
    fixed_length: bool,
) -> Any:
    """``while cond(carry)`` (at most ``max_steps`` times): ``carry = body(carry)``.

    With ``fixed_length`` it is a ``lax.scan`` of exactly ``max_steps`` steps, each
    a no-op once ``cond`` fails, so reverse-mode autodiff can go through it and
    the result is the same as the ``lax.while_loop`` one.
    """
    if fixed_length:

        def masked_step(c: Any, _: None) -> tuple[Any, None]:
            keep_going = cond(c)
            new = body(c)
            return jax.tree_util.tree_map(lambda a, b: jnp.where(keep_going, a, b), new, c), None

        return lax.scan(masked_step, carry, None, length=max_steps)[0]

    def counted_cond(state: tuple[jax.Array, Any]) -> jax.Array:
        count, c = state
        return (count < max_steps) & cond(c)

    def counted_body(state: tuple[jax.Array, Any]) -> tuple[jax.Array, Any]:
        count, c = state
        return count + 1, body(c)

    return lax.while_loop(counted_cond, counted_body, (jnp.zeros((), jnp.int32), carry))[1]


class _Carry(NamedTuple):
    k: jax.Array
    z: Matrix
    fz: Matrix
    rule_state: Any
    active: jax.Array
    best_z: Matrix
    best: jax.Array
    best_abs: jax.Array
    best_rel: jax.Array
    initial: jax.Array
    steps: jax.Array
    fevals: jax.Array
    trace: jax.Array


def iterate(rule: Rule, f: FlatMap, z0: Matrix, options: LoopOptions) -> tuple[Matrix, Stats]:
    """Solve ``z = f(z)`` row by row from ``z0``; return the best rows and per-row :class:`Stats`."""
    batch = z0.shape[0]
    fz0 = f(z0)
    abs0, rel0 = residuals(z0, fz0)
    res0 = abs0 if options.stop_mode == "abs" else rel0
    trace = jnp.zeros((batch, options.max_iter + 1), res0.dtype).at[:, 0].set(res0)
    carry = _Carry(
        k=jnp.zeros((), jnp.int32),
        z=z0,
        fz=fz0,
        rule_state=rule.init(z0, fz0),
        active=jnp.isfinite(res0) & (res0 > options.tol),
        best_z=z0,
        best=res0,
        best_abs=abs0,
        best_rel=rel0,
        initial=res0,
        steps=jnp.zeros((batch,), jnp.int32),
        fevals=jnp.ones((batch,), jnp.int32),
        trace=trace,
    )

    def body(c: _Carry) -> _Carry:
        z_new, fz_new, rule_state, fevals = rule.step(f, c.z, c.fz, c.rule_state, c.active)
        abs_new, rel_new = residuals(z_new, fz_new)
        res_new = abs_new if options.stop_mode == "abs" else rel_new
        finite = jnp.isfinite(res_new)
        move = c.active & finite
        improved = move & (res_new < c.best)
        best = jnp.where(improved, res_new, c.best)
        k = c.k + 1
        trace = lax.dynamic_update_slice_in_dim(c.trace, best[:, None], k, axis=1)
        diverged = ~finite | (res_new > options.divergence_factor * c.initial)
        stalled = jnp.zeros_like(diverged)
        if options.stall_window:
            window_start = jnp.maximum(k - options.stall_window, 0)
            before = lax.dynamic_slice_in_dim(c.trace, window_start, 1, axis=1)[:, 0]
            stalled = (k >= options.stall_window) & (best > before * (1 - options.stall_tol))
        done = (best <= options.tol) | diverged | stalled
        return _Carry(
            k=k,
            z=jnp.where(move[:, None], z_new, c.z),
            fz=jnp.where(move[:, None], fz_new, c.fz),
            rule_state=rule_state,
            active=c.active & ~done,
            best_z=jnp.where(improved[:, None], z_new, c.best_z),
            best=best,
            best_abs=jnp.where(improved, abs_new, c.best_abs),
            best_rel=jnp.where(improved, rel_new, c.best_rel),
            initial=c.initial,
            steps=c.steps + c.active.astype(jnp.int32),
            fevals=c.fevals + jnp.where(c.active, fevals, 0).astype(jnp.int32),
            trace=trace,
        )

    carry = bounded_while(
        lambda c: jnp.any(c.active), body, carry, options.max_iter, options.fixed_length
    )
    columns = jnp.arange(options.max_iter + 1)
    trace = jnp.where(columns[None, :] > carry.k, carry.best[:, None], carry.trace)
    stats = Stats(
        steps=carry.steps,
        fevals=carry.fevals,
        abs_residual=carry.best_abs,
        rel_residual=carry.best_rel,
        converged=carry.best <= options.tol,
        trace=trace,
    )
    return carry.best_z, stats
