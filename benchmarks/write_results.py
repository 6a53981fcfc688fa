"""Write the benchmark results: the full tables to ``docs/results.md``, a summary to the README.

    python -m benchmarks.write_results                 # run both benchmarks, write both files
    python -m benchmarks.write_results --dry-run       # print what would be written
    python -m benchmarks.write_results --compare-json cs.json --backward-json bm.json
    python -m benchmarks.write_results --deq-json deq.json   # also the DEQ-vs-explicit tables
    python -m benchmarks.write_results --with-deq            # run deq_vs_explicit too

``docs/results.md`` (``--output``) is written whole: the machine the numbers were
measured on, the commands that reproduce them, and the tables of
:mod:`benchmarks.compare_solvers` and :mod:`benchmarks.backward_modes` (run here, in this
process, unless their ``--json`` output is given). The README (``--readme``) keeps a
short summary of the same run between the markers ``<!-- results:start -->`` and
``<!-- results:end -->``, with a link to the full tables; without both markers, in that
order and once each, the script stops with an error and writes nothing. Residual plots
go to ``--plots-dir`` and the slow-modes ones are linked from the results file.

The tables of :mod:`benchmarks.deq_vs_explicit` (with ``--deq-json`` or ``--with-deq``) go
to the results page and, whole, to the README between ``<!-- deq-vs-explicit:start -->`` and
``<!-- deq-vs-explicit:end -->``; without them that README section is left as it is.

The page's "Measured notes" (between ``<!-- notes:start -->`` and ``<!-- notes:end -->``)
hold figures measured by other commands, each with the command that reproduces it: the
figures the toolkit's docstrings and ``--help`` texts refer to instead of quoting them. The
page is rewritten whole, but that section is carried over from the page it replaces.

``--device-check DIR`` publishes a run of :mod:`benchmarks.device_check` (on a GPU) and
nothing else: its table replaces the part of the results page between
``<!-- device-check:start -->`` and ``<!-- device-check:end -->``, and its one-paragraph
summary the same part of the README. Rewriting the page from the CPU benchmarks carries that
part over too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Any, Optional, Sequence

from benchmarks import backward_modes, compare_solvers, deq_vs_explicit, device_check, output
from models.xla_setup import prefer_memory_schedule

START = "<!-- results:start -->"
END = "<!-- results:end -->"
DEQ_START = "<!-- deq-vs-explicit:start -->"
DEQ_END = "<!-- deq-vs-explicit:end -->"
NOTES_START = "<!-- notes:start -->"
NOTES_END = "<!-- notes:end -->"
DEVICE_START = "<!-- device-check:start -->"
DEVICE_END = "<!-- device-check:end -->"
DEVICE_HEADING = "## On a GPU: `python -m benchmarks.device_check`"
RESULTS_DIR = "docs"
RESULTS_PATH = f"{RESULTS_DIR}/results.md"
DEFAULT_PLOTS_DIR = f"{RESULTS_DIR}/plots"


class MarkersMissing(RuntimeError):
    """The README lacks the results markers (or has them more than once, or out of order)."""


def replace_between_markers(text: str, section: str, path: str = "README.md",
                            start: str = START, end: str = END) -> str:
    """``text`` with the part between ``start`` and ``end`` replaced by ``section``."""
    starts, ends = text.count(start), text.count(end)
    if starts != 1 or ends != 1 or text.index(start) > text.index(end):
        raise MarkersMissing(
            f"{path} must contain the line {start!r} followed later by {end!r}, once each "
            f"(found {starts} start and {ends} end marker(s)); add them where the section "
            "belongs. Nothing was written."
        )
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{section.strip()}\n{end}{tail}"


def _commands(quick: bool) -> list[str]:
    flag = " --quick" if quick else ""
    return [
        "pip install -e '.[bench]'",
        f"python -m benchmarks.compare_solvers{flag}",
        f"python -m benchmarks.backward_modes{flag}",
        f"python -m benchmarks.write_results{flag}   # rewrites this page and the README summary",
    ]


def measured_notes(page: str, start: str = NOTES_START, end: str = NOTES_END) -> Optional[str]:
    """The "Measured notes" between :data:`NOTES_START` and :data:`NOTES_END` of a results
    page (or another section between ``start`` and ``end``), or ``None`` when it has none."""
    if page.count(start) != 1 or page.count(end) != 1:
        return None
    return page.split(start, 1)[1].split(end, 1)[0].strip()


def results_page(compare: dict[str, Any], backward: Optional[dict[str, Any]], quick: bool,
                 page_dir: str = RESULTS_DIR, deq: Optional[dict[str, Any]] = None,
                 notes: Optional[str] = None, device: Optional[str] = None) -> str:
    """The markdown of ``docs/results.md`` (which lies in ``page_dir``, where its plot links
    start): every table, how it was measured and how to reproduce it, then the measured
    ``notes`` and the ``device`` check's section carried over from the page before
    (:func:`measured_notes`)."""
    lines = [
        "# Benchmark results",
        "",
        _measured_line(compare) + " Reproduce with:",
        "",
        "```bash",
        *_commands(quick),
        "```",
        "",
        "## Solvers: `python -m benchmarks.compare_solvers`",
        "",
        compare_solvers.render(compare),
    ]
    # Only plots inside the repository (relative paths) can be linked.
    plots = [p for p in compare.get("plots", [])
             if "slow-modes" in os.path.basename(p) and not os.path.isabs(p)]
    if plots:
        lines += ["", "Residual against iteration and time (slow-modes):", ""]
        lines += [f"![{os.path.basename(p)}]({os.path.relpath(p, page_dir)})" for p in plots]
    if backward is not None:
        lines += [
            "",
            "## Gradient modes: `python -m benchmarks.backward_modes`",
            "",
            backward_modes.render(backward),
        ]
    if deq is not None:
        lines += [
            "",
            "## DEQ against explicit Transformers: `python -m benchmarks.deq_vs_explicit`",
            "",
            deq_vs_explicit.render(deq),
        ]
    if notes:
        lines += ["", "## Measured notes", "", NOTES_START, notes, NOTES_END]
    if device:
        lines += ["", DEVICE_HEADING, "", DEVICE_START, device, DEVICE_END]
    return "\n".join(lines) + "\n"


def readme_summary(compare: dict[str, Any], backward: Optional[dict[str, Any]]) -> str:
    """The README's short summary of the same results, linking to the full tables."""
    lines = [
        _measured_line(compare),
        "",
        f"Full tables, plots and the commands that reproduce them: [{RESULTS_PATH}]"
        f"({RESULTS_PATH}).",
    ]
    if compare.get("checks"):
        lines += ["", "Slow-modes problems, broyden against the fastest peer "
                  "(speed-up > 1 when broyden is faster):", ""]
        lines += [f"- {check}" for check in compare["checks"]]
    if backward is not None:
        lines += ["", "Gradient quality against the float64 exact gradient (cosine similarity, "
                  "worst over the problems):", ""]
        worst: dict[str, float] = {}
        for row in backward["rows"]:
            if row.get("cosine") is not None:
                worst[row["mode"]] = min(worst.get(row["mode"], 1.0), float(row["cosine"]))
        lines += [f"- {mode}: {cosine:.6f}" for mode, cosine in worst.items()]
    return "\n".join(lines)


def _measured_line(compare: dict[str, Any]) -> str:
    machine = compare["machine"]
    date = datetime.date.today().isoformat()
    return (
        f"Measured {date} on {output.machine_line(machine)}"
        + (f" (jaxopt {machine.get('jaxopt')}, optimistix {machine.get('optimistix')})"
           if machine.get("optimistix") or machine.get("jaxopt") else "")
        + ". All numbers of a table come from one process, measured side by side "
        "(compiled ahead of time, one warm-up, median of round-robin timed calls, "
        "`block_until_ready`)."
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.write_results",
        description="Run the benchmarks and write the README's Results section.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--readme", default="README.md",
                        help="the file whose marked section gets the summary")
    parser.add_argument("--output", default=RESULTS_PATH, help="the full results page to write")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the page and the summary to stdout and write nothing")
    parser.add_argument("--quick", action="store_true", help="run both benchmarks with --quick")
    parser.add_argument("--compare-json", default=None, metavar="PATH",
                        help="use this compare_solvers --json output instead of running it")
    parser.add_argument("--backward-json", default=None, metavar="PATH",
                        help="use this backward_modes --json output instead of running it")
    parser.add_argument("--no-backward", action="store_true", help="omit the gradient-mode table")
    parser.add_argument("--deq-json", default=None, metavar="PATH",
                        help="a deq_vs_explicit --json output: its tables go to the page and "
                        "to the README's deq-vs-explicit section")
    parser.add_argument("--with-deq", action="store_true",
                        help="run deq_vs_explicit here for those tables (long: it trains every "
                        "model it compares)")
    parser.add_argument("--plots-dir", default=DEFAULT_PLOTS_DIR,
                        help="where compare_solvers writes the plots the section links")
    parser.add_argument("--device-check", default=None, metavar="DIR",
                        help="publish only the device check written to DIR: its table to the "
                        "page's and its summary to the README's device-check section")
    return parser


def publish_device_check(directory: str, page_path: str, readme: str) -> None:
    """Put a device check's table into ``page_path`` and its summary into ``readme``,
    between the device-check markers of each (or stop, writing nothing, if either lacks
    them)."""
    try:
        result = _load(os.path.join(directory, device_check.JSON_NAME))
        with open(os.path.join(directory, device_check.TABLE_NAME), encoding="utf-8") as handle:
            table = handle.read()
        texts = {}
        for path in (page_path, readme):
            with open(path, encoding="utf-8") as handle:
                texts[path] = handle.read()
    except (OSError, ValueError) as err:
        raise SystemExit(f"write_results: {err}") from None
    try:
        page = replace_between_markers(texts[page_path], table, page_path, DEVICE_START,
                                       DEVICE_END)
        text = replace_between_markers(texts[readme], device_check.summary(result), readme,
                                       DEVICE_START, DEVICE_END)
    except MarkersMissing as err:
        raise SystemExit(f"write_results: {err}") from None
    for path, content in ((page_path, page), (readme, text)):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(content)
    print(f"write_results: wrote the device check of {directory} to {page_path} and {readme}",
          file=sys.stderr)


def _load(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Command-line entry point; returns the results page it wrote (or printed)."""
    args = build_parser().parse_args(argv)
    if args.device_check:
        publish_device_check(args.device_check, args.output, args.readme)
        return ""
    text = None
    if not args.dry_run:
        try:
            with open(args.readme, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as err:
            raise SystemExit(f"write_results: cannot read {args.readme}: {err}") from None
        try:  # check the markers before spending minutes on the benchmarks
            replace_between_markers(text, "", args.readme)
            if args.deq_json or args.with_deq:
                replace_between_markers(text, "", args.readme, DEQ_START, DEQ_END)
        except MarkersMissing as err:
            raise SystemExit(f"write_results: {err}") from None
    quick = ["--quick"] if args.quick else []
    if args.compare_json:
        compare = _load(args.compare_json)
    else:
        compare = compare_solvers.run(compare_solvers.config_from_args(
            compare_solvers.build_parser().parse_args([*quick, "--plots", args.plots_dir])))
    backward = None
    if not args.no_backward:
        if args.backward_json:
            backward = _load(args.backward_json)
        else:
            backward = backward_modes.run(backward_modes.config_from_args(
                backward_modes.build_parser().parse_args(quick)))
    deq = None
    if args.deq_json:
        deq = _load(args.deq_json)
    elif args.with_deq:
        deq = deq_vs_explicit.run(deq_vs_explicit.build_parser().parse_args(quick))
    notes = device = None
    if os.path.exists(args.output):
        with open(args.output, encoding="utf-8") as handle:
            previous = handle.read()
        notes = measured_notes(previous)
        device = measured_notes(previous, DEVICE_START, DEVICE_END)  # the GPU's, not ours
    page = results_page(compare, backward, args.quick, os.path.dirname(args.output) or ".", deq,
                        notes, device)
    summary = readme_summary(compare, backward)
    if args.dry_run:
        print(page)
        print(summary)
        return page
    assert text is not None
    if deq is not None:
        text = replace_between_markers(text, deq_vs_explicit.render(deq), args.readme,
                                       DEQ_START, DEQ_END)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as handle:
        handle.write(page)
    with open(args.readme, "w", encoding="utf-8") as handle:
        handle.write(replace_between_markers(text, summary, args.readme))
    print(f"write_results: wrote {args.output} and the summary in {args.readme}",
          file=sys.stderr)
    return page


if __name__ == "__main__":
    if "--with-deq" in sys.argv[1:]:
        prefer_memory_schedule()  # as deq_vs_explicit does on its own, before JAX starts
    main()
