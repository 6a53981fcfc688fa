"""Fixed-point solvers for ``z = f(z, *args)``, chosen by name from a registry.

    import solvers
    solve = solvers.get("broyden", max_iter=50, tol=1e-5, stop_mode="rel")
    sol = solve(f, z0, *args)         # Solution(value, stats)

Built in: ``"broyden"`` (our limited-memory Broyden), ``"anderson"`` and
``"fixed_point"`` (jaxopt's ``AndersonAcceleration`` and ``FixedPointIteration``)
and ``"jaxopt_broyden"`` (jaxopt's ``Broyden``, for comparison). Add your own with
``register(name, factory)``, or build one from a :class:`Rule` with
:func:`rule_solver` to reuse the shared loop and its statistics.
"""

from solvers.broyden import broyden
from solvers.factory import rule_solver
from solvers.jaxopt_adapters import anderson, fixed_point, jaxopt_broyden
from solvers.loop import Rule, residuals
from solvers.options import COMMON_OPTIONS, Option
from solvers.registry import available, get, register, unregister
from solvers.types import PyTree, Solution, SolveFn, SolverFactory, Stats

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
    "SolveFn",
    "SolverFactory",
    "Stats",
    "available",
    "get",
    "register",
    "residuals",
    "rule_solver",
    "unregister",
]
