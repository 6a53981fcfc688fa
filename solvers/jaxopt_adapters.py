"""jaxopt's fixed-point solvers, run inside the shared loop of :mod:`solvers.loop`.

A jaxopt solver advances with ``solver.update(params, state)``, which evaluates
its function exactly once, at a point it computes itself (Anderson's
extrapolation, Broyden's step, or ``params`` for plain iteration). To run jaxopt's
algorithm per row while evaluating ``f`` once on the whole batch, each iteration

1. finds that query point ``q`` per row by running ``update`` with a function that
   only records its argument (under ``jax.vmap`` over rows);
2. evaluates ``f(q)`` on the whole batch;
3. runs ``update`` per row again with a function that returns the ``f(q)`` row.

The two ``update`` traces compute the same ``q``; XLA shares the common work.
Fixed-point solvers start from ``f(z0)`` (their first update would evaluate
``f(z0)``, which the loop already has), root finders from ``z0``.
Stopping, best-iterate tracking and statistics come from the shared loop, so the
numbers compare one to one with ``"broyden"``.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp

from solvers.method import FlatMap, Matrix, Method, Step
from solvers.options import Check, above, at_least, option
from solvers.quiet_jaxopt import import_jaxopt
from solvers.stopping import Stopping

jaxopt = import_jaxopt()

RowMap = Callable[[jax.Array], jax.Array]
"""The per-row function a jaxopt solver sees: ``f(row)`` for a fixed-point solver,
``f(row) − row`` for a root finder."""


def _working_dtype(name: str, dtype: Any) -> Any:
    """The dtype jaxopt's solvers run in for a state of ``dtype``: float64 when JAX has x64
    on (jaxopt's internal scalars are then float64, and other floats make its loops fail),
    float32 otherwise. They do not support complex states: that raises a ``TypeError``."""
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(
            f"solver {name!r} (jaxopt) does not support complex states ({jnp.dtype(dtype)}); "
            "use 'broyden', 'anderson' or 'fixed_point', which do"
        )
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


class JaxoptMethod(Method):
    """A jaxopt solver run row by row inside the shared loop (see the module docstring).

    A subclass says which jaxopt solver it runs (:meth:`make`) and whether it is a root
    finder of ``g(z) = f(z) − z`` (``root_finder``) or a fixed-point solver of ``f``.
    """

    root_finder: ClassVar[bool] = False

    @abc.abstractmethod
    def make(self, fun: RowMap, size: int, stopping: Stopping) -> Any:
        """The jaxopt solver for the per-row function ``fun`` on rows of length ``size``."""

    def _fun_returning(self, fz_row: jax.Array) -> RowMap:
        return (lambda p: fz_row - p) if self.root_finder else (lambda p: fz_row)

    def _query_point(self, params: jax.Array, state: Any, stopping: Stopping) -> jax.Array:
        seen = []

        def record(p: jax.Array) -> jax.Array:
            seen.append(p)
            return p

        self.make(record, params.shape[-1], stopping).update(params, state)
        if len(seen) != 1:
            raise RuntimeError(
                f"the jaxopt solver evaluated its function {len(seen)} times in one update; "
                "the adapter supports exactly one evaluation per update"
            )
        return seen[0]

    def init(self, z: Matrix, fz: Matrix, stopping: Stopping) -> tuple[Matrix, Any]:
        # A fixed-point solver's first update would evaluate f(z0), which the loop already
        # has: start it from f(z0) instead. A root finder starts from z0 with g(z0) known.
        work = _working_dtype(self.name, z.dtype)
        z, fz = z.astype(work), fz.astype(work)
        params = z if self.root_finder else fz
        state = jax.vmap(
            lambda p_row, fz_row: self.make(
                self._fun_returning(fz_row), p_row.shape[-1], stopping).init_state(p_row)
        )(params, fz)
        return params, state

    def step(
        self, f: FlatMap, z: Matrix, fz: Matrix, carried: tuple[Matrix, Any], active: jax.Array,
        stopping: Stopping,
    ) -> Step:
        params, state = carried

        def advance(params: jax.Array, state: Any, fz_row: jax.Array) -> tuple[jax.Array, Any]:
            step = self.make(self._fun_returning(fz_row), params.shape[-1], stopping).update(
                params, state)
            return step.params, step.state

        query = jax.vmap(lambda p, s: self._query_point(p, s, stopping))(params, state)
        f_query = f(query.astype(z.dtype))
        params, state = jax.vmap(advance)(params, state, f_query.astype(params.dtype))
        return query.astype(z.dtype), f_query, (params, state), jnp.ones(z.shape[:1], jnp.int32)


@dataclasses.dataclass(frozen=True)
class JaxoptFixedPoint(JaxoptMethod):
    """``jaxopt.FixedPointIteration``: plain iteration."""

    name: ClassVar[str] = "jaxopt_fixed_point"

    def make(self, fun: RowMap, size: int, stopping: Stopping) -> Any:
        return jaxopt.FixedPointIteration(fun, maxiter=stopping.max_iter, tol=stopping.tol,
                                          jit=False)


@dataclasses.dataclass(frozen=True)
class JaxoptAnderson(JaxoptMethod):
    """``jaxopt.AndersonAcceleration`` (Walker & Ni 2011)."""

    name: ClassVar[str] = "jaxopt_anderson"
    history: int = option(5, at_least(2), "past iterates mixed")
    damping: float = option(1.0, above(0), "β, the damping of the extrapolated residual")
    ridge: float = option(1e-5, at_least(0), "Tikhonov term of the mixing least-squares problem")
    mixing_frequency: int = option(1, at_least(1), "take an Anderson step every this many "
                                   "iterations")

    def make(self, fun: RowMap, size: int, stopping: Stopping) -> Any:
        return jaxopt.AndersonAcceleration(
            fun, history_size=max(2, min(self.history, stopping.max_iter, size)),
            beta=self.damping, ridge=self.ridge, mixing_frequency=self.mixing_frequency,
            maxiter=stopping.max_iter, tol=stopping.tol, jit=False,
        )


@dataclasses.dataclass(frozen=True)
class JaxoptBroyden(JaxoptMethod):
    """``jaxopt.Broyden``: limited-memory Broyden on ``g(z) = f(z) − z``."""

    name: ClassVar[str] = "jaxopt_broyden"
    root_finder: ClassVar[bool] = True
    history: int = option(30, at_least(1), "rank-one terms kept (jaxopt's history_size)")
    gamma: float = option(
        -1.0, Check(lambda v: v != 0, "other than 0"),
        "initial inverse Jacobian gamma·I of g(z) = f(z) − z (−1 is exact for f ≈ 0)",
    )

    def make(self, fun: RowMap, size: int, stopping: Stopping) -> Any:
        return jaxopt.Broyden(
            fun, history_size=min(self.history, stopping.max_iter, size), gamma=self.gamma,
            stepsize=1.0, maxiter=stopping.max_iter, tol=stopping.tol, jit=False,
        )
