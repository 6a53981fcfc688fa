"""Hypothesis strategies for fixed-point layers: shapes, pytree states and contractive layers.

Sizes are drawn from small fixed sets (``dims``, ``batch_sizes``) so that examples
share shapes, and jitted checks compiled for one example serve the next ones.

    from hypothesis import given, settings
    from implicit.testing import check_fixed_point_grads, strategies

    @settings(deadline=None, max_examples=50)
    @given(strategies.contractive_layers(dims=(3,), pytree_kinds=("array", "dict")))
    def test_my_grads(layer):
        report = check_fixed_point_grads(layer.f, layer.z0, *layer.args,
                                         solver_options=layer.solver_options)
        report.assert_close(1e-6)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from implicit.testing.layers import pytree_tanh_layer, tanh_layer
from solvers.types import PyTree

PYTREE_KINDS = ("array", "dict", "tuple", "nested")
"""``"array"``: one array; ``"dict"``: ``{"z0": .., "z1": ..}``; ``"tuple"``: ``(.., ..)``;
``"nested"``: ``{"head": .., "rest": (.., ..)}``."""


class Layer(NamedTuple):
    """A drawn fixed-point problem ``z* = f(z*, *args)``.

    Attributes:
      f: ``f(z, *args) -> z`` (a module-level function).
      z0: the initial state (a pytree of arrays).
      args: the arguments of ``f``: ``(params, x)``.
      solver_options: ``{"batch_axis": 0}`` when the state has a batch axis, else ``{}``.
      contraction: ``‖W‖₂``, a Lipschitz constant of ``f`` in ``z`` (below 1).
    """

    f: Callable[..., PyTree]
    z0: PyTree
    args: tuple
    solver_options: dict
    contraction: float


def float_arrays(
    shape: tuple[int, ...], bound: float = 1.0, dtype: Any = np.float64
) -> st.SearchStrategy[np.ndarray]:
    """Arrays of ``shape``, entries in ``[−bound, bound]`` (no subnormals), cast to ``dtype``."""
    elements = st.floats(-bound, bound, allow_nan=False, allow_infinity=False,
                         allow_subnormal=False, width=64)
    return hnp.arrays(np.float64, shape, elements=elements).map(lambda a: a.astype(dtype))


def state_shapes(
    dims: Sequence[int] = (2, 3, 4), batch_sizes: Sequence[Optional[int]] = (None, 2)
) -> st.SearchStrategy[tuple[int, ...]]:
    """``(d,)`` or ``(batch, d)`` with ``d`` from ``dims`` and ``batch`` from ``batch_sizes``."""

    def shape(d: int, batch: Optional[int]) -> tuple[int, ...]:
        return (d,) if batch is None else (batch, d)

    return st.builds(shape, st.sampled_from(tuple(dims)), st.sampled_from(tuple(batch_sizes)))


@st.composite
def pytree_states(
    draw: Callable,
    leaf_dims: Sequence[int] = (1, 2, 3),
    batch_sizes: Sequence[Optional[int]] = (None,),
    kinds: Sequence[str] = PYTREE_KINDS,
    max_leaves: int = 3,
    dtype: Any = np.float64,
) -> PyTree:
    """A pytree state of kind ``kinds`` (see :data:`PYTREE_KINDS`) whose leaves have shape
    ``(*batch, dᵢ)``, ``dᵢ`` from ``leaf_dims``, one shared ``batch`` from ``batch_sizes``."""
    kind = draw(st.sampled_from(tuple(kinds)))
    batch = draw(st.sampled_from(tuple(batch_sizes)))
    count = 1 if kind == "array" else draw(st.integers(2 if kind == "nested" else 1, max_leaves))
    prefix = () if batch is None else (batch,)
    leaves = [
        draw(float_arrays((*prefix, draw(st.sampled_from(tuple(leaf_dims)))), dtype=dtype))
        for _ in range(count)
    ]
    if kind == "array":
        return leaves[0]
    if kind == "dict":
        return {f"z{i}": leaf for i, leaf in enumerate(leaves)}
    if kind == "tuple":
        return tuple(leaves)
    if kind == "nested":
        return {"head": leaves[0], "rest": tuple(leaves[1:])}
    raise ValueError(f"unknown pytree kind {kind!r}; valid kinds: {', '.join(PYTREE_KINDS)}")


@st.composite
def contractive_layers(
    draw: Callable,
    dims: Sequence[int] = (2, 3, 4),
    batch_sizes: Sequence[Optional[int]] = (None,),
    pytree_kinds: Sequence[str] = ("array",),
    contraction: tuple[float, float] = (0.05, 0.9),
    dtype: Any = np.float64,
) -> Layer:
    """A contractive layer ``tanh(z Wᵀ + x Uᵀ + b)`` with ``‖W‖₂`` drawn from ``contraction``.

    The state is an array of shape ``(*batch, d)`` (``d`` from ``dims``) for the
    ``"array"`` kind, or a pytree of other kinds (leaf sizes from ``dims`` too);
    with a batch axis the layer acts per sample and ``solver_options`` asks for
    ``batch_axis=0``. ``W``, ``U``, ``b``, ``x`` and ``z0`` have entries in
    ``[−1, 1]``; then ``W`` is rescaled to ``‖W‖₂ = ρ`` and ``U`` to ``‖U‖₂ ≤ 1``, so
    the pre-activations stay below ``(ρ + 1)·√d + 1`` in magnitude: ``tanh`` does
    not saturate so far that float32 loses its derivative (``1 − tanh²`` computed
    in float32 has relative error about ``2.4e-7 / (1 − tanh²)``).
    """
    z0 = draw(pytree_states(leaf_dims=dims, batch_sizes=batch_sizes, kinds=pytree_kinds,
                            max_leaves=2, dtype=dtype))
    leaves = jax.tree_util.tree_leaves(z0)
    d = sum(leaf.shape[-1] for leaf in leaves)
    prefix = leaves[0].shape[:-1]
    w = draw(float_arrays((d, d)))
    rho = draw(st.floats(*contraction))
    norm = float(np.linalg.norm(w, 2))
    w = (w * (rho / norm) if norm > 0 else w).astype(dtype)
    u = draw(float_arrays((d, d)))
    u_norm = float(np.linalg.norm(u, 2))
    params = {
        "w": w,
        "u": (u / u_norm if u_norm > 1 else u).astype(dtype),
        "b": draw(float_arrays((d,), dtype=dtype)),
    }
    x = draw(float_arrays((*prefix, d), dtype=dtype))
    f = tanh_layer if isinstance(z0, np.ndarray) else pytree_tanh_layer
    contraction = float(np.linalg.norm(w.astype(np.float64), 2))
    return Layer(f, z0, (params, x), {"batch_axis": 0} if prefix else {}, contraction)
