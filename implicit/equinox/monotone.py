"""The monotone operator equilibrium layer as Equinox modules: :class:`MonotoneBlock` and
:class:`MonDEQ` (Winston & Kolter 2020; the maths is in :mod:`implicit.monotone`).

    block = MonotoneBlock(64, 40, m=1.0, key=key)            # z ↦ ReLU(W z + U x + b)
    layer = MonDEQ(block, solver="peaceman_rachford", alpha=1.0, tol=1e-4)
    z_star = layer(x)                                         # x: (..., 64) → z*: (..., 40)

``W = (1 − m) I − AᵀA + B − Bᵀ``, so the equilibrium is unique for every input.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import equinox as eqx
import jax
import jax.numpy as jnp

from implicit import monotone as core
from implicit.correction import Correction
from implicit.layer import DEQSettings, ParamsMap
from implicit.modes import Mode
from implicit.regularizers import JacobianPenalty
from solvers import Solver
from solvers.splitting import MonotoneOperator, Prox


class MonotoneBlock(eqx.Module):
    """``block(z, x) = σ(W z + U x + b)`` with ``W = (1 − m) I − AᵀA + B − Bᵀ``: the array
    fields ``a`` (``A``), ``b`` (``B``), ``u`` (``U``) and ``bias`` (``b``); ``m`` and ``σ``
    fixed (static).

    Args:
      in_features: ``d``, the last axis of ``x``.
      features: ``n``, the last axis of ``z``.
      m: the margin of ``I − W ⪰ m I`` (> 0).
      nonlinearity: ``σ = prox¹_g``: ``"relu"``, ``"identity"`` or a
        :class:`solvers.splitting.Prox`.
      key: draws the initial parameters (:meth:`implicit.monotone.Monotone.init`).
    """

    a: jax.Array
    b: jax.Array
    u: jax.Array
    bias: jax.Array
    monotone: core.Monotone = eqx.field(static=True)

    def __init__(self, in_features: int, features: int, *, m: float = 1.0,
                 nonlinearity: Union[str, Prox] = "relu", key: jax.Array) -> None:
        self.monotone = core.Monotone(m=m, nonlinearity=nonlinearity)
        params = self.monotone.init(key, in_features, features)
        self.a, self.b, self.u, self.bias = (params[name] for name in core.PARAMS)

    def params(self) -> dict[str, jax.Array]:
        """The parameters by the names of :data:`implicit.monotone.PARAMS`."""
        return {name: getattr(self, name) for name in core.PARAMS}

    @property
    def weight(self) -> jax.Array:
        """``W``."""
        return self.monotone.weight(self.params())

    def operator(self, x: jax.Array) -> MonotoneOperator:
        """``MonotoneOperator(W, U x + b, σ)`` for the input ``x``."""
        return self.monotone.operator(self.params(), x)

    def __call__(self, z: jax.Array, x: jax.Array, *, key: Optional[jax.Array] = None
                 ) -> jax.Array:
        return self.operator(x)(z)


class MonDEQ(eqx.Module):
    """A monotone operator equilibrium layer: ``layer(x, z0=None, *, key=None)`` returns the
    unique ``z* = σ(W z* + U x + b)`` of its :class:`MonotoneBlock`.

    ``MonDEQ(block, *, solver, backward, return_stats, jacobian_penalty, transform_params,
    correction, **solver_options)`` is the signature of every framework's layer
    (:mod:`implicit.layer`).

    Args:
      block: a :class:`MonotoneBlock`.
      solver: any solver; the splitting methods ``"peaceman_rachford"`` (converges for
        every ``alpha``) and ``"forward_backward"`` step on the block's operator, which
        the layer builds once per call.
      backward, return_stats, jacobian_penalty, transform_params, correction,
        **solver_options: as for
        every layer; ``transform_params`` maps the block's array leaves. With a splitting
        solver, ``backward="implicit"`` solves the tangent and adjoint equations with GMRES
        (:func:`implicit.monotone.settings`).

    ``z0`` defaults to zeros of shape ``x.shape[:-1] + (features,)``; ``key`` draws the
    Jacobian penalty's probes. Works under ``eqx.filter_jit``, ``eqx.filter_grad`` and
    ``jax.vmap``, one sample ``(d,)`` or a batch ``(batch, d)`` at a time.
    """

    block: MonotoneBlock
    settings: DEQSettings = eqx.field(static=True)

    def __init__(
        self, block: MonotoneBlock, *, solver: Union[str, Solver] = "broyden",
        backward: Union[str, Mode] = "implicit", return_stats: bool = False,
        jacobian_penalty: Optional[JacobianPenalty] = None,
        transform_params: Optional[ParamsMap] = None,
        correction: Optional[Correction] = None, **solver_options: Any,
    ) -> None:
        if not isinstance(block, MonotoneBlock):
            raise TypeError(f"implicit.equinox.MonDEQ needs an implicit.equinox.MonotoneBlock, "
                            f"got {type(block).__name__}")
        self.block = block
        self.settings = core.settings(DEQSettings.build(
            solver, backward, return_stats, jacobian_penalty, transform_params, solver_options,
            correction))

    solver = property(lambda self: self.settings.solver, doc="The forward solver.")
    backward = property(lambda self: self.settings.backward, doc="The gradient mode.")

    def __call__(self, x: jax.Array, z0: Optional[jax.Array] = None, *,
                 key: Optional[jax.Array] = None) -> Any:
        """Solve ``z* = σ(W z* + U x + b)`` from ``z0``."""
        block = self.block
        if self.settings.transform_params is not None:
            params, static = eqx.partition(block, eqx.is_array)
            block = eqx.combine(self.settings.transform_params(params), static)
        return core.solve(self.settings, block.monotone, block.params(), jnp.asarray(x),
                              z0, key)[1]
