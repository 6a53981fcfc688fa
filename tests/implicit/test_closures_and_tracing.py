"""What ``f`` closes over is differentiated like an argument, in every mode; and a call of
``fixed_point`` checks ``f`` once and traces its forward solve once.

The map is linear, ``f(z) = z A + b`` (row vectors), so every mode's derivative has a
closed form: with ``M = (1 − λ) I + λ A``, ``k`` damped steps from ``z*`` give
``∂z/∂b = λ Σ_{i<k} Mⁱ`` (JFB: ``k = 1, λ = 1``, the identity), and the implicit function
theorem ``(I − A)⁻¹``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import solvers
import solvers.solver
from implicit import GMRES, JFB, Implicit, Phantom, fixed_point

A = np.array([[0.3, 0.1], [-0.2, 0.4]])
B = np.array([1.0, 2.0])
TIGHT = {"tol": 1e-12, "max_iter": 100}


def closed_form_gradient(mode) -> np.ndarray:
    """``∂(Σ z)/∂b`` of the mode, from the formulas of the module docstring."""
    if isinstance(mode, Phantom):  # JFB too
        m = (1 - mode.damping) * np.eye(2) + mode.damping * A
        jacobian = mode.damping * sum(np.linalg.matrix_power(m, i) for i in range(mode.steps))
    else:
        jacobian = np.linalg.inv(np.eye(2) - A)
    return jacobian @ np.ones(2)


def as_argument(b, mode):
    return jnp.sum(fixed_point(lambda z, b: z @ A + b, jnp.zeros(2), b, solver_options=TIGHT,
                               backward=mode).value)


def as_closure(b, mode):
    return jnp.sum(fixed_point(lambda z: z @ A + b, jnp.zeros(2), solver_options=TIGHT,
                               backward=mode).value)


MODES = [Implicit(), Implicit(GMRES()), Phantom(steps=3, damping=0.6), JFB()]


@pytest.mark.parametrize("mode", MODES, ids=repr)
def test_a_closed_over_value_gets_the_derivative_of_an_argument(x64, mode):
    b = jnp.asarray(B)
    expected = closed_form_gradient(mode)
    for loss in (as_argument, as_closure):
        np.testing.assert_allclose(jax.grad(loss)(b, mode), expected, rtol=1e-9)
        _, tangent = jax.jvp(lambda b, loss=loss: loss(b, mode), (b,), (jnp.ones(2),))
        np.testing.assert_allclose(tangent, expected.sum(), rtol=1e-9)


def _while_carries(jaxpr) -> list[int]:
    """The number of carried values of every ``while`` loop in ``jaxpr``, nested ones too."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "while":
            found.append(len(eqn.outvars))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _while_carries(inner)
    return found


@pytest.mark.parametrize("mode", [Phantom(steps=3, damping=0.6), JFB()], ids=repr)
def test_the_forward_solve_carries_no_derivative_of_a_closure(mode):
    """Under ``jax.jvp`` the solver loop carries the same values whether ``b`` is an argument
    or closed over: the forward solve is not differentiated in either case."""
    b, db = jnp.asarray(B, jnp.float32), jnp.ones(2, jnp.float32)

    def carries_of(loss):
        jvp = jax.make_jaxpr(lambda b: jax.jvp(lambda b: loss(b, mode), (b,), (db,)))
        return _while_carries(jvp(b).jaxpr)

    carries = [carries_of(as_argument), carries_of(as_closure)]
    assert carries[0] and carries[0] == carries[1], carries


@dataclasses.dataclass(frozen=True)
class CountedFixedPoint(solvers.FixedPoint):
    """Plain iteration that counts how often its ``init`` is traced."""

    name: ClassVar[str] = "counted"
    traces: ClassVar[list] = []

    def init(self, z, fz, stopping):
        self.traces.append(z.shape)
        return super().init(z, fz, stopping)


def test_f_is_checked_once_and_the_forward_solve_traced_once(monkeypatch):
    checks = []
    check_map = solvers.solver.check_map
    monkeypatch.setattr(solvers.solver, "check_map",
                        lambda *args: checks.append(1) or check_map(*args))
    CountedFixedPoint.traces.clear()
    forward = solvers.Solver(CountedFixedPoint(), solvers.Stopping(tol=1e-6))

    def loss(b):
        f = lambda z, b: z @ A.astype(np.float32) + b  # noqa: E731
        return jnp.sum(fixed_point(f, jnp.zeros(2), b, solver=forward,
                                   backward=Implicit(GMRES())).value)

    grad = jax.jit(jax.grad(loss))(jnp.asarray(B, jnp.float32))
    np.testing.assert_allclose(grad, closed_form_gradient(Implicit()), rtol=1e-4)
    assert len(checks) == 1 and len(CountedFixedPoint.traces) == 1, (checks,
                                                                     CountedFixedPoint.traces)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield
