"""The fixed-point correction of Bai et al. (2022, "Deep equilibrium optical flow
estimation"), from the one forward solve.

A solve of ``z* = f(z*, *args)`` passes through iterates ``z₀ = z0, z₁, …``. With a
:class:`Correction`, the forward solve hands out ``K`` of them, ``z_{k₁}, …, z_{k_K}``
(``Solution.states``; the solver's ``record`` option), and each gets a derivative of its own
by an approximate gradient mode ``Φ`` applied from it:

* ``JFB()`` (default): one step, ``Φ(z) = f(z, *args)``, differentiated with ``z`` held
  fixed (Fung et al. 2022);
* ``Phantom(steps, damping)``: ``steps`` damped steps ``z ← (1 − λ) z + λ f(z, *args)``,
  differentiated through (Geng et al. 2021).

The final state keeps the layer's own mode (``Implicit``: the implicit function theorem).
The correction loss weighs later states more,

    L = ℓ(z*) + Σⱼ γ^(K+1−j) · ℓ(Φ(z_{kⱼ})),      j = 1..K,

so the solver's early iterates are trained to head for the equilibrium, which is what
DEQ-Flow found to make training faster and more stable. The states cost no further solve:
``K`` copies of the state kept by the one forward solve, and ``K`` applications of ``Φ``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
from jax import lax

from implicit.modes import JFB, Phantom
from solvers import Solver
from solvers.options import Check, Options, option
from solvers.types import PyTree, Solution

__all__ = ["Correction", "correction_states", "correction_weights",
           "fixed_point_correction_loss"]

ONE_STEP = JFB()
"""The default map from a state: one step of ``f`` (Jacobian-free backprop)."""


def _states_rule(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 1
    return len(value) >= 1 and all(
        isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in value)


@dataclasses.dataclass(frozen=True)
class Correction(Options):
    """Which iterates of the forward solve the correction uses, and how they are
    differentiated (see the module docstring).

    Attributes:
      states: ``K`` for ``K`` evenly spaced iteration counts ``kⱼ = (j − 1)·max_iter // K``,
        ``j = 1..K`` (``z0`` first, as the first step from it is the layer's shallowest
        version), or a tuple of iteration counts in ``[0, max_iter]`` (torchdeq's
        ``indexing``; its ``n_states`` counts the final state too). A sample whose solve
        stopped before ``kⱼ`` gives its solution there.
      mode: ``JFB()`` or a ``Phantom(steps, damping)``: the map ``Φ`` applied from each
        state, and differentiated.
    """

    states: Union[int, tuple] = option(
        1, Check(_states_rule, "K >= 1 or a tuple of iteration counts >= 0"),
        "K evenly spaced iterations from z0, or the iteration counts themselves",
    )
    mode: Phantom = option(ONE_STEP, None, "JFB() or Phantom(steps, damping): the map from a state")

    def iterations(self, max_iter: int) -> tuple[int, ...]:
        """The iteration counts ``(k₁, …, k_K)`` of a solve of at most ``max_iter`` steps."""
        if isinstance(self.states, int):
            return tuple(j * max_iter // self.states for j in range(self.states))
        return tuple(self.states)

    def recording(self, solver: Solver) -> Solver:
        """``solver`` set to hand out these states (its ``record`` option)."""
        return solver.replace(record=self.iterations(solver.stopping.max_iter))


def _phi(mode: Phantom, f: Callable[..., PyTree], z: PyTree, args: tuple) -> PyTree:
    """``Φ(z)``: the mode's damped steps from ``z`` (one undamped step for ``JFB``)."""
    damping = mode.damping

    def step(z: PyTree, _: None) -> tuple[PyTree, None]:
        fz = f(z, *args)
        if damping == 1.0:
            return fz, None
        return jax.tree_util.tree_map(lambda a, b: (1 - damping) * a + damping * b, z, fz), None

    return lax.scan(step, z, None, length=mode.steps)[0]


def correction_states(
    f: Callable[..., PyTree], states: Union[Solution, PyTree], *args: PyTree,
    mode: Phantom = ONE_STEP,
) -> PyTree:
    """``Φ(z_{kⱼ})`` for every recorded state, stacked on the leading axis: the states of
    the correction, each differentiable with respect to ``args`` (and what ``f`` closes
    over) by ``mode``, with the state itself held fixed.

    ``states`` is a :class:`solvers.Solution` whose solve recorded states (``record``, or
    ``fixed_point(..., correction=...)``), or such states themselves (every leaf stacked
    on a leading axis)."""
    if isinstance(states, Solution):
        if states.states is None:
            raise ValueError("the solution holds no recorded states: solve with "
                             "fixed_point(..., correction=Correction(...)) or a solver with "
                             "the record option")
        states = states.states
    fixed = lax.stop_gradient(states)
    return jax.vmap(lambda z: _phi(mode, f, z, args))(fixed)


def correction_weights(count: int, gamma: float, with_final: bool = True) -> jax.Array:
    """The weights of ``count`` correction states, first to last: ``γ^(K+1−j)`` when the
    final state's loss is added with weight 1 (``with_final``), else ``γ^(K−j)``."""
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    top = count if with_final else count - 1
    return gamma ** jnp.arange(top, top - count, -1, dtype=jnp.float32)


def fixed_point_correction_loss(
    f: Callable[..., PyTree],
    states: Union[Solution, PyTree],
    *args: PyTree,
    loss_fn: Callable[[PyTree], jax.Array],
    gamma: float = 0.8,
    mode: Phantom = ONE_STEP,
) -> jax.Array:
    """The fixed-point correction loss of Bai et al. (2022).

    With a :class:`solvers.Solution` from ``fixed_point(..., correction=...)`` (``K``
    recorded states), ``L = ℓ(z*) + Σⱼ γ^(K+1−j) ℓ(Φ(z_{kⱼ}))``: the final term is the
    solution's value with the solve's own derivative. With stacked states alone,
    ``L = Σⱼ γ^(K−j) ℓ(Φ(z_{kⱼ}))``. ``ℓ = loss_fn``; ``Φ`` and its derivative as in
    :func:`correction_states`.
    """
    final: Optional[PyTree] = states.value if isinstance(states, Solution) else None
    images = correction_states(f, states, *args, mode=mode)
    count = jax.tree_util.tree_leaves(images)[0].shape[0]
    losses = jax.vmap(loss_fn)(images)
    weights = correction_weights(count, gamma, with_final=final is not None)
    total = jnp.sum(weights.astype(losses.dtype) * losses)
    return total if final is None else total + loss_fn(final)
