"""Linear solves ``A x = b`` for the tangent and adjoint equations of a fixed point.

At a fixed point ``z* = f(z*, θ)`` write ``J = ∂f/∂z(z*)``. Differentiating the
residual ``F(z) = f(z) − z`` gives the operator ``A = ∂F/∂z = J − I``, and

* forward mode solves the tangent equation ``A x = b`` (``t = −x`` then solves
  ``t = J t + ∂f/∂θ·θ̇``),
* reverse mode solves its transpose ``Aᵀ x = b`` (``u = −x`` then solves the
  adjoint fixed point ``u = Jᵀ u + ḡ``, i.e. ``u = u·∂f/∂z + ḡ`` for row vectors).

A :data:`LinearSolve` is ``solve(matvec, b) -> x`` with ``matvec(x) = A x``. It comes
from one of two kinds of values:

* **a fixed-point solver**, a :class:`solvers.Solver`:
  ``A x = b`` with ``A = J − I`` is the linear fixed-point problem

      x = x + A x − b = J x − b,

  which the solver iterates like any other (per sample with ``batch_axis=0``).
  It converges when the forward problem does (the same ``J``).
* **a Krylov solver**, a :class:`Krylov` value (:class:`GMRES`, :class:`BiCGStab`,
  :class:`NormalCG`; jaxopt's implementations), on ``A x = b`` directly, i.e. on
  ``(I − Jᵀ) u = ḡ`` up to the sign of both sides (Saad & Schultz 1986; van der Vorst
  1992; the normal equations by conjugate gradients, Hestenes & Stiefel 1952).
  These need no contraction, only a non-singular ``A``; they treat the whole
  state as one system even with ``batch_axis=0`` (``A`` is then block diagonal,
  so the answer is the same).

A solve that does not converge is not silent: it emits a
:class:`~implicit.convergence.BackwardSolveWarning` through :func:`jax.debug.callback`,
which works inside and outside ``jit``. Given a ``fallback`` (a :data:`LinearSolve` that
always answers, such as :func:`damped_steps`, the phantom gradient's), each system whose
solve missed its tolerance takes the fallback's answer instead, and is reported as such
(:class:`~implicit.convergence.BackwardFallbackWarning`).
"""

from __future__ import annotations

import abc
import dataclasses
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

import solvers
from implicit.convergence import Monitor, report_backward
from solvers import Solver, pytree
from solvers.options import Options, above, at_least, option
from solvers.quiet_jaxopt import import_jaxopt
from solvers.types import PyTree

jaxopt_linear = import_jaxopt("linear_solve")

Matvec = Callable[[PyTree], PyTree]
LinearSolve = Callable[[Matvec, PyTree], PyTree]


class Attempt(NamedTuple):
    """A backward solve's answer ``x`` and how it went, per system (scalars for one system,
    ``(batch,)`` for a per-sample fixed-point solver)."""

    x: PyTree
    converged: jax.Array
    residual: jax.Array
    steps: Optional[jax.Array]  # iterations per system; None where not counted (Krylov)

# A Krylov solve is reported as not converged when its true residual
# ‖A x − b‖ exceeds this multiple of its own target max(tol·‖b‖, atol, eps) (eps:
# the dtype's machine epsilon, below which jax's Krylov solvers treat a vector as
# zero): the solvers stop on an estimate (GMRES) or on the normal equations (CG).
KRYLOV_REPORT_FACTOR = 10.0


@dataclasses.dataclass(frozen=True)
class Krylov(Options, abc.ABC):
    """A Krylov solver of ``A x = b`` with its settings, checked when built.

    ``tol=None`` means the tolerance of the forward solve it differentiates, filled in
    by :meth:`with_tol` when :class:`implicit.Implicit` meets that solve.
    """

    name: ClassVar[str]
    tol: Optional[float] = option(
        None, above(0), "stop when ‖A x − b‖ <= tol·‖b‖ (None: the forward solver's tol)")
    atol: float = option(0.0, at_least(0), "or when ‖A x − b‖ <= atol")
    max_iter: Optional[int] = option(
        None, at_least(1), "iteration limit (for gmres: restart cycles); None: jax's default")
    ridge: Optional[float] = option(
        None, at_least(0), "solve (A + ridge·I) x = b instead (None: no ridge)")

    @classmethod
    def describe(cls) -> str:
        return f"Krylov solver {cls.name!r}"

    @abc.abstractmethod
    def _solve(self, matvec: Matvec, b: PyTree, **kwargs: Any) -> PyTree:
        """jaxopt's solve with the common keywords ``kwargs`` and this solver's own."""

    def with_tol(self, tol: float) -> Krylov:
        """This solver, with ``tol`` if it has none of its own."""
        return self if self.tol is not None else dataclasses.replace(self, tol=tol)

    @property
    def report_tol(self) -> float:
        """The tolerance it solves to (jax's default where it has none)."""
        return 1e-5 if self.tol is None else self.tol

    def attempt(self, matvec: Matvec, b: PyTree) -> Attempt:
        """Solve ``A x = b`` as one system; convergence is judged on the true residual
        ``‖A x − b‖`` (one more product with ``A``) against :data:`KRYLOV_REPORT_FACTOR`
        times the solver's target."""
        tol = self.report_tol
        kwargs = dict(tol=tol, atol=self.atol, ridge=self.ridge)
        if self.max_iter is not None:
            kwargs["maxiter"] = self.max_iter
        x = self._solve(matvec, b, **kwargs)
        residual = pytree.norm(jax.tree_util.tree_map(jnp.subtract, matvec(x), b))
        # jax's Krylov solvers treat vectors with norm below eps as zero.
        floor = jnp.finfo(jnp.result_type(*jax.tree_util.tree_leaves(b))).eps
        target = jnp.maximum(jnp.maximum(tol * pytree.norm(b), self.atol), floor)
        return Attempt(x, residual <= KRYLOV_REPORT_FACTOR * target, residual, None)

    def linear_solve(self, monitor: Optional[Monitor] = None) -> LinearSolve:
        """The :data:`LinearSolve` of :meth:`attempt`, each solve reported
        (:func:`report_backward`)."""
        return make_linear_solve(self, monitor=monitor)


@dataclasses.dataclass(frozen=True)
class GMRES(Krylov):
    """Restarted GMRES (Saad & Schultz 1986): minimal residual over a Krylov subspace."""

    name: ClassVar[str] = "gmres"
    restart: int = option(20, at_least(1), "Krylov subspace size per cycle")

    def _solve(self, matvec: Matvec, b: PyTree, **kwargs: Any) -> PyTree:
        return jaxopt_linear.solve_gmres(matvec, b, restart=self.restart, **kwargs)


@dataclasses.dataclass(frozen=True)
class BiCGStab(Krylov):
    """BiCGSTAB (van der Vorst 1992): short recurrences for non-symmetric ``A``."""

    name: ClassVar[str] = "bicgstab"

    def _solve(self, matvec: Matvec, b: PyTree, **kwargs: Any) -> PyTree:
        return jaxopt_linear.solve_bicgstab(matvec, b, **kwargs)


@dataclasses.dataclass(frozen=True)
class NormalCG(Krylov):
    """Conjugate gradients on the normal equations ``Aᵀ A x = Aᵀ b`` (Hestenes & Stiefel 1952)."""

    name: ClassVar[str] = "normal_cg"

    def _solve(self, matvec: Matvec, b: PyTree, **kwargs: Any) -> PyTree:
        return jaxopt_linear.solve_normal_cg(matvec, b, **kwargs)


KRYLOV_SOLVERS: Mapping[str, type[Krylov]] = MappingProxyType(
    {cls.name: cls for cls in (GMRES, BiCGStab, NormalCG)}
)
"""The Krylov solvers by their string shorthand."""

KRYLOV_NAMES: tuple[str, ...] = tuple(KRYLOV_SOLVERS)
"""The Krylov backward solvers, by name."""


def available() -> tuple[str, ...]:
    """Names accepted as the backward solver: the registry's solvers of general fixed points
    (not the operator-splitting ones, which need a monotone operator), then the Krylov
    solvers."""
    return solvers.available(general=True) + KRYLOV_NAMES


def registry_attempt(backward: Solver, prior: Any = None) -> Callable[[Matvec, PyTree], Attempt]:
    """Solve ``A x = b`` (``A = J − I``) as the fixed point ``x = x + A x − b`` with
    ``backward``, started warm from ``prior`` (a final state of a solve whose Jacobian
    was ``A``) when one is given; per sample with ``batch_axis=0``."""
    stopping = backward.stopping

    def attempt(matvec: Matvec, b: PyTree) -> Attempt:
        def shifted(x: PyTree) -> PyTree:  # x ↦ x + A x − b  (= J x − b for A = J − I)
            return jax.tree_util.tree_map(
                lambda xi, ai, bi: xi + ai - bi, x, matvec(x), b
            )

        solution, _ = backward.run(shifted, jax.tree_util.tree_map(jnp.zeros_like, b), (), prior)
        stats = solution.stats
        residual = stats.abs_residual if stopping.stop_mode == "abs" else stats.rel_residual
        return Attempt(solution.value, stats.converged, residual, stats.steps)

    return attempt


def registry_linear_solve(
    backward: Solver, prior: Any = None, monitor: Optional[Monitor] = None
) -> LinearSolve:
    """The :data:`LinearSolve` of :func:`registry_attempt`, each solve reported
    (:func:`report_backward`)."""
    return make_linear_solve(backward, prior, monitor)


def damped_steps(steps: int, damping: float) -> LinearSolve:
    """``x_k`` of ``k = steps`` damped steps ``x ← x + λ (A x − b)`` from ``x₀ = 0``
    (``λ = damping``): a polynomial in ``A`` applied to ``b``, linear in ``b``, whose
    transpose is the same steps with ``Aᵀ``.

    With ``A = J − I`` and ``b = −∂f/∂θ·θ̇`` these are the tangent steps
    ``t ← (1 − λ) t + λ (J t + ∂f/∂θ·θ̇)`` from 0, i.e. the derivative of ``k`` damped
    steps ``z ← (1 − λ) z + λ f(z)`` from ``z*`` linearised at ``z*``: the phantom gradient
    (Geng et al. 2021; ``k = 1, λ = 1`` is Jacobian-free backprop). It never fails, so it
    serves as the fallback of a backward solve."""

    def linear_solve(matvec: Matvec, b: PyTree) -> PyTree:
        def step(x: PyTree, _: None) -> tuple[PyTree, None]:
            return jax.tree_util.tree_map(lambda xi, ai, bi: xi + damping * (ai - bi),
                                          x, matvec(x), b), None

        first = jax.tree_util.tree_map(lambda bi: -damping * bi, b)  # A·0 = 0: no product
        if steps == 1:
            return first
        return lax.scan(step, first, None, length=steps - 1)[0]

    return linear_solve


def _per_system(kept: jax.Array, x: PyTree, other: PyTree) -> PyTree:
    """``x`` in the systems where ``kept`` (a scalar, or one flag per sample on the leading
    axis of every leaf), ``other`` elsewhere."""
    def pick(a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.where(jnp.reshape(kept, jnp.shape(kept) + (1,) * (a.ndim - kept.ndim)), a, b)

    return jax.tree_util.tree_map(pick, x, other)


def make_linear_solve(backward: Solver | Krylov, prior: Any = None,
                      monitor: Optional[Monitor] = None, fallback: Optional[LinearSolve] = None,
                      fallback_name: str = "") -> LinearSolve:
    """The :data:`LinearSolve` of a backward solver; a fixed-point solver starts warm from
    ``prior`` when one is given; each solve is reported to ``monitor`` when one is given.

    With a ``fallback`` (named ``fallback_name`` in reports), the answer of each system whose
    solve missed its tolerance is the fallback's (per sample for a fixed-point solver with
    ``batch_axis=0``; a Krylov solve is one system)."""
    if isinstance(backward, Krylov):
        attempt, tol = backward.attempt, backward.report_tol
    else:
        attempt, tol = registry_attempt(backward, prior), backward.stopping.tol

    def linear_solve(matvec: Matvec, b: PyTree) -> PyTree:
        result = attempt(matvec, b)
        x, fell_back = result.x, None
        if fallback is not None:
            fell_back = ~result.converged
            # The fallback runs only when a system needs it (under vmap, cond runs both).
            x = _per_system(result.converged, x, lax.cond(
                jnp.all(result.converged), lambda: x, lambda: fallback(matvec, b)))
        report_backward(backward.name, result.converged, result.residual, tol, result.steps,
                        monitor, fell_back=fell_back, fallback=fallback_name)
        return x

    return linear_solve
