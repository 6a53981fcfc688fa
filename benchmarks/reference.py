"""High-accuracy reference solutions and gradients, computed in float64 and verified, and
how a candidate's loss, gradient and residuals are measured against them.

For a problem ``z* = f(z*, *args)`` and the loss ``L = Σ c ⊙ z*`` (``c`` a fixed random
cotangent), the exact gradient is, by the implicit function theorem,

    u = u·∂f/∂z(z*) + c,        ∂L/∂args = u·∂f/∂args(z*),

i.e. ``u`` solves the adjoint fixed point ``(I − ∂f/∂zᵀ) u = c``. Both the forward fixed
point and the adjoint are solved in float64 to a relative residual of
:data:`REFERENCE_TOL` with limited-memory Broyden (backtracking line search, no stall
guard), and both residuals are measured afterwards and returned, so a reference that did
not reach its tolerance is visible in the output rather than trusted silently.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

import solvers
from benchmarks import timing
from benchmarks.problems import Problem
from solvers import pytree, residuals
from solvers.types import PyTree

REFERENCE_TOL = 1e-12
REFERENCE_MAX_ITER = 2000


@dataclasses.dataclass(frozen=True)
class Reference:
    """The float64 reference of one problem.

    Attributes:
      value: the fixed point ``z*`` (float64, batched).
      grads: ``∂L/∂args[i]`` for ``i`` in ``problem.diff_argnums`` (float64), a tuple.
      cotangent: ``c`` in ``L = Σ c ⊙ z*`` (float32, shaped like ``z0``).
      scale: per sample ``‖f(z*)‖`` (float32): peers stop at ``‖f(z) − z‖ ≤ tol·scale``.
      forward_residual: max over samples of ``‖f(z*) − z*‖ / ‖f(z*)‖``.
      adjoint_residual: max over samples of the adjoint's relative residual.
    """

    value: PyTree
    grads: tuple
    cotangent: PyTree
    scale: jax.Array
    forward_residual: float
    adjoint_residual: float


def cotangent_like(z0: PyTree, seed: int = 0) -> PyTree:
    """A fixed standard-normal pytree shaped like ``z0``: the ``c`` of ``L = Σ c ⊙ z*``."""
    return pytree.gaussian_like(jax.random.PRNGKey(seed), z0)


def loss(z: PyTree, cotangent: PyTree) -> jax.Array:
    """``L = Σ c ⊙ z``, summed over every leaf."""
    return pytree.vdot(cotangent, z)


def per_sample_relative_residual(z: PyTree, fz: PyTree) -> jax.Array:
    """``‖f(z)_i − z_i‖ / ‖f(z)_i‖`` per sample (axis 0), exactly as the solvers' ``"rel"`` mode."""
    return residuals(z, fz, batch_axis=0)[1]


def _max_rel_residual(z: PyTree, fz: PyTree) -> float:
    return float(jnp.max(per_sample_relative_residual(z, fz)))


def compute(
    problem: Problem, seed: int = 0, compiler_options: Optional[Mapping[str, Any]] = None
) -> Reference:
    """The verified float64 reference of ``problem`` (see the module docstring).

    ``compiler_options`` are passed to XLA (e.g. :data:`benchmarks.timing.FAST_COMPILE`).
    """
    cotangent = cotangent_like(problem.z0, seed)
    with jax.enable_x64(True):
        p64 = problem.astype(jnp.float64)
        c64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), cotangent)
        solve = solvers.get(
            "broyden",
            max_iter=REFERENCE_MAX_ITER,
            tol=REFERENCE_TOL,
            stop_mode="rel",
            batch_axis=0,
            line_search=True,
            stall_window=0,
            divergence_factor=1e12,
        )
        start = p64.root if p64.root is not None else p64.z0

        def solve_all(z_start: PyTree, args: tuple, c: PyTree) -> tuple:
            z = solve(p64.f, z_start, *args).value
            _, vjp_z = jax.vjp(lambda zz: p64.f(zz, *args), z)

            def adjoint(u: PyTree) -> PyTree:
                return jax.tree_util.tree_map(jnp.add, vjp_z(u)[0], c)

            u = solve(adjoint, c).value
            diff = [args[i] for i in p64.diff_argnums]

            def f_of_diff(*d: PyTree) -> PyTree:
                full = list(args)
                for i, value in zip(p64.diff_argnums, d, strict=True):
                    full[i] = value
                return p64.f(z, *full)

            _, vjp_args = jax.vjp(f_of_diff, *diff)
            grads = vjp_args(u)
            return z, u, grads, p64.f(z, *args), adjoint(u)

        compiled = timing.compile_fn(
            solve_all, start, p64.args, c64, compiler_options=compiler_options
        )
        z, u, grads, fz, adj_u = compiled.run()
        forward_residual = _max_rel_residual(z, fz)
        adjoint_residual = _max_rel_residual(u, adj_u)
        grads = jax.tree_util.tree_map(np.asarray, grads)
        value = jax.tree_util.tree_map(np.asarray, z)
        scale = np.asarray(pytree.row_norms(fz))
    return Reference(
        value=value,
        grads=tuple(grads),
        cotangent=cotangent,
        scale=jnp.asarray(scale),
        forward_residual=forward_residual,
        adjoint_residual=adjoint_residual,
    )


def relative_error(grads: tuple, reference: tuple) -> float:
    """``‖g − g_ref‖ / ‖g_ref‖`` over all leaves together (``inf`` if ``g`` is not finite)."""
    with jax.enable_x64(True):
        return float(pytree.relative_error(_float64(grads), _float64(reference)))


def cosine_similarity(grads: tuple, reference: tuple) -> float:
    """Cosine of the angle between ``g`` and ``g_ref``, all leaves flattened together."""
    with jax.enable_x64(True):
        return float(pytree.cosine_similarity(_float64(grads), _float64(reference)))


def _float64(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def loss_and_grad(
    problem: Problem, solution: Callable[..., PyTree], cotangent: PyTree
) -> Callable[..., tuple]:
    """``(z0, *args) -> (L, ∂L/∂args[diff_argnums])`` with ``L = Σ c ⊙ z*(args)``."""
    diff = problem.diff_argnums

    def objective(diff_args: tuple, z0: PyTree, args: tuple) -> jax.Array:
        full = list(args)
        for i, value in zip(diff, diff_args, strict=True):
            full[i] = value
        return loss(solution(z0, *full), cotangent)

    grad = jax.value_and_grad(objective)

    def run(z0: PyTree, *args: PyTree) -> tuple:
        return grad(tuple(args[i] for i in diff), z0, args)

    return run


def relative_residuals(problem: Problem) -> Callable[[PyTree, tuple], jax.Array]:
    """Jitted ``(z, args) -> (batch,)`` of ``‖f(z) − z‖ / ‖f(z)‖``: the one re-measurement for all."""

    @jax.jit
    def residuals(z: PyTree, args: tuple) -> jax.Array:
        return per_sample_relative_residual(z, problem.f(z, *args))

    return residuals


def max_or_nan(values: np.ndarray) -> float:
    """The maximum, NaN if any value is NaN (a NaN sample is never hidden)."""
    values = np.asarray(values, dtype=float)
    return float(np.max(values)) if values.size else float("nan")
