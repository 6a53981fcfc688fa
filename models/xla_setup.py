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
``XLA_FLAGS`` for programs that have not started JAX yet, never overrides a value the user
set, and adds the flag only where JAX will compute on the CPU (:func:`runs_on_cpu`): on a GPU
or TPU machine ``XLA_FLAGS`` is left as it is, and ``jax.devices()`` decides where the
programs run.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import pkgutil
import warnings
from collections.abc import Mapping, MutableMapping

import jax
from jax._src import xla_bridge

__all__ = [
    "SCHEDULER_FLAG",
    "MEMORY_SCHEDULE",
    "accelerator_plugins",
    "runs_on_cpu",
    "prefer_memory_schedule",
]

SCHEDULER_FLAG: str = "xla_cpu_enable_concurrency_optimized_scheduler"
"""The XLA flag that selects the CPU compiler's instruction scheduler."""

MEMORY_SCHEDULE: str = f"--{SCHEDULER_FLAG}=false"
"""The ``XLA_FLAGS`` entry that selects the memory-minimising schedule."""


# The device files an installed accelerator plugin needs (by a word of its name); a plugin
# whose devices are absent leaves JAX on the CPU. Plugins not listed count as present.
_DEVICE_FILES: dict[str, str] = {"cuda": "/dev/nvidia[0-9]*", "rocm": "/dev/kfd"}


def accelerator_plugins() -> list[str]:
    """The accelerator backends JAX would load in this process: the PJRT plugins it discovers
    (modules of the ``jax_plugins`` namespace package and the ``jax_plugins`` entry points,
    e.g. ``xla_cuda12`` from ``pip install -e '.[cuda]'``) whose devices are present, and
    ``tpu`` when ``libtpu`` is installed. Nothing is imported or started."""
    names: list[str] = []
    spec = importlib.util.find_spec("jax_plugins")
    if spec is not None and spec.submodule_search_locations:
        names += [module.name for module in pkgutil.iter_modules(spec.submodule_search_locations)]
    names += [entry.name for entry in importlib.metadata.entry_points(group="jax_plugins")]
    present = []
    for name in dict.fromkeys(names):
        pattern = next((files for word, files in _DEVICE_FILES.items() if word in name), None)
        if pattern is None or glob.glob(pattern):
            present.append(name)
    if importlib.util.find_spec("libtpu") is not None:
        present.append("tpu")
    return present


def _configured_platforms() -> str:
    """JAX's ``jax_platforms`` option (read from ``JAX_PLATFORMS`` when JAX was imported)."""
    return jax.config.jax_platforms or ""


def runs_on_cpu(environ: Mapping[str, str] | None = None) -> bool:
    """Whether JAX's default backend in this process is (or will be) the CPU.

    Once JAX's backends run, ``jax.default_backend()`` answers. Before that, without starting
    them: the first platform of ``JAX_PLATFORMS`` (or of the ``jax_platforms`` option) when
    one is set, else the CPU unless :func:`accelerator_plugins` finds an accelerator.
    """
    if xla_bridge.backends_are_initialized():
        return jax.default_backend() == "cpu"
    environ = os.environ if environ is None else environ
    platforms = _configured_platforms() or environ.get("JAX_PLATFORMS") or ""
    first = platforms.split(",")[0].strip().lower()
    if first:
        return first == "cpu"
    return not accelerator_plugins()


def prefer_memory_schedule(environ: MutableMapping[str, str] | None = None) -> bool:
    """Add :data:`MEMORY_SCHEDULE` to ``XLA_FLAGS`` when JAX will compute on the CPU
    (:func:`runs_on_cpu`) and the user chose no scheduler there.

    Returns whether the flag was added. Call it before the first JAX computation of the
    process: a backend that is already running keeps its schedule, and this warns.
    """
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    if SCHEDULER_FLAG in flags:
        return False
    if not xla_bridge.backends_are_initialized() and not runs_on_cpu(environ):
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
