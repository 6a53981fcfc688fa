"""The fixed-point layer as a Flax NNX module: :class:`DEQ` (needs the ``flax`` extra).

    class Block(nnx.Module):                      # one weight-tied layer z ↦ block(z, x)
        def __init__(self, d, rngs):
            self.linear = nnx.Linear(d, d, rngs=rngs)
        def __call__(self, z, x):
            return jnp.tanh(self.linear(z) + x)

    layer = DEQ(Block(8, nnx.Rngs(0)), solver="anderson", max_iter=30, return_stats=True)
    z_star, stats = layer(x)                      # z* = block(z*, x), solvers.Stats

:class:`DEQ` splits the block with ``nnx.split`` into its graph, its RNG state and the
rest of its state (its parameters, ``params``), and solves ``z* = block(z*, x)`` with
:func:`implicit.fixed_point` for ``f(z, params, x)``, which merges the block back
with ``nnx.merge`` and applies it. ``params`` is an argument of the solve, so
``nnx.grad`` reaches the block's parameters through the derivative of the chosen
gradient mode; ``f`` is pure: what the block writes to its variables inside the solve
is discarded.

:func:`as_fixed_point` gives the same ``(f, params)`` for a block on its own, e.g. for
:func:`implicit.testing.check_fixed_point_grads`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp

from implicit.extras import missing

try:
    from flax import nnx
except ImportError as error:
    raise missing("flax") from error

from implicit.correction import Correction
from implicit.layer import DEQSettings, ParamsMap
from implicit.modes import Mode
from implicit.regularizers import JacobianPenalty
from solvers import Solver
from solvers.types import PyTree

BlockMap = Callable[[PyTree, nnx.State, PyTree], PyTree]
"""``f(z, params, x) -> z``: a block as a plain function of its parameters."""


def as_fixed_point(block: nnx.Module) -> tuple[BlockMap, nnx.State]:
    """The NNX module ``block(z, x)`` as ``(f, params)`` with ``f(z, params, x) = block(z, x)``.

    ``params`` is the block's state without its RNG state (``nnx.split(block,
    nnx.RngState, ...)``), so derivatives with respect to ``params`` are derivatives
    with respect to the block's parameters. ``f`` merges the block from ``params`` and
    the block's current RNG state at every call, so a block with dropout applies the
    same mask at every call (``z* = f(z*, params, x)`` is a fixed map) and the block's
    own RNG streams do not advance. Check the implicit gradient of a block with:

        f, params = implicit.flax.as_fixed_point(block)
        report = implicit.testing.check_fixed_point_grads(f, z0, params, x)
        report.assert_close(1e-6)             # float64: inside jax.enable_x64(True)
    """
    graphdef, rng_state, params = nnx.split(block, nnx.RngState, ...)

    def f(z: PyTree, params: nnx.State, x: PyTree) -> PyTree:
        # copy=True: fresh variables at the current trace level, so that the block's
        # streams may count inside the solve (on copies that are then discarded).
        return nnx.merge(graphdef, rng_state, params, copy=True)(z, x)

    return f, params


def _dropout_stream(rngs: Union[nnx.Rngs, nnx.RngStream, None]) -> Optional[nnx.RngStream]:
    """A stream of its own for the layer, forked from ``rngs`` (its ``dropout`` stream,
    else its ``default`` one), as ``nnx.Dropout`` does."""
    if rngs is None:
        return None
    if isinstance(rngs, nnx.Rngs):
        return rngs["dropout"].fork()
    if isinstance(rngs, nnx.RngStream):
        return rngs.fork()
    raise TypeError(f"rngs must be an nnx.Rngs, an nnx.RngStream or None, got {rngs!r}")


class DEQ(nnx.Module):
    """A Deep Equilibrium layer: ``layer(x, z0=None)`` returns ``z* = block(z*, x)``.

    ``DEQ(block, *, solver, backward, return_stats, jacobian_penalty, transform_params,
    **solver_options)`` is the signature of every framework's layer
    (:mod:`implicit.layer`); ``rngs`` is Flax's own.

    Args:
      block: an NNX module ``block(z, x) -> z`` returning the structure, shapes and
        dtypes of ``z``. Its state updates inside the solve are discarded (keep
        ``nnx.BatchNorm`` and the like out of it).
      solver, backward, return_stats, jacobian_penalty, transform_params, correction,
        **solver_options: as for every layer (:mod:`implicit.layer`). The penalty's
        probes come from ``rngs``, which it needs; ``transform_params`` maps the block's
        ``nnx.State``.
      rngs: where the dropout keys come from (an ``nnx.Rngs``, whose ``dropout``
        stream is used, else its ``default`` one; or an ``nnx.RngStream``). See below.

    Randomness (variational dropout, as in :class:`implicit.haiku.DEQ`): every call
    fixes one key per RNG stream of the block for the whole solve, so dropout draws
    one mask per solve and ``f`` is a fixed map. With ``rngs``, the layer draws one key
    per call from its own stream and derives the block's keys from it; the block's own
    RNG state is left as it is. Without ``rngs``, each stream of the block gives its
    next key, so the block's streams advance by exactly one per call (not one per
    iteration).

    It works under ``nnx.jit`` and ``nnx.grad`` and with ``nnx.Optimizer``. For a batch,
    pass it whole (``batch_axis=0`` solves each sample on its own and gives per-sample
    statistics), or map the layer with ``nnx.vmap`` (statistics then come per sample).
    """

    def __init__(
        self, block: nnx.Module, *, solver: Union[str, Solver] = "broyden",
        backward: Union[str, Mode] = "implicit", return_stats: bool = False,
        jacobian_penalty: Optional[JacobianPenalty] = None,
        transform_params: Optional[ParamsMap] = None, correction: Optional[Correction] = None,
        rngs: Union[nnx.Rngs, nnx.RngStream, None] = None, **solver_options: Any,
    ) -> None:
        self.block = block
        self.settings = DEQSettings.build(
            solver, backward, return_stats, jacobian_penalty, transform_params, solver_options,
            correction)
        self.rngs = nnx.data(_dropout_stream(rngs))
        if jacobian_penalty is not None and self.rngs is None:
            raise ValueError("implicit.flax.DEQ with a jacobian_penalty needs rngs for its probes")

    solver = property(lambda self: self.settings.solver, doc="The forward solver.")
    backward = property(lambda self: self.settings.backward, doc="The gradient mode.")

    def __call__(self, x: PyTree, z0: Optional[PyTree] = None) -> Any:
        """Solve ``z* = block(z*, x)`` from ``z0`` (default: zeros shaped like ``x``)."""
        if z0 is None:
            z0 = jax.tree_util.tree_map(jnp.zeros_like, x)
        f, params = as_fixed_point(self._block_for_one_solve())
        key = self.rngs() if self.settings.jacobian_penalty is not None else None
        return self.settings.solve(f, z0, params, x, key=key)[1]

    def _block_for_one_solve(self) -> nnx.Module:
        """A copy of the block (sharing its arrays) whose RNG streams each hold one key
        for the solve, drawn as the class docstring says."""
        block = nnx.clone(self.block)
        streams = [s for _, s in nnx.iter_graph(block) if isinstance(s, nnx.RngStream)]
        if self.rngs is None:
            keys = [stream() for stream in streams]
            nnx.update(self.block, nnx.state(block, nnx.RngCount))
        else:
            key = self.rngs()
            keys = [
                jax.random.split(jax.random.fold_in(key, i), stream.key.shape)
                for i, stream in enumerate(streams)
            ]
        for stream, stream_key in zip(streams, keys, strict=True):
            stream.key.set_value(stream_key)
            stream.count.set_value(jnp.zeros(stream_key.shape, jnp.uint32))
        return block
