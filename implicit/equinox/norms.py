"""Weight normalisation with reset semantics for any Equinox block: :func:`apply_norm`
wraps it, :func:`reset_norm` re-estimates (torchdeq's ``apply_norm`` / ``reset_norm``; the
maths is in :mod:`implicit.norms`).

    block = apply_norm(Block(8, key=k1), "spectral_norm", key=k2)
    layer = implicit.equinox.DEQ(block, solver="anderson", max_iter=30)
    ...
    layer = reset_norm(layer)        # once per step, after the weights changed
    loss, grads = eqx.filter_value_and_grad(loss_fn)(layer, x, y)

Each selected array of the block (default: every floating one of rank ≥ 2, such as
``eqx.nn.Linear``'s ``weight``, normalised per output unit along its first axis) is used
normalised while the block runs; the stored one stays free. The wrapper's ``scales`` are
trainable arrays; its ``vectors`` (power iteration) are read under ``stop_gradient``, so
their gradient is zero: keep them out of weight decay.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import equinox as eqx
import jax

from implicit.norms import Norm, Normalization, NormState, Where, as_norm, weights


class Normalized(eqx.Module):
    """``block`` with its selected arrays normalised whenever it is called.

    Args:
      block: any Equinox module (or pytree callable).
      norm: ``"weight_norm"``, ``"spectral_norm"`` or a :class:`implicit.norms.WeightNorm`
        / :class:`implicit.norms.SpectralNorm` value.
      where: which arrays (``where(path, value)``, ``path`` as ``".linear.weight"``;
        default: every floating array of rank ≥ 2).
      axis: the output axis of the selected arrays (default ``0``, Equinox's ``(out, in)``
        weights).
      key: starts the power-iteration vectors (needed for a spectral norm by power
        iteration).
      **options: options of the norm (``learn_scale``, ``target``, ``clip``,
        ``power_iterations``, ``exact``).
    """

    block: Callable[..., Any]
    scales: dict
    vectors: dict
    normalization: Normalization = eqx.field(static=True)

    def __init__(self, block: Callable[..., Any], norm: Union[str, Norm] = "weight_norm", *,
                 where: Optional[Where] = None, axis: int = 0, key: Optional[jax.Array] = None,
                 **options: Any) -> None:
        self.block = block
        self.normalization = Normalization(as_norm(norm, **options), where or weights, axis)
        state = self.normalization.init(self._params(), key)
        self.scales, self.vectors = state.scales, state.vectors

    def _params(self) -> Any:
        return eqx.filter(self.block, eqx.is_array)

    def state(self) -> NormState:
        """The scales and vectors as an :class:`implicit.norms.NormState`."""
        return NormState(self.scales, jax.lax.stop_gradient(self.vectors))

    def normalized(self) -> Callable[..., Any]:
        """The block with its selected arrays normalised."""
        params, static = eqx.partition(self.block, eqx.is_array)
        return eqx.combine(self.normalization.apply(params, self.state()), static)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.normalized()(*args, **kwargs)

    def reset(self) -> Normalized:
        """This wrapper with its power-iteration vectors re-estimated for the current
        weights."""
        if not self.vectors:
            return self
        fresh = self.normalization.reset(self._params(), self.state())
        return eqx.tree_at(lambda m: m.vectors, self, fresh.vectors)


def apply_norm(block: Callable[..., Any], norm: Union[str, Norm] = "weight_norm", *,
               where: Optional[Where] = None, axis: int = 0,
               key: Optional[jax.Array] = None, **options: Any) -> Normalized:
    """``block`` with weight or spectral normalisation: a :class:`Normalized` wrapping it
    (see there for the arguments)."""
    return Normalized(block, norm, where=where, axis=axis, key=key, **options)


def reset_norm(model: Any) -> Any:
    """``model`` with every :class:`Normalized` block inside it re-estimated (power
    iteration for the current weights): call it once per training step."""
    is_normalized = lambda node: isinstance(node, Normalized)  # noqa: E731
    return jax.tree_util.tree_map(lambda node: node.reset() if is_normalized(node) else node,
                                  model, is_leaf=is_normalized)
