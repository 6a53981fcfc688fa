"""Fixed-point solvers for ``z = f(z, *args)``: values of a method and a stopping rule.

    import solvers
    solve = solvers.Solver(solvers.Broyden(history=10), solvers.Stopping(tol=1e-6))
    solve == solvers.get("broyden", history=10, tol=1e-6)   # the string front door
    sol = solve(f, z0, *args)          # Solution(value, stats)
    solvers.declared("broyden")        # the options it accepts, with defaults and help

Built in, ours: :class:`Broyden` (``"broyden"``, limited-memory good Broyden),
:class:`Anderson` (``"anderson"``, type-II Anderson, safeguarded for float32),
:class:`FixedPoint` (``"fixed_point"``, damped iteration) and :class:`ReversibleFixedPoint`
(``"reversible"``, the coupled invertible iteration of reversible DEQs); the design's jaxopt
alternatives: :class:`JaxoptAnderson`, :class:`JaxoptBroyden` and
:class:`JaxoptFixedPoint` (``"jaxopt_*"``); and, for monotone operator equilibria
``z = σ(W z + c)`` only (:mod:`solvers.splitting`, Winston & Kolter 2020), the
operator-splitting methods :class:`ForwardBackward` (``"forward_backward"``) and
:class:`PeacemanRachford` (``"peaceman_rachford"``), which step on the
:class:`MonotoneOperator` among the solve's arguments. Every method is run by the one
shared loop (:mod:`solvers.loop`) under a :class:`Stopping` rule, which reports why each
sample stopped (:class:`Reason`, :func:`explain`) and can hand a failing sample to a
``fallback`` solver. Write your own :class:`Method` and use it directly, or
:func:`register` it by name. :mod:`solvers.options` holds the one validator of typed
options and :mod:`solvers.pytree` the pytree arithmetic the whole toolkit shares.
"""

from solvers import pytree, splitting
from solvers.anderson import Anderson
from solvers.broyden import Broyden
from solvers.fixed_point import FixedPoint
from solvers.jaxopt_adapters import JaxoptAnderson, JaxoptBroyden, JaxoptFixedPoint
from solvers.loop import Reason
from solvers.method import Growable, Method, Restartable, Structured, WarmStartable
from solvers.options import Option, option
from solvers.pytree import residuals
from solvers.registry import available, register, unregister
from solvers.reversible import ReversibleFixedPoint, ReversibleState
from solvers.solver import COMMON_OPTIONS, Solver, declared, get
from solvers.splitting import ForwardBackward, MonotoneOperator, PeacemanRachford
from solvers.stopping import Stopping
from solvers.summary import explain
from solvers.types import PyTree, Solution, Stats

for _method in (Broyden, Anderson, FixedPoint, ReversibleFixedPoint, JaxoptAnderson,
                JaxoptBroyden, JaxoptFixedPoint, ForwardBackward, PeacemanRachford):
    register(_method.name, _method)
del _method

__all__ = [
    "COMMON_OPTIONS",
    "Anderson",
    "Broyden",
    "FixedPoint",
    "ForwardBackward",
    "Growable",
    "JaxoptAnderson",
    "JaxoptBroyden",
    "JaxoptFixedPoint",
    "Method",
    "MonotoneOperator",
    "Option",
    "PeacemanRachford",
    "PyTree",
    "Reason",
    "Restartable",
    "ReversibleFixedPoint",
    "ReversibleState",
    "Solution",
    "Solver",
    "Stats",
    "Stopping",
    "Structured",
    "WarmStartable",
    "available",
    "declared",
    "explain",
    "get",
    "option",
    "pytree",
    "register",
    "residuals",
    "splitting",
    "unregister",
]
