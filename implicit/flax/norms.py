"""Weight normalisation with reset semantics for any Flax NNX block: :func:`apply_norm`
wraps it, :func:`reset_norm` re-estimates (torchdeq's ``apply_norm`` / ``reset_norm``; the
maths is in :mod:`implicit.norms`).

    block = apply_norm(Block(8, rngs=nnx.Rngs(0)), "spectral_norm", rngs=nnx.Rngs(1))
    layer = implicit.flax.DEQ(block, solver="anderson", max_iter=30)
    ...
    def train_step(layer, optimizer, x, y):
        reset_norm(layer)            # once per step, after the weights changed
        loss, grads = nnx.value_and_grad(loss_fn)(layer, x, y)
        optimizer.update(layer, grads)

Each selected ``nnx.Param`` of the block (default: every floating one of rank ≥ 2, such as
``nnx.Linear``'s ``kernel``, normalised per output unit along its last axis) is used
normalised while the block runs; the stored one stays free. The learnable scales are
``nnx.Param`` of the wrapper (an ``nnx.Optimizer(..., wrt=nnx.Param)`` trains them); the
power-iteration vectors are :class:`PowerIteration` variables, which it does not.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import jax
from flax import nnx

from implicit.norms import Norm, Normalization, NormState, Where, as_norm, weights


class PowerIteration(nnx.Variable):
    """A spectral norm's power-iteration vector: state, not a parameter."""


class Normalized(nnx.Module):
    """``block`` with its selected parameters normalised whenever it is called.

    Args:
      block: any NNX module.
      norm: ``"weight_norm"``, ``"spectral_norm"`` or a :class:`implicit.norms.WeightNorm`
        / :class:`implicit.norms.SpectralNorm` value.
      where: which parameters (``where(path, value)``, ``path`` as ``"['linear']['kernel']"``;
        default: every floating ``nnx.Param`` of rank ≥ 2).
      axis: the output axis of the selected parameters (default ``-1``, NNX's kernels).
      rngs: starts the power-iteration vectors (needed for a spectral norm by power
        iteration).
      **options: options of the norm (``learn_scale``, ``target``, ``clip``,
        ``power_iterations``, ``exact``).

    Calling it calls ``block`` with the normalised parameters in place (restored after),
    so the block's own state (its RNG streams) advances as usual. Inside a solve the
    block is one fixed map: :meth:`reset` (or :func:`reset_norm`) changes the estimate,
    never a call.
    """

    def __init__(self, block: nnx.Module, norm: Union[str, Norm] = "weight_norm", *,
                 where: Optional[Where] = None, axis: int = -1,
                 rngs: Optional[nnx.Rngs] = None, **options: Any) -> None:
        self.block = block
        self.normalization = Normalization(as_norm(norm, **options), where or weights, axis)
        key = None if rngs is None else rngs.params()
        state = self.normalization.init(self._params(), key)
        self.scales = nnx.data({k: nnx.Param(v) for k, v in state.scales.items()})
        self.vectors = nnx.data({k: PowerIteration(v) for k, v in state.vectors.items()})

    def _params(self) -> dict:
        return nnx.to_pure_dict(nnx.state(self.block, nnx.Param))

    def _set(self, params: dict) -> None:
        state = nnx.state(self.block, nnx.Param)
        nnx.replace_by_pure_dict(state, params)
        nnx.update(self.block, state)

    def state(self) -> NormState:
        """The scales and vectors as an :class:`implicit.norms.NormState`."""
        return NormState({k: v[...] for k, v in self.scales.items()},
                         {k: jax.lax.stop_gradient(v[...]) for k, v in self.vectors.items()})

    def normalized_params(self) -> dict:
        """The block's parameters as a pure dict, the selected ones normalised."""
        return self.normalization.apply(self._params(), self.state())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raw = self._params()
        self._set(self.normalization.apply(raw, self.state()))
        try:
            return self.block(*args, **kwargs)
        finally:
            self._set(raw)

    def reset(self) -> None:
        """Re-estimate the power-iteration vectors for the current weights, in place."""
        fresh = self.normalization.reset(self._params(), self.state())
        for key, vector in fresh.vectors.items():
            self.vectors[key][...] = vector


def apply_norm(block: nnx.Module, norm: Union[str, Norm] = "weight_norm", *,
               where: Optional[Where] = None, axis: int = -1,
               rngs: Optional[nnx.Rngs] = None, **options: Any) -> Normalized:
    """``block`` with weight or spectral normalisation: a :class:`Normalized` wrapping it
    (see there for the arguments)."""
    return Normalized(block, norm, where=where, axis=axis, rngs=rngs, **options)


def reset_norm(model: nnx.Module) -> None:
    """Re-estimate, in place, every :class:`Normalized` block inside ``model`` (power
    iteration for the current weights): call it once per training step."""
    for _, node in nnx.iter_graph(model):
        if isinstance(node, Normalized):
            node.reset()
