"""Measure contenders on one problem, side by side: the loop both benchmark commands share.

For one :class:`~benchmarks.problems.Problem` and a set of named candidates this module
compiles each candidate ahead of time, warms it up, times all of them round-robin (see
:mod:`benchmarks.timing`), and collects what the tables need: outputs, the compiled
memory, and failures as messages instead of exceptions (one failing candidate must not
stop a table).
"""

from __future__ import annotations

import dataclasses
import os
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np

from benchmarks import timing
from benchmarks.problem import Problem
from benchmarks.reference import loss, per_sample_relative_residual
from solvers.types import PyTree


@dataclasses.dataclass
class Outcome:
    """One candidate's measurements (``error`` set when it failed)."""

    output: Any = None
    seconds: list[float] = dataclasses.field(default_factory=list)
    memory: Optional[dict[str, int]] = None
    compile_s: Optional[float] = None
    error: Optional[str] = None
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def median_s(self) -> Optional[float]:
        return timing.median(self.seconds) if self.seconds else None


def short_error(err: BaseException) -> str:
    """The first line of an exception, with its type, for a table note."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def measure(
    candidates: Mapping[str, tuple[Callable[..., Any], tuple]],
    repeats: int,
    budget_s: float,
    on_step: Callable[[], None] = lambda: None,
    compiler_options: Optional[Mapping[str, Any]] = None,
) -> dict[str, Outcome]:
    """Compile, warm up and time ``{name: (fn, args)}`` round-robin; keep each last output.

    Warnings raised while a candidate compiles or runs its warm-up (e.g. a backward solve
    that did not converge) are recorded on its :class:`Outcome` (deduplicated).
    """
    outcomes: dict[str, Outcome] = {name: Outcome() for name in candidates}
    compiled: dict[str, timing.Compiled] = {}

    def compile_one(name: str) -> Optional[timing.Compiled]:
        fn, args = candidates[name]
        try:
            return timing.compile_fn(fn, *args, compiler_options=compiler_options)
        except Exception as err:  # noqa: BLE001 — reported in the table, not raised
            outcomes[name].error = short_error(err)
            if _debug():
                traceback.print_exc()
            return None

    # XLA compiles outside the GIL: compiling the candidates in threads overlaps them.
    with warnings.catch_warnings(record=True) as caught_compile:
        warnings.simplefilter("always")
        with ThreadPoolExecutor(max_workers=compile_workers()) as pool:
            built = dict(zip(candidates, pool.map(compile_one, candidates), strict=True))
    for name, c in built.items():
        outcome = outcomes[name]
        if c is None:
            on_step()
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outcome.compile_s = c.compile_s
                outcome.memory = c.memory()
                outcome.output = c.run()  # the warm-up run; its output is the one reported
                compiled[name] = c
            except Exception as err:  # noqa: BLE001 — reported in the table, not raised
                outcome.error = short_error(err)
                if _debug():
                    traceback.print_exc()
        outcome.warnings = sorted(
            {
                _first_clause(str(w.message))
                for w in caught
                if not issubclass(w.category, DeprecationWarning)
            }
        )
        on_step()
    del caught_compile
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            times = timing.round_robin(compiled, repeats, budget_s, warmup=0)
        except Exception as err:  # noqa: BLE001
            for name in compiled:
                outcomes[name].error = short_error(err)
            times = {}
    for name, seconds in times.items():
        outcomes[name].seconds = seconds
    return outcomes


def _first_clause(message: str) -> str:
    """A warning's first line up to its advice (``implicit``'s "…: the derivative may be…")."""
    line = message.strip().splitlines()[0] if message.strip() else ""
    return line.split(": the derivative may be inaccurate")[0][:300]


def compile_workers() -> int:
    """Threads that compile candidates at once (``BENCHMARKS_COMPILE_THREADS``, default: CPUs)."""
    return max(1, int(os.environ.get("BENCHMARKS_COMPILE_THREADS", os.cpu_count() or 1)))


def _debug() -> bool:
    return bool(os.environ.get("BENCHMARKS_DEBUG"))


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
