"""Fixed-point solvers for ``z = f(z, *args)``, chosen by name or passed as values.

    import solvers
    solve = solvers.get("broyden", max_iter=50, tol=1e-5, stop_mode="rel")   # a Solver
    sol = solve(f, z0, *args)         # Solution(value, stats)
    solvers.declared("broyden")       # the options it accepts, with defaults and help

Built in: ``"broyden"`` (our limited-memory Broyden), ``"anderson"`` and
``"fixed_point"`` (jaxopt's ``AndersonAcceleration`` and ``FixedPointIteration``)
and ``"jaxopt_broyden"`` (jaxopt's ``Broyden``, for comparison). Every solver is a
:class:`Rule` run by the one shared loop (:mod:`solvers.loop`); build your own with
:func:`rule_solver` and use the value directly, or :func:`register` it by name.
:mod:`solvers.pytree` holds the pytree arithmetic the whole toolkit shares.
"""

from solvers import pytree
from solvers.broyden import broyden
from solvers.jaxopt_adapters import anderson, fixed_point, jaxopt_broyden
from solvers.loop import Rule
from solvers.options import COMMON_OPTIONS, Option
from solvers.pytree import residuals
from solvers.registry import SolverFactory, available, declared, get, register, unregister
from solvers.solver import Solver, rule_solver
from solvers.types import PyTree, Solution, Stats

register("broyden", broyden)
register("anderson", anderson)
register("fixed_point", fixed_point)
register("jaxopt_broyden", jaxopt_broyden)

__all__ = [
    "COMMON_OPTIONS",
    "Option",
    "PyTree",
    "Rule",
    "Solution",
    "Solver",
    "SolverFactory",
    "Stats",
    "available",
    "declared",
    "get",
    "pytree",
    "register",
    "residuals",
    "rule_solver",
    "unregister",
]
