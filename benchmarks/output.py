"""What the benchmarks write: markdown tables, JSON, CSV, residual plots, and where the
numbers were measured (the machine line).

Rows are plain dicts; a :class:`Column` says which key a table column shows and how.
Missing values (``None``) print as ``—``; non-finite numbers print as ``nan``/``inf``, never
hidden.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

Row = Mapping[str, Any]
MISSING = "—"


@dataclasses.dataclass(frozen=True)
class Column:
    """A table column: the row ``key`` it shows, its ``header``, and how a value prints."""

    key: str
    header: str
    fmt: Callable[[Any], str] = str
    align: str = "right"


def fmt_int(value: Any) -> str:
    return str(int(value))


def fmt_sci(value: Any) -> str:
    return f"{float(value):.1e}"


def fmt_ms(seconds: Any) -> str:
    """Seconds as milliseconds with three significant figures."""
    ms = 1e3 * float(seconds)
    if not math.isfinite(ms):
        return str(ms)
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def fmt_ratio(value: Any) -> str:
    return f"{float(value):.2f}"


def fmt_mib(nbytes: Any) -> str:
    return f"{float(nbytes) / 2**20:.1f}"


def fmt_percent(share: Any) -> str:
    return f"{100 * float(share):.0f}%"


def fmt_cos(value: Any) -> str:
    return f"{float(value):.6f}"


def cell(row: Row, column: Column) -> str:
    value = row.get(column.key)
    if value is None:
        return MISSING
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return column.fmt(value)


def markdown_table(rows: Sequence[Row], columns: Sequence[Column]) -> str:
    """A GitHub-flavoured markdown table of ``rows``."""
    header = "| " + " | ".join(c.header for c in columns) + " |"
    rule = "|" + "|".join(":---" if c.align == "left" else "---:" for c in columns) + "|"
    body = ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join([header, rule, *body])


def _jsonable(value: Any) -> Any:
    """Floats that JSON cannot hold (NaN, inf) become strings; tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return _jsonable(value.item())
    return value


def write_json(path: str, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as indented JSON (NaN and inf as strings), creating the folder."""
    _make_parent(path)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(_jsonable(payload), handle, indent=2, sort_keys=False)
        handle.write("\n")


def write_csv(path: str, rows: Sequence[Row], keys: Sequence[str]) -> None:
    """Write the raw (unformatted) values of ``keys`` for every row as CSV."""
    _make_parent(path)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(keys)
        for row in rows:
            writer.writerow(["" if row.get(k) is None else row.get(k) for k in keys])


def publish(table: str, result: Mapping[str, Any], json_path: Any) -> None:
    """Print an entry point's markdown; write its ``result`` to ``--json`` when asked."""
    print(table)
    if json_path:
        write_json(json_path, result)


def emit(
    result: Mapping[str, Any], table: str, json_path: Any, csv_path: Any, csv_keys: Sequence[str]
) -> None:
    """Print an entry point's table and run time; write ``--json`` and ``--csv`` when asked."""
    publish(f"{table}\n\n({result['seconds']:.0f} s)", result, json_path)
    if csv_path:
        write_csv(csv_path, result["rows"], csv_keys)


def _make_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def machine() -> dict[str, Any]:
    """Where the numbers were measured: platform, CPU count, Python and library versions."""
    import jax

    info: dict[str, Any] = {
        "platform": f"{platform.system()} {platform.machine()}",
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }
    for package in ("jaxopt", "optimistix", "lineax"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    return info


def machine_line(info: Mapping[str, Any]) -> str:
    """One line: ``Linux x86_64 · 2 CPUs · jax 0.x (cpu) · Python 3.11``."""
    return (
        f"{info['platform']} · {info['cpu_count']} CPUs · jax {info['jax']} "
        f"({info['backend']}) · Python {info['python']}"
    )


def plot_traces(
    path: str,
    title: str,
    curves: Iterable[Mapping[str, Any]],
    tol: Optional[float] = None,
) -> None:
    """Two panels: residual against iteration, and against time.

    Each curve is ``{"label", "residual": [...], "seconds_per_iteration": float | None}``
    (optionally ``"linestyle"``);
    ``residual[k]`` is the residual after ``k`` iterations. A curve without a time per
    iteration is drawn in the first panel only.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (by_iter, by_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    for curve in curves:
        residual = np.asarray(curve["residual"], dtype=float)
        residual = np.where(np.isfinite(residual) & (residual > 0), residual, np.nan)
        iterations = np.arange(residual.size)
        style = curve.get("linestyle", "-")
        (line,) = by_iter.semilogy(iterations, residual, style, label=curve["label"])
        per_iteration = curve.get("seconds_per_iteration")
        if per_iteration is not None and math.isfinite(per_iteration):
            by_time.semilogy(
                1e3 * per_iteration * iterations, residual, style, label=curve["label"],
                color=line.get_color(),
            )
    for axis, xlabel in ((by_iter, "iteration"), (by_time, "time (ms)")):
        if tol is not None:
            axis.axhline(tol, color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel(xlabel)
        axis.set_ylabel("max over batch of ‖f(z) − z‖ / ‖f(z)‖ (best so far)")
        axis.grid(True, which="both", alpha=0.3)
    by_iter.legend(fontsize=7)
    by_time.set_title("time axis: iteration × (median solve time / iterations)", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _make_parent(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
