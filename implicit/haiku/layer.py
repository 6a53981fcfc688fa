"""The fixed-point layer as a Haiku module: :class:`DEQ`.

    class Block(hk.Module):
        def __call__(self, z, x):                     # one weight-tied layer
            return jnp.tanh(hk.Linear(d)(z) + x)

    def forward(x):
        z_star = DEQ(lambda z, x: Block()(z, x), solver="anderson", max_iter=30)(x)
        return hk.Linear(10)(z_star)

``fn(z, x, *extra) -> z`` builds its own modules. :class:`DEQ` transforms ``fn``
and lifts its parameters once into the outer transform, so they sit in the outer
params tree under the DEQ module's name exactly as if ``fn`` were called inside
it (``"deq/block/~/linear"``). It then solves ``z* = fn(z*, x, *extra)`` with
:func:`implicit.fixed_point`, so the parameters and ``x`` get the derivative of
the chosen gradient mode.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import haiku as hk
import jax
import jax.numpy as jnp

import solvers
from implicit.fixed_point import fixed_point
from implicit.modes import Mode, as_mode
from implicit.regularizers import JacobianPenalty
from solvers import Solver
from solvers.types import PyTree
from solvers.validation import check_state

STATS_FIELDS = ("steps", "fevals", "abs_residual", "rel_residual", "converged")
"""The statistics a DEQ with ``record_state=True`` stores with ``hk.set_state``."""


class DEQ(hk.Module):
    """A Deep Equilibrium layer: ``layer(x, z0=None, *extra)`` returns ``z* = fn(z*, x, *extra)``.

    Args:
      fn: ``fn(z, x, *extra) -> z``, returning the structure, shapes and dtypes of
        ``z``; it creates its Haiku modules inside (do not close over modules
        created outside). It must not use Haiku state.
      solver: the forward solver: a name from ``solvers.available()`` or a
        :class:`solvers.Solver` value.
      backward: the gradient mode: a value of :mod:`implicit.modes` (``Implicit(...)``,
        ``Phantom(...)``, ``JFB()``, ``Unroll()``) or the name of one for its defaults.
      name: the module name (default ``"deq"``).
      return_stats: also return ``stats``, the :class:`solvers.Stats` of the forward
        solve (no gradient).
      record_state: also store the statistics :data:`STATS_FIELDS` with
        ``hk.set_state`` (then transform with ``hk.transform_with_state``).
      jacobian_penalty: a :class:`implicit.JacobianPenalty`: also return its value at
        ``z*`` for ``fn`` with the layer's parameters and rng key, to add (weighted)
        to the loss. It draws one key with ``hk.next_rng_key()``.
      transform_params: ``params ↦ params`` applied to ``fn``'s parameters once per call,
        before the solve (so not at every iteration), e.g.
        :func:`implicit.haiku.spectral_norm_params`; the stored parameters are the
        untransformed ones.
      **solver_options: options of ``solver`` (``max_iter``, ``tol``, ``stop_mode``,
        ``batch_axis``, ``history``, ...), checked now: an unknown name raises
        ``TypeError`` listing the valid ones.

    Returns, when called: ``z*``; with ``return_stats``, ``(z*, stats)``; with a
    ``jacobian_penalty``, the penalty is appended: ``(z*, penalty)`` or
    ``(z*, stats, penalty)``.

    Randomness: when the transform is given an rng, one key is drawn per call
    before the solve and ``fn`` is applied with that same key at every iteration,
    so ``hk.next_rng_key()`` inside ``fn`` gives the same dropout mask throughout
    the solve (variational dropout) and ``fn`` stays a fixed map.
    """

    def __init__(
        self,
        fn: Callable[..., PyTree],
        solver: Union[str, Solver] = "broyden",
        backward: Union[str, Mode] = "implicit",
        name: Optional[str] = None,
        *,
        return_stats: bool = False,
        record_state: bool = False,
        jacobian_penalty: Optional[JacobianPenalty] = None,
        transform_params: Optional[Callable[[hk.Params], hk.Params]] = None,
        **solver_options: Any,
    ) -> None:
        super().__init__(name=name)
        self.fn = fn
        self.solver = solvers.get(solver, **solver_options)
        self.backward = as_mode(backward)
        self.return_stats = return_stats
        self.record_state = record_state
        if jacobian_penalty is not None and not isinstance(jacobian_penalty, JacobianPenalty):
            raise TypeError(
                f"jacobian_penalty must be an implicit.JacobianPenalty, got {jacobian_penalty!r}"
            )
        self.jacobian_penalty = jacobian_penalty
        self.transform_params = transform_params
        self._inner = hk.transform(fn)

    def __call__(self, x: PyTree, z0: Optional[PyTree] = None, *extra: PyTree) -> Any:
        """Solve ``z* = fn(z*, x, *extra)`` from ``z0`` (default: zeros shaped like ``x``)."""
        if z0 is None:
            z0 = jax.tree_util.tree_map(jnp.zeros_like, x)
        # Before Haiku initialises fn on z0: a non-floating state is named here, not there.
        check_state(z0, self.solver.options["batch_axis"], name="the DEQ's z0 (zeros like x "
                    "when not given)")
        init_key = hk.maybe_next_rng_key() if hk.running_init() else None
        params = hk.experimental.transparent_lift(self._inner.init, allow_reuse=True)(
            init_key, z0, x, *extra
        )
        if self.transform_params is not None:
            params = self.transform_params(params)
        key = hk.maybe_next_rng_key()
        apply = self._inner.apply

        def layer(z: PyTree, params: Any, x: PyTree, *extra: PyTree) -> PyTree:
            return apply(params, key, z, x, *extra)

        solution = fixed_point(
            layer, z0, params, x, *extra, solver=self.solver, backward=self.backward
        )
        if self.record_state:
            for field in STATS_FIELDS:
                hk.set_state(field, getattr(solution.stats, field))
        outputs = (solution.value, solution.stats) if self.return_stats else (solution.value,)
        if self.jacobian_penalty is not None:
            penalty = self.jacobian_penalty(
                lambda z, x, *extra: layer(z, params, x, *extra),
                solution.value, x, *extra, key=hk.next_rng_key(),
            )
            outputs += (penalty,)
        return outputs if len(outputs) > 1 else outputs[0]
