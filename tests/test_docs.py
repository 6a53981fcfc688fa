"""The documentation runs: every Python code block of README.md, in order, in one namespace
(as a reader pastes them), and the example of docs/architecture.md.

A ``print(...)`` line whose comment quotes its output must print a line of that form:
the same words, any numbers (they depend on the machine's floating point).
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import solvers

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
QUOTED_PRINT = re.compile(r"^\s*print\(.*\)\s+# (.+)$")


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


def output_pattern(quoted: str) -> re.Pattern:
    """The quoted output with every number free."""
    parts = NUMBER.split(quoted.strip())
    return re.compile(NUMBER.pattern.join(re.escape(part) for part in parts))


def run(block: str, namespace: dict, where: str) -> None:
    """Execute ``block``; check each quoted ``print`` against what the block printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        # dont_inherit: the block runs as a reader's script, without this module's __future__.
        exec(compile(block, where, "exec", dont_inherit=True), namespace)
    lines = printed.getvalue().splitlines()
    for line in block.splitlines():
        quoted = QUOTED_PRINT.match(line)
        if quoted:
            pattern = output_pattern(quoted.group(1))
            assert any(pattern.fullmatch(out.strip()) for out in lines), (quoted.group(1), lines)


def test_every_python_block_of_the_readme_runs() -> None:
    blocks = python_blocks(ROOT / "README.md")
    assert len(blocks) >= 5  # solvers, fixed_point, Haiku, Flax NNX, Equinox
    namespace: dict = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        run(block, namespace, f"README.md python block {i + 1}")


def test_the_architecture_pages_example_method_runs() -> None:
    (block,) = python_blocks(ROOT / "docs" / "architecture.md")
    try:
        run(block, {"__name__": "architecture"}, "docs/architecture.md")
    finally:
        if "damped" in solvers.available():
            solvers.unregister("damped")


def test_an_output_pattern_frees_the_numbers_only() -> None:
    pattern = output_pattern("32/32 converged (rel residual ≤ 7e-06, ≤ 7 iterations)")
    assert pattern.fullmatch("30/32 converged (rel residual ≤ 9.5e-06, ≤ 12 iterations)")
    assert not pattern.fullmatch("30/32 converged, 2 stalled at rel residual 3e-04")
