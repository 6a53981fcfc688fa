"""``check_fixed_point_grads``: the implicit derivative of a fixed point against references.

For the scalar ``L(θ) = loss(z*(θ))``, where ``z*(θ) = f(z*, *args(θ))`` and ``θ`` are
the floating leaves of the checked ``args``, it compares directional derivatives
``D = V ∇L`` along the rows of a direction matrix ``V`` (the unit vectors of every
coordinate when there are at most ``max_directions`` of them, otherwise
``max_directions`` random unit vectors):

* ``grad`` — :func:`implicit.fixed_point` with ``backward="implicit"``, reverse
  mode (``V · jax.grad(L)``), in the dtype of the inputs;
* ``jvp`` — the same in forward mode (``jax.jvp`` along each row of ``V``);
* ``fd`` — central differences ``(L(θ + h v) − L(θ − h v)) / 2h`` of the forward
  solve alone at a tight tolerance;
* ``unroll`` — backprop through ``unroll_steps`` plain iterations ``z ← f(z)``
  from ``z0`` (meaningful for a contractive ``f``).

The references (``fd``, ``unroll``) are computed in float64 when JAX runs with
x64 enabled (``with jax.enable_x64(True):``), else in the input dtype. The relative
error of ``D`` against ``D_ref`` is ``‖D − D_ref‖₂ / ‖D_ref‖₂``.

Every computation is jitted with ``f`` and the configuration as static
arguments, so checks of the same ``f`` on inputs of the same shapes compile once.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import solvers
from implicit.fixed_point import fixed_point
from implicit.modes import Mode, as_mode
from solvers import Solver, pytree
from solvers.types import PyTree


class GradCheckReport(NamedTuple):
    """Relative errors of the implicit derivative (see :mod:`implicit.testing.grad_check`).

    Attributes:
      worst_rel_error: the largest of the errors below (``inf`` if any is NaN).
      fd_rel_error: ``grad`` and ``jvp`` against central finite differences (the larger).
      unroll_rel_error: ``grad`` and ``jvp`` against unrolled backprop (NaN if skipped).
      jvp_rel_error: forward mode against reverse mode.
      num_directions: rows of ``V``.
      forward_converged: whether the forward solve met its tolerance.
      dtype, reference_dtype: the dtypes of the checked and of the reference derivatives.
    """

    worst_rel_error: float
    fd_rel_error: float
    unroll_rel_error: float
    jvp_rel_error: float
    num_directions: int
    forward_converged: bool
    dtype: str
    reference_dtype: str

    def assert_close(self, rtol: float) -> None:
        """Raise ``AssertionError`` (showing the report) unless ``worst_rel_error <= rtol``."""
        if not self.worst_rel_error <= rtol:
            raise AssertionError(f"fixed-point derivative off by more than {rtol:g}: {self}")


class _Spec(NamedTuple):
    """Static description of how ``θ`` is cut out of (and put back into) ``args``."""

    treedef: Any
    checked: tuple[int, ...]  # flat indices of the checked leaves
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]


class _Config(NamedTuple):
    solver: Solver
    reference: Solver  # the solver of the finite-difference solves
    backward: Mode
    loss: Optional[Callable[[PyTree], jax.Array]]
    unroll_steps: int


def default_tolerance(dtype: Any) -> float:
    """The forward and backward tolerance used unless given (with ``stop_mode="abs"``):
    1e-12 in double, 1e-5 in single precision."""
    return 1e-12 if jnp.finfo(dtype).bits >= 64 else 1e-5


def _x64_enabled() -> bool:
    return jax.dtypes.canonicalize_dtype(np.float64) == np.float64


def _rebuild(theta: jax.Array, others: list, spec: _Spec) -> tuple:
    leaves = list(others)
    offset = 0
    for index, shape, dtype in zip(spec.checked, spec.shapes, spec.dtypes, strict=True):
        size = math.prod(shape)
        leaves.insert(index, jnp.reshape(theta[offset:offset + size], shape).astype(dtype))
        offset += size
    return jax.tree_util.tree_unflatten(spec.treedef, leaves)


def _loss(config: _Config, z: PyTree, projection: PyTree) -> jax.Array:
    if config.loss is not None:
        return config.loss(z)
    return sum(
        jnp.sum(p * leaf) for p, leaf in zip(
            jax.tree_util.tree_leaves(projection), jax.tree_util.tree_leaves(z), strict=True
        )
    )


@functools.partial(jax.jit, static_argnames=("f", "spec", "config"))
def _implicit(theta, others, z0, directions, projection, *, f, spec, config):
    def objective(theta: jax.Array) -> tuple[jax.Array, jax.Array]:
        solution = fixed_point(
            f, z0, *_rebuild(theta, others, spec), solver=config.solver, backward=config.backward,
        )
        return _loss(config, solution.value, projection), jnp.all(solution.stats.converged)

    # One forward solve: linearize (forward mode), then transpose it (reverse mode, as jax.grad).
    value, linear, converged = jax.linearize(objective, theta, has_aux=True)
    (gradient,) = jax.linear_transpose(linear, theta)(jnp.ones_like(value))
    return directions @ gradient, jax.vmap(linear)(directions), converged


@functools.partial(jax.jit, static_argnames=("f", "spec", "config"))
def _finite_differences(theta, others, z0, directions, projection, step, *, f, spec, config):
    solve = config.reference

    def objective(theta: jax.Array) -> jax.Array:
        return _loss(config, solve(f, z0, *_rebuild(theta, others, spec)).value, projection)

    plus = jax.vmap(lambda v: objective(theta + step * v))(directions)
    minus = jax.vmap(lambda v: objective(theta - step * v))(directions)
    return (plus - minus) / (2 * step)


@functools.partial(jax.jit, static_argnames=("f", "spec", "config"))
def _unrolled(theta, others, z0, directions, projection, *, f, spec, config):
    def objective(theta: jax.Array) -> jax.Array:
        args = _rebuild(theta, others, spec)
        z = lax.scan(lambda z, _: (f(z, *args), None), z0, None, length=config.unroll_steps)[0]
        return _loss(config, z, projection)

    return directions @ jax.grad(objective)(theta)


def _relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    return float(pytree.relative_error(value, reference))


def check_fixed_point_grads(
    f: Callable[..., PyTree],
    z0: PyTree,
    *args: PyTree,
    argnums: Optional[Sequence[int]] = None,
    loss: Optional[Callable[[PyTree], jax.Array]] = None,
    solver: Union[str, Solver] = "broyden",
    solver_options: Optional[Mapping[str, Any]] = None,
    backward: Union[str, Mode] = "implicit",
    reference_solver: Union[str, Solver, None] = None,
    unroll_steps: int = 500,
    fd_step: Optional[float] = None,
    max_directions: int = 64,
    seed: int = 0,
) -> GradCheckReport:
    """Check the implicit derivative of ``z* = f(z*, *args)`` against finite differences,
    unrolled backprop, and forward against reverse mode; return a :class:`GradCheckReport`.

    Args:
      f, z0, *args: the fixed-point problem, as for :func:`implicit.fixed_point`.
      argnums: which ``args`` to differentiate (default: all); their floating leaves
        form ``θ``, other leaves (integers, keys) are passed through.
      loss: a scalar function of ``z*``; default: ``⟨c, z*⟩`` with a fixed random ``c``.
      solver, solver_options, backward: the configuration under test (``backward`` a
        mode value or name, as for :func:`implicit.fixed_point`; an approximate mode
        such as ``"jfb"`` shows its error). A solver given by name has ``tol``
        :func:`default_tolerance` of the state dtype, ``stop_mode="abs"`` and
        ``max_iter=200`` unless ``solver_options`` say otherwise; a :class:`solvers.Solver`
        value keeps its own, changed by ``solver_options``.
      reference_solver: the method of the finite-difference solves (default: the one of
        ``solver``); they run with the solver's stopping rule and batch axis but
        ``stop_mode="abs"``, ``tol=1e-14`` (float64 references; 1e-6 otherwise) and
        ``max_iter=max(max_iter, 1000)``.
      unroll_steps: plain iterations of the unrolled reference; 0 skips it.
      fd_step: the central-difference step ``h`` (default: ``ε^(1/3)`` of the
        reference dtype, times ``max(1, max|θ|)``).
      max_directions: use all coordinate directions up to this many, else this many
        random unit directions.
      seed: seeds ``c`` and the random directions.
    """
    state_dtype = jnp.result_type(*jax.tree_util.tree_leaves(z0))
    reference_dtype = np.dtype(np.float64) if _x64_enabled() else np.dtype(state_dtype)
    if isinstance(solver, str):
        solver = solvers.get(solver, tol=default_tolerance(state_dtype), stop_mode="abs",
                             max_iter=200)
    solver = solvers.get(solver, **(solver_options or {}))
    # Absolute residuals: a relative one is 0/0 at a fixed point z* = 0, and a
    # solve stopped on it returns garbage there. An unreachable tol is harmless:
    # the solve then stops when it stalls, with its best iterate.
    stopping = dataclasses.replace(
        solver.stopping, tol=1e-14 if reference_dtype == np.float64 else 1e-6, stop_mode="abs",
        max_iter=max(solver.stopping.max_iter, 1000), fixed_length=False,
    )
    method = solver.method if reference_solver is None else solvers.get(reference_solver).method
    reference = dataclasses.replace(solver, method=method, stopping=stopping)

    flat, treedef = jax.tree_util.tree_flatten(args)
    owners = [i for i, arg in enumerate(args) for _ in jax.tree_util.tree_leaves(arg)]
    selected = set(range(len(args)) if argnums is None else argnums)
    checked = tuple(
        i for i, (leaf, owner) in enumerate(zip(flat, owners, strict=True))
        if owner in selected and jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
    )
    if not checked:
        raise ValueError("check_fixed_point_grads found no floating leaves in the checked args")
    spec = _Spec(
        treedef, checked,
        tuple(tuple(jnp.shape(flat[i])) for i in checked),
        tuple(str(jnp.result_type(flat[i])) for i in checked),
    )
    others = [leaf for i, leaf in enumerate(flat) if i not in checked]
    theta = np.concatenate([np.ravel(np.asarray(flat[i], np.float64)) for i in checked])

    rng = np.random.default_rng(seed)
    size = theta.size
    if size <= max_directions:
        directions = np.eye(size)
    else:
        directions = rng.standard_normal((max_directions, size))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    projection = jax.tree_util.tree_map(
        lambda leaf: rng.standard_normal(np.shape(leaf)), z0
    )
    config = _Config(solver, reference, as_mode(backward), loss, unroll_steps)

    def cast(tree: PyTree, dtype: Any) -> PyTree:
        return jax.tree_util.tree_map(
            lambda leaf: jnp.asarray(leaf, dtype)
            if jnp.issubdtype(jnp.result_type(leaf), jnp.floating) else leaf,
            tree,
        )

    grad_d, jvp_d, converged = _implicit(
        jnp.asarray(theta, state_dtype), cast(others, state_dtype), cast(z0, state_dtype),
        jnp.asarray(directions, state_dtype), cast(projection, state_dtype),
        f=f, spec=spec, config=config,
    )
    ref_spec = spec._replace(dtypes=tuple(str(reference_dtype) for _ in checked))
    ref_inputs = (
        jnp.asarray(theta, reference_dtype), cast(others, reference_dtype),
        cast(z0, reference_dtype), jnp.asarray(directions, reference_dtype),
        cast(projection, reference_dtype),
    )
    scale = max(1.0, float(np.abs(theta).max()))
    step = fd_step or float(np.finfo(reference_dtype).eps ** (1 / 3) * scale)
    fd_d = _finite_differences(*ref_inputs, step, f=f, spec=ref_spec, config=config)
    fd_error = max(_relative_error(grad_d, fd_d), _relative_error(jvp_d, fd_d))
    unroll_error = math.nan
    if unroll_steps:
        unroll_d = _unrolled(*ref_inputs, f=f, spec=ref_spec, config=config)
        unroll_error = max(_relative_error(grad_d, unroll_d), _relative_error(jvp_d, unroll_d))
    jvp_error = _relative_error(jvp_d, grad_d)
    errors = [e for e in (fd_error, unroll_error, jvp_error) if not math.isnan(e)]
    return GradCheckReport(
        worst_rel_error=max(errors),
        fd_rel_error=fd_error,
        unroll_rel_error=unroll_error,
        jvp_rel_error=jvp_error,
        num_directions=int(directions.shape[0]),
        forward_converged=bool(converged),
        dtype=str(np.dtype(state_dtype)),
        reference_dtype=str(reference_dtype),
    )
