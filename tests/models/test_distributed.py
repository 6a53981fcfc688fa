"""Two processes over gloo train as one process with two devices does, bit for bit; and when
one of them is killed, the other stops at once with one line naming it, and ``--resume`` of
both ends where an uninterrupted run ends.

One chain of real runs, started together: the reference (one process, two devices), and a
two-process ``--distributed`` run on localhost whose processes both hold at step
:data:`STALL` (after the checkpoint of that step). Process 0, the coordinator, is then
killed with SIGKILL; process 1, still holding, is ended by JAX's runtime, and its supervisor
must exit within :data:`BOUND_S` seconds with status 2 and one ``error:`` line naming
process 0. Both are restarted with ``--resume``, and the finished run's metrics and
checkpoint must equal the reference's exactly. The other way a survivor learns of the loss,
a collective that fails in Python, is provoked in-process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import models.train as train_module
from models.checkpoint import checkpoint_path, read_checkpoint
from models.metrics import read_metrics
from models.peers import PeerLostError, lost_peer, supervise
from tests.models.train_support import (
    FAST_XLA_FLAGS,
    comparable,
    flags,
    run_fast,
    start_process,
    tiny_config,
)

STEPS, STALL, BOUND_S = 6, 3, 30

# A rank of the distributed run: the command's supervisor, and in the training process it
# starts, a hold at step STALL (after creating the file HELD<rank>) until it is killed.
_RANK = textwrap.dedent(
    """
    import os, sys, time
    from models.peers import CHILD_ENV, supervise, wants_supervisor

    argv = sys.argv[1:]
    if wants_supervisor(argv):
        sys.exit(supervise(argv))
    import jax
    import models.train as train

    draw, stall = train.BatchSampler.batch, int(os.environ.get("STALL", "-1"))

    def batch(self, step):
        if step == stall:
            open(os.environ["HELD"] + str(jax.process_index()), "w").close()
            while True:
                time.sleep(0.05)
        return draw(self, step)

    train.BatchSampler.batch = batch
    sys.exit(train.command(argv))
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _config(run_dir: Path):
    """A tiny DEQ whose forward and adjoint solves are plain iterations (per-sequence while
    loops that stop on an all-reduce of their convergence, and report to host callbacks),
    quicker to compile than Anderson's; without the Jacobian penalty and the fixed-point
    correction, which would add a quarter to each of the five compilations (the default
    configuration's step on two devices is tests/models/test_train.py's)."""
    return tiny_config(run_dir, model="deq", steps=STEPS, checkpoint_every=STALL, max_iter=8,
                       tol=1e-4, backward_tol=1e-4, solver="fixed_point",
                       backward_solver="fixed_point", jac_reg=0.0, fp_correction=0)


def _ranks(tmp: Path, extra: list[str], **env: str) -> list:
    port = _free_port()
    return [
        start_process([sys.executable, "-c", _RANK, *flags(_config(tmp / "distributed")),
                       "--distributed", "--coordinator-address", f"localhost:{port}",
                       "--num-processes", "2", "--process-id", str(rank), *extra],
                      tmp, JAX_PLATFORMS="cpu", **env)
        for rank in (0, 1)
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("distributed")
    started: list = []
    try:
        reference = start_process(
            [sys.executable, "-m", "models.train", *flags(_config(tmp / "reference"))], tmp,
            XLA_FLAGS=FAST_XLA_FLAGS + " --xla_force_host_platform_device_count=2",
            JAX_PLATFORMS="cpu")
        started.append(reference)
        held = tmp / "held"
        ranks = _ranks(tmp, [], STALL=str(STALL), HELD=str(held))
        started += ranks
        deadline = time.monotonic() + 600
        while not all(Path(f"{held}{rank}").exists() for rank in (0, 1)):
            for proc in ranks:
                assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the ranks did not reach the step they hold at"
            time.sleep(0.1)
        ranks[0].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        survivor = ranks[1].communicate(timeout=120)
        survivor_s = time.monotonic() - killed
        ranks[0].wait()
        restarted = _ranks(tmp, ["--resume"])
        started += restarted
        resumed = [p.communicate(timeout=600) + (p.returncode,) for p in restarted]
        return {
            "tmp": tmp, "reference": reference.communicate(timeout=600) + (reference.returncode,),
            "killed": ranks[0].returncode, "survivor": survivor + (ranks[1].returncode,),
            "survivor_s": survivor_s, "resumed": resumed,
        }
    finally:
        for proc in started:  # a rank that holds forever, if the chain broke before its kill
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_killed_process_stops_the_other_with_one_line_naming_it(runs) -> None:
    assert runs["killed"] == -signal.SIGKILL
    out, err, code = runs["survivor"]
    assert code == 2, err[-3000:]
    assert runs["survivor_s"] < BOUND_S, runs["survivor_s"]
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err and "Check failure" not in err, err
    assert errors[0].startswith("error: lost process 0 (pid "), errors[0]
    assert "the coordinator at localhost:" in errors[0] and "ended process 1 of 2" in errors[0]
    assert "--resume" in errors[0]


def test_resuming_both_equals_one_process_with_two_devices_bit_for_bit(runs) -> None:
    tmp = runs["tmp"]
    out, err, code = runs["reference"]
    assert code == 0, err[-3000:]
    for _out, err, code in runs["resumed"]:
        assert code == 0, err[-3000:]
    assert "Involuntary full rematerialization" not in runs["reference"][1]
    reference = comparable(read_metrics(tmp / "reference" / "metrics.jsonl"))
    distributed = comparable(read_metrics(tmp / "distributed" / "metrics.jsonl"))
    assert [r["step"] for r in distributed if r["split"] == "train"] == list(range(1, STEPS + 1))
    assert distributed == reference
    ours = read_checkpoint(checkpoint_path(tmp / "distributed"))
    theirs = read_checkpoint(checkpoint_path(tmp / "reference"))
    assert ours.step == theirs.step == STEPS
    for a, b in zip(ours.leaves, theirs.leaves, strict=True):
        np.testing.assert_array_equal(a, b)
    config = json.loads((tmp / "distributed" / "config.json").read_text())
    assert config["distributed"] and config["data_sha256"]
    assert os.path.exists(tmp / "distributed" / "summary.json")


# ------------------------------------------------------------------- in-process, no peers

GLOO = ("UNKNOWN: Gloo all-reduce failed: [external/gloo/gloo/transport/tcp/pair.cc:547] "
        "Connection closed by peer [127.0.0.1]:45258")
TABLE = [{"pid": 1234, "host": "host-a"}, {"pid": 4321, "host": "host-b"}]


def test_a_failed_collective_is_a_lost_peer_only_in_a_multi_process_run() -> None:
    lost = lost_peer(ValueError(GLOO), 0, 2, TABLE, "after step 7", "Resume.")
    assert isinstance(lost, PeerLostError)
    assert str(lost) == ("lost process 1 (pid 4321 on host-b) after step 7: Gloo all-reduce "
                         "failed: [external/gloo/gloo/transport/tcp/pair.cc:547] Connection "
                         "closed by peer [127.0.0.1]:45258; this process (process 0 of 2) "
                         "stopped. Resume.")
    assert "another of the 3 processes" in str(lost_peer(ValueError(GLOO), 0, 3, None, "", ""))
    assert lost_peer(ValueError(GLOO), 0, 1, None, "", "") is None  # one process: no peers
    assert lost_peer(ValueError("shapes do not match"), 0, 2, TABLE, "", "") is None


def test_a_collective_that_loses_its_peer_stops_training_naming_it(tmp_path,
                                                                  monkeypatch) -> None:
    """Process 0 of two (as the peer table has it), whose collective fails at step 5 as gloo
    fails when process 1 is gone: one line naming process 1 and the intact checkpoint."""
    monkeypatch.setattr(train_module, "peer_table", lambda: TABLE)
    draw = train_module.BatchSampler.batch

    def batch(self, step):
        if step == 4:
            raise ValueError(GLOO)
        return draw(self, step)

    monkeypatch.setattr(train_module.BatchSampler, "batch", batch)
    with pytest.raises(PeerLostError) as caught:
        run_fast(tiny_config(tmp_path, checkpoint_every=3))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("lost process 1 (pid 4321 on host-b) after step 4: Gloo "
                              "all-reduce failed"), message
    assert (f"this process (process 0 of 2) stopped. The checkpoint of step 3 "
            f"({str(checkpoint_path(tmp_path))!r}) is intact; when every process can run "
            "again, restart them all with the same flags plus --resume") in message
    assert read_checkpoint(checkpoint_path(tmp_path)).step == 3


def test_the_supervisor_passes_the_childs_status_and_output_on(tmp_path, monkeypatch,
                                                              capfd) -> None:
    """A child that says what happened itself (status 0, 2, 3, 130) is passed on as it is;
    one that ends otherwise gets one line; its Python and C++ output reach the terminal."""
    script = tmp_path / "child.py"
    script.write_text("import os, sys\nprint('python says', file=sys.stderr)\n"
                      "os.write(2, b'C++ says\\n')\nsys.exit(int(sys.argv[1]))\n")
    for status, line in ((0, None), (2, None), (7, "failed with exit status 7")):
        monkeypatch.setattr(sys, "orig_argv", [sys.executable, str(script), str(status)])
        assert supervise(["--distributed"]) == status
        err = capfd.readouterr().err
        assert "python says" in err and "C++ says" in err, err
        errors = [e for e in err.splitlines() if e.startswith("error:")]
        assert errors == [] if line is None else len(errors) == 1 and line in errors[0], err


# What JAX's runtime wrote when it ended process 1 after process 0 was killed (jax 0.10).
RUNTIME_REPORT = """\
E1204 15:27:34.664526    6749 coordination_service_agent.cc:289] Polled an error from \
coordination service (this can be an error from this or another task).
F1204 15:27:34.664569    6749 client.h:80] Terminating process because the JAX distributed \
service detected fatal errors. This most likely indicates that another task died; see the \
other task logs for more details.
Additional GRPC error information from remote target coordination_service while calling \
/xla.coordination.CoordinationService/PollForError:
:UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:"Socket closed"}
*** Check failure stack trace: ***
    @     0x7fbc79c40634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
"""


def test_the_supervisor_names_the_process_the_runtime_lost(tmp_path, monkeypatch,
                                                          capfd) -> None:
    script = tmp_path / "child.py"
    script.write_text(f"import os\nos.write(2, {RUNTIME_REPORT.encode()!r})\nos.abort()\n")
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, str(script)])
    argv = ["--distributed", "--process-id", "1", "--num-processes", "2",
            "--coordinator-address", "localhost:1234", "--run-dir", "runs/x"]
    assert supervise(argv) == 2
    err = capfd.readouterr().err
    assert "Terminating" not in err and "stack trace" not in err, err  # the report is hidden
    assert err.startswith("error: lost process 0, the coordinator at localhost:1234: JAX's "
                          "distributed runtime reports it gone, and ended process 1 of 2 "), err
    assert err.count("\n") == 1 and "'runs/x'" in err, err
