"""The one iteration loop that every solver shares; solvers differ only in their method.

The loop solves ``z = f(z)`` for a ``(batch, size)`` matrix of independent rows
(see :mod:`solvers.flat`). A :class:`solvers.Method` proposes the next point and
evaluates ``f`` there; the loop owns everything else, identically for every solver, by
the rules of a :class:`solvers.Stopping`:

* the residuals ``‖f(z) − z‖`` and ``‖f(z) − z‖ / ‖f(z)‖`` per row, accumulated in at
  least single precision and safe from overflow (:func:`solvers.pytree.row_norms`);
  the stop-mode residual ``r`` is the first (``"abs"``) or the second (``"rel"``);
* per-row stopping, with the reason (:class:`Reason`): ``r ≤ tol`` (converged); a
  non-finite residual (non-finite); an absolute residual above
  ``divergence_factor`` times the first one (diverged); a lowest absolute residual
  that fell by less than a fraction ``stall_tol`` over the last ``stall_window``
  iterations (stalled); or the iteration budget (max_iter). The guards watch the
  absolute residual in both stop modes, so iterates that run away, where ``‖f(z)‖``
  grows and the relative residual shrinks, are never taken for convergence;
* stopped rows are frozen, and the loop ends when every row has stopped or after
  ``max_iter`` iterations; ``tol = 0`` turns the stall guard off, so every row runs
  ``max_iter`` iterations unless it diverges or hits an exact fixed point;
* the best iterate: the returned row is the lowest stop-mode residual seen among
  iterates whose absolute residual is below the best one's (a converged iterate that
  improved on the start always qualifies), so a finite iterate is returned whenever
  one was seen and a runaway one never is;
* a fallback: with a second, :class:`~solvers.method.Restartable` method, a row that
  stalls, diverges or goes non-finite continues from its best iterate under that method,
  within the same ``max_iter``;
* growing state: a :class:`~solvers.method.Growable` method starts with small buffers
  and the loop moves its state into larger ones only when they fill while a row is still
  active;
* statistics (:class:`solvers.types.Stats`), per row;
* recorded states: with ``record = (k₁, …, k_K)`` the loop hands out, per row, the
  iterate ``z_{kⱼ}`` it passed through after ``kⱼ`` iterations (``k = 0``: ``z0``), or the
  row's returned iterate when it had stopped before ``kⱼ`` (torchdeq's ``indexing``).
"""

from __future__ import annotations

import enum
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from solvers.method import FlatMap, Growable, Matrix, Method, Restartable
from solvers.pytree import scaled_row_norms
from solvers.stopping import Stopping
from solvers.types import Stats


class Reason(enum.IntEnum):
    """Why a sample stopped: the per-sample code in :attr:`solvers.Stats.reason`."""

    CONVERGED = 0  # its stop-mode residual reached tol
    MAX_ITER = 1  # it ran out of iterations
    STALLED = 2  # its absolute residual stopped falling (stall_window, stall_tol)
    DIVERGED = 3  # its absolute residual grew past divergence_factor times the first one
    NONFINITE = 4  # f returned NaN or inf at its iterate


def residuals(z: Matrix, fz: Matrix) -> tuple[jax.Array, jax.Array]:
    """Per-row ``(‖f(z) − z‖, ‖f(z) − z‖ / ‖f(z)‖)``; the relative one is 0/0 = 0 safe."""
    absolute, scale = scaled_row_norms([fz - z], [fz])
    return absolute, absolute / jnp.maximum(scale, jnp.finfo(scale.dtype).tiny)


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


def _rows(mask: jax.Array, new: Matrix, old: Matrix) -> Matrix:
    return jnp.where(mask[:, None], new, old)


class _Guards(NamedTuple):
    """Per-row state of the stopping guards, all on the absolute residual."""

    initial: jax.Array  # the absolute residual at the (re)start: the divergence reference
    lowest: jax.Array  # the lowest absolute residual seen
    window: jax.Array  # (batch, stall_window): ``lowest`` over the last iterations, a ring
    age: jax.Array  # iterations since the (re)start


class _Carry(NamedTuple):
    k: jax.Array
    z: Matrix
    fz: Matrix
    states: tuple  # one state per method
    phase: jax.Array  # (batch,) index of the method each row moves by
    active: jax.Array
    reason: jax.Array
    best_z: Matrix
    best_fz: Optional[Matrix]  # kept only when a fallback may restart from the best iterate
    best: jax.Array  # stop-mode residual of the best iterate
    best_abs: jax.Array
    best_rel: jax.Array
    guards: _Guards
    steps: jax.Array
    fevals: jax.Array
    trace: jax.Array
    recorded: Optional[jax.Array]  # (K, batch, size): the recorded iterates, or None


def _record(record: tuple[int, ...], recorded: Optional[jax.Array], k: jax.Array,
            state: Matrix) -> Optional[jax.Array]:
    """``recorded`` with ``state`` written where the iteration count ``k`` is a recorded one."""
    if recorded is None:
        return None
    hits = jnp.asarray(record) == k
    return jnp.where(hits[:, None, None], state[None], recorded)


def _step_methods(
    methods: tuple[Method, ...], f: FlatMap, c: _Carry, stopping: Stopping
) -> tuple[Matrix, Matrix, tuple, jax.Array]:
    """One step of each row's method. With a fallback, each method steps only when one of
    its rows is active (a step evaluates ``f`` on the whole batch), and rows take their own."""
    if len(methods) == 1:
        z, fz, state, fevals = methods[0].step(f, c.z, c.fz, c.states[0], c.active, stopping)
        return z, fz, (state,), fevals

    def run(which: tuple[bool, ...]) -> Callable[[None], tuple]:
        def branch(_: None) -> tuple:
            z, fz = c.z, c.fz
            states, fevals = list(c.states), jnp.zeros_like(c.steps)
            for i, method in enumerate(methods):
                if not which[i]:
                    continue
                mine = c.active & (c.phase == i)
                z_i, fz_i, states[i], fevals_i = method.step(
                    f, c.z, c.fz, c.states[i], mine, stopping)
                z, fz = _rows(mine, z_i, z), _rows(mine, fz_i, fz)
                fevals = jnp.where(mine, fevals_i, fevals)
            return z, fz, tuple(states), fevals

        return branch

    first = jnp.any(c.active & (c.phase == 0))
    second = jnp.any(c.active & (c.phase == 1))
    index = jnp.where(first & second, 2, jnp.where(second, 1, 0))
    return lax.switch(index, [run((True, False)), run((False, True)), run((True, True))], None)


def iterate(
    method: Method, f: FlatMap, z0: Matrix, stopping: Stopping,
    fallback: Optional[Method] = None, prior: Any = None, record: tuple[int, ...] = (),
) -> tuple[Matrix, Stats, Any, Optional[jax.Array]]:
    """Solve ``z = f(z)`` row by row from ``z0`` by ``method`` under ``stopping``; return
    the best rows, per-row :class:`Stats`, the method's final state and the recorded
    iterates (``(len(record), batch, size)``, or None when ``record`` is empty).

    With ``fallback`` (a :class:`~solvers.method.Restartable` method), rows that stall,
    diverge or go non-finite under ``method`` restart from their best iterate under it.
    With ``prior`` (a final state of an earlier solve), ``method`` starts with its ``warm``
    (it must be :class:`~solvers.method.WarmStartable`). ``record`` lists iteration counts
    in ``[0, max_iter]`` whose iterates are handed out (see the module docstring).
    """
    methods = (method,) if fallback is None else (method, fallback)
    batch = z0.shape[0]
    fz0 = f(z0)
    abs0, rel0 = residuals(z0, fz0)
    res0 = abs0 if stopping.stop_mode == "abs" else rel0
    trace = jnp.zeros((batch, stopping.max_iter + 1), res0.dtype).at[:, 0].set(res0)
    window = max(stopping.window, 1)
    finite0 = jnp.isfinite(res0)
    reason0 = jnp.where(
        ~finite0, Reason.NONFINITE, jnp.where(res0 <= stopping.tol, Reason.CONVERGED, Reason.MAX_ITER)
    ).astype(jnp.int32)
    carry = _Carry(
        k=jnp.zeros((), jnp.int32),
        z=z0,
        fz=fz0,
        states=(method.init(z0, fz0, stopping) if prior is None
                else method.warm(prior, z0, fz0, stopping),
                *(_full_size(m, m.init(z0, fz0, stopping), stopping) for m in methods[1:])),
        phase=jnp.zeros((batch,), jnp.int32),
        active=finite0 & (res0 > stopping.tol),
        reason=reason0,
        best_z=z0,
        best_fz=None if fallback is None else fz0,
        best=res0,
        best_abs=abs0,
        best_rel=rel0,
        guards=_Guards(abs0, abs0, jnp.broadcast_to(abs0[:, None], (batch, window)),
                       jnp.zeros((batch,), jnp.int32)),
        steps=jnp.zeros((batch,), jnp.int32),
        fevals=jnp.ones((batch,), jnp.int32),
        trace=trace,
        recorded=(jnp.broadcast_to(z0[None], (len(record), *z0.shape)) if record else None),
    )
    stall_on = stopping.window > 0 and stopping.tol > 0

    def body(c: _Carry) -> _Carry:
        z_new, fz_new, states, fevals = _step_methods(methods, f, c, stopping)
        abs_new, rel_new = residuals(z_new, fz_new)
        res_new = abs_new if stopping.stop_mode == "abs" else rel_new
        finite = jnp.isfinite(abs_new) & jnp.isfinite(res_new)
        move = c.active & finite
        converged_now = (res_new <= stopping.tol) & (abs_new < c.guards.initial)
        improved = move & (
            ((res_new < c.best) & (abs_new < c.best_abs)) | (converged_now & (res_new < c.best))
        )
        best = jnp.where(improved, res_new, c.best)
        k = c.k + 1
        trace = lax.dynamic_update_slice_in_dim(c.trace, best[:, None], k, axis=1)

        g = c.guards
        lowest = jnp.where(move, jnp.minimum(g.lowest, abs_new), g.lowest)
        age = g.age + 1
        slot = k % window
        before = lax.dynamic_slice_in_dim(g.window, slot, 1, axis=1)[:, 0]
        stalled = (age >= window) & (lowest > before * (1 - stopping.stall_tol))
        stalled = stalled & stall_on
        diverged = finite & (abs_new > stopping.divergence_factor * g.initial)
        guards = _Guards(g.initial, lowest,
                         lax.dynamic_update_slice_in_dim(g.window, lowest[:, None], slot, axis=1),
                         age)
        failed = c.active & (~finite | diverged | stalled) & (best > stopping.tol)
        why = jnp.where(~finite, Reason.NONFINITE, jnp.where(diverged, Reason.DIVERGED,
                                                             Reason.STALLED)).astype(jnp.int32)
        converged = c.active & (best <= stopping.tol)
        new = _Carry(
            k=k,
            z=_rows(move, z_new, c.z),
            fz=_rows(move, fz_new, c.fz),
            states=states,
            phase=c.phase,
            active=c.active & ~converged & ~failed,
            reason=jnp.where(converged, Reason.CONVERGED, jnp.where(failed, why, c.reason)),
            best_z=_rows(improved, z_new, c.best_z),
            best_fz=None if fallback is None else _rows(improved, fz_new, c.best_fz),
            best=best,
            best_abs=jnp.where(improved, abs_new, c.best_abs),
            best_rel=jnp.where(improved, rel_new, c.best_rel),
            guards=guards,
            steps=c.steps + c.active.astype(jnp.int32),
            fevals=c.fevals + jnp.where(c.active, fevals, 0).astype(jnp.int32),
            trace=trace,
            # A row that has stopped is at its returned iterate from then on.
            recorded=_record(record, c.recorded, k, _rows(move, z_new, c.best_z)),
        )
        if fallback is None:
            return new
        return _switch_to_fallback(new, failed & (c.phase == 0), fallback, window)

    carry = _run_growing(method, body, carry, stopping)
    columns = jnp.arange(stopping.max_iter + 1)
    trace = jnp.where(columns[None, :] > carry.k, carry.best[:, None], carry.trace)
    stats = Stats(
        steps=carry.steps,
        fevals=carry.fevals,
        abs_residual=carry.best_abs,
        rel_residual=carry.best_rel,
        converged=carry.best <= stopping.tol,
        trace=trace,
        reason=carry.reason,
    )
    recorded = carry.recorded
    if recorded is not None:  # the recorded counts the loop did not reach
        unreached = jnp.asarray(record) > carry.k
        recorded = jnp.where(unreached[:, None, None], carry.best_z[None], recorded)
    return carry.best_z, stats, carry.states[0], recorded


def _full_size(method: Method, state: Any, stopping: Stopping) -> Any:
    """``state`` grown to its full size (for loops that cannot grow it on the way)."""
    while isinstance(method, Growable) and (bigger := method.grow(state, stopping)) is not None:
        state = bigger
    return state


def _with_state(c: _Carry, state: Any) -> _Carry:
    return c._replace(states=(state, *c.states[1:]))


def _run_growing(
    method: Method, body: Callable[[_Carry], _Carry], carry: _Carry, stopping: Stopping
) -> _Carry:
    """Run ``body`` until every row stops or ``max_iter`` iterations, growing the first
    method's state (:class:`~solvers.method.Growable`) whenever it is full and a row is
    active.

    A fixed-length loop (a ``lax.scan``, for reverse mode) cannot change its carry's
    shapes, so there the state starts at full size.
    """

    def grown(c: _Carry) -> Optional[_Carry]:
        bigger = method.grow(c.states[0], stopping) if isinstance(method, Growable) else None
        return None if bigger is None else _with_state(c, bigger)

    if stopping.fixed_length:
        carry = _with_state(carry, _full_size(method, carry.states[0], stopping))
        return bounded_while(lambda c: jnp.any(c.active), body, carry, stopping.max_iter, True)

    def run(c: _Carry) -> _Carry:
        full = grown(c) is None  # decided from shapes, while tracing

        def going(c: _Carry) -> jax.Array:
            going = jnp.any(c.active) & (c.k < stopping.max_iter)
            return going if full else going & method.room(c.states[0])

        return bounded_while(going, body, c, stopping.max_iter, False)

    carry = run(carry)
    while grown(carry) is not None:
        carry = lax.cond(
            jnp.any(carry.active) & (carry.k < stopping.max_iter),
            lambda c: run(grown(c)),
            grown,
            carry,
        )
    return carry


def _switch_to_fallback(
    c: _Carry, rows: jax.Array, fallback: Restartable, window: int
) -> _Carry:
    """Rows ``rows`` restart from their best iterate under the fallback method (phase 1),
    with fresh guards and their iteration budget unchanged."""
    z, fz = _rows(rows, c.best_z, c.z), _rows(rows, c.best_fz, c.fz)
    states = (c.states[0], fallback.restart(c.states[1], z, fz, rows))
    g = c.guards
    fresh = _Guards(c.best_abs, c.best_abs, jnp.broadcast_to(c.best_abs[:, None], g.window.shape),
                    jnp.zeros_like(g.age))
    guards = jax.tree_util.tree_map(
        lambda a, b: jnp.where(rows.reshape(rows.shape + (1,) * (a.ndim - 1)), a, b), fresh, g
    )
    return c._replace(
        z=z, fz=fz, states=states, phase=jnp.where(rows, 1, c.phase), active=c.active | rows,
        reason=jnp.where(rows, Reason.MAX_ITER, c.reason), guards=guards,
    )
