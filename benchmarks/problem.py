"""The benchmark problem: one batched fixed point ``z = f(z, *args)`` in the two forms solvers need.

:class:`Problem` is what every benchmark measures on; :mod:`benchmarks.problems` builds
the built-in ones and :mod:`benchmarks.transformer_problem` the DEQ-Transformer block.
:class:`ProblemUnavailable` says why a problem cannot be built here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from solvers.types import PyTree


@dataclasses.dataclass(frozen=True)
class Problem:
    """One batched fixed-point problem ``z = f(z, *args)``.

    Attributes:
      name: the row label (``"slow-modes-0.99"``); ``family`` groups variants.
      dim: per-sample state size.
      f: the batched map ``f(z, *args)``; ``z`` and the batched args carry the batch on axis 0.
      z0: the batched initial guess.
      args: the arguments of ``f``.
      in_axes: per argument, ``0`` if batched along axis 0 or ``None`` if shared.
      diff_argnums: the argument indices the benchmark differentiates with respect to.
      root: the exact batched solution when known, else ``None``.
      note: one line describing the problem.
    """

    name: str
    family: str
    dim: int
    f: Callable[..., PyTree]
    z0: PyTree
    args: tuple
    in_axes: tuple
    diff_argnums: tuple[int, ...]
    root: Optional[PyTree] = None
    note: str = ""

    @property
    def batch(self) -> int:
        return int(jax.tree_util.tree_leaves(self.z0)[0].shape[0])

    def per_sample(self) -> Callable[..., PyTree]:
        """``f_i(z_i, *args_i)`` on one sample: ``f`` on a batch of one."""
        f, in_axes = self.f, self.in_axes

        def f_single(z: PyTree, *args: PyTree) -> PyTree:
            batched = [
                jax.tree_util.tree_map(lambda a: a[None], arg) if axis == 0 else arg
                for arg, axis in zip(args, in_axes, strict=True)
            ]
            out = f(jax.tree_util.tree_map(lambda a: a[None], z), *batched)
            return jax.tree_util.tree_map(lambda a: a[0], out)

        return f_single

    def astype(self, dtype: Any) -> "Problem":
        """The same problem with every floating array cast to ``dtype`` (for references)."""

        def cast(tree: PyTree) -> PyTree:
            return jax.tree_util.tree_map(
                lambda a: jnp.asarray(a, dtype)
                if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a,
                tree,
            )

        root = None if self.root is None else cast(self.root)
        return dataclasses.replace(self, z0=cast(self.z0), args=cast(self.args), root=root)


class ProblemUnavailable(RuntimeError):
    """A problem that cannot be built here (e.g. its package is missing); the reason is the message."""
