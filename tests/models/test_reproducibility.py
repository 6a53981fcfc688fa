"""Runs reproduce across processes, bit for bit.

Separate processes train the same small DEQ configuration for 30 steps, each with its own
``PYTHONHASHSEED``. Two start together: a straight run, and one interrupted by a real SIGINT
(Ctrl-C) mid-run. The interrupted one is then resumed in a third process, which runs alone,
so under a different load than the straight run it must match. Its ``metrics.jsonl`` (the
interrupted process's steps, then the resumed one's) must equal the straight run's in every
loss column, to the last bit.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from tests.models.train_support import flags, start_process, tiny_config

STEPS, INTERRUPT_AT = 30, 12
COLUMNS = ("loss", "bpb", "grad_norm", "solver_steps", "rel_residual")

# Ctrl-C from inside: the process sends itself SIGINT while it draws batch INTERRUPT_AT.
_INTERRUPTED = textwrap.dedent(
    f"""
    import os, signal, sys
    import models.train as train

    draw = train.BatchSampler.batch

    def batch(self, step):
        if step == {INTERRUPT_AT}:
            os.kill(os.getpid(), signal.SIGINT)
        return draw(self, step)

    train.BatchSampler.batch = batch
    sys.exit(train.main(sys.argv[1:]))
    """
)


def _config(run_dir: Path):
    return tiny_config(run_dir, model="deq", steps=STEPS, eval_every=10, max_iter=12,
                       tol=1e-4, backward_tol=1e-4, jac_reg=0.5, checkpoint_every=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("reproducibility")
    first = {
        "straight": start_process([sys.executable, "-m", "models.train",
                                   *flags(_config(tmp / "straight"))], tmp, PYTHONHASHSEED="1"),
        "interrupted": start_process([sys.executable, "-c", _INTERRUPTED,
                                      *flags(_config(tmp / "resumed"))], tmp, PYTHONHASHSEED="3"),
    }
    results = {name: proc.communicate(timeout=600) + (proc.returncode,)
               for name, proc in first.items()}
    resumed = start_process([sys.executable, "-m", "models.train", "--resume",
                             *flags(_config(tmp / "resumed"))], tmp, PYTHONHASHSEED="4")
    results["resumed"] = resumed.communicate(timeout=600) + (resumed.returncode,)
    return {"tmp": tmp, "results": results}


def _columns(run_dir: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    return [(r["split"], r["step"], *(r.get(key) for key in COLUMNS)) for r in records]


def test_a_straight_run_and_an_interrupted_resumed_one_agree_bit_for_bit(runs) -> None:
    results, tmp = runs["results"], runs["tmp"]
    for name in ("straight", "resumed"):
        out, err, code = results[name]
        assert code == 0, (name, err[-2000:])
    out, err, code = results["interrupted"]
    assert code == 130, err[-2000:]
    assert "interrupted after step" in out, out
    straight = _columns(tmp / "straight")
    assert len([row for row in straight if row[0] == "train"]) == STEPS
    resumed = _columns(tmp / "resumed")
    assert [row[:2] for row in resumed] == [row[:2] for row in straight]
    assert resumed == straight
