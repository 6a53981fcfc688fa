"""The monotone operator equilibrium layer as Flax NNX modules: :class:`MonotoneBlock` and
:class:`MonDEQ` (Winston & Kolter 2020; the maths is in :mod:`implicit.monotone`).

    block = MonotoneBlock(64, 40, m=1.0, rngs=nnx.Rngs(0))   # z ↦ ReLU(W z + U x + b)
    layer = MonDEQ(block, solver="peaceman_rachford", alpha=1.0, tol=1e-4)
    z_star = layer(x)                                         # x: (..., 64) → z*: (..., 40)

``W = (1 − m) I − AᵀA + B − Bᵀ``, so the equilibrium is unique for every input.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
from flax import nnx

from implicit import monotone as core
from implicit.correction import Correction
from implicit.layer import DEQSettings, ParamsMap
from implicit.modes import Mode
from implicit.regularizers import JacobianPenalty
from solvers import Solver
from solvers.splitting import MonotoneOperator, Prox


class MonotoneBlock(nnx.Module):
    """``block(z, x) = σ(W z + U x + b)`` with ``W = (1 − m) I − AᵀA + B − Bᵀ``: the
    parameters ``a`` (``A``), ``b`` (``B``), ``u`` (``U``) and ``bias`` (``b``) as
    ``nnx.Param``; ``m`` and ``σ`` fixed.

    Args:
      in_features: ``d``, the last axis of ``x``.
      features: ``n``, the last axis of ``z``.
      m: the margin of ``I − W ⪰ m I`` (> 0).
      nonlinearity: ``σ = prox¹_g``: ``"relu"``, ``"identity"`` or a
        :class:`solvers.splitting.Prox`.
      rngs: draws the initial parameters (:meth:`implicit.monotone.Monotone.init`).
    """

    def __init__(self, in_features: int, features: int, *, m: float = 1.0,
                 nonlinearity: Union[str, Prox] = "relu", rngs: nnx.Rngs) -> None:
        self.monotone = core.Monotone(m=m, nonlinearity=nonlinearity)
        params = self.monotone.init(rngs.params(), in_features, features)
        self.a = nnx.Param(params["a"])
        self.b = nnx.Param(params["b"])
        self.u = nnx.Param(params["u"])
        self.bias = nnx.Param(params["bias"])

    def params(self) -> dict[str, jax.Array]:
        """The parameters by the names of :data:`implicit.monotone.PARAMS`."""
        return {name: getattr(self, name)[...] for name in core.PARAMS}

    @property
    def weight(self) -> jax.Array:
        """``W``."""
        return self.monotone.weight(self.params())

    def operator(self, x: jax.Array) -> MonotoneOperator:
        """``MonotoneOperator(W, U x + b, σ)`` for the input ``x``."""
        return self.monotone.operator(self.params(), x)

    def __call__(self, z: jax.Array, x: jax.Array) -> jax.Array:
        return self.operator(x)(z)


class MonDEQ(nnx.Module):
    """A monotone operator equilibrium layer: ``layer(x, z0=None)`` returns the unique
    ``z* = σ(W z* + U x + b)`` of its :class:`MonotoneBlock`.

    ``MonDEQ(block, *, solver, backward, return_stats, jacobian_penalty, transform_params,
    correction, **solver_options)`` is the signature of every framework's layer
    (:mod:`implicit.layer`);
    ``rngs`` is Flax's own, as for :class:`implicit.flax.DEQ`.

    Args:
      block: a :class:`MonotoneBlock`.
      solver: any solver; the splitting methods ``"peaceman_rachford"`` (converges for
        every ``alpha``) and ``"forward_backward"`` step on the block's operator, which
        the layer builds once per call.
      backward, return_stats, jacobian_penalty, transform_params, correction,
        **solver_options: as for
        every layer; ``transform_params`` maps the block's ``nnx.State``. With a splitting
        solver, ``backward="implicit"`` solves the tangent and adjoint equations with GMRES
        (:func:`implicit.monotone.settings`).
      rngs: draws the Jacobian penalty's probes (needed with a ``jacobian_penalty``).

    ``z0`` defaults to zeros of shape ``x.shape[:-1] + (features,)``. Works under
    ``nnx.jit`` and ``nnx.grad``; a batch ``x`` is solved whole (``batch_axis=0`` for
    per-sample statistics).
    """

    def __init__(
        self, block: MonotoneBlock, *, solver: Union[str, Solver] = "broyden",
        backward: Union[str, Mode] = "implicit", return_stats: bool = False,
        jacobian_penalty: Optional[JacobianPenalty] = None,
        transform_params: Optional[ParamsMap] = None,
        correction: Optional[Correction] = None,
        rngs: Union[nnx.Rngs, nnx.RngStream, None] = None, **solver_options: Any,
    ) -> None:
        if not isinstance(block, MonotoneBlock):
            raise TypeError(f"implicit.flax.MonDEQ needs an implicit.flax.MonotoneBlock, got "
                            f"{type(block).__name__}")
        self.block = block
        self.settings = core.settings(DEQSettings.build(
            solver, backward, return_stats, jacobian_penalty, transform_params, solver_options,
            correction))
        self.rngs = nnx.data(None if rngs is None else (
            rngs["default"].fork() if isinstance(rngs, nnx.Rngs) else rngs.fork()))
        if jacobian_penalty is not None and self.rngs is None:
            raise ValueError("implicit.flax.MonDEQ with a jacobian_penalty needs rngs for its "
                             "probes")

    solver = property(lambda self: self.settings.solver, doc="The forward solver.")
    backward = property(lambda self: self.settings.backward, doc="The gradient mode.")

    def __call__(self, x: jax.Array, z0: Optional[jax.Array] = None) -> Any:
        """Solve ``z* = σ(W z* + U x + b)`` from ``z0``."""
        block = self.block
        if self.settings.transform_params is not None:
            graphdef, state = nnx.split(block)
            block = nnx.merge(graphdef, self.settings.transform_params(state))
        key = self.rngs() if self.settings.jacobian_penalty is not None else None
        x = jnp.asarray(x)
        return core.solve(self.settings, block.monotone, block.params(), x, z0, key)[1]
