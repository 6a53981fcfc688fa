"""The command line the solver benchmarks share: flags, ``--quick``, solver options, and
building the problems.

``compare_solvers``, ``backward_modes`` and ``overhead_floor`` measure on the same
problems in the same way; each has its :class:`Defaults` (the first and the last share
:data:`SOLVER_DEFAULTS`), adds the shared flags with :func:`add_flags`, turns the parsed
flags into a frozen :class:`Common` with :func:`common` (checked by the toolkit's one
validator, the ``--quick`` substitutions applied) and builds its problems with
:func:`build_problems`. ``--solver-option NAME:KEY=VALUE`` is read by
:func:`parse_solver_options`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Mapping, Optional, Sequence

from benchmarks import problems as problems_lib
from benchmarks.problems import Problem, ProblemUnavailable
from benchmarks.timing import FAST_COMPILE
from solvers.options import Check, OptionError, Options, above, at_least, option, parse_assignments


@dataclasses.dataclass(frozen=True)
class Defaults:
    """One entry point's defaults, and what ``--quick`` uses instead (unless given)."""

    problems: tuple[str, ...]
    dims: tuple[int, ...]
    batch: int
    tol: float
    max_iter: int
    repeats: int
    quick_problems: tuple[str, ...]
    quick_dims: tuple[int, ...]
    quick_batch: int
    quick_max_iter: Optional[int] = None  # None: --max-iter as given


SOLVER_DEFAULTS = Defaults(
    problems=(*problems_lib.BUILDERS, *problems_lib.OPTIONAL), dims=(256, 1024), batch=32,
    tol=1e-5, max_iter=500, repeats=5,
    quick_problems=("slow-modes-0.99",), quick_dims=(48,), quick_batch=8,
)
"""The problems and sizes the solver comparisons run on (``compare_solvers``,
``overhead_floor``)."""

_SIZES = Check(lambda dims: len(dims) > 0 and all(d >= 1 for d in dims), "of integers >= 1")


@dataclasses.dataclass(frozen=True)
class Common(Options):
    """The shared settings of one benchmark run (see :func:`add_flags` for their meaning),
    checked when built; each field is the flag of the same name."""

    problems: tuple
    user_problems: tuple
    dims: tuple = option((), _SIZES, "per-sample sizes of the sized problems")
    batch: int = option(1, at_least(1), "samples per problem")
    tol: float = option(1e-5, above(0), "per-sample relative tolerance")
    max_iter: int = option(1, at_least(1), "iteration limit")
    repeats: int = option(1, at_least(1), "timed calls per candidate")
    budget: float = option(3.0, above(0), "seconds of timed calls per candidate")
    seed: int = option(0, None, "seed of the problems")
    quick: bool = option(False, None, "smoke run")
    progress: bool = option(True, None, "progress bar")
    json: Optional[str] = option(None, None, "JSON output path")
    csv: Optional[str] = option(None, None, "CSV output path")

    @property
    def compiler_options(self) -> Optional[Mapping[str, Any]]:
        """XLA options: fast compilation for a ``--quick`` smoke run, else XLA's defaults."""
        return FAST_COMPILE if self.quick else None


def parser(prog: str, description: str, defaults: Defaults) -> argparse.ArgumentParser:
    """An entry point's parser (``python -m benchmarks.NAME``) with the shared flags added."""
    built = argparse.ArgumentParser(
        prog=prog, description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_flags(built, defaults)
    return built


def add_flags(parser: argparse.ArgumentParser, defaults: Defaults) -> None:
    """Add the shared flags; ``--problems``, ``--dims``, ``--batch`` and ``--max-iter`` take
    their ``--quick`` values unless given."""
    known = ", ".join([*problems_lib.BUILDERS, *problems_lib.OPTIONAL])
    parser.add_argument("--problems", nargs="+", default=None, metavar="NAME",
                        help=f"built-in problems or family prefixes ({known}); default: "
                        f"{' '.join(defaults.problems)}")
    parser.add_argument("--problem", action="append", default=[], metavar="MODULE:FUNCTION",
                        help="add a user problem: FUNCTION() returns (f, z0, args) or "
                        "(f, z0, args, in_axes), z0 batched on axis 0 (repeatable)")
    parser.add_argument("--dims", nargs="+", type=int, default=None,
                        help=f"per-sample sizes of the sized problems; default: "
                        f"{' '.join(map(str, defaults.dims))}")
    parser.add_argument("--batch", type=int, default=None,
                        help=f"samples per problem; default: {defaults.batch}")
    parser.add_argument("--tol", type=float, default=defaults.tol,
                        help="per-sample relative tolerance ‖f(z) − z‖ / ‖f(z)‖")
    parser.add_argument("--max-iter", type=int, default=None,
                        help=f"iteration limit; default: {defaults.max_iter}")
    parser.add_argument("--repeats", type=int, default=defaults.repeats,
                        help="timed calls per candidate")
    parser.add_argument("--budget", type=float, default=3.0,
                        help="stop timing a candidate after this many seconds (>= 1 call)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the problems")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    parser.add_argument("--csv", default=None, metavar="PATH", help="write the results as CSV")
    quick_max_iter = (f", at most {defaults.quick_max_iter} iterations"
                      if defaults.quick_max_iter else "")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {', '.join(defaults.quick_problems)} at d = "
                        f"{' '.join(map(str, defaults.quick_dims))}, batch {defaults.quick_batch}"
                        f"{quick_max_iter}, 1 timed call, XLA backend optimisation off "
                        "(timings not representative)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def common(args: argparse.Namespace, defaults: Defaults) -> Common:
    """The shared settings of the parsed ``args``; ``ValueError`` names a bad flag."""
    quick = bool(args.quick)
    problems = args.problems or (defaults.quick_problems if quick else defaults.problems)
    dims = args.dims or (defaults.quick_dims if quick else defaults.dims)
    batch = args.batch if args.batch is not None else (
        defaults.quick_batch if quick else defaults.batch)
    max_iter = args.max_iter if args.max_iter is not None else defaults.max_iter
    if quick and defaults.quick_max_iter:
        max_iter = min(max_iter, defaults.quick_max_iter)
    try:
        return Common(
            problems=tuple(problems_lib.select(problems)), user_problems=tuple(args.problem),
            dims=tuple(dims), batch=batch, tol=args.tol, max_iter=max_iter,
            repeats=1 if quick else args.repeats, budget=args.budget, seed=args.seed,
            quick=quick, progress=not args.no_progress, json=args.json, csv=args.csv,
        )
    except OptionError as error:
        flag = "--" + error.option.replace("_", "-")
        raise ValueError(f"{flag} must be {error.rule}, got {error.value}") from None


def parse_solver_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["broyden:history=60", ...]`` → ``{"broyden": {"history": 60}}`` (values as
    literals): the ``--solver-option NAME:KEY=VALUE`` flags, by solver or row label."""
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, assignment = item.partition(":")
        if not sep or not name or "=" not in assignment:
            raise ValueError(f"--solver-option expects NAME:KEY=VALUE, got {item!r}")
        try:
            options.setdefault(name, {}).update(parse_assignments(assignment))
        except ValueError:
            raise ValueError(f"--solver-option expects NAME:KEY=VALUE, got {item!r}") from None
    return options


def build_problems(
    settings: Common, notes: list[str], checkpoint: Optional[str] = None
) -> list[Problem]:
    """Every selected problem at every size, then the user problems. A problem that cannot
    be built here becomes a note, except the transformer from an explicit ``checkpoint``
    (``ValueError``: the user asked for exactly that one)."""
    user = [problems_lib.user_problem(spec) for spec in settings.user_problems]  # fail early
    built: list[Problem] = []
    for name in settings.problems:
        dims = settings.dims[:1] if name in problems_lib.FIXED_SIZE else settings.dims
        for dim in dims:
            try:
                built.append(problems_lib.build(
                    name, dim, settings.batch, settings.seed, checkpoint))
            except ProblemUnavailable as why:
                if name == "transformer" and checkpoint:
                    raise ValueError(f"--checkpoint {checkpoint}: {why}") from None
                notes.append(f"problem `{name}` skipped: {why}")
                break
    return built + user
