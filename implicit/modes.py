"""Gradient modes as values: how the fixed point ``z* = f(z*, *args)`` is differentiated.

A mode is a small frozen value, chosen where the layer is built and passed once:

    fixed_point(f, z0, *args, backward=Implicit("gmres", tol=1e-8))
    fixed_point(f, z0, *args, backward=Phantom(steps=8, damping=0.6))
    fixed_point(f, z0, *args, backward="jfb")            # a string means the mode's defaults

Every mode returns the forward solution ``z*`` as the value (bit for bit) and statistics
that carry no gradient; they differ in the derivative attached to the value. With
``J = ∂f/∂z(z*)``:

* :class:`Implicit` — the implicit function theorem,
  ``dz* = (I − J)⁻¹ ∂f/∂args·d(args)``, exact up to the solver tolerances. It is
  ``jax.lax.custom_root`` on ``F(z) = f(z, *args) − z`` whose ``tangent_solve``
  wraps the linear solve in ``jax.lax.custom_linear_solve``, so one rule serves
  forward mode (the tangent equation ``t = J t + ∂f/∂args·ȧ``), reverse mode
  (JAX transposes the tangent solve into the adjoint fixed point
  ``u = Jᵀ u + ḡ``, pulled back through one VJP of ``f``) and any composition of
  them (``jacfwd``, ``hessian``, ``vmap``). The forward solve runs on
  ``stop_gradient`` inputs and is not differentiated, so memory does not grow
  with the number of forward iterations.
* :class:`Phantom` — the unrolled phantom gradient (Geng et al. 2021): the
  derivative of ``k`` damped steps ``z ← (1 − λ) z + λ f(z, *args)`` from
  ``stop_gradient(z*)``.
* :class:`JFB` — Jacobian-free backprop (Fung et al. 2022): the phantom gradient with
  ``k = 1, λ = 1``, i.e. ``dz* ≈ ∂f/∂args(z*)·d(args)`` (``J`` taken as 0).
* :class:`Unroll` — differentiate through the solver's iterations (run as a
  fixed-length ``lax.scan``): memory grows with ``max_iter``; a reference.

In every mode but ``Unroll`` the derivative with respect to ``z0`` is exactly zero.
"""

from __future__ import annotations

import abc
import dataclasses
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Mapping, Union

import jax
import jax.numpy as jnp
from jax import lax

from implicit.linear import backward_solver, make_linear_solve
from solvers import Solver
from solvers.types import PyTree, Solution, Stats

_INTEGER_FIELDS = ("steps", "fevals", "converged", "reason")


class Mode(abc.ABC):
    """A gradient mode: attaches a derivative to a forward solve (see the module docstring)."""

    name: ClassVar[str]

    def prepare(self, forward: Solver) -> Solver:
        """The forward solver this mode needs (most modes take it as it is)."""
        return forward

    @abc.abstractmethod
    def attach(
        self, f: Callable[..., PyTree], z0: PyTree, args: tuple, forward: Solver
    ) -> Solution:
        """Solve ``z* = f(z*, *args)`` with ``forward``; return ``z*`` carrying this mode's
        derivative with respect to ``args`` (and to what ``f`` closes over)."""


def _no_gradient(stats: Stats) -> Stats:
    return jax.tree_util.tree_map(lax.stop_gradient, stats)


def _stats_to_aux(stats: Stats) -> Stats:
    """Cast the integer and boolean fields to a float dtype (at least float32).

    ``custom_root`` gives its auxiliary output zero tangents of the primal dtype,
    which JAX rejects for integer primals (it expects ``float0``); float32 is
    exact for counts below 2²⁴ and for booleans.
    """
    dtype = jnp.promote_types(stats.abs_residual.dtype, jnp.float32)
    return stats._replace(**{k: getattr(stats, k).astype(dtype) for k in _INTEGER_FIELDS})


def _stats_from_aux(aux: Stats, dtypes: dict) -> Stats:
    return aux._replace(**{k: getattr(aux, k).astype(dtypes[k]) for k in _INTEGER_FIELDS})


@dataclasses.dataclass(frozen=True, init=False)
class Implicit(Mode):
    """The implicit function theorem; ``solver`` solves the tangent and adjoint equations.

    Args:
      solver: the backward solver: ``None`` (default: the forward solver's kind), a
        registry name, a :class:`solvers.Solver` value, or a Krylov solver
        (``"gmres"``, ``"bicgstab"``, ``"normal_cg"``; see :mod:`implicit.linear`).
      **options: options of the backward solver. A registry backward solver given by
        name (or ``None``) inherits ``max_iter``, ``tol``, ``stop_mode`` and
        ``batch_axis`` from the forward solver unless given here; a Krylov one inherits
        ``tol``. A :class:`solvers.Solver` value keeps its own options.

    Unknown solver names and options fail here, when the value is built.
    """

    name: ClassVar[str] = "implicit"
    solver: Union[str, Solver, None]
    options: Mapping[str, Any]

    def __init__(self, solver: Union[str, Solver, None] = None, **options: Any) -> None:
        object.__setattr__(self, "solver", solver)
        object.__setattr__(self, "options", MappingProxyType(dict(options)))
        backward_solver(solver, self.options, None)  # check names and options now

    def __hash__(self) -> int:
        return hash((self.name, self.solver, tuple(sorted(self.options.items()))))

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"Implicit({self.solver!r}{options})"

    def attach(
        self, f: Callable[..., PyTree], z0: PyTree, args: tuple, forward: Solver
    ) -> Solution:
        linear_solve = make_linear_solve(self.solver, self.options, forward)
        dtypes = {}  # of the solver's integer statistics, recorded when custom_root traces solve

        def tangent_solve(linearized: Callable[[PyTree], PyTree], rhs: PyTree) -> PyTree:
            # ``linearized`` is x ↦ ∂F/∂z·x = (J − I) x; JAX transposes it (and swaps
            # solve for transpose_solve) when it builds reverse mode.
            return lax.custom_linear_solve(
                linearized, rhs, solve=linear_solve, transpose_solve=linear_solve
            )

        def residual(z: PyTree) -> PyTree:  # F(z) = f(z, *args) − z; custom_root finds F(z*) = 0
            return jax.tree_util.tree_map(jnp.subtract, f(z, *args), z)

        def solve(_: Callable, z_init: PyTree) -> tuple[PyTree, Stats]:
            solution = forward(f, z_init, *lax.stop_gradient(args))
            dtypes.update({k: getattr(solution.stats, k).dtype for k in _INTEGER_FIELDS})
            return solution.value, _stats_to_aux(solution.stats)

        value, aux = lax.custom_root(residual, z0, solve, tangent_solve, has_aux=True)
        return Solution(value, _no_gradient(_stats_from_aux(aux, dtypes)))


@dataclasses.dataclass(frozen=True)
class Phantom(Mode):
    """Differentiate ``steps`` damped steps ``z ← (1 − damping)·z + damping·f(z)`` from ``z*``.

    ``steps`` is an integer ≥ 1 and ``damping`` a number in ``(0, 1]``; anything else
    raises ``ValueError`` when the value is built.
    """

    name: ClassVar[str] = "phantom"
    steps: int = 5
    damping: float = 0.5

    def __post_init__(self) -> None:
        steps, damping = self.steps, self.damping
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"Phantom steps must be an integer >= 1, got {steps!r}")
        if (
            not isinstance(damping, (int, float)) or isinstance(damping, bool)
            or not 0 < damping <= 1
        ):
            raise ValueError(f"Phantom damping must be a number in (0, 1], got {damping!r}")

    def attach(
        self, f: Callable[..., PyTree], z0: PyTree, args: tuple, forward: Solver
    ) -> Solution:
        solution = forward(f, z0, *lax.stop_gradient(args))
        z_star = lax.stop_gradient(solution.value)
        damping = float(self.damping)

        def step(z: PyTree, _: None) -> tuple[PyTree, None]:
            fz = f(z, *args)
            if damping == 1.0:
                return fz, None
            return jax.tree_util.tree_map(lambda a, b: (1 - damping) * a + damping * b, z, fz), None

        unrolled = lax.scan(step, z_star, None, length=self.steps)[0]
        # The value stays z* exactly; the derivative is the one of the unrolled steps.
        value = jax.tree_util.tree_map(
            lambda s, u: s + (u - lax.stop_gradient(u)), z_star, unrolled
        )
        return Solution(value, _no_gradient(solution.stats))


@dataclasses.dataclass(frozen=True)
class JFB(Phantom):
    """Jacobian-free backprop: one undamped step from ``z*`` (``J`` taken as 0)."""

    name: ClassVar[str] = "jfb"
    steps: int = dataclasses.field(default=1, init=False)
    damping: float = dataclasses.field(default=1.0, init=False)

    def __repr__(self) -> str:
        return "JFB()"


@dataclasses.dataclass(frozen=True)
class Unroll(Mode):
    """Backpropagate through the solver's iterations, run as a fixed-length ``lax.scan``
    of ``max_iter`` steps (the forward solver gets ``fixed_length=True``)."""

    name: ClassVar[str] = "unroll"

    def prepare(self, forward: Solver) -> Solver:
        return forward.replace(fixed_length=True)

    def attach(
        self, f: Callable[..., PyTree], z0: PyTree, args: tuple, forward: Solver
    ) -> Solution:
        solution = forward(f, z0, *args)
        return Solution(solution.value, _no_gradient(solution.stats))


MODES: Mapping[str, type[Mode]] = MappingProxyType(
    {mode.name: mode for mode in (Implicit, Phantom, JFB, Unroll)}
)
"""The gradient modes by their string shorthand."""

BACKWARD_MODES: tuple[str, ...] = tuple(MODES)
"""``"implicit"``, ``"phantom"``, ``"jfb"``, ``"unroll"``: the strings ``backward=`` accepts."""


def as_mode(backward: Union[str, Mode]) -> Mode:
    """The :class:`Mode` that ``backward`` names (a string means the mode's defaults).

    Raises ``ValueError`` listing the valid names for anything else.
    """
    if isinstance(backward, Mode):
        return backward
    if isinstance(backward, str) and backward in MODES:
        return MODES[backward]()
    raise ValueError(
        f"unknown backward {backward!r}; valid backward modes: {', '.join(BACKWARD_MODES)} "
        "or a mode value (Implicit(...), Phantom(...), JFB(), Unroll())"
    )
