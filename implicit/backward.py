"""Gradient modes: how the fixed point ``z* = f(z*, *args)`` is differentiated.

A :data:`Mode` is ``mode(f, z0, args, forward) -> Solution``, where ``forward`` is
a registry solve function. Every mode returns the forward solution ``z*`` as the
value (bit for bit) and statistics that carry no gradient; they differ in the
derivative attached to the value. With ``J = ∂f/∂z(z*)``:

* :func:`implicit_mode` — the implicit function theorem,
  ``dz* = (I − J)⁻¹ ∂f/∂args·d(args)``, exact up to the solver tolerances. It is
  ``jax.lax.custom_root`` on ``F(z) = f(z, *args) − z`` whose ``tangent_solve``
  wraps the linear solve in ``jax.lax.custom_linear_solve``, so one rule serves
  forward mode (the tangent equation ``t = J t + ∂f/∂args·ȧ``), reverse mode
  (JAX transposes the tangent solve into the adjoint fixed point
  ``u = Jᵀ u + ḡ``, pulled back through one VJP of ``f``) and any composition of
  them (``jacfwd``, ``hessian``, ``vmap``). The forward solve runs on
  ``stop_gradient`` inputs and is not differentiated, so memory does not grow
  with the number of forward iterations.
* :func:`phantom_mode` — the unrolled phantom gradient (Geng et al. 2021): the
  derivative of ``k`` damped steps ``z ← (1 − λ) z + λ f(z, *args)`` from
  ``stop_gradient(z*)``.
* ``jfb`` — Jacobian-free backprop (Fung et al. 2022): the phantom gradient with
  ``k = 1, λ = 1``, i.e. ``dz* ≈ ∂f/∂args(z*)·d(args)`` (``J`` taken as 0).
* :func:`unroll_mode` — differentiate through the solver's iterations (run as a
  fixed-length ``lax.scan``): memory grows with ``max_iter``; a reference.

In every mode but ``unroll`` the derivative with respect to ``z0`` is exactly zero.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from implicit.linear import LinearSolve
from solvers.types import PyTree, Solution, SolveFn, Stats

Mode = Callable[[Callable[..., PyTree], PyTree, tuple, SolveFn], Solution]

_INTEGER_FIELDS = ("steps", "fevals", "converged")


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


def _no_gradient(stats: Stats) -> Stats:
    return jax.tree_util.tree_map(lax.stop_gradient, stats)


def implicit_mode(linear_solve: LinearSolve) -> Mode:
    """Differentiate by the implicit function theorem; ``linear_solve`` solves ``(J − I) x = b``.

    ``linear_solve`` is used for the tangent equation and, on the transposed
    operator, for the adjoint equation (see :mod:`implicit.linear`).
    """

    def tangent_solve(linearized: Callable[[PyTree], PyTree], rhs: PyTree) -> PyTree:
        # ``linearized`` is x ↦ ∂F/∂z·x = (J − I) x; JAX transposes it (and swaps
        # solve for transpose_solve) when it builds reverse mode.
        return lax.custom_linear_solve(
            linearized, rhs, solve=linear_solve, transpose_solve=linear_solve
        )

    def run(f: Callable[..., PyTree], z0: PyTree, args: tuple, forward: SolveFn) -> Solution:
        dtypes = {}  # of the solver's integer statistics, recorded when custom_root traces solve

        def residual(z: PyTree) -> PyTree:  # F(z) = f(z, *args) − z; custom_root finds F(z*) = 0
            return jax.tree_util.tree_map(jnp.subtract, f(z, *args), z)

        def solve(_: Callable, z_init: PyTree) -> tuple[PyTree, Stats]:
            solution = forward(f, z_init, *lax.stop_gradient(args))
            dtypes.update({k: getattr(solution.stats, k).dtype for k in _INTEGER_FIELDS})
            return solution.value, _stats_to_aux(solution.stats)

        value, aux = lax.custom_root(residual, z0, solve, tangent_solve, has_aux=True)
        return Solution(value, _no_gradient(_stats_from_aux(aux, dtypes)))

    return run


def phantom_mode(steps: int, damping: float) -> Mode:
    """Differentiate ``steps`` damped steps ``z ← (1 − damping)·z + damping·f(z)`` from ``z*``."""

    def run(f: Callable[..., PyTree], z0: PyTree, args: tuple, forward: SolveFn) -> Solution:
        solution = forward(f, z0, *lax.stop_gradient(args))
        z_star = lax.stop_gradient(solution.value)

        def step(z: PyTree, _: None) -> tuple[PyTree, None]:
            fz = f(z, *args)
            if damping == 1.0:
                return fz, None
            return jax.tree_util.tree_map(lambda a, b: (1 - damping) * a + damping * b, z, fz), None

        unrolled = lax.scan(step, z_star, None, length=steps)[0]
        # The value stays z* exactly; the derivative is the one of the unrolled steps.
        value = jax.tree_util.tree_map(
            lambda s, u: s + (u - lax.stop_gradient(u)), z_star, unrolled
        )
        return Solution(value, _no_gradient(solution.stats))

    return run


def unroll_mode(f: Callable[..., PyTree], z0: PyTree, args: tuple, forward: SolveFn) -> Solution:
    """Differentiate through the solver; ``forward`` must run with ``fixed_length=True``."""
    solution = forward(f, z0, *args)
    return Solution(solution.value, _no_gradient(solution.stats))
