"""The gradient audit: how close a gradient mode comes to the exact implicit gradient.

The implicit gradient of ``L(z*(θ), θ)`` is exact only when ``z*`` is a fixed point and the
adjoint ``u = Jᵀu + ḡ`` is solved; a phantom or JFB gradient, or an implicit one with a loose
tolerance, is an approximation. The audit measures it on the user's own model: it takes the
gradient as configured and a reference gradient whose forward and backward solves run to a
tight tolerance (:func:`reference_configuration`), and compares them:

    cosine = ⟨g, g_ref⟩ / (‖g‖ ‖g_ref‖),     relative error = ‖g − g_ref‖ / ‖g_ref‖.

    audit = audit_gradient(loss, params, batch, solver=solver, backward="jfb")
    audit.cosine, audit.relative_error

``loss(params, *args, solver=..., backward=...)`` builds the model with the given solver and
gradient mode (a Haiku model from its config, for example) and returns a scalar.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

import solvers
from implicit.modes import Implicit, Mode, as_mode
from solvers import Solver, pytree
from solvers.types import PyTree

# Relative residual ‖f(z) − z‖ / ‖f(z)‖ of the reference, by the state's bytes per real
# number: a thousand times tighter than a typical training tolerance, and within reach of
# the dtype (an absolute 1e-5 is not, in float32, on a state of a few thousand entries).
REFERENCE_TOL = {4: 1e-6, 8: 1e-12}
REFERENCE_MIN_ITER = 100


class GradientAudit(NamedTuple):
    """The configured gradient against the reference: ``cosine`` and ``relative_error``."""

    cosine: jax.Array
    relative_error: jax.Array


def compare_gradients(gradient: PyTree, reference: PyTree) -> GradientAudit:
    """The :class:`GradientAudit` of ``gradient`` against ``reference`` (all leaves as one)."""
    return GradientAudit(pytree.cosine_similarity(gradient, reference),
                         pytree.relative_error(gradient, reference))


def reference_configuration(
    forward: Union[str, Solver], *, tol: Optional[float] = None, max_iter: Optional[int] = None,
    dtype: Any = jnp.float32,
) -> tuple[Solver, Implicit]:
    """A tight forward solver of the same kind as ``forward`` and an implicit mode whose
    backward solve is as tight: the reference of an audit.

    ``tol`` (on the relative residual ``‖f(z) − z‖ / ‖f(z)‖``) defaults to 1e-6 for single
    precision and 1e-12 for double (``dtype``); ``max_iter`` to four times the forward one,
    and at least 100.
    """
    forward = solvers.get(forward)
    if tol is None:
        tol = REFERENCE_TOL[jnp.finfo(jnp.dtype(dtype)).bits // 8]
    max_iter = max_iter or max(4 * forward.stopping.max_iter, REFERENCE_MIN_ITER)
    stopping = dataclasses.replace(forward.stopping, tol=tol, stop_mode="rel", max_iter=max_iter)
    tight = dataclasses.replace(forward, stopping=stopping)
    return tight, Implicit(tight)


def audit_gradient(
    loss: Callable[..., jax.Array],
    params: PyTree,
    *args: PyTree,
    solver: Union[str, Solver],
    backward: Union[str, Mode],
    reference: Optional[tuple[Union[str, Solver], Mode]] = None,
) -> GradientAudit:
    """Compare ``∇_params loss(params, *args, solver=solver, backward=backward)`` with the
    same gradient under ``reference`` (``(solver, mode)``; default
    :func:`reference_configuration` of ``solver`` in the dtype of ``params``).

    Works for every gradient mode (implicit, phantom, JFB, unroll), under ``jax.jit`` too
    (pass ``solver`` and ``backward`` as static values).
    """
    if reference is None:
        leaves = [leaf for leaf in jax.tree_util.tree_leaves(params)
                  if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        reference = reference_configuration(solver, dtype=dtype)
    configured = jax.grad(lambda p: loss(p, *args, solver=solver, backward=as_mode(backward)))
    exact = jax.grad(lambda p: loss(p, *args, solver=reference[0],
                                    backward=as_mode(reference[1])))
    return compare_gradients(configured(params), exact(params))
