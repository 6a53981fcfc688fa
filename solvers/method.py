"""How a solver moves: a :class:`Method` is a frozen dataclass of typed settings with an
``init`` and a ``step``; the shared loop (:mod:`solvers.loop`) does everything else.

    @dataclasses.dataclass(frozen=True)
    class Damped(solvers.Method):
        name: ClassVar[str] = "damped"
        damping: float = option(0.5, between(0, 1, low_open=True), "β")

        def init(self, z, fz, stopping):
            return ()

        def step(self, f, z, fz, state, active, stopping):
            z_new = z + self.damping * (fz - z)
            return z_new, f(z_new), state, jnp.ones(z.shape[:1], jnp.int32)

A method works on a ``(batch, size)`` matrix of independent rows (:mod:`solvers.flat`).
What it can do beyond moving is said by the small abstract classes it also derives from:

* :class:`Restartable` — ``restart`` starts some rows afresh; only such a method can be a
  fallback, which takes over rows that stall, diverge or go non-finite;
* :class:`WarmStartable` — ``warm`` starts from the final state of an earlier, related
  solve, and ``transpose`` turns a final state into the start of the transposed linear
  problem (the adjoint of a fixed point: SHINE);
* :class:`Growable` — ``room`` and ``grow`` let the state start in small buffers that the
  loop moves into larger ones only when a solve fills them;
* :class:`Structured` — ``bind`` gives a method that solves only problems of a special
  form (the operator-splitting methods of :mod:`solvers.splitting`) what evaluations of
  ``f`` do not tell it, found among the solve's arguments, once per solve.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Optional

import jax

from solvers.flat import FlatView
from solvers.options import Options
from solvers.stopping import Stopping

Matrix = jax.Array
"""A ``(batch, size)`` matrix: one row per independent system."""

FlatMap = Callable[[Matrix], Matrix]
"""``f`` on the matrix view of the state."""

Step = tuple[Matrix, Matrix, Any, jax.Array]
"""``(z_new, f(z_new), state, fevals)``: a step's new point, ``f`` there, the method's new
state and the per-row number of evaluations of ``f`` it spent."""


class Method(Options, abc.ABC):
    """The update rule of a fixed-point solver, as a frozen dataclass of its settings.

    Subclasses are ``@dataclasses.dataclass(frozen=True)`` with fields declared by
    :func:`solvers.options.option`, so they are checked when built, compared, hashed (a
    :class:`solvers.Solver` holding one is a static argument of ``jax.jit``) and described
    by :func:`solvers.declared`. ``name`` (a class attribute; default: the class name) is
    what messages and the registry call it.
    """

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    @classmethod
    def describe(cls) -> str:
        return f"solver {cls.name!r}"

    @abc.abstractmethod
    def init(self, z: Matrix, fz: Matrix, stopping: Stopping) -> Any:
        """The method's state at the start, from ``z0`` and ``f(z0)``."""

    @abc.abstractmethod
    def step(
        self, f: FlatMap, z: Matrix, fz: Matrix, state: Any, active: jax.Array,
        stopping: Stopping,
    ) -> Step:
        """One iteration from ``z`` (with ``fz = f(z)``): ``(z_new, f(z_new), state,
        fevals)``. Rows where ``active`` is false are discarded by the loop; the method may
        compute anything finite for them."""


class Restartable(abc.ABC):
    """A method that can start rows afresh, and so serve as a fallback."""

    @abc.abstractmethod
    def restart(self, state: Any, z: Matrix, fz: Matrix, rows: jax.Array) -> Any:
        """``state`` with the rows ``rows`` (a ``(batch,)`` mask) started afresh from
        ``(z, fz)``."""


class WarmStartable(abc.ABC):
    """A method that can start from what an earlier solve learned (SHINE)."""

    @abc.abstractmethod
    def warm(self, prior: Any, z: Matrix, fz: Matrix, stopping: Stopping) -> Any:
        """The starting state from ``prior``, the final state of a solve of a related
        problem (for Broyden: its inverse-Jacobian estimate)."""

    @abc.abstractmethod
    def transpose(self, state: Any) -> Any:
        """A final state turned into the prior of the transposed linear problem."""

    def can_warm_from(self, other: Method) -> bool:
        """Whether a final state of ``other`` can start this method (default: same class)."""
        return type(other) is type(self)


class Growable(abc.ABC):
    """A method whose state starts in small buffers and grows only when a solve fills them.

    The loop steps while :meth:`room` holds, then, only if some row is still active,
    continues with :meth:`grow`'s larger state. Each size compiles the loop body once more;
    a solve that stops early never allocates or touches the larger buffers.
    """

    @abc.abstractmethod
    def room(self, state: Any) -> jax.Array:
        """Whether the buffers of ``state`` have room for another step (a boolean scalar)."""

    @abc.abstractmethod
    def grow(self, state: Any, stopping: Stopping) -> Optional[Any]:
        """The same state in larger buffers, or ``None`` (decided from shapes alone) once it
        is full size."""


class Structured(abc.ABC):
    """A method for problems of a special form only, not for any ``z = f(z, *args)``.

    Evaluations of ``f`` are all the shared loop hands a method. A structured method needs
    more: the operator-splitting methods (:mod:`solvers.splitting`) step on the pieces of a
    monotone operator, which the problem carries among its arguments. :class:`solvers.Solver`
    calls :meth:`bind` once per solve, before the loop, and the loop then passes the map it
    returns as ``f`` to :meth:`Method.step`. ``solvers.available(general=True)`` leaves such
    methods out.
    """

    @abc.abstractmethod
    def bind(self, f: FlatMap, args: tuple, view: FlatView, dtype: Any) -> FlatMap:
        """``f`` (on the ``(batch, size)`` matrix of ``view``, in ``dtype``) with what this
        method needs of the problem, taken from the solve's arguments ``args``; raises an
        error naming what is missing when they do not hold it."""
