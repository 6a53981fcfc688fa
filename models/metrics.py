"""Run metrics: an append-only JSON-lines file and a plot drawn from it.

Each line of ``metrics.jsonl`` is one record ``{"split": "train" | "valid", "step": s, ...}``
(``step`` counts completed training steps). Wall-clock fields (``time``, ``tokens_per_s``) are
listed in :data:`TIMING_KEYS` so comparisons between runs can leave them out. On resume from a
checkpoint taken at step ``k`` the file is cut back to its records with ``step ≤ k``, so an
interrupted-then-resumed run ends with the same records as an uninterrupted one, and a
``(split, step)`` record that is already there is not written again (a finished run that is
resumed re-validates its last step without a second record).

Reading is tolerant of a crash mid-append: a torn last line is dropped with a
:class:`MetricsWarning`. Any other unreadable line is corruption: :class:`MetricsError`.

Writing is all or nothing: an append that fails (a full disk, a file-size limit) is cut back
to the file's length before it, and raises :class:`models.rundir.RunDirError` naming the
file and the fault; the plot is written atomically.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

from models.rundir import atomic_write, writing

__all__ = [
    "METRICS_NAME",
    "PLOT_NAME",
    "TIMING_KEYS",
    "MetricsError",
    "MetricsLog",
    "MetricsWarning",
    "read_metrics",
    "plot_metrics",
]

METRICS_NAME: str = "metrics.jsonl"
PLOT_NAME: str = "metrics.png"
TIMING_KEYS: frozenset[str] = frozenset({"time", "tokens_per_s"})


class MetricsError(ValueError):
    """A metrics file is corrupt somewhere other than a torn last line."""


class MetricsWarning(UserWarning):
    """A metrics file ended with a torn line (a crash mid-append); it was dropped."""


def _parse(line: str) -> dict[str, Any] | None:
    """The record on one line, or None if the line is not a record."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    ok = isinstance(record, dict) and isinstance(record.get("split"), str) and isinstance(
        record.get("step"), int
    )
    return record if ok else None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics file, in order (``[]`` if it does not exist).

    A torn last line is dropped with a :class:`MetricsWarning`; an unreadable line before
    the last raises :class:`MetricsError` naming the file and the line.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = [
        (number, line)
        for number, line in enumerate(path.read_text("utf-8", errors="replace").splitlines(), 1)
        if line.strip()
    ]
    records = []
    for index, (number, line) in enumerate(lines):
        record = _parse(line)
        if record is not None:
            records.append(record)
        elif index == len(lines) - 1:
            warnings.warn(
                f"metrics file {str(path)!r}: dropped its torn last line {number} "
                f"({line[:40]!r}), left by a crash mid-write",
                MetricsWarning,
                stacklevel=2,
            )
        else:
            raise MetricsError(
                f"metrics file {str(path)!r} is corrupt at line {number} of {lines[-1][0]}: "
                f"{line[:40]!r} is not a metrics record; repair or delete the file"
            )
    return records


class MetricsLog:
    """Appends records to ``<run_dir>/metrics.jsonl``; only the writer process writes."""

    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_NAME
        self.enabled = enabled
        self._written: set[tuple[str, int]] = set()

    def start(self, resume_step: int | None) -> None:
        """Start a fresh file (``resume_step=None``) or keep the records up to ``resume_step``."""
        self._written = set()
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [] if resume_step is None else [
            r for r in read_metrics(self.path) if r["step"] <= resume_step
        ]
        self._written = {(r["split"], r["step"]) for r in kept}
        text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in kept)
        with writing(self.path):
            atomic_write(self.path, text)

    def write(self, split: str, step: int, values: dict[str, Any]) -> None:
        """Append one record, unless one for ``(split, step)`` is already there. If the
        append fails, the file is cut back to its previous length and
        :class:`models.rundir.RunDirError` is raised."""
        if not self.enabled or (split, int(step)) in self._written:
            return
        record = {"split": split, "step": int(step)}
        record.update({k: (float(v) if not isinstance(v, str) else v) for k, v in values.items()})
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        with writing(self.path):
            _append(self.path, line)
        self._written.add((split, int(step)))


def _append(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` whole, or cut the file back to its length before and
    raise the ``OSError``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        length = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, length)
            raise
    finally:
        os.close(fd)


def _steps(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    chosen = [r for r in records if key in r]
    return [r["step"] for r in chosen], [r[key] for r in chosen]


def plot_metrics(
    records: list[dict[str, Any]],
    path: str | os.PathLike,
    *,
    baselines: dict[str, float] | None = None,
) -> Path:
    """Draw the run on three panels and save a PNG: train/valid bits per byte; forward solver
    steps (mean, max) and relative residual; what the solves achieved (the share of sequences
    whose forward and adjoint solves converged) and the gradient audit's cosine. The PNG is
    written atomically; a failed write raises :class:`models.rundir.RunDirError`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r["split"] == "train"]
    valid = [r for r in records if r["split"] == "valid"]
    fig, (ax_bpb, ax_steps, ax_solves) = plt.subplots(1, 3, figsize=(16, 4))
    if train:
        ax_bpb.plot(*_steps(train, "bpb"), lw=0.8, alpha=0.7, label="train")
    if valid:
        ax_bpb.plot(*_steps(valid, "bpb"), "o-", label="valid")
    for name, value in (baselines or {}).items():
        ax_bpb.axhline(value, ls="--", lw=0.8, color="gray")
        ax_bpb.annotate(f"{name} {value:.2f}", (0, value), fontsize=8, va="bottom")
    ax_bpb.set_xlabel("step")
    ax_bpb.set_ylabel("bits per byte")
    ax_bpb.legend()
    ax_bpb.grid(alpha=0.3)
    if train:
        ax_steps.plot(*_steps(train, "solver_steps"), lw=0.8, label="mean")
        ax_steps.plot(*_steps(train, "solver_steps_max"), lw=0.8, label="max")
        ax_res = ax_steps.twinx()
        steps, residuals = _steps(train, "rel_residual")
        ax_res.semilogy(steps, [max(r, 1e-12) for r in residuals], lw=0.8, color="tab:red",
                        alpha=0.6)
        ax_res.set_ylabel("relative residual", color="tab:red")
    ax_steps.set_xlabel("step")
    ax_steps.set_ylabel("forward solver steps")
    ax_steps.legend(loc="upper left")
    ax_steps.grid(alpha=0.3)
    for key, label in (("converged", "forward converged"),
                       ("backward_converged", "adjoint converged"),
                       ("audit_cosine", "audit: cosine to the exact gradient"),
                       ("audit_cosine_converged", "audit, sequences with an equilibrium")):
        steps, values = _steps(train, key)
        if values:
            style = {"audit_cosine": "o-", "audit_cosine_converged": "x--"}.get(key, "-")
            ax_solves.plot(steps, values, style, lw=0.8, ms=3, label=label)
    ax_solves.set_xlabel("step")
    ax_solves.set_ylabel("share of sequences / cosine")
    ax_solves.set_ylim(-0.05, 1.05)
    ax_solves.legend(loc="lower left", fontsize=8)
    ax_solves.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    with writing(path):
        atomic_write(path, image.getvalue())
    return path
