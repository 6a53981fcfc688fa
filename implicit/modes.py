"""Gradient modes as values: how the fixed point ``z* = f(z*, *args)`` is differentiated.

A mode is a small frozen value, chosen where the layer is built and passed once:

    fixed_point(f, z0, *args, backward=Implicit("gmres", tol=1e-8))
    fixed_point(f, z0, *args, backward=Phantom(steps=8, damping=0.6))
    fixed_point(f, z0, *args, backward="jfb")            # a string means the mode's defaults

Every mode returns the forward solution ``z*`` as the value (bit for bit) and statistics
that carry no gradient; they differ in the derivative attached to the value. With
``J = ∂f/∂z(z*)``:

* :class:`Implicit` — the implicit function theorem,
  ``dz* = (I − J)⁻¹ ∂f/∂args·d(args)``, exact up to the solver tolerances. It is one
  ``jax.custom_jvp`` rule on the solve: the tangent ``t`` solves ``(J − I) t =
  −∂f/∂args·ȧ`` inside ``jax.lax.custom_linear_solve``, with ``J`` and ``∂f/∂args``
  from one linearisation of ``f`` at ``z*``. That one rule serves forward mode (the
  tangent equation ``t = J t + ∂f/∂args·ȧ``), reverse mode (JAX transposes the linear
  solve into the adjoint fixed point ``u = Jᵀ u + ḡ``, pulled back through the same
  linearisation) and any composition of them (``jacfwd``, ``hessian``, ``vmap``). The
  forward solve is not differentiated, so memory does not grow with the number of
  forward iterations; what f closes over is differentiated like ``args``.
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
from typing import Any, Callable, ClassVar, Mapping, Optional, Union

import jax
import jax.numpy as jnp
from jax import lax

from implicit.linear import backward_solver, make_linear_solve
from implicit.reporting import ForwardSolveWarning, Monitor, report_convergence
from solvers import Solver
from solvers.types import PyTree, Solution, Stats


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


def _as_float(tree: PyTree) -> PyTree:
    """Integer and boolean leaves as float32 (exact for counts below 2²⁴): a custom rule's
    outputs need floating tangents."""
    return jax.tree_util.tree_map(
        lambda a: a if jnp.issubdtype(a.dtype, jnp.inexact) else a.astype(jnp.float32), tree
    )


def _restore(tree: PyTree, like: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda a, b: a.astype(b.dtype), tree, like)


def _report_forward(stats: Stats, forward: Solver) -> None:
    residual = stats.abs_residual if forward.options["stop_mode"] == "abs" else stats.rel_residual
    report_convergence(
        ForwardSolveWarning, f"the forward solve with {forward.name!r}", stats.converged,
        residual, float(forward.options["tol"]),
    )


def _warn_when_differentiated(value: PyTree, stats: Stats, forward: Solver) -> PyTree:
    """``value`` itself; its derivative, when one is taken, first reports a forward solve
    that did not converge (:class:`ForwardSolveWarning`)."""

    @jax.custom_jvp
    def identity(value: PyTree, converged: jax.Array, abs_res: jax.Array,
                 rel_res: jax.Array) -> PyTree:
        return value

    @identity.defjvp
    def identity_jvp(primals: tuple, tangents: tuple) -> tuple:
        value, converged, abs_res, rel_res = primals
        _report_forward(stats._replace(converged=converged, abs_residual=abs_res,
                                       rel_residual=rel_res), forward)
        return value, tangents[0]

    return identity(value, stats.converged.astype(jnp.float32), stats.abs_residual,
                    stats.rel_residual)


def _tree_sub(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree_util.tree_map(jnp.subtract, a, b)


@dataclasses.dataclass(frozen=True, init=False)
class Implicit(Mode):
    """The implicit function theorem; ``solver`` solves the tangent and adjoint equations.

    Args:
      solver: the backward solver: ``None`` (default: the forward solver's kind), a
        registry name, a :class:`solvers.Solver` value, or a Krylov solver
        (``"gmres"``, ``"bicgstab"``, ``"normal_cg"``; see :mod:`implicit.linear`).
      reuse_inverse: start the backward solve from what the forward solve learned about
        ``(J − I)⁻¹`` (SHINE, Ramzi et al. 2022): a Broyden forward solve ends with a
        low-rank estimate ``−I + Σ uᵢvᵢᴴ`` of it, and a Broyden backward solve of the
        adjoint starts from its transpose (of the tangent equation, from it), so its first
        step is already a quasi-Newton step. ``None`` (default): whenever the forward and
        backward solvers can (both Broyden); ``True``: insist (``ValueError`` at the first
        call if they cannot); ``False``: never. The derivative is the same either way, to
        the backward tolerance; only the number of backward iterations changes.
      monitor: a function that receives an :class:`implicit.SolveReport` (iterations,
        convergence and residual per system) of every backward solve, at run time and
        under ``jit`` too; for training metrics and tests.
      **options: options of the backward solver. A registry backward solver given by
        name (or ``None``) inherits ``max_iter``, ``tol``, ``stop_mode`` and
        ``batch_axis`` from the forward solver unless given here; a Krylov one inherits
        ``tol``. A :class:`solvers.Solver` value keeps its own options.

    Unknown solver names and options fail here, when the value is built. Differentiating
    at a forward solve that did not converge emits :class:`implicit.ForwardSolveWarning`;
    a backward solve that does not converge, :class:`implicit.BackwardSolveWarning`.
    """

    name: ClassVar[str] = "implicit"
    solver: Union[str, Solver, None]
    reuse_inverse: Optional[bool]
    monitor: Optional[Monitor]
    options: Mapping[str, Any]

    def __init__(
        self,
        solver: Union[str, Solver, None] = None,
        *,
        reuse_inverse: Optional[bool] = None,
        monitor: Optional[Monitor] = None,
        **options: Any,
    ) -> None:
        if reuse_inverse not in (None, True, False):
            raise ValueError(f"reuse_inverse must be None, True or False, got {reuse_inverse!r}")
        if monitor is not None and not callable(monitor):
            raise TypeError(f"monitor must be callable, got {monitor!r}")
        object.__setattr__(self, "solver", solver)
        object.__setattr__(self, "reuse_inverse", reuse_inverse)
        object.__setattr__(self, "monitor", monitor)
        object.__setattr__(self, "options", MappingProxyType(dict(options)))
        backward_solver(solver, self.options, None)  # check names and options now

    def __hash__(self) -> int:
        return hash((self.name, self.solver, self.reuse_inverse, self.monitor,
                     tuple(sorted(self.options.items()))))

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        reuse = "" if self.reuse_inverse is None else f", reuse_inverse={self.reuse_inverse}"
        monitor = "" if self.monitor is None else f", monitor={self.monitor!r}"
        return f"Implicit({self.solver!r}{reuse}{monitor}{options})"

    def _reuses(self, forward: Solver, backward: Any) -> bool:
        """Whether the backward solve starts from the forward solve's final state."""
        able = (
            isinstance(backward, Solver) and backward.make_rule is forward.make_rule
            and backward.rule.warm is not None and backward.rule.transpose is not None
        )
        if self.reuse_inverse and not able:
            raise ValueError(
                f"Implicit(reuse_inverse=True) needs a forward and a backward solver of one "
                f"kind that can share its inverse-Jacobian estimate (broyden); got forward "
                f"{forward.name!r} and backward {getattr(backward, 'name', backward)!r}"
            )
        return able and self.reuse_inverse is not False

    def attach(
        self, f: Callable[..., PyTree], z0: PyTree, args: tuple, forward: Solver
    ) -> Solution:
        backward = backward_solver(self.solver, self.options, forward)
        reuse = self._reuses(forward, backward)
        # θ: the arguments and whatever f closes over that may carry a derivative.
        f_closed, consts = jax.closure_convert(lambda z, *a: f(z, *a), z0, *args)

        def f_theta(z: PyTree, theta: tuple) -> PyTree:
            return f_closed(z, *theta[0], *theta[1])

        @jax.custom_jvp
        def equilibrium(z_init: PyTree, theta: tuple) -> tuple:
            solution, state = forward.run(f_theta, z_init, (theta,))
            return solution.value, _as_float(solution.stats), _as_float(state)

        shapes = jax.eval_shape(lambda z, t: forward.run(f_theta, z, (t,)), z0, (args, consts))

        @equilibrium.defjvp
        def equilibrium_jvp(primals: tuple, tangents: tuple) -> tuple:
            z_init, theta = primals
            _, theta_dot = tangents  # the derivative with respect to z0 is exactly zero
            outputs = equilibrium(z_init, theta)
            value, stats, state = outputs
            _report_forward(_restore(stats, shapes[0].stats), forward)
            # One linearisation of f at (z*, θ) serves both J·t and ∂f/∂θ·θ̇.
            _, f_lin = jax.linearize(f_theta, value, theta)
            no_theta = jax.tree_util.tree_map(jnp.zeros_like, theta_dot)
            rhs = f_lin(jax.tree_util.tree_map(jnp.zeros_like, value), theta_dot)

            def matvec(t: PyTree) -> PyTree:  # (J − I) t
                return _tree_sub(f_lin(t, no_theta), t)

            prior = _restore(state, shapes[1]) if reuse else None
            transposed = backward.rule.transpose(prior) if reuse else None
            t = lax.custom_linear_solve(
                matvec, jax.tree_util.tree_map(jnp.negative, rhs),
                solve=make_linear_solve(backward, prior, self.monitor),
                transpose_solve=make_linear_solve(backward, transposed, self.monitor),
            )
            zeros = jax.tree_util.tree_map(jnp.zeros_like, (stats, state))
            return outputs, (t, *zeros)

        value, stats, _ = equilibrium(z0, (args, consts))
        return Solution(value, _no_gradient(_restore(stats, shapes[0].stats)))


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
        unrolled = _warn_when_differentiated(unrolled, solution.stats, forward)
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
