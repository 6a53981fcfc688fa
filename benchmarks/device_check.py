"""One prepared check of the toolkit on an accelerator: correctness, solvers, the language
model and its gradient modes, within a fixed time.

    python -m benchmarks.device_check OUT_DIR            # on a GPU: about 8 minutes
    python -m benchmarks.device_check OUT_DIR --quick    # a smoke run on a CPU (seconds)

It writes ``OUT_DIR/device_check.json`` (everything measured, with the device and the
settings) and ``OUT_DIR/device_check.md`` (one Markdown table, a row per measurement, for
``docs/results.md``). Four parts, each in its own process with its own time budget (killed
when it runs over it; what it finished is kept and the rest is recorded as skipped), so
that no part can take the others' time:

1. ``correctness`` — on the device:

   * the **dtype matrix**: every registered solver of general fixed points
     (``solvers.available(general=True)``: not the operator-splitting ones, which need a
     monotone layer) on ``z = tanh(z Wᵀ + b)`` (``‖W‖₂ = ½``, batch 256, d = 1024) in
     float32 (at JAX's default matmul precision, which on some GPUs allows TF32 products, and
     at ``"highest"``) and bfloat16, against a float64 NumPy reference: converged, relative
     error, pass at ``10 × tol`` of the dtype;
   * **implicit against unrolled gradients** (:func:`implicit.testing.check_fixed_point_grads`):
     the implicit gradient against backpropagation through 500 plain iterations and against
     finite differences, in float32.

2. ``solvers`` — :mod:`benchmarks.compare_solvers` on ``slow-modes-0.99`` at d = 4096 and
   16384, batch 256: every registered solver of general fixed points and the jaxopt and
   optimistix peers, forward solves only (ms per solve, iterations, overhead over the cost of
   ``f``), float32 at ``"highest"`` matmul precision so that every solver can reach the
   tolerance.

3. ``lm`` — first the **run-to-run determinism of a DEQ train step** (listed under
   correctness): three steps of the DEQ LM, twice from the same state with the same compiled
   program, compared by a SHA-256 of the final state and metrics; on a GPU also compiled with
   ``xla_gpu_deterministic_ops`` (the ``--xla_gpu_deterministic_ops=true`` of
   ``XLA_FLAGS``), so the table says which flags bit-identical steps need. Then the DEQ
   language model and the standard Transformer baseline (:data:`BASELINE_DEPTH` layers)
   trained for a fixed number of steps at a GPU width (:data:`LM_WIDTH`), with the
   measuring loop of :mod:`benchmarks.deq_vs_explicit`: tokens per second,
   ``f``-evaluations per step, the peak memory of the compiled train step
   (``memory_analysis``) and the validation bits per byte after those steps. The width:
   ``d_model`` 512 (8 heads of 64) on 256-byte sequences, batch 32, is the smallest setting
   whose products (8192 × 512 × 2048 in each MLP) give a GPU's matrix units full tiles,
   where the CPU default (``d_model`` 96, 64 bytes) leaves it idle between kernel launches,
   and small enough that both models train 300 steps within the part's budget.

4. ``backward`` — the gradient modes at that width: the DEQ train step under ``implicit``,
   ``phantom``, ``jfb``, ``unroll`` and ``reversible`` (step time, peak and temporary memory), then
   :mod:`benchmarks.backward_modes` (every mode against the float64 exact gradient) on
   ``slow-modes-0.99`` at d = 512, batch 256.

``--quick`` shrinks every size, solves by plain iteration (the DEQ without its Jacobian
penalty and fixed-point correction), runs one solver or mode of each kind and the parts in
this process with fast compilation: seconds on a CPU (the test suite runs it, so that every
code path of the GPU run has run before a GPU's scarce time is spent); its numbers mean
nothing. A part that fails is recorded as failed, with the error, and the next one runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks import output

PARTS: tuple[str, ...] = ("correctness", "solvers", "lm", "backward")
BUDGETS_S: dict[str, float] = {"correctness": 60.0, "solvers": 120.0, "lm": 170.0,
                               "backward": 100.0}
"""Each part's time on a GPU (seconds, start-up and compilation included)."""
TOTAL_S: float = 470.0
"""All parts together: under 8 minutes, with room for this process's own start."""
QUICK_BUDGET_S: float = 1200.0
"""Each part's time, and all parts', with ``--quick``: a smoke run checks code paths, not
time, so its budget leaves a slow or busy machine room to run every part."""
JSON_NAME, TABLE_NAME = "device_check.json", "device_check.md"

LM_WIDTH: dict[str, int] = {"d_model": 512, "num_heads": 8, "seq_len": 256, "batch_size": 32}
QUICK_LM_WIDTH: dict[str, int] = {"d_model": 16, "num_heads": 2, "seq_len": 16, "batch_size": 4}
BASELINE_DEPTH = 4
"""Layers of the standard Transformer baseline (separate weights each)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """The sizes of one check (the full one, or ``--quick``)."""

    quick: bool
    solver_dims: tuple[int, ...] = (4096, 16384)
    solver_batch: int = 256
    matrix_dim: int = 1024
    matrix_batch: int = 256
    grad_dim: int = 64
    lm_width: tuple[tuple[str, int], ...] = tuple(LM_WIDTH.items())
    lm_steps: int = 300
    baseline_depth: int = BASELINE_DEPTH
    determinism_steps: int = 3
    backward_steps: int = 10
    backward_dim: int = 512
    backward_batch: int = 256
    data: str = "pydoc"

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if not quick:
            return cls(quick=False)
        return cls(quick=True, solver_dims=(48,), solver_batch=4, matrix_dim=8, matrix_batch=4,
                   grad_dim=4, lm_width=tuple(QUICK_LM_WIDTH.items()), lm_steps=2,
                   baseline_depth=1, determinism_steps=2, backward_steps=2, backward_dim=8,
                   backward_batch=4)

    @property
    def compiler_options(self) -> dict[str, Any] | None:
        from benchmarks.timing import FAST_COMPILE

        return dict(FAST_COMPILE) if self.quick else None


class Part:
    """A part's record: what it measured so far (``results``), its table ``rows`` and its
    notes, written to ``path`` (when given) after every step, so that a part killed at its
    budget keeps what it finished."""

    def __init__(self, name: str, budget_s: float, path: Path | None) -> None:
        self.name, self.budget_s, self.path = name, budget_s, path
        self.start = time.perf_counter()
        self.record: dict[str, Any] = {"status": "running", "budget_s": budget_s,
                                       "results": {}, "rows": [], "notes": []}

    def left(self) -> float:
        """Seconds left of the budget."""
        return self.budget_s - (time.perf_counter() - self.start)

    def enough(self, what: str, need_s: float) -> bool:
        """Whether ``need_s`` seconds are left to start ``what``; if not, say it is skipped."""
        if self.left() >= need_s:
            return True
        self.row(what, "—", f"skipped: {self.left():.0f} s of the part's {self.budget_s:.0f} s "
                 f"budget were left, {need_s:.0f} s needed")
        return False

    def put(self, key: str, value: Any) -> None:
        self.record["results"][key] = value
        self.save()

    def row(self, item: str, measured: str, status: str, section: str | None = None) -> None:
        """A row of the table, under this part's name or ``section``."""
        self.record["rows"].append({"part": section or self.name, "item": item,
                                    "measured": measured, "status": status})
        self.save()

    def note(self, text: str) -> None:
        self.record["notes"].append(text)
        self.save()

    def finish(self, status: str) -> dict[str, Any]:
        self.record.update(status=status, seconds=time.perf_counter() - self.start)
        self.save()
        return self.record

    def save(self) -> None:
        self.record["seconds"] = time.perf_counter() - self.start
        if self.path is not None:
            output.write_json(str(self.path), self.record)


# ------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def matmul_precision(precision: str | None) -> Iterator[None]:
    """JAX's default matmul precision, process-wide (compiling threads see it too)."""
    import jax

    before = jax.config.jax_default_matmul_precision
    jax.config.update("jax_default_matmul_precision", precision)
    try:
        yield
    finally:
        jax.config.update("jax_default_matmul_precision", before)


def _fmt_ms(seconds: float | None) -> str:
    return "—" if seconds is None or not math.isfinite(seconds) else f"{1e3 * seconds:.3g} ms"


def _fmt_mib(nbytes: float | None) -> str:
    return "—" if nbytes is None else f"{nbytes / 2**20:,.1f} MiB"


def _failure(err: BaseException) -> str:
    """An exception in one line, for a table row."""
    return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"


def _digest(tree: Any) -> str:
    import jax
    import numpy as np

    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        leaf = np.ascontiguousarray(np.asarray(leaf))
        digest.update(str(leaf.dtype).encode() + str(leaf.shape).encode() + leaf.tobytes())
    return digest.hexdigest()


def lm_config(settings: Settings, **overrides: Any) -> Any:
    """The DEQ LM (or, with ``model=...``, a baseline) at the check's width, trained with the
    defaults of ``python -m models.train`` for ``settings.lm_steps`` steps (warm-up a quarter
    of them at most, as :mod:`benchmarks.deq_vs_explicit` lays it). ``--quick`` solves by
    plain iteration, without the Jacobian penalty and the fixed-point correction."""
    from models.config import TrainConfig, validate_config

    steps = settings.lm_steps
    config = TrainConfig(**dict(settings.lm_width), steps=steps, data=settings.data,
                         warmup_steps=min(TrainConfig().warmup_steps, max(1, steps // 4)),
                         progress=False, sample_len=0)
    if settings.quick:  # solves that compile faster: a smoke run measures nothing
        config = dataclasses.replace(config, solver="fixed_point",
                                     backward_solver="fixed_point", jac_reg=0.0,
                                     fp_correction=0)
    config = dataclasses.replace(config, **overrides)
    validate_config(config)
    return config


class _Data:
    """The corpus of the LM parts: batches by step, and the validation batches."""

    def __init__(self, settings: Settings, config: Any, mesh: Any) -> None:
        from models.data import BatchSampler, eval_batches, load_corpus, split_corpus

        train, valid = split_corpus(load_corpus(settings.data), config.valid_fraction,
                                    config.seq_len + 1)
        self.mesh = mesh
        self.sampler = BatchSampler(train, config.batch_size, config.seq_len, config.seed)
        self.valid = list(eval_batches(valid, config.batch_size, config.seq_len,
                                       2 if settings.quick else None))

    def batch(self, step: int) -> Any:
        from models.sharding import shard_batch

        return shard_batch(self.sampler.batch(step), self.mesh)


# -------------------------------------------------------------------- 1. correctness


DTYPE_TOL = {"float32": 1e-5, "bfloat16": 5e-2}
MATRIX_ROWS: tuple[tuple[str, str | None], ...] = (
    ("float32", None), ("float32", "highest"), ("bfloat16", None))
"""(state dtype, matmul precision) of the dtype matrix; ``None``: JAX's default."""


def _tanh_layer(z: Any, w: Any, b: Any) -> Any:
    import jax.numpy as jnp

    return jnp.tanh(z @ w.T + b)


def dtype_matrix(settings: Settings, part: Part) -> None:
    """Every registered solver of general fixed points (``fixed_point`` alone with
    ``--quick``) on the tanh layer in each of :data:`MATRIX_ROWS`."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import solvers

    d, batch = settings.matrix_dim, settings.matrix_batch
    rng = np.random.default_rng(0)
    g = rng.standard_normal((d, d))
    w = 0.5 * g / np.linalg.norm(g, 2)
    b = rng.standard_normal((batch, d))
    z = np.zeros((batch, d))
    for _ in range(80):  # a contraction of rate ½: 80 steps reach float64's resolution
        z = np.tanh(z @ w.T + b)
    names = ("fixed_point",) if settings.quick else solvers.available(general=True)
    rows = []
    for dtype, precision in MATRIX_ROWS:
        label = f"{dtype}" + (f", {precision} precision" if precision else "")
        for name in names:
            if not part.enough(f"dtype matrix: {name}, {label}", 3.0):
                continue
            tol = DTYPE_TOL[dtype]
            solve = solvers.get(name, tol=tol, stop_mode="rel", max_iter=100, batch_axis=0)
            with matmul_precision(precision):
                run = jax.jit(lambda z0, w, b, solve=solve: solve(_tanh_layer, z0, w, b),
                              compiler_options=settings.compiler_options)
                try:
                    sol = run(*(jnp.asarray(x, dtype) for x in (np.zeros_like(b), w, b)))
                    value = np.asarray(sol.value.astype(jnp.float32), np.float64)
                    converged = int(np.sum(np.asarray(sol.stats.converged)))
                    error = float(np.max(np.abs(value - z)) / np.max(np.abs(z)))
                    ok = converged == batch and error <= 10 * tol
                    row = {"solver": name, "dtype": dtype, "precision": precision or "default",
                           "converged": converged, "batch": batch, "rel_error": error,
                           "tol": tol, "pass": ok}
                except Exception as err:  # noqa: BLE001 — a failing solver is a table row
                    row = {"solver": name, "dtype": dtype, "precision": precision or "default",
                           "error": _failure(err),
                           "pass": False}
            rows.append(row)
            part.put("dtype_matrix", rows)
            measured = (f"{row['converged']}/{batch} converged, error {row['rel_error']:.1e} "
                        f"(pass ≤ {10 * tol:g})" if "rel_error" in row else row["error"])
            part.row(f"dtype matrix: {name}, {label}, d={d} batch {batch}", measured,
                     "pass" if row["pass"] else "FAIL")


def gradients(settings: Settings, part: Part) -> None:
    """Implicit gradients against unrolled backprop and finite differences (float32)."""
    import jax.numpy as jnp
    import numpy as np

    from implicit.testing import check_fixed_point_grads

    d = settings.grad_dim
    rng = np.random.default_rng(1)
    g = rng.standard_normal((d, d))
    w = jnp.asarray(0.5 * g / np.linalg.norm(g, 2), jnp.float32)
    b = jnp.asarray(rng.standard_normal((2, d)), jnp.float32)
    rows = []
    for name in ("fixed_point",) if settings.quick else ("anderson", "broyden", "fixed_point"):
        if not part.enough(f"gradients: {name}", 5.0):
            continue
        with matmul_precision("highest"):
            checked = check_fixed_point_grads(_tanh_layer, jnp.zeros_like(b), w, b, solver=name,
                                              max_directions=16)
        row = {"solver": name, **checked._asdict()}
        row["pass"] = bool(checked.forward_converged and checked.unroll_rel_error <= 1e-3
                           and checked.fd_rel_error <= 1e-2)
        rows.append(row)
        part.put("gradients", rows)
        part.row(f"implicit vs unrolled gradient: {name}, d={d}, float32",
                 f"vs unrolled {checked.unroll_rel_error:.1e}, vs finite differences "
                 f"{checked.fd_rel_error:.1e}, jvp vs grad {checked.jvp_rel_error:.1e}",
                 "pass" if row["pass"] else "FAIL")


DETERMINISTIC_OPTION = "xla_gpu_deterministic_ops"


def train_step_digests(run: Any, data: _Data, steps: int, repeats: int) -> list[str]:
    """SHA-256 of the state and metrics after ``steps`` train steps on ``data``'s batches,
    for each of ``repeats`` runs of ``run``'s one compiled step from its initial state
    (``run``: a :class:`benchmarks.deq_vs_explicit.Candidate`)."""
    from models.sharding import replicate, to_host

    initial = to_host(run.state)
    digests = []
    for _ in range(repeats):
        state, outputs = replicate(initial, data.mesh), []
        for index in range(steps):
            state, metrics = run.step(state, data.batch(index))
            outputs.append(metrics)
        digests.append(_digest(to_host((state, outputs))))
    return digests


def determinism(settings: Settings, part: Part, data: _Data) -> None:
    """Whether a DEQ train step is bit-identical run to run: with the default XLA options,
    and, on a GPU where it is not, with :data:`DETERMINISTIC_OPTION` (rows of the
    correctness section; it runs in the ``lm`` part, whose DEQ it compiles)."""
    import jax

    from benchmarks.deq_vs_explicit import Candidate

    config = lm_config(settings)
    variants: dict[str, Callable[[], Any]] = {
        "default XLA flags": lambda: candidate(config, data, settings)}
    if jax.default_backend() == "gpu":
        options = {**(settings.compiler_options or {}), DETERMINISTIC_OPTION: True}
        variants[f"--{DETERMINISTIC_OPTION}=true"] = lambda: Candidate(
            config, data.mesh, data.batch(0), options)
    else:
        part.note(f"--{DETERMINISTIC_OPTION}=true is tried on a GPU only")
    rows: list[dict[str, Any]] = []
    for label, build in variants.items():
        if any(row["identical"] for row in rows):
            break  # no flag is needed beyond the ones that made it bit-identical
        if not part.enough(f"determinism: {label}", 10.0 if settings.quick else 25.0):
            continue
        try:
            digests = train_step_digests(build(), data, settings.determinism_steps, 2)
            row = {"flags": label, "identical": len(set(digests)) == 1, "digests": digests}
        except Exception as err:  # noqa: BLE001 — an option this XLA refuses is a row
            row = {"flags": label, "identical": None,
                   "error": _failure(err)}
        rows.append(row)
        part.put("determinism", rows)
        part.row(f"DEQ train step run to run ({settings.determinism_steps} steps, d_model "
                 f"{config.d_model}), {label}",
                 "bit-identical" if row["identical"] else row.get("error", "results differ"),
                 "pass" if row["identical"] else "FAIL", section="correctness")
    needed = next((r["flags"] for r in rows if r["identical"]), None)
    part.put("determinism_needs", needed)
    if rows:
        part.row("XLA flags a bit-identical DEQ train step needs here",
                 "none" if needed == "default XLA flags" else needed or "not bit-identical "
                 "with the flags tried", "pass" if needed else "FAIL", section="correctness")


def run_correctness(settings: Settings, part: Part) -> None:
    dtype_matrix(settings, part)
    gradients(settings, part)


# ------------------------------------------------------------------------- 2. solvers


QUICK_SOLVERS = ("broyden", "jaxopt.Broyden", "optx.FixedPointIteration")
"""One of each kind of contender: a registered solver, jaxopt's and optimistix's own."""


def run_solvers(settings: Settings, part: Part) -> None:
    """:mod:`benchmarks.compare_solvers` at each size, forward solves only."""
    from benchmarks import compare_solvers

    results = []
    for dim in settings.solver_dims:
        if not part.enough(f"compare_solvers d={dim}", 20.0 if dim > 4096 else 5.0):
            continue
        argv = ["--problems", "slow-modes-0.99", "--dims", str(dim), "--batch",
                str(settings.solver_batch), "--no-grad", "--no-plots", "--no-progress",
                "--repeats", "3", "--budget", "2"]
        if settings.quick:
            argv += ["--quick", "--solvers", *QUICK_SOLVERS]
        config = compare_solvers.config_from_args(compare_solvers.build_parser().parse_args(argv))
        with matmul_precision("highest"):
            result = compare_solvers.run(config)
        results.append(result)
        part.put("compare_solvers", results)
        for row in result["rows"]:
            item = f"{row['problem']} d={dim} batch {row['batch']}: {row['solver']}"
            if row.get("forward_s") is None:
                part.row(item, str(row.get("note") or row["status"]), row["status"])
                continue
            overhead = row.get("overhead")
            part.row(item, f"{_fmt_ms(row['forward_s'])} per solve, {row['iterations']} iters, "
                     f"overhead {overhead:.2f}, {row['converged']}/{row['batch']} within tol"
                     if overhead is not None else _fmt_ms(row["forward_s"]), "ok")
        for note in result["notes"]:
            part.note(f"d={dim}: {note}")


# ---------------------------------------------------------------------- 3. the LM


_CANDIDATES: dict[Any, tuple[Any, Any]] = {}


def candidate(config: Any, data: _Data, settings: Settings) -> Any:
    """:class:`benchmarks.deq_vs_explicit.Candidate` of ``config``, at its initial state,
    compiled once per part (the determinism check and the training of the ``lm`` part share
    the DEQ's compilation; a ``--quick`` run's parts, all in one process, share more)."""
    import copy

    from benchmarks.deq_vs_explicit import Candidate
    from models.sharding import replicate, to_host

    options = settings.compiler_options
    key = (config, tuple(sorted((options or {}).items())))
    if key not in _CANDIDATES:
        built = Candidate(config, data.mesh, data.batch(0), options)
        _CANDIDATES[key] = (built, to_host(built.state))
    built, initial = _CANDIDATES[key]
    fresh = copy.copy(built)
    fresh.state = replicate(initial, data.mesh)
    fresh.times, fresh.fevals, fresh.backward_vjps, fresh.steps_done = [], [], [], 0
    return fresh


def _train(candidate: Any, data: _Data, steps: int) -> None:
    from models.solve_metrics import SolveWarnings

    with SolveWarnings():  # counted, not printed at every step
        for step in range(steps):
            candidate.train_step(data.batch(step))


def run_lm(settings: Settings, part: Part) -> None:
    """The determinism of the DEQ train step, then the DEQ LM and the Transformer baseline,
    ``lm_steps`` steps each."""
    from benchmarks.timing import median
    from models.sharding import make_mesh

    mesh = make_mesh()
    configs = {"deq": lm_config(settings),
               f"transformer-{settings.baseline_depth}": lm_config(
                   settings, model="transformer", depth=settings.baseline_depth)}
    data = _Data(settings, configs["deq"], mesh)
    determinism(settings, part, data)
    rows = []
    for name, config in configs.items():
        if not part.enough(f"lm: {name}", 10.0 if settings.quick else 40.0):
            continue
        start = time.perf_counter()
        try:
            run = candidate(config, data, settings)
            compiled_s = time.perf_counter() - start
            _train(run, data, config.steps)
            summary = run.evaluate(data.valid, mesh)
        except Exception as err:  # noqa: BLE001 — one failing model is a row
            part.row(f"{name} LM", _failure(err), "FAIL")
            continue
        timed = run.times[min(3, len(run.times) - 1):]
        deq = config.model == "deq"
        row = {
            "model": name, "params": run.params, "steps": config.steps,
            "tokens_per_s": config.batch_size * config.seq_len / median(timed),
            "step_s": median(timed), "compile_s": compiled_s,
            "fevals_per_step": (sum(run.fevals) / len(run.fevals) if deq
                                else float(config.depth)),
            "backward_vjps_per_step": (sum(run.backward_vjps) / len(run.backward_vjps)
                                       if deq else None),
            "peak_bytes": run.memory.get("peak"),
            "temp_bytes": run.memory.get("temporaries"),
            "valid_bpb": summary["bpb"],
        }
        rows.append(row)
        part.put("lm", rows)
        evals = ("f-evals/step" if deq else "layers")
        part.row(f"{name} LM (d_model {config.d_model}, {config.seq_len} bytes × "
                 f"{config.batch_size}), {config.steps} steps",
                 f"{row['tokens_per_s']:,.0f} tokens/s, {row['fevals_per_step']:.1f} {evals}, "
                 f"peak {_fmt_mib(row['peak_bytes'])}, {row['valid_bpb']:.3f} bits/byte",
                 "ok")


# ---------------------------------------------------------------- 4. backward modes


LM_MODES: tuple[str, ...] = ("implicit", "phantom", "jfb", "unroll", "reversible")
QUICK_LM_MODES: tuple[str, ...] = ("implicit",)


def _measured_in_lm_part(part: Part) -> dict[str, Any] | None:
    """The DEQ's step time and memory as the ``lm`` part, run before this one in its own
    process, recorded them (the default DEQ is the implicit mode's), or None."""
    if part.path is None:
        return None
    try:
        record = json.loads((part.path.parent / "lm.json").read_text())
    except (OSError, ValueError):
        return None
    deq = next((row for row in record.get("results", {}).get("lm", [])
                if row.get("model") == "deq"), None)
    if deq is None:
        return None
    return {key: deq.get(key) for key in ("step_s", "peak_bytes", "temp_bytes")}


def run_backward(settings: Settings, part: Part) -> None:
    """The DEQ train step under each gradient mode, then :mod:`benchmarks.backward_modes`."""
    from benchmarks import backward_modes, cli
    from benchmarks.timing import median
    from models.sharding import make_mesh

    mesh = make_mesh()
    data = _Data(settings, lm_config(settings), mesh)
    rows = []
    for mode in QUICK_LM_MODES if settings.quick else LM_MODES:
        measured = _measured_in_lm_part(part) if mode == "implicit" else None
        if measured is not None:  # the same train step: not compiled a second time
            rows.append({"mode": mode, **measured, "from": "lm"})
            part.put("lm_modes", rows)
            part.row(f"DEQ train step, backward {mode} (the lm part's DEQ)",
                     f"{_fmt_ms(measured['step_s'])} per step, peak "
                     f"{_fmt_mib(measured['peak_bytes'])}, temporaries "
                     f"{_fmt_mib(measured['temp_bytes'])}", "ok")
            continue
        if not part.enough(f"backward: {mode}", 8.0 if settings.quick else 15.0):
            continue
        config = lm_config(settings, backward=mode)
        try:
            run = candidate(config, data, settings)
            _train(run, data, settings.backward_steps)
        except Exception as err:  # noqa: BLE001 — one failing mode is a row
            part.row(f"DEQ train step, backward {mode}", _failure(err), "FAIL")
            continue
        timed = run.times[min(2, len(run.times) - 1):]
        row = {"mode": mode, "step_s": median(timed), "peak_bytes": run.memory.get("peak"),
               "temp_bytes": run.memory.get("temporaries")}
        rows.append(row)
        part.put("lm_modes", rows)
        part.row(f"DEQ train step, backward {mode} (d_model {config.d_model})",
                 f"{_fmt_ms(row['step_s'])} per step, peak {_fmt_mib(row['peak_bytes'])}, "
                 f"temporaries {_fmt_mib(row['temp_bytes'])}", "ok")

    if not part.enough("backward_modes", 5.0 if settings.quick else 20.0):
        return
    argv = ["--problems", "slow-modes-0.99", "--dims", str(settings.backward_dim), "--batch",
            str(settings.backward_batch), "--no-progress", "--repeats", "3", "--budget", "2"]
    if settings.quick:
        argv.append("--quick")
    config = backward_modes.config_from_args(backward_modes.build_parser().parse_args(argv))
    modes = backward_modes.candidates(config.phantom)
    if settings.quick:
        modes = [m for m in modes if m.label == "implicit[fixed_point]"]
    problems = cli.build_problems(config.common, [])
    result = []
    with matmul_precision("highest"):
        for problem in problems:
            result += backward_modes.run_problem(problem, modes, config, lambda: None)
    part.put("backward_modes", result)
    for row in result:
        part.row(f"{row['problem']} d={row['dim']} batch {row['batch']}: {row['mode']}",
                 f"cosine {row['cosine']:.6f}, {_fmt_ms(row['forward_backward_s'])} fwd+bwd, "
                 f"peak {_fmt_mib(row['peak_bytes'])}" if row["status"] == "ok"
                 else str(row["note"]), row["status"])


RUNNERS: dict[str, Callable[[Settings, Part], None]] = {
    "correctness": run_correctness, "solvers": run_solvers, "lm": run_lm,
    "backward": run_backward,
}


# -------------------------------------------------------------------- orchestration


def run_part(name: str, settings: Settings, budget_s: float, path: Path | None) -> dict:
    """Run one part here, within ``budget_s`` as far as its own checks can tell; return its
    record (also written to ``path``)."""
    part = Part(name, budget_s, path)
    part.record["machine"] = output.machine()
    try:
        RUNNERS[name](settings, part)
    except Exception as err:  # noqa: BLE001 — one failing part must not lose the others
        part.note(f"failed: {_failure(err)}")
        return part.finish("failed")
    finally:
        if not settings.quick:
            _CANDIDATES.clear()
    return part.finish("done")


def _isolated(name: str, settings: Settings, budget_s: float, out: Path) -> dict:
    """Run one part in a child process, killed after ``budget_s``; its record, what it
    finished kept when it was killed."""
    path = out / "parts" / f"{name}.json"
    path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.device_check", str(out), "--part", name,
               "--part-budget", str(budget_s)] + (["--quick"] if settings.quick else [])
    start = time.perf_counter()
    try:
        done = subprocess.run(command, timeout=budget_s, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        killed, code, tail = False, done.returncode, done.stderr[-2000:]
    except subprocess.TimeoutExpired as expired:
        killed, code = True, None
        tail = (expired.stderr or b"")[-2000:]
        tail = tail.decode("utf-8", "replace") if isinstance(tail, bytes) else tail
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {"results": {}, "rows": [], "notes": []}
    record.update(budget_s=budget_s, seconds=time.perf_counter() - start)
    if killed:
        record["status"] = "stopped"
        record["notes"] = [*record.get("notes", []),
                           f"stopped at its budget of {budget_s:.0f} s; the table has the "
                           "items it finished"]
        record["rows"] = [*record.get("rows", []),
                          {"part": name, "item": "the rest of the part", "measured": "—",
                           "status": f"skipped: over its budget of {budget_s:.0f} s"}]
    elif code != 0 and record.get("status") != "failed":
        record["status"] = "failed"
        record["notes"] = [*record.get("notes", []),
                           f"its process exited with status {code}: {tail.strip()[-300:]}"]
    return record


def _skipped(name: str, why: str) -> dict:
    return {"status": "skipped", "seconds": 0.0, "results": {}, "notes": [why],
            "rows": [{"part": name, "item": "the whole part", "measured": "—",
                      "status": f"skipped: {why}"}]}


def run(settings: Settings, out: Path, parts: Sequence[str], budgets: dict[str, float],
        total_s: float, isolate: bool) -> dict[str, Any]:
    """Every part of ``parts`` within its budget and all within ``total_s``; writes and
    returns the record."""
    begin = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / "parts").glob("*.json"):  # a part reads only this run's records
        stale.unlink()
    result: dict[str, Any] = {
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m benchmarks.device_check OUT_DIR" + (
            " --quick" if settings.quick else ""),
        "settings": dataclasses.asdict(settings), "budgets_s": budgets, "total_s": total_s,
        "parts": {},
    }
    for name in parts:
        left = total_s - (time.perf_counter() - begin)
        budget = min(budgets[name], left)
        if budget < min(5.0, budgets[name]):  # too little left of the total to start it
            result["parts"][name] = _skipped(name, f"only {left:.0f} s of the {total_s:.0f} s "
                                             "were left")
        elif isolate:
            result["parts"][name] = _isolated(name, settings, budget, out)
        else:
            result["parts"][name] = run_part(name, settings, budget, None)
        result["seconds"] = time.perf_counter() - begin
        write(result, out)
    _CANDIDATES.clear()
    machines = [p["machine"] for p in result["parts"].values() if p.get("machine")]
    result["machine"] = machines[0] if machines else None
    result["seconds"] = time.perf_counter() - begin
    write(result, out)
    return result


def device_line(machine: dict[str, Any] | None) -> str:
    """The device the numbers come from, in words."""
    if not machine:
        return "device unknown (no part ran)"
    devices = machine.get("devices") or []
    kind = devices[0] if devices else machine.get("backend")
    return (f"{len(devices)} × {kind} ({machine['backend']}) · {output.machine_line(machine)}")


TABLE_COLUMNS = (
    output.Column("part", "part", align="left"),
    output.Column("item", "item", align="left"),
    output.Column("measured", "measured", align="left"),
    output.Column("status", "status", align="left"),
)


def render(result: dict[str, Any]) -> str:
    """The Markdown: a line naming the device and the run, then the one table."""
    parts = result["parts"]
    rows = [row for part in parts.values() for row in part.get("rows", [])]
    notes = [f"{name}: {note}" for name, part in parts.items() for note in part.get("notes", [])]
    timing = ", ".join(f"{name} {p.get('seconds', 0):.0f}/{p.get('budget_s', 0):.0f} s "
                       f"({p['status']})" for name, p in parts.items())
    lines = [
        f"Device check `{result['command']}`, {result['started']}, on "
        f"{device_line(result.get('machine'))}; {result.get('seconds', 0):.0f} s of "
        f"{result['total_s']:.0f} s ({timing}).",
        "",
        output.markdown_table(rows, TABLE_COLUMNS),
    ]
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def summary(result: dict[str, Any]) -> str:
    """One paragraph of the check's findings, for the README (what the table holds, read:
    the device, the correctness items passed and the flags determinism needs, the largest
    solver comparison, the language models and the gradient modes' memory)."""
    parts = result["parts"]
    rows = [row for part in parts.values() for row in part.get("rows", [])]
    checks = [row for row in rows if row["part"] == "correctness"
              and row["status"] in ("pass", "FAIL")]
    sentences = [f"On {device_line(result.get('machine'))}, `python -m benchmarks.device_check` "
                 f"took {result.get('seconds', 0):.0f} s."]
    if checks:
        passed = sum(row["status"] == "pass" for row in checks)
        needs = parts.get("lm", {}).get("results", {}).get("determinism_needs")
        sentences.append(
            f"{passed} of {len(checks)} correctness checks passed (every solver in float32 "
            "and bfloat16 against float64, implicit against unrolled gradients)"
            + ("" if "determinism_needs" not in parts.get("lm", {}).get("results", {}) else
               "; a DEQ train step is bit-identical run to run "
               + ("with the default XLA flags" if needs == "default XLA flags"
                  else f"with {needs}" if needs else "with none of the flags tried"))
            + ".")
    compared = parts.get("solvers", {}).get("results", {}).get("compare_solvers") or []
    if compared:
        last = compared[-1]
        timed = [r for r in last["rows"] if r.get("forward_s") is not None]
        ours = {r["solver"]: r for r in timed if r["kind"] == "registry"
                and not r["solver"].startswith("jaxopt")}
        peers = [r for r in timed if r not in ours.values()]
        if ours:
            fastest = min(ours.values(), key=lambda r: r["forward_s"])
            line = (f"At d = {fastest['dim']}, batch {fastest['batch']} ({fastest['problem']}), "
                    f"{fastest['solver']} solves in {_fmt_ms(fastest['forward_s'])} "
                    f"(overhead {fastest.get('overhead', float('nan')):.2f}, "
                    f"{fastest['converged']}/{fastest['batch']} within tol)")
            if peers:
                peer = min(peers, key=lambda r: r["forward_s"])
                line += (f"; the fastest peer, {peer['solver']}, in {_fmt_ms(peer['forward_s'])} "
                         f"({peer['converged']}/{peer['batch']} within tol)")
            sentences.append(line + ".")
    models = parts.get("lm", {}).get("results", {}).get("lm") or []
    if models:
        described = [f"{r['model']} {r['tokens_per_s']:,.0f} tokens/s, peak "
                     f"{_fmt_mib(r['peak_bytes'])}, {r['valid_bpb']:.3f} bits/byte after "
                     f"{r['steps']} steps" for r in models]
        sentences.append("The language models: " + "; ".join(described) + ".")
    modes = parts.get("backward", {}).get("results", {}).get("lm_modes") or []
    if modes:
        sentences.append("DEQ train step by gradient mode: " + "; ".join(
            f"{r['mode']} {_fmt_ms(r['step_s'])}, peak {_fmt_mib(r['peak_bytes'])}"
            for r in modes) + ".")
    skipped = [f"{name} ({part['status']})" for name, part in parts.items()
               if part["status"] != "done"]
    if skipped:
        sentences.append("Not complete: " + ", ".join(skipped) + ".")
    return " ".join(sentences)


def write(result: dict[str, Any], out: Path) -> None:
    """``device_check.json`` and ``device_check.md`` in ``out``."""
    output.write_json(str(out / JSON_NAME), result)
    (out / TABLE_NAME).write_text(render(result), encoding="utf-8")


# ------------------------------------------------------------------------------ CLI


def _budget(text: str) -> tuple[str, float]:
    name, sep, seconds = text.partition("=")
    if not sep or name not in PARTS:
        raise argparse.ArgumentTypeError(
            f"expected PART=SECONDS with PART one of {', '.join(PARTS)}, got {text!r}")
    try:
        value = float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: SECONDS must be a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r}: SECONDS must be positive")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.device_check",
        description="The toolkit's prepared check on an accelerator (about 8 minutes on a "
        "GPU): correctness, solvers at d 4096 and 16384, the DEQ LM against the Transformer "
        "baseline, and the gradient modes; writes device_check.json and device_check.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("out_dir", type=Path, help="folder for the JSON and the table")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, fast compilation, in this process: a smoke run on a "
                        "CPU (numbers not meaningful)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="the parts to run, in this order")
    parser.add_argument("--budget", action="append", type=_budget, default=[],
                        metavar="PART=SECONDS", help="a part's time budget (repeatable); "
                        f"default: {', '.join(f'{k}={v:g}' for k, v in BUDGETS_S.items())}")
    parser.add_argument("--total", type=float, default=None,
                        help=f"all parts' time (default {TOTAL_S:g} s; {QUICK_BUDGET_S:g} s "
                        "with --quick)")
    placement = parser.add_mutually_exclusive_group()
    placement.add_argument("--isolate", dest="isolate", action="store_true", default=None,
                           help="each part in its own process, killed at its budget (the "
                           "default without --quick)")
    placement.add_argument("--in-process", dest="isolate", action="store_false",
                           help="every part in this process (the default with --quick)")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--part-budget", type=float, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the check; print the table; return the record."""
    args = build_parser().parse_args(argv)
    settings = Settings.make(args.quick)
    if args.part:  # one part, in the process the orchestrator started for it
        path = args.out_dir / "parts" / f"{args.part}.json"
        return run_part(args.part, settings, args.part_budget, path)
    budgets = {name: (QUICK_BUDGET_S if args.quick else BUDGETS_S[name]) for name in PARTS}
    budgets.update(dict(args.budget))
    total = args.total or (QUICK_BUDGET_S if args.quick else TOTAL_S)
    isolate = (not args.quick) if args.isolate is None else args.isolate
    result = run(settings, args.out_dir, args.parts, budgets, total, isolate)
    print((args.out_dir / TABLE_NAME).read_text(encoding="utf-8"), end="")
    return result


if __name__ == "__main__":
    from models.xla_setup import prefer_memory_schedule

    prefer_memory_schedule()  # on a CPU, as python -m models.train does; nothing on a GPU
    main()
