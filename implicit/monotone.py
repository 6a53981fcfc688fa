"""Monotone operator equilibrium layers (monDEQ): what every framework's layer shares.

Winston & Kolter 2020, "Monotone operator equilibrium networks" (NeurIPS). The layer is

    z* = σ(W z* + U x + b),     W = (1 − m) I − AᵀA + B − Bᵀ,     σ = prox¹_g (ReLU),

with free parameters ``A``, ``B``, ``U``, ``b`` and a fixed margin ``m > 0``. Its symmetric
part gives ``I − W ⪰ m I`` for every ``A`` and ``B`` (``AᵀA ⪰ 0`` and ``B − Bᵀ`` is skew), so
``I − W`` is strongly monotone, the inclusion ``0 ∈ (I − W) z − (U x + b) + ∂g(z)`` has
exactly one solution for every input, and operator splitting
(:class:`solvers.PeacemanRachford`, :class:`solvers.ForwardBackward`) reaches it from any
start: the layer is well posed by construction, however training moves its parameters.
``W`` itself may be far from a contraction, so plain iteration may diverge where the
splitting converges.

The framework layers (``implicit.haiku.MonDEQ``, ``implicit.flax.MonDEQ``,
``implicit.equinox.MonDEQ``) have the signature of every DEQ layer (:mod:`implicit.layer`):
``MonDEQ(block, *, solver, backward, return_stats, jacobian_penalty, transform_params,
correction, **solver_options)``, where ``block`` is the framework's ``MonotoneBlock`` (the
parameters above, callable as ``block(z, x) = σ(W z + U x + b)``). Each builds the operator
``solvers.splitting.MonotoneOperator(W, U x + b, σ)`` once per call, outside the solver
loop, and solves ``z = op(z)`` with :func:`implicit.fixed_point` (:func:`solve`): a
splitting solver steps on the operator, any other solver iterates ``op``, and the gradient
mode differentiates ``z*`` with respect to ``W`` and ``U x + b``, hence to ``A``, ``B``,
``U``, ``b`` and ``x``.

The backward. The tangent and adjoint equations of :class:`implicit.Implicit` are linear
maps without an operator, so a splitting method cannot solve them. With a splitting forward
solver and ``Implicit`` without a backward solver of its own (``backward="implicit"``), the
layers therefore solve them with GMRES (:func:`settings`): ``I − ∂f/∂z = I − D W``
(``D = σ'``, diagonal in ``[0, 1]``) is non-singular for every monDEQ, so a Krylov method
needs no contraction. Any other choice is used as given.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp

from implicit.fixed_point import fixed_point
from implicit.layer import DEQSettings
from implicit.linear import GMRES
from implicit.modes import Implicit
from solvers import Structured
from solvers.options import Options, above, option
from solvers.splitting import MonotoneOperator, Prox, as_prox
from solvers.types import PyTree, Solution

PARAMS = ("a", "b", "u", "bias")
"""The parameters of a monotone block, by name: ``A`` ``(r, n)``, ``B`` ``(n, n)``, ``U``
``(n, d)`` and ``b`` ``(n,)`` (``n`` features, ``d`` input features)."""


def monotone_weight(a: jax.Array, b: jax.Array, m: float) -> jax.Array:
    """``W = (1 − m) I − AᵀA + B − Bᵀ`` for ``A`` ``(r, n)`` and ``B`` ``(n, n)``: the
    symmetric part of ``I − W`` is ``m I + AᵀA ⪰ m I``."""
    n = b.shape[-1]
    return (1 - m) * jnp.eye(n, dtype=b.dtype) - a.T @ a + b - b.T


def monotonicity(w: jax.Array) -> jax.Array:
    """The smallest eigenvalue of the symmetric part of ``I − W``: the largest ``m`` with
    ``I − W ⪰ m I`` (positive for a well-posed equilibrium)."""
    s = jnp.eye(w.shape[-1], dtype=w.dtype) - w
    return jnp.linalg.eigvalsh((s + s.T) / 2)[0]


@dataclasses.dataclass(frozen=True)
class Monotone(Options):
    """The fixed settings of a monotone block: the margin ``m`` and the nonlinearity
    ``σ = prox¹_g`` (a :class:`solvers.splitting.Prox` or a name: ``"relu"``,
    ``"identity"``)."""

    m: float = option(1.0, above(0), "the margin m of I − W ⪰ m I")
    nonlinearity: Union[str, Prox] = option("relu", None, "σ = prox¹_g: 'relu', 'identity' "
                                            "or a solvers.splitting.Prox")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "nonlinearity", as_prox(self.nonlinearity))

    @classmethod
    def describe(cls) -> str:
        return "a monotone block"

    def init(self, key: jax.Array, in_features: int, features: int,
             dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Parameters :data:`PARAMS` drawn for ``in_features → features``: ``A`` and ``B``
        with entries ``N(0, 1/n)``, ``U`` with entries ``N(0, 1/d)``, ``b = 0``."""
        if in_features < 1 or features < 1:
            raise ValueError(f"a monotone block needs in_features >= 1 and features >= 1, got "
                             f"{in_features} and {features}")
        ka, kb, ku = jax.random.split(key, 3)
        scale = features ** -0.5
        return {
            "a": scale * jax.random.normal(ka, (features, features), dtype),
            "b": scale * jax.random.normal(kb, (features, features), dtype),
            "u": in_features ** -0.5 * jax.random.normal(ku, (features, in_features), dtype),
            "bias": jnp.zeros((features,), dtype),
        }

    def weight(self, params: Mapping[str, jax.Array]) -> jax.Array:
        """``W`` of ``params`` (:func:`monotone_weight`)."""
        return monotone_weight(params["a"], params["b"], self.m)

    def operator(self, params: Mapping[str, jax.Array], x: jax.Array) -> MonotoneOperator:
        """The operator of the equilibrium for input ``x`` (``(..., d)``):
        ``MonotoneOperator(W, U x + b, σ)``."""
        check_params(params, x)
        bias = x @ params["u"].T + params["bias"]
        return MonotoneOperator(self.weight(params), bias, self.nonlinearity)

    def __call__(self, z: jax.Array, params: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
        """``σ(W z + U x + b)``: the block as ``f(z, params, x)``."""
        return self.operator(params, x)(z)


def check_params(params: Mapping[str, jax.Array], x: jax.Array) -> None:
    """Parameters :data:`PARAMS` of consistent shapes for input ``x``; each error names the
    parameter."""
    missing = [name for name in PARAMS if name not in params]
    if missing:
        raise KeyError(f"a monotone block's parameters need {', '.join(PARAMS)}; missing "
                       f"{', '.join(missing)}")
    n = jnp.shape(params["b"])[-1] if jnp.ndim(params["b"]) == 2 else None
    expected = {"b": (n, n), "u": (n, jnp.shape(x)[-1] if jnp.ndim(x) else None),
                "bias": (n,)}
    for name, shape in expected.items():
        if tuple(jnp.shape(params[name])) != shape or n is None:
            raise ValueError(
                f"monotone block parameter {name!r} has shape {tuple(jnp.shape(params[name]))}; "
                f"expected {shape} for {n} features and input of shape {jnp.shape(x)}")
    if jnp.ndim(params["a"]) != 2 or jnp.shape(params["a"])[1] != n:
        raise ValueError(f"monotone block parameter 'a' has shape {jnp.shape(params['a'])}; "
                         f"expected (r, {n})")


def settings(base: DEQSettings) -> DEQSettings:
    """The settings a monotone layer runs with: ``base``, with GMRES for the tangent and
    adjoint equations when the forward solver is a splitting method and the mode is
    :class:`implicit.Implicit` without a backward solver of its own (see the module
    docstring)."""
    solver, mode = base.solver, base.backward
    structured = isinstance(solver.method, Structured) or (
        solver.fallback is not None and isinstance(solver.fallback.method, Structured))
    if structured and isinstance(mode, Implicit) and mode.solver is None:
        return dataclasses.replace(base, backward=dataclasses.replace(mode, solver=GMRES()))
    return base


def equilibrium_map(z: PyTree, operator: MonotoneOperator, x: PyTree) -> PyTree:
    """``f(z, op, x) = op(z) = σ(W z + c)`` (``x`` is already in ``c``)."""
    return operator(z)


def initial_state(operator: MonotoneOperator, z0: Optional[jax.Array]) -> jax.Array:
    """``z0``, or zeros shaped like ``W z + c``."""
    if z0 is not None:
        return z0
    bias = operator.bias
    return jnp.zeros(jnp.shape(bias)[:-1] + (operator.weight.shape[-1],), jnp.result_type(bias))


def solve(
    config: DEQSettings, block: Monotone, params: Mapping[str, jax.Array], x: jax.Array,
    z0: Optional[jax.Array] = None, key: Optional[jax.Array] = None,
) -> tuple[Solution, Any]:
    """Solve the layer's equilibrium for input ``x`` from ``z0`` (default zeros); return the
    solution and what the layer returns (``z*``, then the statistics, the penalty and the
    correction's states its settings ask for). ``params`` are the block's parameters
    (:data:`PARAMS`), already mapped by ``config.transform_params`` in the framework's own
    form."""
    operator = block.operator(params, x)
    z0 = initial_state(operator, z0)
    solution = fixed_point(equilibrium_map, z0, operator, x, solver=config.solver,
                           backward=config.backward, correction=config.correction)
    return solution, config.outputs(solution, equilibrium_map, operator, x, (), key)
