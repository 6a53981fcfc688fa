"""What the DEQ layers of every framework share: their settings and what a call returns.

``implicit.haiku.DEQ``, ``implicit.flax.DEQ`` and ``implicit.equinox.DEQ`` have one
signature,

    DEQ(block, *, solver="broyden", backward="implicit", return_stats=False,
        jacobian_penalty=None, transform_params=None, correction=None, **solver_options)

plus what only their framework has (Haiku's ``name`` and ``record_state``, Flax's
``rngs``). Each turns its block into ``f(z, params, x, *extra)`` and its parameters, and
hands them to :meth:`DEQSettings.solve`; a call returns ``z*``, then ``stats`` (with
``return_stats``), then the Jacobian penalty (with a ``jacobian_penalty``), then the
correction's states (with a ``correction``): ``z``, ``(z, stats)``, ``(z, penalty)``,
``(z, stats, penalty)``, ``(z, states)``, ..., ``(z, stats, penalty, states)``.

The shared arguments, in every framework:

* ``solver`` — the forward solver: a :class:`solvers.Solver` value or a name from
  ``solvers.available()``;
* ``backward`` — the gradient mode: a value of :mod:`implicit.modes` (``Implicit(...)``,
  ``Phantom(...)``, ``JFB()``, ``Unroll()``) or the name of one for its defaults;
* ``return_stats`` — also return the :class:`solvers.Stats` of the forward solve (no
  gradient);
* ``jacobian_penalty`` — an :class:`implicit.JacobianPenalty`: also return its value at
  ``z*`` for the block with the layer's parameters, to add (weighted) to the loss; its
  probes need a random key, drawn the framework's way;
* ``transform_params`` — ``params ↦ params``, applied to the block's parameters once per
  call, before the solve (not at every iteration);
* ``correction`` — an :class:`implicit.Correction`: also return the fixed-point
  correction's states ``Φ(z_{kⱼ})`` from the forward solve's own iterates, stacked on a
  leading axis and differentiable by the correction's mode
  (:func:`implicit.correction_states`; Bai et al. 2022), to add their losses;
* ``**solver_options`` — options of ``solver`` by name (``max_iter``, ``tol``,
  ``stop_mode``, ``batch_axis``, ``history``, ...).

The solver and the mode are built when the layer is built, so bad names and options fail
then, with the library's errors (an unknown option name lists the valid ones).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Union

import jax

import solvers
from implicit.correction import Correction, correction_states
from implicit.fixed_point import fixed_point
from implicit.modes import Mode, as_mode
from implicit.regularizers import JacobianPenalty
from solvers import Solver
from solvers.options import Options, option
from solvers.types import PyTree, Solution

ParamsMap = Callable[[PyTree], PyTree]
"""``params ↦ params``: applied to the block's parameters once per call, before the solve."""


@dataclasses.dataclass(frozen=True)
class DEQSettings(Options):
    """The framework-independent settings of a DEQ layer (see the module docstring)."""

    solver: Solver
    backward: Mode
    return_stats: bool = option(False, None, "also return the forward solve's statistics")
    jacobian_penalty: Optional[JacobianPenalty] = option(
        None, None, "also return this penalty of f at z*, to add to the loss")
    transform_params: Optional[ParamsMap] = option(
        None, None, "params ↦ params, once per call before the solve (not at every iteration)")
    correction: Optional[Correction] = option(
        None, None, "also return the fixed-point correction's states from the forward solve")

    @classmethod
    def describe(cls) -> str:
        return "DEQ"

    @classmethod
    def build(
        cls, solver: Union[str, Solver], backward: Union[str, Mode], return_stats: bool,
        jacobian_penalty: Optional[JacobianPenalty], transform_params: Optional[ParamsMap],
        solver_options: dict[str, Any], correction: Optional[Correction] = None,
    ) -> DEQSettings:
        """The settings from a layer's arguments: names and options are resolved and
        checked here, when the layer is built, with the library's errors."""
        return cls(solvers.get(solver, **solver_options), as_mode(backward), return_stats,
                   jacobian_penalty, transform_params, correction)

    def solve(
        self, f: Callable[..., PyTree], z0: PyTree, params: PyTree, x: PyTree, *extra: PyTree,
        key: Optional[jax.Array] = None,
    ) -> tuple[Solution, Any]:
        """Solve ``z* = f(z*, params, x, *extra)`` from ``z0``; return the solution and what
        the layer returns (see the module docstring). ``key`` draws the penalty's probes."""
        if self.transform_params is not None:
            params = self.transform_params(params)
        solution = fixed_point(f, z0, params, x, *extra, solver=self.solver,
                               backward=self.backward, correction=self.correction)
        return solution, self.outputs(solution, f, params, x, extra, key)

    def outputs(
        self, solution: Solution, f: Callable[..., PyTree], params: PyTree, x: PyTree,
        extra: tuple, key: Optional[jax.Array],
    ) -> Any:
        """``z*``, then its statistics, penalty and correction states when the settings ask
        for them."""
        outputs = (solution.value, solution.stats) if self.return_stats else (solution.value,)
        if self.jacobian_penalty is not None:
            if key is None:
                raise ValueError("a DEQ with a jacobian_penalty needs a random key for its "
                                 "probes (see the layer's docstring)")
            penalty = self.jacobian_penalty(
                lambda z, x, *extra: f(z, params, x, *extra), solution.value, x, *extra, key=key,
            )
            outputs += (penalty,)
        if self.correction is not None:
            outputs += (correction_states(f, solution, params, x, *extra,
                                          mode=self.correction.mode),)
        return outputs if len(outputs) > 1 else outputs[0]
