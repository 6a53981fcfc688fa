"""The fixed-point layer as an Equinox module: :class:`DEQ` (needs the ``equinox`` extra).

    class Block(eqx.Module):                      # one weight-tied layer z ↦ block(z, x)
        linear: eqx.nn.Linear
        def __call__(self, z, x):
            return jnp.tanh(self.linear(z) + x)

    layer = DEQ(Block(eqx.nn.Linear(8, 8, key=key)), solver="anderson", max_iter=30)
    z_star = layer(x)                             # z* = block(z*, x)
    z_star, stats = DEQ(block, return_stats=True)(x)   # and the solvers.Stats

:class:`DEQ` holds the block as a field. When called, it splits the block into its
array leaves ``params`` and the rest with ``eqx.partition(block, eqx.is_array)`` and
solves ``z* = block(z*, x)`` with :func:`implicit.fixed_point` for
``f(z, params, x)``, which puts the block back together with ``eqx.combine`` and
applies it. ``params`` is an argument of the solve, so ``eqx.filter_grad`` reaches
the block's arrays through the derivative of the chosen gradient mode.

:func:`as_fixed_point` gives the same ``(f, params)`` for a block on its own, e.g. for
:func:`implicit.testing.check_fixed_point_grads`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp

from implicit.extras import missing

try:
    import equinox as eqx
except ImportError as error:
    raise missing("equinox") from error

from implicit.correction import Correction
from implicit.layer import DEQSettings, ParamsMap
from implicit.modes import Mode
from implicit.regularizers import JacobianPenalty
from solvers import Solver
from solvers.types import PyTree

BlockMap = Callable[[PyTree, PyTree, PyTree], PyTree]
"""``f(z, params, x) -> z``: a block as a plain function of its array leaves."""


def as_fixed_point(
    block: Callable[..., PyTree], *, key: Optional[jax.Array] = None
) -> tuple[BlockMap, PyTree]:
    """The Equinox module ``block(z, x)`` as ``(f, params)`` with ``f(z, params, x) = block(z, x)``.

    ``params`` is ``eqx.filter(block, eqx.is_array)``: the block with its array leaves
    kept and the rest replaced by ``None``; ``f`` combines it with the rest. With a
    ``key``, ``f`` calls ``block(z, x, key=key)``, the same key at every call, so a
    block with dropout applies one mask and ``z* = f(z*, params, x)`` is a fixed map.
    Check the implicit gradient of a block with:

        f, params = implicit.equinox.as_fixed_point(block)
        report = implicit.testing.check_fixed_point_grads(f, z0, params, x)
        report.assert_close(1e-6)             # float64: inside jax.enable_x64(True)
    """
    params, static = eqx.partition(block, eqx.is_array)
    keyword = {} if key is None else {"key": key}

    def f(z: PyTree, params: PyTree, x: PyTree) -> PyTree:
        return eqx.combine(params, static)(z, x, **keyword)

    return f, params


class DEQ(eqx.Module):
    """A Deep Equilibrium layer: ``layer(x, z0=None, *, key=None)`` returns
    ``z* = block(z*, x)``.

    ``DEQ(block, *, solver, backward, return_stats, jacobian_penalty, transform_params,
    **solver_options)`` is the signature of every framework's layer
    (:mod:`implicit.layer`).

    Args:
      block: an Equinox module (or any pytree callable) ``block(z, x) -> z`` returning
        the structure, shapes and dtypes of ``z``; with randomness,
        ``block(z, x, *, key)``. Its array leaves are differentiated implicitly.
      solver, backward, return_stats, jacobian_penalty, transform_params, correction,
        **solver_options: as for every layer (:mod:`implicit.layer`). The penalty's
        probes are drawn from the call's ``key``, which it needs; ``transform_params``
        maps the block's array leaves.

    Randomness (variational dropout, as in :class:`implicit.haiku.DEQ`): with
    ``key``, the block is called as ``block(z, x, key=key)`` with that one key at every
    iteration, so dropout draws one mask per solve and ``f`` is a fixed map. Without
    it, the block is called as ``block(z, x)``.

    It works under ``eqx.filter_jit``, ``eqx.filter_grad`` and ``jax.vmap`` (one solve
    per sample; or solve a batch at once with ``batch_axis=0``).
    """

    block: Callable[..., PyTree]
    settings: DEQSettings = eqx.field(static=True)

    def __init__(
        self, block: Callable[..., PyTree], *, solver: Union[str, Solver] = "broyden",
        backward: Union[str, Mode] = "implicit", return_stats: bool = False,
        jacobian_penalty: Optional[JacobianPenalty] = None,
        transform_params: Optional[ParamsMap] = None, correction: Optional[Correction] = None,
        **solver_options: Any,
    ) -> None:
        self.block = block
        self.settings = DEQSettings.build(solver, backward, return_stats, jacobian_penalty,
                                          transform_params, solver_options, correction)

    solver = property(lambda self: self.settings.solver, doc="The forward solver.")
    backward = property(lambda self: self.settings.backward, doc="The gradient mode.")

    def __call__(
        self, x: PyTree, z0: Optional[PyTree] = None, *, key: Optional[jax.Array] = None
    ) -> Any:
        """Solve ``z* = block(z*, x)`` from ``z0`` (default: zeros shaped like ``x``)."""
        if z0 is None:
            z0 = jax.tree_util.tree_map(jnp.zeros_like, x)
        f, params = as_fixed_point(self.block, key=key)
        probes = None if key is None else jax.random.fold_in(key, 1)
        return self.settings.solve(f, z0, params, x, key=probes)[1]
