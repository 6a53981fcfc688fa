"""Operator splitting: the solvers of monotone operator equilibria.

A monotone operator equilibrium (Winston & Kolter 2020, "Monotone operator equilibrium
networks", NeurIPS) is the fixed point

    z* = σ(W z* + c),        σ = prox_g, the proximal map of a convex, closed, proper g,

that is, the zero of the monotone inclusion

    0 ∈ F(z) + ∂g(z),        F(z) = (I − W) z − c.

When ``I − W`` is strongly monotone, ``(I − W) + (I − W)ᵀ ⪰ 2m·I`` with ``m > 0``, the
inclusion has exactly one solution for every ``c``, and the splitting methods below reach
it from any start. With ``prox^α_g(v) = argmin_x ½‖x − v‖² + α·g(x)`` (so ``σ = prox¹_g``;
for ReLU, ``g`` is the indicator of ``z ≥ 0`` and ``prox^α_g = ReLU`` for every ``α``):

* :class:`ForwardBackward` (``"forward_backward"``): a forward step on ``F``, a backward
  (proximal) step on ``g``,

      z ← prox^α_g(z − α F(z)) = prox^α_g((1 − α) z + α (W z + c)),

  which converges for ``0 < α < 2m/L²``, ``L = ‖I − W‖₂`` (Passty 1979; Combettes & Wajs
  2005). By default ``α = m/L²``, read off the operator once per solve.
* :class:`PeacemanRachford` (``"peaceman_rachford"``): the reflected resolvents of both,

      u½ = 2z − u,   z½ = (I + α(I − W))⁻¹ (u½ + α c),   u ← 2 z½ − u½,   z ← prox^α_g(u),

  which converges for every ``α > 0`` (Peaceman & Rachford 1955; Lions & Mercier 1979);
  the resolvent matrix is inverted once per solve.

How a method of the registry gets at ``W``. The shared loop hands a method evaluations of
``f`` only, and ``σ(W z + c)`` does not reveal ``W`` (ReLU hides it). So the problem carries
its operator as an argument: a splitting method solves ``z = f(z, *args)`` where exactly
one :class:`MonotoneOperator` (``W``, ``c`` and ``g``'s proximal map, a pytree) is among
``args``, at any depth (the gradient modes of :mod:`implicit` regroup the arguments and
keep it), and ``f`` is that operator's map, ``f(z, ..., op, ...) = op(z) = σ(W z + c)``.
The methods are :class:`solvers.method.Structured`: :class:`solvers.Solver` calls their
``bind`` once per solve, before the loop; it finds the operator, checks it against the
state and precomputes what the method needs. The method then steps on ``W``, ``c`` and
``prox``, while the loop measures ``‖f(z) − z‖`` on ``f`` exactly as for every other solver,
so the statistics compare one to one (and an ``f`` that is not the operator's map shows as
a solve that does not converge). A solve whose arguments hold no operator (a plain ``f``,
or the tangent and adjoint equations of :class:`implicit.Implicit`, which are linear maps
without one) raises a ``TypeError`` that says so. ``solvers.available(general=True)``
leaves these methods out.

    op = MonotoneOperator(weight=W, bias=x @ U.T + b)        # ReLU by default
    solve = solvers.get("peaceman_rachford", alpha=1.0, tol=1e-6, batch_axis=0)
    sol = solve(monotone_map, jnp.zeros_like(op.bias), op)   # z* = ReLU(W z* + U x + b)

The state is one array whose last axis has ``W``'s size (any leading axes: a batch, or
several); ``c`` broadcasts to it.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from types import MappingProxyType
from typing import Any, ClassVar, Mapping, Optional, Union

import jax
import jax.numpy as jnp

from solvers.flat import FlatView
from solvers.method import FlatMap, Matrix, Method, Restartable, Step, Structured
from solvers.options import above, option
from solvers.stopping import Stopping

__all__ = [
    "ForwardBackward",
    "Identity",
    "MonotoneOperator",
    "PROXES",
    "PeacemanRachford",
    "Prox",
    "ReLU",
    "SplitMap",
    "as_prox",
    "find_operator",
    "monotone_map",
]


class Prox(abc.ABC):
    """``prox^α_g(v) = argmin_x ½‖x − v‖² + α·g(x)`` for a convex, closed, proper ``g``,
    applied elementwise; ``σ = prox¹_g`` is the layer's nonlinearity. Subclasses are frozen
    dataclasses (hashable: they are static parts of a :class:`MonotoneOperator`)."""

    name: ClassVar[str]

    @abc.abstractmethod
    def __call__(self, v: jax.Array, alpha: Union[float, jax.Array]) -> jax.Array:
        """``prox^α_g(v)``."""


@dataclasses.dataclass(frozen=True)
class ReLU(Prox):
    """``g`` the indicator of ``z ≥ 0``: ``prox^α_g(v) = max(v, 0)`` for every ``α``."""

    name: ClassVar[str] = "relu"

    def __call__(self, v: jax.Array, alpha: Union[float, jax.Array]) -> jax.Array:
        return jnp.maximum(v, 0)


@dataclasses.dataclass(frozen=True)
class Identity(Prox):
    """``g = 0``: ``prox^α_g(v) = v``, the linear equilibrium ``z* = W z* + c``."""

    name: ClassVar[str] = "identity"

    def __call__(self, v: jax.Array, alpha: Union[float, jax.Array]) -> jax.Array:
        return v


PROXES: Mapping[str, type[Prox]] = MappingProxyType({p.name: p for p in (ReLU, Identity)})
"""The built-in proximal nonlinearities by name."""


def as_prox(value: Union[str, Prox]) -> Prox:
    """The :class:`Prox` that ``value`` names (a string means one of :data:`PROXES`)."""
    if isinstance(value, Prox):
        return value
    if isinstance(value, str) and value in PROXES:
        return PROXES[value]()
    raise ValueError(
        f"unknown nonlinearity {value!r}; valid ones: {', '.join(PROXES)} or a "
        "solvers.splitting.Prox value"
    )


@functools.partial(jax.tree_util.register_dataclass, data_fields=["weight", "bias"],
                   meta_fields=["prox"])
@dataclasses.dataclass(frozen=True)
class MonotoneOperator:
    """The equilibrium ``z* = σ(W z* + c)``, ``σ = prox¹_g``: the inclusion
    ``0 ∈ (I − W) z − c + ∂g(z)`` (see the module docstring). A pytree whose leaves are
    ``weight`` and ``bias`` (so derivatives reach them) and whose ``prox`` is static.

    Attributes:
      weight: ``W``, an ``(n, n)`` matrix acting on the last axis of the state; the
        splitting methods converge when ``I − W`` is strongly monotone.
      bias: ``c``, broadcastable to the state (``(n,)``, or ``(batch, n)`` for a batch).
      prox: ``g``'s proximal map (:class:`Prox`, or a name of :data:`PROXES`).
    """

    weight: Any
    bias: Any
    prox: Any = ReLU()

    def __post_init__(self) -> None:
        if isinstance(self.prox, str):
            object.__setattr__(self, "prox", as_prox(self.prox))

    def __call__(self, z: jax.Array) -> jax.Array:
        """``σ(W z + c)``, in the dtype of ``z``."""
        n = jnp.shape(z)[-1] if jnp.ndim(z) else None
        if jnp.shape(self.weight) != (n, n):
            raise ValueError(
                f"a MonotoneOperator's weight W must be ({n}, {n}) to act on the last axis of "
                f"a state of shape {jnp.shape(z)}; got shape {jnp.shape(self.weight)}")
        try:
            broadcast = jnp.broadcast_shapes(jnp.shape(self.bias), jnp.shape(z)) == jnp.shape(z)
        except ValueError:
            broadcast = False
        if not broadcast:
            raise ValueError(
                f"a MonotoneOperator's bias c of shape {jnp.shape(self.bias)} does not broadcast "
                f"to the state of shape {jnp.shape(z)}")
        return self.prox(z @ jnp.swapaxes(self.weight, -1, -2) + self.bias, 1.0).astype(z.dtype)


def monotone_map(z: jax.Array, operator: MonotoneOperator) -> jax.Array:
    """``f(z, op) = op(z) = σ(W z + c)``: the fixed-point map of an operator, as a function
    of the state and the operator, for ``solve(monotone_map, z0, op)``."""
    return operator(z)


def find_operator(args: tuple, who: str) -> MonotoneOperator:
    """The one :class:`MonotoneOperator` among ``args`` (at any depth); ``who`` names the
    method in the errors."""
    found = [node for node in jax.tree_util.tree_leaves(
        args, is_leaf=lambda node: isinstance(node, MonotoneOperator))
        if isinstance(node, MonotoneOperator)]
    if not found:
        raise TypeError(
            f"solver {who!r} solves monotone operator equilibria z = σ(W z + c) and needs "
            "their operator: one solvers.splitting.MonotoneOperator among the arguments of "
            "the solve, with f its map (solve(solvers.splitting.monotone_map, z0, op)); "
            "found none. A plain f has no operator, and neither have the tangent and "
            "adjoint equations of implicit.Implicit: solve those with another solver, "
            "e.g. Implicit('gmres')"
        )
    if len(found) > 1:
        raise ValueError(
            f"solver {who!r} found {len(found)} solvers.splitting.MonotoneOperator values "
            "among the arguments of the solve; it needs exactly one"
        )
    return found[0]


class SplitMap:
    """``f`` on the ``(batch, size)`` matrix view of the state, with the pieces of its
    operator on the same view: what :meth:`Structured.bind` hands a splitting method.

    ``affine(z) = W z + c``; ``prox(v, α) = prox^α_g(v)``; ``resolvent(v, α) =
    (I + α(I − W))⁻¹ (v + α c)`` (for the ``α`` given to :meth:`with_resolvent`);
    ``step`` is ``m/L²`` (see :class:`ForwardBackward`).
    """

    def __init__(self, f: FlatMap, operator: MonotoneOperator, n: int, bias: Matrix,
                 resolvents: Optional[Mapping[float, jax.Array]] = None) -> None:
        self.f, self.operator, self.n, self.bias = f, operator, n, bias
        self.weight = operator.weight.astype(bias.dtype)
        self.resolvents = dict(resolvents or {})

    def __call__(self, z: Matrix) -> Matrix:
        return self.f(z)

    def _along_last_axis(self, matrix: jax.Array, z: Matrix) -> Matrix:
        return (z.reshape(z.shape[0], -1, self.n) @ matrix.T).reshape(z.shape)

    def affine(self, z: Matrix) -> Matrix:
        """``W z + c``."""
        return self._along_last_axis(self.weight, z) + self.bias

    def prox(self, v: Matrix, alpha: Union[float, jax.Array]) -> Matrix:
        """``prox^α_g(v)``."""
        return self.operator.prox(v, alpha).astype(v.dtype)

    def resolvent(self, v: Matrix, alpha: float) -> Matrix:
        """``(I + α(I − W))⁻¹ (v + α c)``, the resolvent of ``F(z) = (I − W) z − c``."""
        return self._along_last_axis(self.resolvents[alpha], v + alpha * self.bias)

    def with_resolvent(self, alpha: float) -> SplitMap:
        """This map, with ``(I + α(I − W))⁻¹`` computed (once, outside the loop)."""
        if alpha in self.resolvents:
            return self
        eye = jnp.eye(self.n, dtype=self.weight.dtype)
        inverse = jnp.linalg.inv((1 + alpha) * eye - alpha * self.weight)
        return SplitMap(self.f, self.operator, self.n, self.bias,
                        {**self.resolvents, alpha: inverse})

    @functools.cached_property
    def step(self) -> jax.Array:
        """``m/L²``: half the largest forward-backward step with a guarantee, with ``m`` the
        smallest eigenvalue of the symmetric part of ``I − W`` and ``L = ‖I − W‖₂``; for an
        operator that is not strongly monotone (``m ≤ 0``, no guarantee), ``1/L²``."""
        s = jnp.eye(self.n, dtype=self.weight.dtype) - self.weight
        m = jnp.linalg.eigvalsh((s + s.T) / 2)[0]
        lipschitz_sq = jnp.linalg.norm(s, 2) ** 2
        return jnp.where(m > 0, m, 1.0) / jnp.maximum(lipschitz_sq, jnp.finfo(s.dtype).tiny)


def _bind(f: FlatMap, args: tuple, view: FlatView, dtype: Any, who: str) -> SplitMap:
    """``f`` with the operator found among ``args``, checked against the state."""
    if isinstance(f, SplitMap):
        return f
    operator = find_operator(args, who)
    shapes = jax.eval_shape(view.from_matrix, jax.ShapeDtypeStruct((view.batch, view.size),
                                                                   view.dtype))
    leaves = jax.tree_util.tree_leaves(shapes)
    if len(leaves) != 1:
        raise ValueError(
            f"solver {who!r} needs a state of one array (its operator acts on the last axis); "
            f"got a pytree of {len(leaves)} arrays"
        )
    (state,) = leaves
    if not jnp.issubdtype(state.dtype, jnp.floating):
        raise TypeError(f"solver {who!r} needs a real floating state, got dtype {state.dtype}")
    weight_shape = jnp.shape(operator.weight)
    n = state.shape[-1] if state.shape else None
    if len(weight_shape) != 2 or weight_shape != (n, n):
        raise ValueError(
            f"solver {who!r}: the operator's weight W must be ({n}, {n}) to act on the last "
            f"axis of the state of shape {state.shape}; got shape {weight_shape}"
        )
    try:
        bias = jnp.broadcast_to(operator.bias, state.shape)
    except ValueError:
        raise ValueError(
            f"solver {who!r}: the operator's bias c of shape {jnp.shape(operator.bias)} does "
            f"not broadcast to the state of shape {state.shape}"
        ) from None
    return SplitMap(f, operator, n, view.to_matrix(bias).astype(dtype))


@dataclasses.dataclass(frozen=True)
class ForwardBackward(Method, Restartable, Structured):
    """Forward-backward splitting ``z ← prox^α_g((1 − α) z + α (W z + c))`` (see the module
    docstring); no state, one evaluation of ``f`` and one product with ``W`` per step."""

    name: ClassVar[str] = "forward_backward"
    alpha: Optional[float] = option(
        None, above(0), "step α of z ← prox^α(z − α((I − W) z − c)); converges for "
        "α < 2m/L²; None: m/L², read off the operator")

    def bind(self, f: FlatMap, args: tuple, view: FlatView, dtype: Any) -> FlatMap:
        return _bind(f, args, view, dtype, self.name)

    def init(self, z: Matrix, fz: Matrix, stopping: Stopping) -> tuple:
        return ()

    def restart(self, state: tuple, z: Matrix, fz: Matrix, rows: jax.Array) -> tuple:
        return state

    def step(
        self, f: SplitMap, z: Matrix, fz: Matrix, state: tuple, active: jax.Array,
        stopping: Stopping,
    ) -> Step:
        alpha = f.step.astype(z.dtype) if self.alpha is None else self.alpha
        z_new = f.prox((1 - alpha) * z + alpha * f.affine(z), alpha)
        return z_new, f(z_new), state, jnp.ones(z.shape[:1], jnp.int32)


@dataclasses.dataclass(frozen=True)
class PeacemanRachford(Method, Restartable, Structured):
    """Peaceman–Rachford splitting (see the module docstring); its state is the reflected
    point ``u`` (``z = prox^α_g(u)``), started at ``z0``; one evaluation of ``f`` and one
    product with the resolvent matrix per step."""

    name: ClassVar[str] = "peaceman_rachford"
    alpha: float = option(
        1.0, above(0), "α of the resolvent (I + α(I − W))⁻¹ and of prox^α; any α > 0 converges")

    def bind(self, f: FlatMap, args: tuple, view: FlatView, dtype: Any) -> FlatMap:
        return _bind(f, args, view, dtype, self.name).with_resolvent(self.alpha)

    def init(self, z: Matrix, fz: Matrix, stopping: Stopping) -> Matrix:
        return z

    def restart(self, state: Matrix, z: Matrix, fz: Matrix, rows: jax.Array) -> Matrix:
        return jnp.where(rows[:, None], z, state)

    def step(
        self, f: SplitMap, z: Matrix, fz: Matrix, state: Matrix, active: jax.Array,
        stopping: Stopping,
    ) -> Step:
        half = 2 * z - state
        u = 2 * f.resolvent(half, self.alpha) - half
        z_new = f.prox(u, self.alpha)
        u = jnp.where(active[:, None], u, state)  # a stopped row keeps its point
        return z_new, f(z_new), u, jnp.ones(z.shape[:1], jnp.int32)

