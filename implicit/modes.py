"""Gradient modes as values: how the fixed point ``z* = f(z*, *args)`` is differentiated.

A mode is a small frozen value, chosen where the layer is built and passed once:

    fixed_point(f, z0, *args, backward=Implicit(GMRES(tol=1e-8)))
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
  forward iterations. With ``fallback=Phantom(...)``, each system whose tangent or adjoint
  solve misses its tolerance takes the phantom derivative instead (a per-system choice
  inside the same linear solve, so it serves every mode of differentiation too).
* :class:`Phantom` — the unrolled phantom gradient (Geng et al. 2021): the
  derivative of ``k`` damped steps ``z ← (1 − λ) z + λ f(z, *args)`` from
  ``stop_gradient(z*)``.
* :class:`JFB` — Jacobian-free backprop (Fung et al. 2022): the phantom gradient with
  ``k = 1, λ = 1``, i.e. ``dz* ≈ ∂f/∂args(z*)·d(args)`` (``J`` taken as 0).
* :class:`Unroll` — differentiate through the solver's iterations (run as a
  fixed-length ``lax.scan``): memory grows with ``max_iter``; a reference.
* :class:`Reversible` — the exact derivative of the solver's own iterations too, for the
  reversible iteration ``y ← (1 − β) y + β f(z), z ← (1 − β) z + β f(y)`` (McCallum et al.
  2025), whose steps are inverted in closed form to run them backwards from the final pair:
  memory constant in the number of steps, and no linear solve (:mod:`implicit.reversible`).

In every mode but ``Unroll`` and ``Reversible`` the derivative with respect to ``z0`` is
exactly zero (those two differentiate the iterations that start from it), and
what ``f`` closes over (parameters of an outer transformation) is differentiated exactly
like ``args``: ``Implicit``, ``Phantom``, ``JFB`` and ``Reversible`` first turn those values into explicit
arguments (:func:`jax.closure_convert`), so the forward solve carries no derivative of
them either, and the derivative comes only from the mode's own rule.
"""

from __future__ import annotations

import abc
import dataclasses
from types import MappingProxyType
from typing import Callable, ClassVar, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import solvers
from implicit import reversible
from implicit.convergence import (
    ForwardSolveWarning,
    Monitor,
    ReconstructionWarning,
    report_backward,
    report_convergence,
)
from implicit.linear import (
    KRYLOV_SOLVERS,
    Krylov,
    LinearSolve,
    available,
    damped_steps,
    make_linear_solve,
)
from implicit.linear_map import linear_map
from solvers import Method, ReversibleFixedPoint, Solver, WarmStartable
from solvers.flat import flat_view
from solvers.options import Check, Options, above, at_least, between, option
from solvers.solver import compute_dtype
from solvers.types import PyTree, Solution, Stats

BackwardSolver = Union[Solver, Method, Krylov, str, None]
"""What :class:`Implicit` accepts as its backward solver (see there)."""


class Mode(Options, abc.ABC):
    """A gradient mode: attaches a derivative to a forward solve (see the module docstring)."""

    name: ClassVar[str]

    def prepare(self, forward: Solver) -> Solver:
        """The forward solver this mode needs (most modes take it as it is)."""
        return forward

    @abc.abstractmethod
    def attach(
        self, f: Callable[..., PyTree], z0: PyTree, args: tuple, forward: Solver
    ) -> Solution:
        """Solve ``z* = f(z*, *args)`` with ``forward`` (already checked by the caller);
        return ``z*`` carrying this mode's derivative with respect to ``args`` (and to what
        ``f`` closes over)."""


def _no_gradient(tree: PyTree) -> PyTree:
    """``tree`` (statistics, recorded states) under ``stop_gradient``."""
    return jax.tree_util.tree_map(lax.stop_gradient, tree)


def _zero_tangents(tree: PyTree) -> PyTree:
    """Zero tangents for the outputs ``tree`` of a custom rule (``float0`` for integer and
    boolean leaves, as JAX wants them)."""
    return jax.tree_util.tree_map(
        lambda a: jnp.zeros_like(a) if jnp.issubdtype(a.dtype, jnp.inexact)
        else np.zeros(np.shape(a), jax.dtypes.float0), tree,
    )


def _closure_converted(
    f: Callable[..., PyTree], z0: PyTree, args: tuple
) -> tuple[Callable[[PyTree, tuple], PyTree], tuple]:
    """``(f_theta, theta)`` with ``f_theta(z, theta) = f(z, *args)`` where ``theta = (args,
    consts)`` holds the arguments and the values ``f`` closes over that may carry a
    derivative (traced values of an outer transformation)."""
    f_closed, consts = jax.closure_convert(lambda z, *a: f(z, *a), z0, *args)

    def f_theta(z: PyTree, theta: tuple) -> PyTree:
        return f_closed(z, *theta[0], *theta[1])

    return f_theta, (tuple(args), tuple(consts))


def _report_forward(stats: Stats, forward: Solver) -> None:
    stopping = forward.stopping
    residual = stats.abs_residual if stopping.stop_mode == "abs" else stats.rel_residual
    report_convergence(
        ForwardSolveWarning, f"the forward solve with {forward.name!r}", stats.converged,
        residual, stopping.tol,
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


def _backward_value(name: str) -> Union[Method, Krylov]:
    """The value a backward-solver shorthand stands for: a Krylov solver at its defaults,
    or a registry solver's method at its defaults."""
    if name in KRYLOV_SOLVERS:
        return KRYLOV_SOLVERS[name]()
    if name in solvers.available(general=True):
        return solvers.get(name).method
    if name in solvers.available():
        raise ValueError(
            f"backward solver {name!r} solves monotone operator equilibria only, and the "
            "tangent and adjoint equations are linear maps without an operator; valid "
            f"backward solvers: {', '.join(available())}"
        )
    raise ValueError(
        f"unknown backward solver {name!r}; valid backward solvers: {', '.join(available())}"
    )


@dataclasses.dataclass(frozen=True)
class Implicit(Mode):
    """The implicit function theorem; ``solver`` solves the tangent and adjoint equations.

    Args:
      solver: the backward solver, a value (a string is a shorthand for one, at its
        defaults). It inherits from the forward solver what it does not say itself,
        resolved once per solve with ``dataclasses.replace``:

        * ``None`` (default): the forward solver itself (its method, stopping rule and
          batch axis);
        * a :class:`solvers.Method` (``solvers.Anderson(history=4)``) or a registry name
          (``"anderson"``): the forward solver with that method, so with the forward
          stopping rule and batch axis;
        * a :class:`solvers.Solver`: used as given, with its own stopping rule;
        * a :class:`~implicit.linear.Krylov` solver (``GMRES(restart=30)``, ``BiCGStab()``,
          ``NormalCG()``, or ``"gmres"``, ``"bicgstab"``, ``"normal_cg"``): its ``tol``
          defaults to the forward solver's.
      reuse_inverse: start the backward solve from what the forward solve learned about
        ``(J − I)⁻¹`` (SHINE, Ramzi et al. 2022): a Broyden forward solve ends with a
        low-rank estimate ``−I + Σ uᵢvᵢᴴ`` of it, and a Broyden backward solve of the
        adjoint starts from its transpose (of the tangent equation, from it), so its first
        step is already a quasi-Newton step. ``None`` (default): whenever the forward and
        backward methods can (:class:`solvers.WarmStartable`); ``True``: insist
        (``ValueError`` at the first call if they cannot); ``False``: never. The
        derivative is the same either way, to the backward tolerance; only the number of
        backward iterations changes.
      fallback: ``None`` (default), or an approximate mode, :class:`Phantom` or
        :class:`JFB` (or ``"phantom"``, ``"jfb"``), that takes over the derivative of each
        system whose tangent or adjoint solve missed its tolerance. Such a system's tangent
        (adjoint) is then ``k`` damped steps ``t ← (1 − λ) t + λ (J t + ∂f/∂args·ȧ)``
        from 0 (``u ← (1 − λ) u + λ (Jᵀ u + ḡ)``), i.e. the phantom gradient linearised at
        ``z*``; a converged system keeps the implicit derivative. Per sample with a
        fixed-point backward solver and ``batch_axis=0`` (or under ``vmap``); a Krylov
        solve, or ``batch_axis=None``, is one system and falls back as a whole.
      monitor: a function that receives an :class:`implicit.SolveReport` (iterations,
        convergence and residual per system, and which systems fell back) of every
        backward solve, at run time and under ``jit`` too; for training metrics and tests.

    Differentiating at a forward solve that did not converge emits
    :class:`implicit.ForwardSolveWarning`; a backward solve that does not converge,
    :class:`implicit.BackwardSolveWarning`, or with a ``fallback``
    :class:`implicit.BackwardFallbackWarning`, which counts the systems that fell back.
    """

    name: ClassVar[str] = "implicit"
    solver: BackwardSolver = option(None, None, "the backward solver (see the class docstring)")
    reuse_inverse: Optional[bool] = option(
        None, None, "start a Broyden adjoint from the forward solve's inverse estimate (SHINE)",
        kw_only=True,
    )
    fallback: Union[Phantom, str, None] = option(
        None, Check(lambda v: v is None or isinstance(v, Phantom) or v in ("phantom", "jfb"),
                    "None, Phantom(...), JFB(), 'phantom' or 'jfb'"),
        "the approximate mode of the systems whose backward solve misses its tolerance",
        kw_only=True,
    )
    monitor: Optional[Monitor] = option(
        None, None, "receives a SolveReport of every backward solve", kw_only=True
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.solver, str):
            object.__setattr__(self, "solver", _backward_value(self.solver))
        if isinstance(self.fallback, str):
            object.__setattr__(self, "fallback", as_mode(self.fallback))

    def backward_for(self, forward: Solver) -> Union[Solver, Krylov]:
        """The backward solver of a solve by ``forward`` (see the class docstring)."""
        chosen = self.solver
        if chosen is None:
            return dataclasses.replace(forward, record=())
        if isinstance(chosen, Method):
            return dataclasses.replace(forward, method=chosen, record=())
        if isinstance(chosen, Krylov):
            return chosen.with_tol(forward.stopping.tol)
        return chosen

    def _reuses(self, forward: Solver, backward: Union[Solver, Krylov]) -> bool:
        """Whether the backward solve starts from the forward solve's final state."""
        able = (
            isinstance(backward, Solver) and isinstance(backward.method, WarmStartable)
            and backward.method.can_warm_from(forward.method)
        )
        if self.reuse_inverse and not able:
            raise ValueError(
                f"Implicit(reuse_inverse=True) needs a forward and a backward solver of one "
                f"kind that can share its inverse-Jacobian estimate (broyden); got forward "
                f"{forward.name!r} and backward {backward.name!r}"
            )
        return able and self.reuse_inverse is not False

    def attach(
        self, f: Callable[..., PyTree], z0: PyTree, args: tuple, forward: Solver
    ) -> Solution:
        backward = self.backward_for(forward)
        reuse = self._reuses(forward, backward)
        f_theta, theta0 = _closure_converted(f, z0, args)

        @jax.custom_jvp
        def equilibrium(z_init: PyTree, theta: tuple) -> tuple:
            solution, state = forward.run(f_theta, z_init, (theta,))
            return solution.value, solution.stats, state, solution.states

        @equilibrium.defjvp
        def equilibrium_jvp(primals: tuple, tangents: tuple) -> tuple:
            z_init, theta = primals
            _, theta_dot = tangents  # the derivative with respect to z0 is exactly zero
            outputs = equilibrium(z_init, theta)
            value, stats, state, states = outputs
            _report_forward(stats, forward)
            # One linearisation of f at (z*, θ) serves both J·t and ∂f/∂θ·θ̇.
            _, f_lin = jax.linearize(f_theta, value, theta)
            no_theta = jax.tree_util.tree_map(jnp.zeros_like, theta_dot)
            rhs = f_lin(jax.tree_util.tree_map(jnp.zeros_like, value), theta_dot)

            def matvec(t: PyTree) -> PyTree:  # (J − I) t
                return _tree_sub(f_lin(t, no_theta), t)

            prior = state if reuse else None
            transposed = backward.method.transpose(prior) if reuse else None
            fallback = dict(monitor=self.monitor)
            if self.fallback is not None:
                fallback.update(fallback=self.fallback.linear_solve(),
                                fallback_name=repr(self.fallback))
            t = lax.custom_linear_solve(
                matvec, jax.tree_util.tree_map(jnp.negative, rhs),
                solve=make_linear_solve(backward, prior, **fallback),
                transpose_solve=make_linear_solve(backward, transposed, **fallback),
            )
            return outputs, (t, *_zero_tangents((stats, state, states)))

        value, stats, _, states = equilibrium(z0, theta0)
        return Solution(value, _no_gradient(stats), _no_gradient(states))


@dataclasses.dataclass(frozen=True)
class Phantom(Mode):
    """Differentiate ``steps`` damped steps ``z ← (1 − damping)·z + damping·f(z)`` from ``z*``.

    The forward solve sees the arguments and what ``f`` closes over under
    ``stop_gradient``; the derivative, with respect to both alike, is that of the
    unrolled steps only (Geng et al. 2021, "On training implicit models").
    """

    name: ClassVar[str] = "phantom"
    steps: int = option(5, at_least(1), "damped steps unrolled from z*")
    damping: float = option(0.5, between(0, 1, low_open=True), "λ of z ← (1 − λ) z + λ f(z)")

    def attach(
        self, f: Callable[..., PyTree], z0: PyTree, args: tuple, forward: Solver
    ) -> Solution:
        f_theta, theta = _closure_converted(f, z0, args)
        solution, _ = forward.run(f_theta, z0, (lax.stop_gradient(theta),))
        z_star = lax.stop_gradient(solution.value)
        damping = self.damping

        def step(z: PyTree, _: None) -> tuple[PyTree, None]:
            fz = f_theta(z, theta)
            if damping == 1.0:
                return fz, None
            return jax.tree_util.tree_map(lambda a, b: (1 - damping) * a + damping * b, z, fz), None

        unrolled = lax.scan(step, z_star, None, length=self.steps)[0]
        unrolled = _warn_when_differentiated(unrolled, solution.stats, forward)
        # The value stays z* exactly; the derivative is the one of the unrolled steps.
        value = jax.tree_util.tree_map(
            lambda s, u: s + (u - lax.stop_gradient(u)), z_star, unrolled
        )
        return Solution(value, _no_gradient(solution.stats), _no_gradient(solution.states))

    def linear_solve(self) -> LinearSolve:
        """This derivative as a solve of the tangent (adjoint) equation, linearised at
        ``z*``: ``steps`` damped steps from 0 (:func:`implicit.linear.damped_steps`); the
        fallback of :class:`Implicit`."""
        return damped_steps(self.steps, self.damping)


@dataclasses.dataclass(frozen=True)
class JFB(Phantom):
    """Jacobian-free backprop: one undamped step from ``z*`` (``J`` taken as 0; Fung et
    al. 2022, "JFB: Jacobian-free backpropagation for implicit networks")."""

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
        solution, _ = forward.run(f, z0, args)
        return Solution(solution.value, _no_gradient(solution.stats),
                        _no_gradient(solution.states))


def _inexact(leaf: PyTree) -> bool:
    return jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)


@dataclasses.dataclass(frozen=True)
class Reversible(Mode):
    """The exact derivative of the reversible iteration, rebuilt backwards step by step.

    The mode implies its own iteration: the forward solver keeps its stopping rule and batch
    axis, and its method becomes :class:`solvers.ReversibleFixedPoint` (``"reversible"``),

        y_{n+1} = (1 − β) y_n + β f(z_n),      z_{n+1} = (1 − β) z_n + β f(y_{n+1}),

    from ``y₀ = z₀``, two evaluations of ``f`` per step. The value is the solver's ``z*``,
    its best iterate ``z_k`` (the last one for a sample that converged); the derivative is
    the exact one of those ``k`` steps, in ``θ`` and in ``z0`` alike, as :class:`Unroll` of
    the same iteration would give it, but computed by running the steps backwards from the
    final pair through their closed-form inverse (:mod:`implicit.reversible`): memory does
    not grow with the number of steps and no linear system is solved. Forward mode replays
    the steps under ``jax.jvp``. At a converged ``z*`` it approaches the implicit gradient
    as the tolerance tightens (``implicit.audit_gradient`` measures how close).

    McCallum, Arora and Foster (2025), "Reversible deep equilibrium models",
    arXiv:2509.12917.

    Args:
      damping: ``β`` in ``(0, 1)``. ``None`` (default): the forward solver's when its method
        already is the reversible one, else that method's default.
      reconstruction_tol: rebuilding the iterates backwards in floating point leaves a
        rounding error in the gradient, which the backward pass estimates per sample
        (:func:`implicit.reversible.gradient_error`: how far the rebuilt start lies from the
        true ``z0``, scaled by the forward solve's residual reduction). A sample whose
        estimate exceeds this, or whose rebuilt iterates overflow, emits
        :class:`implicit.ReconstructionWarning`.
      monitor: receives an :class:`implicit.SolveReport` of every backward pass: per
        sample, the steps run backwards, whether its estimate met ``reconstruction_tol``,
        and the estimate.

    Raises ``ValueError`` at the solve when the forward solver has a fallback (its steps
    are not the reversible ones).
    """

    name: ClassVar[str] = "reversible"
    damping: Optional[float] = option(
        None, between(0, 1, low_open=True, high_open=True),
        "β of the coupled iteration (None: the forward solver's if it is reversible, else "
        "ReversibleFixedPoint's default)",
    )
    reconstruction_tol: float = option(
        1e-3, above(0), "warn for a sample whose estimated relative gradient error from "
        "rounding in the backward rebuild exceeds this",
    )
    monitor: Optional[Monitor] = option(
        None, None, "receives a SolveReport of every backward pass", kw_only=True
    )

    def prepare(self, forward: Solver) -> Solver:
        """``forward`` with the reversible method (see the class docstring)."""
        if forward.fallback is not None:
            raise ValueError(
                f"backward 'reversible' differentiates the reversible iteration itself, so its "
                f"forward solver cannot have a fallback; got fallback "
                f"{forward.fallback.name!r} (pass fallback=None)"
            )
        method = forward.method
        if not isinstance(method, ReversibleFixedPoint):
            method = ReversibleFixedPoint()
        if self.damping is not None:
            method = dataclasses.replace(method, damping=self.damping)
        return dataclasses.replace(forward, method=method)

    def attach(
        self, f: Callable[..., PyTree], z0: PyTree, args: tuple, forward: Solver
    ) -> Solution:
        method = forward.method
        if not isinstance(method, ReversibleFixedPoint):
            raise ValueError(f"backward 'reversible' needs the solver prepared by "
                             f"Reversible.prepare, got {forward.name!r}")
        f_theta, theta0 = _closure_converted(f, z0, args)
        view = flat_view(z0, forward.batch_axis)
        work = compute_dtype(view.dtype)
        monitor, tol = self.monitor, self.reconstruction_tol

        @jax.custom_jvp
        def iterate(z_init: PyTree, theta: tuple) -> tuple:
            solution, state = forward.run(f_theta, z_init, (theta,))
            return solution.value, solution.stats, state, solution.states

        @iterate.defjvp
        def iterate_jvp(primals: tuple, tangents: tuple) -> tuple:
            z_init, theta = primals
            z_dot, theta_dot = tangents
            outputs = iterate(z_init, theta)
            value, stats, state, states = outputs
            _report_forward(stats, forward)
            leaves, treedef = jax.tree_util.tree_flatten(theta)
            diff = [i for i, leaf in enumerate(leaves) if _inexact(leaf)]
            theta_d = [leaves[i] for i in diff]
            theta_d_dot = [jax.tree_util.tree_leaves(theta_dot)[i] for i in diff]

            def F(matrix: jax.Array, theta_d: list) -> jax.Array:  # f on the matrix view
                full = list(leaves)
                for i, leaf in zip(diff, theta_d, strict=True):
                    full[i] = leaf
                out = f_theta(view.from_matrix(matrix), jax.tree_util.tree_unflatten(treedef, full))
                return view.to_matrix(out).astype(work)

            trace = stats.trace if forward.batch_axis == 0 else stats.trace[None]
            best = reversible.best_steps(trace)
            start = view.to_matrix(z_init).astype(work)

            def apply(inputs: tuple) -> PyTree:
                def run(z: PyTree, theta_d: list) -> jax.Array:
                    return reversible.replay(method, F, theta_d, view.to_matrix(z).astype(work),
                                             best)

                return view.from_matrix(jax.jvp(run, (z_init, theta_d), inputs)[1])

            def transpose(value_bar: PyTree) -> tuple:
                back = reversible.reverse(method, F, theta_d, start, state, best,
                                          view.to_matrix(value_bar).astype(work))
                error = reversible.gradient_error(back.start_error, trace)
                report_backward(
                    "reversible", ~back.lost & (error <= tol), error, tol,
                    state.steps, monitor, category=ReconstructionWarning,
                    what="the reversible gradient's rebuild of the forward iterates",
                )
                return view.from_matrix(back.z0_bar), back.theta_bar

            t = linear_map(apply, transpose, (z_dot, theta_d_dot), value)
            return outputs, (t, *_zero_tangents((stats, state, states)))

        value, stats, _, states = iterate(z0, theta0)
        return Solution(value, _no_gradient(stats), _no_gradient(states))


MODES: Mapping[str, type[Mode]] = MappingProxyType(
    {mode.name: mode for mode in (Implicit, Phantom, JFB, Unroll, Reversible)}
)
"""The gradient modes by their string shorthand."""

BACKWARD_MODES: tuple[str, ...] = tuple(MODES)
"""``"implicit"``, ``"phantom"``, ``"jfb"``, ``"unroll"``, ``"reversible"``: the strings
``backward=`` accepts."""


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
        "or a mode value (Implicit(...), Phantom(...), JFB(), Unroll(), Reversible(...))"
    )
