"""The monotone operator equilibrium layer as Haiku modules: :class:`MonotoneBlock` and
:class:`MonDEQ` (Winston & Kolter 2020; the maths is in :mod:`implicit.monotone`).

    def forward(x):                                           # inside hk.transform
        block = MonotoneBlock(40, m=1.0)                      # z ↦ ReLU(W z + U x + b)
        return MonDEQ(block, solver="peaceman_rachford", alpha=1.0, tol=1e-4)(x)

``W = (1 − m) I − AᵀA + B − Bᵀ``, so the equilibrium is unique for every input.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import haiku as hk
import jax
import jax.numpy as jnp

from implicit import monotone as core
from implicit.correction import Correction
from implicit.haiku.layer import STATS_FIELDS
from implicit.layer import DEQSettings
from implicit.modes import Mode
from implicit.regularizers import JacobianPenalty
from solvers import Solver
from solvers.splitting import MonotoneOperator, Prox


class MonotoneBlock(hk.Module):
    """``block(z, x) = σ(W z + U x + b)`` with ``W = (1 − m) I − AᵀA + B − Bᵀ``: Haiku
    parameters ``a`` (``A``, ``(n, n)``), ``b`` (``B``), ``u`` (``U``, ``(n, d)``) and
    ``bias`` (``(n,)``), created on first use for the input's ``d``; ``m`` and ``σ`` fixed.

    Args:
      features: ``n``, the last axis of ``z``.
      m: the margin of ``I − W ⪰ m I`` (> 0).
      nonlinearity: ``σ = prox¹_g``: ``"relu"``, ``"identity"`` or a
        :class:`solvers.splitting.Prox`.
      name: the module name (default ``"monotone_block"``).

    ``A`` and ``B`` start with entries ``N(0, 1/n)``, ``U`` with ``N(0, 1/d)``, ``b`` at 0.
    """

    def __init__(self, features: int, *, m: float = 1.0,
                 nonlinearity: Union[str, Prox] = "relu", name: Optional[str] = None) -> None:
        super().__init__(name=name)
        if features < 1:
            raise ValueError(f"a monotone block needs features >= 1, got {features}")
        self.features = features
        self.monotone = core.Monotone(m=m, nonlinearity=nonlinearity)

    def params(self, in_features: int, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """The parameters by the names of :data:`implicit.monotone.PARAMS`."""
        n = self.features
        normal = hk.initializers.RandomNormal
        shapes = {"a": ((n, n), normal(n ** -0.5)), "b": ((n, n), normal(n ** -0.5)),
                  "u": ((n, in_features), normal(in_features ** -0.5)),
                  "bias": ((n,), jnp.zeros)}
        return {name: hk.get_parameter(name, shape, dtype, init=init)
                for name, (shape, init) in shapes.items()}

    def operator(self, x: jax.Array) -> MonotoneOperator:
        """``MonotoneOperator(W, U x + b, σ)`` for the input ``x``."""
        x = jnp.asarray(x)
        return self.monotone.operator(self.params(x.shape[-1], x.dtype), x)

    def __call__(self, z: jax.Array, x: jax.Array) -> jax.Array:
        return self.operator(x)(z)


class MonDEQ(hk.Module):
    """A monotone operator equilibrium layer: ``layer(x, z0=None)`` returns the unique
    ``z* = σ(W z* + U x + b)`` of its :class:`MonotoneBlock`.

    ``MonDEQ(block, *, solver, backward, return_stats, jacobian_penalty, transform_params,
    correction, **solver_options)`` is the signature of every framework's layer
    (:mod:`implicit.layer`);
    ``name`` and ``record_state`` are Haiku's own, as for :class:`implicit.haiku.DEQ`.

    Args:
      block: a :class:`MonotoneBlock` (created in the same transform).
      solver: any solver; the splitting methods ``"peaceman_rachford"`` (converges for
        every ``alpha``) and ``"forward_backward"`` step on the block's operator, which
        the layer builds once per call.
      backward, return_stats, jacobian_penalty, transform_params, correction,
        **solver_options: as for
        every layer. ``transform_params`` maps ``{block.module_name: {"a": ..., "b": ...,
        "u": ..., "bias": ...}}``, the block's entry of the Haiku parameters. With a
        splitting solver, ``backward="implicit"`` solves the tangent and adjoint equations
        with GMRES (:func:`implicit.monotone.settings`). The penalty draws one key with
        ``hk.next_rng_key()``.
      name: the module name (default ``"mon_deq"``).
      record_state: also store the statistics :data:`implicit.haiku.STATS_FIELDS` with
        ``hk.set_state``.

    ``z0`` defaults to zeros of shape ``x.shape[:-1] + (features,)``.
    """

    def __init__(
        self, block: MonotoneBlock, *, solver: Union[str, Solver] = "broyden",
        backward: Union[str, Mode] = "implicit", return_stats: bool = False,
        jacobian_penalty: Optional[JacobianPenalty] = None,
        transform_params: Optional[Callable[[hk.Params], hk.Params]] = None,
        correction: Optional[Correction] = None,
        name: Optional[str] = None, record_state: bool = False, **solver_options: Any,
    ) -> None:
        super().__init__(name=name)
        if not isinstance(block, MonotoneBlock):
            raise TypeError(f"implicit.haiku.MonDEQ needs an implicit.haiku.MonotoneBlock, "
                            f"got {type(block).__name__}")
        self.block = block
        self.settings = core.settings(DEQSettings.build(
            solver, backward, return_stats, jacobian_penalty, transform_params, solver_options,
            correction))
        self.record_state = record_state

    solver = property(lambda self: self.settings.solver, doc="The forward solver.")
    backward = property(lambda self: self.settings.backward, doc="The gradient mode.")

    def __call__(self, x: jax.Array, z0: Optional[jax.Array] = None) -> Any:
        """Solve ``z* = σ(W z* + U x + b)`` from ``z0``."""
        x = jnp.asarray(x)
        name = self.block.module_name
        params = {name: self.block.params(x.shape[-1], x.dtype)}
        if self.settings.transform_params is not None:
            params = self.settings.transform_params(params)
        key = hk.next_rng_key() if self.settings.jacobian_penalty is not None else None
        solution, outputs = core.solve(self.settings, self.block.monotone, params[name], x,
                                       z0, key)
        if self.record_state:
            for field in STATS_FIELDS:
                hk.set_state(field, getattr(solution.stats, field))
        return outputs
