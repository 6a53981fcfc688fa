"""Runs reproduce across processes, bit for bit.

Three separate processes train the same small DEQ configuration for 30 steps, each with its
own ``PYTHONHASHSEED``: two start together, the third later, beside other work, so under a
different load. A fourth run is interrupted by a real SIGINT (Ctrl-C) mid-run and resumed in
a fresh process. All ``metrics.jsonl`` loss columns must be identical to the last bit.
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
    straight = {
        name: start_process([sys.executable, "-m", "models.train",
                             *flags(_config(tmp / name))], tmp, PYTHONHASHSEED=seed)
        for name, seed in (("first", "1"), ("second", "2"))
    }
    interrupted = start_process([sys.executable, "-c", _INTERRUPTED,
                                 *flags(_config(tmp / "resumed"))], tmp, PYTHONHASHSEED="3")
    results = {name: proc.communicate(timeout=600) + (proc.returncode,)
               for name, proc in {**straight, "interrupted": interrupted}.items()}
    later = {
        "third": start_process([sys.executable, "-m", "models.train",
                                *flags(_config(tmp / "third"))], tmp, PYTHONHASHSEED="5"),
        "resumed": start_process([sys.executable, "-m", "models.train", "--resume",
                                  *flags(_config(tmp / "resumed"))], tmp, PYTHONHASHSEED="4"),
    }
    results.update({name: proc.communicate(timeout=600) + (proc.returncode,)
                    for name, proc in later.items()})
    return {"tmp": tmp, "results": results}


def _columns(run_dir: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    return [(r["split"], r["step"], *(r.get(key) for key in COLUMNS)) for r in records]


def test_three_processes_and_a_resumed_one_agree_bit_for_bit(runs) -> None:
    results, tmp = runs["results"], runs["tmp"]
    for name in ("first", "second", "third", "resumed"):
        out, err, code = results[name]
        assert code == 0, (name, err[-2000:])
    out, err, code = results["interrupted"]
    assert code == 130, err[-2000:]
    assert "interrupted after step" in out, out
    first = _columns(tmp / "first")
    assert len([row for row in first if row[0] == "train"]) == STEPS
    assert _columns(tmp / "second") == first
    assert _columns(tmp / "third") == first
    assert _columns(tmp / "resumed") == first
