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

from implicit.correction import Correction
from implicit.layer import DEQSettings
from implicit.modes import Mode
from implicit.regularizers import JacobianPenalty
from solvers import Solver
from solvers.types import PyTree
from solvers.validation import check_state

STATS_FIELDS = ("steps", "fevals", "abs_residual", "rel_residual", "converged")
"""The statistics a DEQ with ``record_state=True`` stores with ``hk.set_state``."""


class DEQ(hk.Module):
    """A Deep Equilibrium layer: ``layer(x, z0=None, *extra)`` returns ``z* = fn(z*, x, *extra)``.

    ``DEQ(fn, *, solver, backward, return_stats, jacobian_penalty, transform_params,
    **solver_options)`` is the signature of every framework's layer
    (:mod:`implicit.layer`); ``name`` and ``record_state`` are Haiku's own.

    Args:
      fn: ``fn(z, x, *extra) -> z``, returning the structure, shapes and dtypes of
        ``z``; it creates its Haiku modules inside (do not close over modules
        created outside). It must not use Haiku state.
      solver, backward, return_stats, jacobian_penalty, transform_params, correction,
        **solver_options: as for every layer (:mod:`implicit.layer`). The penalty draws
        one key with ``hk.next_rng_key()``; ``transform_params`` maps the lifted Haiku
        parameters, e.g. :func:`implicit.haiku.spectral_norm_params` (the stored ones
        stay untransformed).
      name: the module name (default ``"deq"``).
      record_state: also store the statistics :data:`STATS_FIELDS` with
        ``hk.set_state`` (then transform with ``hk.transform_with_state``).

    Returns, when called: ``z*``; with ``return_stats``, ``(z*, stats)``; with a
    ``jacobian_penalty``, the penalty is appended: ``(z*, penalty)`` or
    ``(z*, stats, penalty)``.

    Randomness: when the transform is given an rng, one key is drawn per call
    before the solve and ``fn`` is applied with that same key at every iteration,
    so ``hk.next_rng_key()`` inside ``fn`` gives the same dropout mask throughout
    the solve (variational dropout) and ``fn`` stays a fixed map.
    """

    def __init__(
        self, fn: Callable[..., PyTree], *, solver: Union[str, Solver] = "broyden",
        backward: Union[str, Mode] = "implicit", return_stats: bool = False,
        jacobian_penalty: Optional[JacobianPenalty] = None,
        transform_params: Optional[Callable[[hk.Params], hk.Params]] = None,
        correction: Optional[Correction] = None,
        name: Optional[str] = None, record_state: bool = False, **solver_options: Any,
    ) -> None:
        super().__init__(name=name)
        self.fn = fn
        self.settings = DEQSettings.build(solver, backward, return_stats, jacobian_penalty,
                                          transform_params, solver_options, correction)
        self.record_state = record_state
        self._inner = hk.transform(fn)

    solver = property(lambda self: self.settings.solver, doc="The forward solver.")
    backward = property(lambda self: self.settings.backward, doc="The gradient mode.")

    def __call__(self, x: PyTree, z0: Optional[PyTree] = None, *extra: PyTree) -> Any:
        """Solve ``z* = fn(z*, x, *extra)`` from ``z0`` (default: zeros shaped like ``x``)."""
        if z0 is None:
            z0 = jax.tree_util.tree_map(jnp.zeros_like, x)
        # Before Haiku initialises fn on z0: a non-floating state is named here, not there.
        check_state(z0, self.solver.batch_axis, name="the DEQ's z0 (zeros like x when not "
                    "given)")
        init_key = hk.maybe_next_rng_key() if hk.running_init() else None
        params = hk.experimental.transparent_lift(self._inner.init, allow_reuse=True)(
            init_key, z0, x, *extra
        )
        key = hk.maybe_next_rng_key()
        apply = self._inner.apply

        def layer(z: PyTree, params: Any, x: PyTree, *extra: PyTree) -> PyTree:
            return apply(params, key, z, x, *extra)

        penalty_key = hk.next_rng_key() if self.settings.jacobian_penalty is not None else None
        solution, outputs = self.settings.solve(layer, z0, params, x, *extra, key=penalty_key)
        if self.record_state:
            for field in STATS_FIELDS:
                hk.set_state(field, getattr(solution.stats, field))
        return outputs
