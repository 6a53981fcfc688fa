"""How the command-line programs ask XLA's CPU compiler to schedule for memory.

XLA orders the instructions of a compiled program before it assigns buffers, and the order
decides the peak: a value computed early stays live until its last use. By default the CPU
compiler picks a *concurrency-optimised* schedule, which starts independent work as early as
it can. In a DEQ train step that is the wrong trade. The reverse pass of the implicit rule
needs the rematerialised block at ``z*`` twice, once inside the adjoint solve (for
``u ↦ uᵀ ∂f/∂z``) and once after it (for ``uᵀ ∂f/∂θ``). The second recomputation depends
only on ``(z*, θ)``, so the concurrency schedule runs it *before* the adjoint loop and keeps
its activations live for the whole loop (``docs/results.md`` gives what that costs at the
default model size). XLA's memory-minimising schedule runs it when its cotangent arrives,
after the loop.

The choice is a process-wide XLA flag (``--xla_cpu_enable_concurrency_optimized_scheduler``;
``jax.jit(..., compiler_options=...)`` accepts it but the CPU scheduler does not read it),
read once when JAX starts its CPU backend. So :func:`prefer_memory_schedule` only edits
``XLA_FLAGS`` for programs that have not started JAX yet, and never overrides a value the
user set. Other backends ignore the flag.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import MutableMapping

from jax._src import xla_bridge

__all__ = ["SCHEDULER_FLAG", "MEMORY_SCHEDULE", "prefer_memory_schedule"]

SCHEDULER_FLAG: str = "xla_cpu_enable_concurrency_optimized_scheduler"
"""The XLA flag that selects the CPU compiler's instruction scheduler."""

MEMORY_SCHEDULE: str = f"--{SCHEDULER_FLAG}=false"
"""The ``XLA_FLAGS`` entry that selects the memory-minimising schedule."""


def prefer_memory_schedule(environ: MutableMapping[str, str] | None = None) -> bool:
    """Add :data:`MEMORY_SCHEDULE` to ``XLA_FLAGS`` unless the user chose a scheduler there.

    Returns whether the flag was added. Call it before the first JAX computation of the
    process: a backend that is already running keeps its schedule, and this warns.
    """
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    if SCHEDULER_FLAG in flags:
        return False
    if xla_bridge.backends_are_initialized():
        warnings.warn(
            "JAX's backends are already running; the memory-minimising XLA schedule "
            f"({MEMORY_SCHEDULE}) applies only when set before the first computation",
            RuntimeWarning, stacklevel=2,
        )
        return False
    environ["XLA_FLAGS"] = f"{flags} {MEMORY_SCHEDULE}".strip()
    return True
