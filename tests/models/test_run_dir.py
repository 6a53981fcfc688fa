"""The run directory is safe: a lock, no fresh start over a run, tolerant metrics, verified
checkpoints with an older one kept, stale temporary files cleaned, non-finite values stop
training, and a run extended by ``--resume --steps N``; and the faults real runs meet: a full
disk (a real ``EFBIG`` from the kernel, under ``RLIMIT_FSIZE``), a read-only run directory,
another user's lock file, and a corpus edited between a run and its ``--resume``."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import jax
import numpy as np
import pytest

from models.checkpoint import (
    CheckpointError,
    checkpoint_path,
    previous_checkpoint_path,
    read_checkpoint,
    read_meta,
    read_run_checkpoint,
    save_checkpoint,
)
from models.config import TrainConfig
from models.metrics import MetricsError, MetricsWarning, read_metrics
from models.optim import learning_rate_schedule
from models.rundir import LOCK_NAME, RunDirError, RunLock, remove_stale_temporaries
from models.train import DIVERGED_EXIT, ERROR_EXIT, TrainResult, main
from tests.models.train_support import flags, run_fast, start_process, tiny_config

# A training process that stops in its final summary (the plot) until it is killed.
_STOPS_IN_SUMMARY = textwrap.dedent(
    """
    import os, sys, time
    import models.train as train

    def plot_forever(*args, **kwargs):
        open(os.environ["SUMMARY_MARKER"], "w").close()
        time.sleep(600)

    train.plot_metrics = plot_forever
    sys.exit(train.main(sys.argv[1:]))
    """
)


@pytest.fixture(scope="module")
def background(tmp_path_factory) -> dict:
    """Start, at once, a real training process that will be in its final summary when the
    tests that need it run (it compiles while the in-process tests do)."""
    tmp = tmp_path_factory.mktemp("killed")
    config = tiny_config(tmp / "run")
    marker = tmp / "summarizing"
    proc = start_process([sys.executable, "-c", _STOPS_IN_SUMMARY, *flags(config)], tmp,
                         SUMMARY_MARKER=str(marker))
    yield {"proc": proc, "config": config, "marker": marker}
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, background) -> tuple[TrainConfig, TrainResult]:
    """A completed 6-step run with checkpoints at steps 3 (kept as checkpoint.prev.npz) and 6."""
    config = tiny_config(tmp_path_factory.mktemp("finished"), checkpoint_every=3)
    return config, run_fast(config)


def _copy(finished: tuple[TrainConfig, TrainResult], to: Path, **overrides) -> TrainConfig:
    """The finished run, copied to ``to``, and its config there."""
    config, _ = finished
    shutil.copytree(config.run_dir, to, dirs_exist_ok=True)
    return dataclasses.replace(config, run_dir=str(to), **overrides)


def _error_line(capsys) -> str:
    """What ``main`` printed on stderr: exactly one ``error:`` line, no traceback."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _keys(records: list[dict]) -> list[tuple[str, int]]:
    return [(r["split"], r["step"]) for r in records]


def _assert_no_duplicates(records: list[dict]) -> None:
    repeated = [key for key, n in Counter(_keys(records)).items() if n > 1]
    assert not repeated, repeated


# ---------------------------------------------------------------------- damaged checkpoints


def _flip_byte(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    return bytes(flipped)


def _without_config(data: bytes) -> bytes:
    with np.load(io.BytesIO(data)) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(str(arrays["__meta__"]))
    del meta["config"]
    arrays["__meta__"] = np.array(json.dumps(meta))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


DAMAGES = {
    "truncated": (lambda data: data[: len(data) // 2], "not a readable .npz archive"),
    "zero-length": (lambda data: b"", "it is empty (0 bytes)"),
    "flipped-byte": (_flip_byte, "its checksum does not match its content"),
    "no-config": (_without_config, "its metadata has no 'config'"),
}


@pytest.mark.parametrize("kind", DAMAGES)
def test_a_damaged_checkpoint_is_one_error_line_naming_it(finished, tmp_path, capsys,
                                                          kind) -> None:
    damage, what = DAMAGES[kind]
    config = _copy(finished, tmp_path, resume=True)
    path = checkpoint_path(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    previous_checkpoint_path(tmp_path).unlink()
    assert main(flags(config)) == ERROR_EXIT
    err = _error_line(capsys)
    assert err.startswith(f"error: checkpoint {str(path)!r} is damaged: ") and what in err, err
    assert "older intact checkpoint" not in err

    shutil.copy(previous_checkpoint_path(finished[0].run_dir), tmp_path)  # now offer it
    assert main(flags(config)) == ERROR_EXIT
    err = _error_line(capsys)
    assert what in err and (
        f"an older intact checkpoint at step 3 exists: "
        f"{str(previous_checkpoint_path(tmp_path))!r}; rename it to checkpoint.npz"
    ) in err, err


def test_the_offered_older_checkpoint_resumes(finished, tmp_path) -> None:
    config = _copy(finished, tmp_path, resume=True)
    checkpoint_path(tmp_path).write_bytes(b"")
    os.replace(previous_checkpoint_path(tmp_path), checkpoint_path(tmp_path))  # as offered
    result = run_fast(config)
    assert result.status == "completed" and result.step == 6
    records = read_metrics(tmp_path / "metrics.jsonl")
    _assert_no_duplicates(records)
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 7))
    for a, b in zip(jax.tree_util.tree_leaves(finished[1].state),
                    jax.tree_util.tree_leaves(result.state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_crash_between_the_renames_leaves_the_older_checkpoint_offered(tmp_path) -> None:
    tree = {"w": np.ones(3, np.float32)}
    for step in (1, 2):
        save_checkpoint(checkpoint_path(tmp_path), tree, step=step, config={},
                        previous=previous_checkpoint_path(tmp_path))
    assert read_meta(previous_checkpoint_path(tmp_path))["step"] == 1
    os.replace(checkpoint_path(tmp_path), previous_checkpoint_path(tmp_path))  # first rename
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*older intact checkpoint at "
                                              r"step 2 exists"):
        read_run_checkpoint(tmp_path)


def test_a_checkpoint_with_nan_parameters_is_refused_naming_the_leaf(finished, tmp_path,
                                                                    capsys) -> None:
    config = _copy(finished, tmp_path, resume=True)
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(finished[1].state)
    index = next(i for i, (key, _) in enumerate(with_paths) if "params" in jax.tree_util.keystr(key))
    leaves = [np.array(leaf) for _, leaf in with_paths]
    leaves[index].flat[0] = np.nan
    save_checkpoint(checkpoint_path(tmp_path), jax.tree_util.tree_unflatten(treedef, leaves),
                    step=6, config=config.to_dict())
    assert main(flags(config)) == ERROR_EXIT
    err = _error_line(capsys)
    name = jax.tree_util.keystr(with_paths[index][0])
    assert "non-finite values" in err and name in err, err


# --------------------------------------------------------------------------------- metrics


def _records(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(lines))
    return path


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path) -> None:
    good = ['{"split": "train", "step": 1}\n', '{"split": "train", "step": 2}\n']
    path = _records(tmp_path, [*good, '{"split": "train", "st'])
    with pytest.warns(MetricsWarning, match="torn last line 3"):
        assert _keys(read_metrics(path)) == [("train", 1), ("train", 2)]
    path = _records(tmp_path, [good[0], '{"split": "tr\n', good[1]])
    with pytest.raises(MetricsError, match=r"corrupt at line 2 of 3"):
        read_metrics(path)


def test_resume_after_a_torn_metrics_line(finished, tmp_path, capsys) -> None:
    config = _copy(finished, tmp_path, resume=True)
    metrics = tmp_path / "metrics.jsonl"
    before = metrics.read_text()
    with metrics.open("a") as handle:
        handle.write('{"split": "valid", "step": 6, "bp')  # a crash mid-append
    with pytest.warns(MetricsWarning):
        result = run_fast(config)
    assert result.status == "completed"
    assert metrics.read_text() == before  # the torn line gone, nothing repeated

    metrics.write_text('{"split": "tr\n' + before)
    assert main(flags(config)) == ERROR_EXIT
    assert "is corrupt at line 1" in _error_line(capsys)


# ------------------------------------------------------------------------------- the lock


def _summarizing(background) -> subprocess.Popen:
    """The background training process, once it is in its final summary."""
    proc, deadline = background["proc"], time.monotonic() + 240
    while not background["marker"].exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the background run did not reach its summary"
        time.sleep(0.1)
    return proc


def test_a_second_process_on_a_run_dir_is_refused_naming_the_first(background,
                                                                   capsys) -> None:
    proc = _summarizing(background)
    config = background["config"]
    for extra in ([], ["--resume"]):
        assert main(flags(config) + extra) == ERROR_EXIT
        err = _error_line(capsys)
        assert f"run directory {config.run_dir!r} is in use by process {proc.pid}" in err, err
    assert proc.poll() is None  # the first one is untouched


def test_kill_9_during_the_final_summary_then_resume(background) -> None:
    proc = _summarizing(background)
    config = background["config"]
    run_dir = Path(config.run_dir)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (run_dir / LOCK_NAME).read_text().strip() == str(proc.pid)  # left behind
    stale = [run_dir / "checkpoint.npz.k9x1.tmp", run_dir / "metrics.jsonl.tmp"]
    for path in stale:
        path.write_bytes(b"half written")  # as a crash mid-write leaves them

    messages: list[str] = []
    result = run_fast(dataclasses.replace(config, resume=True), log=messages.append)
    assert result.status == "completed" and result.step == config.steps
    records = read_metrics(run_dir / "metrics.jsonl")
    _assert_no_duplicates(records)
    assert _keys(records) == [("train", 1), ("train", 2), ("valid", 2), ("train", 3),
                              ("train", 4), ("valid", 4), ("train", 5), ("train", 6),
                              ("valid", 6)]
    assert any(f"process {proc.pid} left its lock" in m for m in messages), messages
    assert any("deleted 2 temporary file(s)" in m for m in messages), messages
    assert not any(path.exists() for path in stale)
    assert not (run_dir / LOCK_NAME).exists() and (run_dir / "summary.json").is_file()


def test_the_lock_is_exclusive_and_taken_over_from_a_dead_process(tmp_path) -> None:
    with RunLock(tmp_path) as lock:
        assert lock.took_over is None
        with pytest.raises(RunDirError, match=f"in use by process {os.getpid()}"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(f"{dead.pid}\n")
    with RunLock(tmp_path) as lock:
        assert lock.took_over == dead.pid
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_stale_temporary_files_of_the_run_are_removed(tmp_path) -> None:
    names = ["checkpoint.npz.ab12.tmp", "checkpoint.npz.tmp", "metrics.jsonl.tmp", "notes.tmp"]
    for name in names:
        (tmp_path / name).write_text("x")
    removed = remove_stale_temporaries(tmp_path, ["checkpoint.npz", "metrics.jsonl"])
    assert sorted(removed) == sorted(names[:3])
    assert [p.name for p in tmp_path.iterdir()] == ["notes.tmp"]


# --------------------------------------------------------------- fresh starts, bad flags


def test_a_fresh_start_over_a_run_is_refused_unless_overwrite(finished, tmp_path,
                                                              capsys) -> None:
    config = _copy(finished, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(flags(config)) == ERROR_EXIT
    err = _error_line(capsys)
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err, err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    assert main(flags(config) + ["--resume", "--overwrite"]) == ERROR_EXIT
    assert "--overwrite contradicts --resume" in _error_line(capsys)

    result = run_fast(dataclasses.replace(config, overwrite=True, checkpoint_every=0))
    assert result.status == "completed"
    assert not previous_checkpoint_path(tmp_path).exists()  # the old run's files are gone
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 7))


def test_bad_run_dirs_and_non_finite_flags_are_one_error_line(tmp_path, capsys) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    config = tiny_config(a_file)
    assert main(flags(config)) == ERROR_EXIT
    assert f"--run-dir {str(a_file)!r} is a file" in _error_line(capsys)
    assert main(flags(config) + ["--run-dir", str(a_file / "below")]) == ERROR_EXIT
    assert "cannot create --run-dir" in _error_line(capsys)
    for value in ("inf", "nan", "-inf"):
        assert main(flags(tiny_config(tmp_path / "run")) + [f"--lr={value}"]) == ERROR_EXIT
        assert f"--lr must be a finite number, got {value}" in _error_line(capsys)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ non-finite


def test_a_non_finite_loss_stops_training_keeping_the_last_good_checkpoint(tmp_path) -> None:
    config = tiny_config(tmp_path, lr=1e30, checkpoint_every=1, eval_every=3)
    result = run_fast(config)
    assert result.status == "diverged" and result.valid_bpb is None
    # step 1 has rate 0 (warmup); step 2 makes huge, finite parameters; step 3 overflows
    assert result.step == 2 and result.message.startswith(
        "training stopped at step 3: the loss is not finite (nan); the last good "
        "checkpoint, at step 2, is kept"), result.message
    assert read_checkpoint(checkpoint_path(tmp_path)).step == 2  # and finite: it was verified
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert _keys(records) == [("train", 1), ("train", 2)]
    assert not (tmp_path / "summary.json").exists()


def test_a_non_finite_validation_stops_training_too(finished, tmp_path) -> None:
    config = _copy(finished, tmp_path, resume=True)
    huge = jax.tree_util.tree_map(lambda x: x * np.float32(1e30), finished[1].state.params)
    save_checkpoint(checkpoint_path(tmp_path), finished[1].state._replace(params=huge),
                    step=6, config=config.to_dict())
    before = checkpoint_path(tmp_path).read_bytes()
    result = run_fast(config)
    assert result.status == "diverged" and result.message.startswith(
        "training stopped at step 6: the validation loss is not finite"), result.message
    assert checkpoint_path(tmp_path).read_bytes() == before


def test_main_exits_non_zero_when_training_stopped(monkeypatch, capsys) -> None:
    stopped = TrainResult("diverged", 2, None, None, 4.0, message="training stopped at step 3")
    monkeypatch.setattr("models.train.train", lambda config: stopped)
    assert main([]) == DIVERGED_EXIT
    assert _error_line(capsys) == "error: training stopped at step 3\n"


# ------------------------------------------------------------------------- extending a run


def test_resume_with_a_larger_steps_extends_the_run(finished, tmp_path) -> None:
    config = _copy(finished, tmp_path, resume=True, steps=9)
    messages: list[str] = []
    result = run_fast(config, log=messages.append)
    assert result.status == "completed" and result.step == 9
    assert any("extending the run from 6 to 9 steps: the learning-rate schedule is re-laid "
               "for 9 steps" in m for m in messages), messages
    records = read_metrics(tmp_path / "metrics.jsonl")
    _assert_no_duplicates(records)
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 10))
    schedule = learning_rate_schedule(config)
    for record in train[6:]:  # the record of step s used the rate of step s - 1
        assert record["lr"] == pytest.approx(float(schedule(record["step"] - 1)), rel=1e-6)
    assert train[6]["lr"] != pytest.approx(
        float(learning_rate_schedule(finished[0])(6)), rel=1e-3)
    assert read_meta(checkpoint_path(tmp_path))["config"]["steps"] == 9

    with pytest.raises(CheckpointError, match=r"differs in steps .*may grow on resume"):
        run_fast(dataclasses.replace(config, steps=7))


# ------------------------------------------------------------------- faults: a full disk


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """While active, the kernel refuses to grow any file of this process past ``nbytes``:
    ``write`` fails with ``EFBIG`` (Python ignores the ``SIGXFSZ`` that comes with it), as
    it fails with ``ENOSPC`` on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _assert_one_line_naming(err: Exception, *parts: str) -> str:
    message = str(err)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)
    return message


def _no_temporaries(run_dir: Path) -> None:
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_at_a_checkpoint_stops_training_and_keeps_the_last_one(
        finished, tmp_path, monkeypatch) -> None:
    import models.train as train_module

    config = dataclasses.replace(finished[0], run_dir=str(tmp_path))
    save = train_module.save_checkpoint

    def save_on_a_full_disk(path, tree, *, step, **kwargs):
        if step != 6:
            return save(path, tree, step=step, **kwargs)
        with file_size_limit(Path(path).stat().st_size // 2):  # half of the step-3 one
            return save(path, tree, step=step, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", save_on_a_full_disk)
    with pytest.raises(RunDirError) as caught:
        run_fast(config)
    path = checkpoint_path(tmp_path)
    _assert_one_line_naming(
        caught.value, f"training stopped after step 6: cannot write {str(path)!r}: File too "
        "large (EFBIG). Nothing half-written was left behind, and the checkpoint of step 3 "
        f"({str(path)!r}) is intact", "then continue with the same flags plus --resume")
    assert read_checkpoint(path).step == 3  # verified: sealed, complete, finite
    _no_temporaries(tmp_path)
    assert not (tmp_path / "summary.json").exists()

    monkeypatch.setattr(train_module, "save_checkpoint", save)
    result = run_fast(dataclasses.replace(config, resume=True))  # as offered
    assert result.status == "completed" and result.step == 6
    for a, b in zip(jax.tree_util.tree_leaves(finished[1].state),
                    jax.tree_util.tree_leaves(result.state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_full_disk_at_a_metrics_line_cuts_it_back(finished, tmp_path, monkeypatch) -> None:
    from models.metrics import MetricsLog

    config = dataclasses.replace(finished[0], run_dir=str(tmp_path))
    write = MetricsLog.write

    def write_on_a_full_disk(self, split, step, values):
        if (split, step) != ("train", 5):
            return write(self, split, step, values)
        with file_size_limit(self.path.stat().st_size + 10):  # 10 bytes of the line fit
            return write(self, split, step, values)

    monkeypatch.setattr(MetricsLog, "write", write_on_a_full_disk)
    with pytest.raises(RunDirError) as caught:
        run_fast(config)
    metrics = tmp_path / "metrics.jsonl"
    _assert_one_line_naming(
        caught.value, f"training stopped after step 5: cannot write {str(metrics)!r}: File "
        "too large (EFBIG)", f"the checkpoint of step 3 ({str(checkpoint_path(tmp_path))!r}) "
        "is intact")
    assert metrics.read_text().endswith("\n")  # the torn 10 bytes are gone
    assert _keys(read_metrics(metrics)) == [("train", 1), ("train", 2), ("valid", 2),
                                            ("train", 3), ("train", 4), ("valid", 4)]
    assert read_checkpoint(checkpoint_path(tmp_path)).step == 3
    _no_temporaries(tmp_path)


# --------------------------------------------- faults: read-only, another user's lock


@pytest.fixture
def nothing_compiles(monkeypatch):
    """Fail the test if the run builds (compiles) its programs."""
    import models.train as train_module

    def compile_programs(*args, **kwargs):
        raise AssertionError("the run compiled its steps before refusing")

    monkeypatch.setattr(train_module, "_programs", compile_programs)


NOBODY = 65534


@contextlib.contextmanager
def as_another_user():
    """As root, act as user ``nobody`` (root ignores permissions); otherwise as oneself."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def shared_tmp():
    """A folder that every user may enter (pytest's own are its owner's only)."""
    folder = Path(tempfile.mkdtemp(prefix="run-dir-faults-"))
    folder.chmod(0o755)
    yield folder
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)


def test_a_read_only_run_dir_is_one_error_line_before_compiling(
        finished, shared_tmp, capsys, nothing_compiles) -> None:
    run_dir = shared_tmp / "run"
    config = _copy(finished, run_dir, resume=True)
    for path in [run_dir, *run_dir.iterdir()]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    with as_another_user():
        assert main(flags(config)) == ERROR_EXIT
    err = _error_line(capsys)
    assert err.startswith(f"error: run directory {str(run_dir)!r} is not writable: "
                          "Permission denied (EACCES)"), err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_another_users_lock_is_one_error_line_before_compiling(
        finished, tmp_path, capsys, monkeypatch, nothing_compiles) -> None:
    import models.rundir as rundir

    config = _copy(finished, tmp_path, resume=True)
    lock = tmp_path / LOCK_NAME
    lock.write_text("4242\n")
    other = 54321
    if os.geteuid() == 0:
        os.chown(lock, other, other)
    else:  # the file stays ours; this process takes itself for another user
        other = os.geteuid()
        monkeypatch.setattr(rundir, "_user_id", lambda: other + 1)
    assert main(flags(config)) == ERROR_EXIT
    err = _error_line(capsys)
    assert err.startswith(f"error: run directory {str(tmp_path)!r} is locked by another user, "), err
    assert f"uid {other}" in err and f"the lock file {str(lock)!r} is theirs (it records " \
        "process 4242)" in err, err
    assert lock.read_text() == "4242\n"  # left to its owner


# ---------------------------------------------------- faults: the corpus changes on resume


def test_an_edited_corpus_is_refused_on_resume_unless_allowed(tmp_path, capsys) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 300)
    config = tiny_config(tmp_path / "run", data=str(corpus), checkpoint_every=3)
    assert run_fast(config).status == "completed"
    used = corpus.read_bytes()[: config.max_bytes]
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["data_sha256"]
    assert recorded == hashlib.sha256(used).hexdigest()
    assert read_meta(checkpoint_path(tmp_path / "run"))["data_sha256"] == recorded

    corpus.write_text(corpus.read_text().replace("lazy", "sleepy", 1))
    resume = dataclasses.replace(config, resume=True)
    assert main(flags(resume)) == ERROR_EXIT
    err = _error_line(capsys)
    assert err.startswith(f"error: the corpus {str(corpus)!r} has changed since the checkpoint "
                          f"of step 6 was written (SHA-256 {recorded[:12]}"), err
    assert "--allow-data-change" in err

    messages: list[str] = []
    result = run_fast(dataclasses.replace(resume, allow_data_change=True), log=messages.append)
    assert result.status == "completed"
    assert any("continuing on the new text (--allow-data-change)" in m for m in messages)
    changed = hashlib.sha256(corpus.read_bytes()[: config.max_bytes]).hexdigest()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data_sha256"] == changed
