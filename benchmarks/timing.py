"""Timing and memory measurement shared by every benchmark, and the measuring loop.

The rules, the same for every number the benchmarks print:

* a function is compiled ahead of time (``jax.jit(fn).lower(*args).compile()``), so
  compilation is never timed, and run once as a warm-up before it is timed;
* every timed call ends with ``jax.block_until_ready`` on its whole output;
* the reported time is the median of the timed calls;
* candidates compared in one table are timed round-robin (one call of each, then the
  next round), so load from other processes falls on all of them alike and their
  ratios stay meaningful on a busy machine.

:func:`measure` applies them to a set of named candidates on one problem: it compiles
each ahead of time (in threads, as XLA compiles outside the GIL), warms it up, times all
of them round-robin, and collects what the tables need: outputs, the compiled memory, and
failures as messages instead of exceptions (one failing candidate must not stop a table).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass
class Compiled:
    """A function compiled for fixed arguments: call ``run()`` to execute it once."""

    fn: Any  # the jax.stages.Compiled executable
    args: tuple
    compile_s: float

    def run(self) -> Any:
        """Execute once and wait for the result."""
        return jax.block_until_ready(self.fn(*self.args))

    def memory(self) -> Optional[dict[str, int]]:
        """The compiled executable's memory analysis (bytes), or ``None`` if unavailable."""
        return memory_of(self.fn)


FAST_COMPILE: dict[str, Any] = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}
"""XLA options (``compiler_options`` of ``jax.jit`` or of ``Lowered.compile``) that compile
several times faster for slower programs: for tests and smoke runs (``--quick``), never
for measurements."""

XLA_DEFAULT_COMPILE: dict[str, Any] = {
    "xla_backend_optimization_level": 3,
    "xla_llvm_disable_expensive_passes": False,
    "xla_cpu_use_fusion_emitters": True,
}
"""XLA's own defaults for the options :data:`FAST_COMPILE` changes: restores them for one
program in a process whose ``XLA_FLAGS`` ask for fast compilation."""

FAST_COMPILE_XLA_FLAGS: str = " ".join(
    f"--{name}={str(value).lower()}" for name, value in FAST_COMPILE.items()
)
""":data:`FAST_COMPILE` as ``XLA_FLAGS`` entries, for a whole process (read when JAX starts
its backend): the training processes the tests start, which must reproduce each other."""

OLDER_CPU_EMITTERS_XLA_FLAG: str = "--xla_cpu_use_fusion_emitters=false"
"""The ``XLA_FLAGS`` entry that has XLA:CPU emit fusions with its older elemental emitters,
which compile a DEQ train step faster than its MLIR fusion emitters (time
``python -m benchmarks.memory_breakdown --quick`` with and without it). The test suite's
own process uses it; with it, two training processes that differ only in
``PYTHONHASHSEED`` disagreed in the last bits of a residual, so the processes whose runs
must match bit for bit do without it."""


def compile_fn(
    fn: Callable[..., Any], *args: Any, compiler_options: Optional[Mapping[str, Any]] = None
) -> Compiled:
    """``jax.jit(fn)`` lowered and compiled for ``args`` (the compile time is recorded)."""
    start = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    compiled = lowered.compile(dict(compiler_options)) if compiler_options else lowered.compile()
    return Compiled(compiled, args, time.perf_counter() - start)


def memory_of(compiled: Any) -> Optional[dict[str, int]]:
    """Bytes of a compiled executable: arguments, outputs, temporaries and their ``peak`` sum.

    ``peak`` is ``arguments + outputs + temporaries − aliased``: what the executable holds
    at most while it runs, by XLA's own buffer assignment.
    """
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        return None
    if analysis is None:
        return None
    fields = {
        "arguments": int(getattr(analysis, "argument_size_in_bytes", 0)),
        "outputs": int(getattr(analysis, "output_size_in_bytes", 0)),
        "temporaries": int(getattr(analysis, "temp_size_in_bytes", 0)),
        "aliased": int(getattr(analysis, "alias_size_in_bytes", 0)),
    }
    fields["peak"] = (
        fields["arguments"] + fields["outputs"] + fields["temporaries"] - fields["aliased"]
    )
    return fields


def time_once(compiled: Compiled) -> float:
    """Seconds of one call of ``compiled``, output blocked on."""
    start = time.perf_counter()
    compiled.run()
    return time.perf_counter() - start


def round_robin(
    candidates: Mapping[str, Compiled],
    repeats: int,
    budget_s: float = 3.0,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Time every candidate ``repeats`` times, one call of each per round.

    Each candidate is first run ``warmup`` times untimed. A candidate whose timed calls
    already took ``budget_s`` seconds in total is not called again (it keeps at least one
    timing), so one slow candidate cannot stall the table. Returns the timings per name.
    """
    for compiled in candidates.values():
        for _ in range(warmup):
            compiled.run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(max(repeats, 1)):
        for name, compiled in candidates.items():
            if times[name] and sum(times[name]) >= budget_s:
                continue
            times[name].append(time_once(compiled))
    return times


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values."""
    return float(statistics.median(values)) if values else float("nan")


def f_loop(f: Callable[..., Any]) -> Callable[..., Any]:
    """``loop(calls, z, *args)``: ``calls`` evaluations ``z ← f(z, *args)`` in one ``fori_loop``.

    Each evaluation takes the previous output, so none can be skipped or hoisted. Timing
    this loop and dividing by ``calls`` gives the cost of one evaluation of ``f`` as a
    solver's loop pays it: a lone jitted call would add the fixed cost of a dispatch,
    which for a cheap ``f`` makes every solver's overhead look smaller than it is.
    """

    def loop(calls: jax.Array, z: Any, *args: Any) -> Any:
        return lax.fori_loop(0, calls, lambda _, zz: f(zz, *args), z)

    return loop


def f_loop_calls(
    f: Callable[..., Any], z: Any, args: tuple, target_s: float = 0.02,
    compiler_options: Optional[Mapping[str, Any]] = None,
) -> int:
    """How many calls make :func:`f_loop` last about ``target_s`` (at least 20)."""
    compiled = compile_fn(f_loop(f), jnp.asarray(20, jnp.int32), z, *args,
                          compiler_options=compiler_options)
    compiled.run()
    per_call = median([time_once(compiled) for _ in range(3)]) / 20
    return int(min(max(20, target_s / max(per_call, 1e-9)), 100_000))


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
        return median(self.seconds) if self.seconds else None


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
    compiled: dict[str, Compiled] = {}

    def compile_one(name: str) -> Optional[Compiled]:
        fn, args = candidates[name]
        try:
            return compile_fn(fn, *args, compiler_options=compiler_options)
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
            times = round_robin(compiled, repeats, budget_s, warmup=0)
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
