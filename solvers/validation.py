"""Checks at the solver boundary, run once per call at trace time.

They turn the usual mistakes into errors that name the offending leaf instead of
tracebacks from deep inside XLA: ``f`` changing the structure, shapes or dtypes of
the state, states that are not floating point, inconsistent batch sizes, and (when
the inputs are concrete, i.e. not under ``jit``) non-finite values.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from solvers.types import PyTree


def _leaves_with_paths(tree: PyTree) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path) or "<root>", leaf) for path, leaf in flat]


def check_state(z0: PyTree, batch_axis: Optional[int], name: str = "z0") -> None:
    """``z0`` must have floating leaves and, with ``batch_axis=0``, one shared leading size."""
    leaves = _leaves_with_paths(z0)
    if not leaves:
        raise ValueError(f"{name} has no array leaves; a fixed-point state needs at least one")
    for path, leaf in leaves:
        try:
            jnp.result_type(leaf)
        except TypeError:
            raise TypeError(
                f"{name} leaf {path} is a {type(leaf).__name__} ({leaf!r:.40}), not an array; "
                "fixed-point states must be floating-point arrays"
            ) from None
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise TypeError(
                f"{name} leaf {path} has dtype {jnp.result_type(leaf)}; fixed-point states "
                "must be floating point"
            )
    if batch_axis is None:
        return
    batch = None
    for path, leaf in leaves:
        shape = jnp.shape(leaf)
        if len(shape) == 0:
            raise ValueError(
                f"batch_axis=0 needs a batch axis on every leaf of {name}, but leaf {path} is a "
                "scalar"
            )
        if batch is None:
            batch, first = shape[0], path
        elif shape[0] != batch:
            raise ValueError(
                f"batch_axis=0 needs one batch size on every leaf of {name}: leaf {first} has "
                f"{batch} samples but leaf {path} has shape {shape}"
            )


def check_same_structure(
    reference: PyTree, other: PyTree, reference_name: str, other_name: str
) -> None:
    """``other`` must have the tree structure, leaf shapes and leaf dtypes of ``reference``."""
    ref_def = jax.tree_util.tree_structure(reference)
    other_def = jax.tree_util.tree_structure(other)
    if ref_def != other_def:
        raise TypeError(
            f"{other_name} must have the pytree structure of {reference_name}: "
            f"{reference_name} is {ref_def} but {other_name} is {other_def}"
        )
    for (path, ref), (_, got) in zip(
        _leaves_with_paths(reference), _leaves_with_paths(other), strict=True
    ):
        ref_shape, got_shape = jnp.shape(ref), jnp.shape(got)
        ref_dtype, got_dtype = jnp.result_type(ref), jnp.result_type(got)
        if ref_shape != got_shape or ref_dtype != got_dtype:
            raise ValueError(
                f"{other_name} changes leaf {path}: {reference_name} has shape {ref_shape} "
                f"dtype {ref_dtype} but {other_name} has shape {got_shape} dtype {got_dtype}"
            )


def check_map(f: Callable[..., PyTree], z0: PyTree, args: tuple) -> None:
    """``f(z0, *args)`` must return the structure, shapes and dtypes of ``z0`` (checked abstractly)."""
    if not callable(f):
        raise TypeError(f"f must be callable as f(z, *args), got {f!r}")
    out = jax.eval_shape(f, z0, *args)
    check_same_structure(z0, out, "z0", "f(z0, *args)")


def check_finite(tree: PyTree, name: str) -> None:
    """Raise ``ValueError`` naming the first floating leaf of ``tree`` holding NaN or inf.

    Traced leaves (under ``jit``) cannot be inspected and are skipped; there the
    solver reports non-finite inputs through its statistics instead.
    """
    for path, leaf in _leaves_with_paths(tree):
        if isinstance(leaf, jax.core.Tracer):
            continue
        try:
            value = np.asarray(leaf)
        except Exception:  # not an array-like leaf: nothing to check
            continue
        if np.issubdtype(value.dtype, np.inexact) and not np.all(np.isfinite(value)):
            raise ValueError(
                f"{name}{'' if path == '<root>' else ' leaf ' + path} contains non-finite "
                "values (NaN or inf)"
            )
