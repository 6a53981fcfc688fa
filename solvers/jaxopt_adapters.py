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

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from solvers.loop import FlatMap, Matrix, Rule
from solvers.options import Option, positive_float, positive_int
from solvers.quiet_jaxopt import import_jaxopt
from solvers.solver import Solver, rule_solver

jaxopt = import_jaxopt()

# make(fun, size) -> a jaxopt solver for the per-row function ``fun`` on rows of length
# ``size``; ``fun`` maps a row to what the jaxopt solver expects: f(row) for fixed-point
# solvers, f(row) − row for root finders.
SolverMaker = Callable[[Callable[[jax.Array], jax.Array], int], Any]


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


def jaxopt_rule(name: str, make: SolverMaker, root_finder: bool) -> Rule:
    """The :class:`Rule` that runs the jaxopt solver ``make(fun)`` row by row."""
    def fun_returning(fz_row: jax.Array) -> Callable[[jax.Array], jax.Array]:
        return (lambda p: fz_row - p) if root_finder else (lambda p: fz_row)

    def query_point(params: jax.Array, state: Any) -> jax.Array:
        seen = []

        def record(p: jax.Array) -> jax.Array:
            seen.append(p)
            return p

        make(record, params.shape[-1]).update(params, state)
        if len(seen) != 1:
            raise RuntimeError(
                f"the jaxopt solver evaluated its function {len(seen)} times in one update; "
                "the adapter supports exactly one evaluation per update"
            )
        return seen[0]

    def advance(params: jax.Array, state: Any, fz_row: jax.Array) -> tuple[jax.Array, Any]:
        step = make(fun_returning(fz_row), params.shape[-1]).update(params, state)
        return step.params, step.state

    def init(z: Matrix, fz: Matrix) -> tuple[Matrix, Any]:
        # A fixed-point solver's first update would evaluate f(z0), which the loop already
        # has: start it from f(z0) instead. A root finder starts from z0 with g(z0) known.
        work = _working_dtype(name, z.dtype)
        z, fz = z.astype(work), fz.astype(work)
        params = z if root_finder else fz
        state = jax.vmap(
            lambda p_row, fz_row: make(fun_returning(fz_row), p_row.shape[-1]).init_state(p_row)
        )(
            params, fz
        )
        return params, state

    def step(
        f: FlatMap, z: Matrix, fz: Matrix, carried: tuple[Matrix, Any], active: jax.Array
    ) -> tuple[Matrix, Matrix, tuple[Matrix, Any], jax.Array]:
        params, state = carried
        query = jax.vmap(query_point)(params, state)
        f_query = f(query.astype(z.dtype))
        params, state = jax.vmap(advance)(params, state, f_query.astype(params.dtype))
        return query.astype(z.dtype), f_query, (params, state), jnp.ones(z.shape[:1], jnp.int32)

    return Rule(init, step)


def _jaxopt_solver(
    name: str,
    declared: Mapping[str, Option],
    build: Callable[[Callable, Mapping, int], Any],
    root_finder: bool = False,
) -> Callable[..., Solver]:
    def make_rule(options: Mapping[str, Any]) -> Rule:
        return jaxopt_rule(name, lambda fun, size: build(fun, options, size), root_finder)

    return rule_solver(name, declared, make_rule)


jaxopt_fixed_point = _jaxopt_solver(
    "jaxopt_fixed_point",
    {},
    lambda fun, o, size: jaxopt.FixedPointIteration(
        fun, maxiter=o["max_iter"], tol=o["tol"], jit=False
    ),
)

jaxopt_anderson = _jaxopt_solver(
    "jaxopt_anderson",
    {
        "history": Option(5, (int,), lambda v: v >= 2, "an integer >= 2", "past iterates mixed"),
        "beta": positive_float(1.0, "mixing (damping) of the extrapolated residual"),
        "ridge": Option(
            1e-5,
            (int, float),
            lambda v: v >= 0,
            "a number >= 0",
            "Tikhonov term of the mixing least-squares problem",
        ),
        "mixing_frequency": positive_int(1, "take an Anderson step every this many iterations"),
    },
    lambda fun, o, size: jaxopt.AndersonAcceleration(
        fun,
        history_size=max(2, min(o["history"], o["max_iter"], size)),
        beta=o["beta"],
        ridge=o["ridge"],
        mixing_frequency=o["mixing_frequency"],
        maxiter=o["max_iter"],
        tol=o["tol"],
        jit=False,
    ),
)

jaxopt_broyden = _jaxopt_solver(
    "jaxopt_broyden",
    {
        "history": positive_int(30, "rank-one terms kept (jaxopt's history_size)"),
        "gamma": Option(
            -1.0,
            (int, float),
            lambda v: v != 0,
            "a non-zero number",
            "initial inverse Jacobian gamma·I of g(z) = f(z) − z (−1 is exact for f ≈ 0)",
        ),
    },
    lambda fun, o, size: jaxopt.Broyden(
        fun,
        history_size=min(o["history"], o["max_iter"], size),
        gamma=o["gamma"],
        stepsize=1.0,
        maxiter=o["max_iter"],
        tol=o["tol"],
        jit=False,
    ),
    root_finder=True,
)
