"""Fixed-point solvers for ``z = f(z, *args)``, chosen by name or passed as values.

    import solvers
    solve = solvers.get("broyden", max_iter=50, tol=1e-5, stop_mode="rel")   # a Solver
    sol = solve(f, z0, *args)         # Solution(value, stats)
    solvers.declared("broyden")       # the options it accepts, with defaults and help

Built in, ours: ``"broyden"`` (limited-memory good Broyden), ``"anderson"`` (type-II
Anderson, safeguarded for float32) and ``"fixed_point"`` (damped iteration); the
design's jaxopt alternatives: ``"jaxopt_anderson"``, ``"jaxopt_broyden"`` and
``"jaxopt_fixed_point"``. Every solver is a :class:`Rule` run by the one shared loop
(:mod:`solvers.loop`), which reports why each sample stopped (:class:`Reason`,
:func:`explain`) and can hand a failing sample to a ``fallback`` solver. Build your own
with :func:`rule_solver` and use the value directly, or :func:`register` it by name.
:mod:`solvers.pytree` holds the pytree arithmetic the whole toolkit shares.
"""

from solvers import pytree
from solvers.anderson import anderson
from solvers.broyden import broyden
from solvers.explain import explain
from solvers.fixed_point import fixed_point
from solvers.jaxopt_adapters import jaxopt_anderson, jaxopt_broyden, jaxopt_fixed_point
from solvers.loop import Reason, Rule
from solvers.options import COMMON_OPTIONS, Option
from solvers.pytree import residuals
from solvers.registry import SolverFactory, available, declared, get, register, unregister
from solvers.solver import Solver, rule_solver
from solvers.types import PyTree, Solution, Stats

register("broyden", broyden)
register("anderson", anderson)
register("fixed_point", fixed_point)
register("jaxopt_anderson", jaxopt_anderson)
register("jaxopt_broyden", jaxopt_broyden)
register("jaxopt_fixed_point", jaxopt_fixed_point)

__all__ = [
    "COMMON_OPTIONS",
    "Option",
    "PyTree",
    "Reason",
    "Rule",
    "Solution",
    "Solver",
    "SolverFactory",
    "Stats",
    "available",
    "declared",
    "explain",
    "get",
    "pytree",
    "register",
    "residuals",
    "rule_solver",
    "unregister",
]
