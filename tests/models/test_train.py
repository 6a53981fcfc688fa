"""Tests for the training command: CLI, checkpoints, exact resume, data errors, data parallelism."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from models.checkpoint import (
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from models.config import TrainConfig, build_parser, config_differences, parse_config
from models.metrics import read_metrics
from models.step import STOPPED_METRICS
from models.train import TrainResult, main
from tests.models.train_support import (
    FAST_XLA_FLAGS,
    comparable,
    run_fast,
    start_process,
    tiny_config,
)

# --------------------------------------------------------- subprocesses, in background

_TWO_DEVICES = textwrap.dedent(
    """
    import jax, numpy as np
    from models.config import TrainConfig
    from models.lm import make_model
    from models.optim import learning_rate_schedule, make_optimizer
    from models.sharding import make_mesh, replicate, shard_batch, to_host
    from models.step import init_state, make_train_step

    assert jax.device_count() == 2, jax.devices()
    config = TrainConfig(d_model=16, num_heads=2, seq_len=8, batch_size=4, steps=2,
                         warmup_steps=1, max_iter=20, tol=1e-5)
    model, optimizer = make_model(config), make_optimizer(config)
    state = to_host(init_state(model, optimizer, config))
    batch = np.random.default_rng(0).integers(0, 256, (4, 9)).astype(np.int32)
    results = []
    for n in (1, 2):
        mesh = make_mesh(jax.devices()[:n])
        step = make_train_step(model, optimizer, learning_rate_schedule(config), config, mesh)
        new_state, metrics = step(replicate(state, mesh), shard_batch(batch, mesh))
        assert len(new_state.params["lm/deq/block/qkv_0"]["w"].sharding.device_set) == n
        results.append(to_host((new_state, metrics)))
    changed = 0
    for a, b, before in zip(jax.tree_util.tree_leaves(results[0][0]),
                            jax.tree_util.tree_leaves(results[1][0]),
                            jax.tree_util.tree_leaves(state)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
        changed += int(not np.array_equal(a, before))
    assert changed > 10, changed
    for key in results[0][1]:
        np.testing.assert_allclose(results[0][1][key], results[1][1][key], rtol=2e-5, atol=2e-6)
    print("OK", float(results[0][1]["loss"]))
    """
)




@pytest.fixture(scope="module")
def background(tmp_path_factory) -> dict:
    """Start the slow command-line checks at once so they run while the in-process tests do:
    the CLI on bad data (missing, empty, undecodable, too short) and the two-device step."""
    tmp = tmp_path_factory.mktemp("cli")
    empty = tmp / "empty.txt"
    empty.write_text("  \n")
    latin1 = tmp / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait".encode("latin-1"))
    short = tmp / "short.txt"
    short.write_text("just a few bytes of text\n")
    expected = {
        str(tmp / "missing.txt"): "does not exist",
        str(empty): "empty",
        str(latin1): "not valid UTF-8",
        str(short): "too short",
    }
    data_errors = {  # one run directory each: a run directory takes one process at a time
        path: (start_process([sys.executable, "-m", "models.train", "--data", path,
                              "--run-dir", str(tmp / f"run{i}"), "--no-progress"], tmp), message)
        for i, (path, message) in enumerate(expected.items())
    }
    two_devices = start_process(
        [sys.executable, "-c", _TWO_DEVICES], tmp,
        XLA_FLAGS=FAST_XLA_FLAGS + " --xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
    )
    yield {"data_errors": data_errors, "two_devices": two_devices}
    for proc in [two_devices, *(p for p, _ in data_errors.values())]:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------ flags


def test_help_documents_every_flag_with_its_default() -> None:
    text = build_parser().format_help()
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        assert flag in text, flag
    assert text.count("(default:") >= len(dataclasses.fields(TrainConfig))
    for flag in ("--data", "--steps", "--batch-size", "--seq-len", "--d-model", "--num-heads",
                 "--solver", "--backward", "--max-iter", "--tol", "--seed", "--run-dir",
                 "--resume", "--eval-every", "--checkpoint-every", "--jac-reg"):
        assert flag in text


def test_flags_parse_into_the_config() -> None:
    config = parse_config(["--d-model", "32", "--no-per-sample", "--backward", "phantom",
                           "--resume", "--solver", "anderson"])
    assert config.d_model == 32 and not config.per_sample and config.resume
    assert config.backward == "phantom" and config.solver == "anderson"
    assert parse_config([]) == TrainConfig()
    with pytest.raises(SystemExit):
        parse_config(["--backward", "nope"])


def test_config_differences_ignore_run_only_keys() -> None:
    a = TrainConfig().to_dict()
    b = TrainConfig(run_dir="elsewhere", resume=True, progress=False, lr=1.0).to_dict()
    assert config_differences(a, b) == {"lr": (a["lr"], 1.0)}


# ------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_is_exact_and_atomic(tmp_path: Path) -> None:
    tree = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": (np.int32(7), np.array([True, False])),
    }
    path = tmp_path / "ck.npz"
    save_checkpoint(path, tree, step=5, config={"x": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"]  # no temporary left over
    loaded, meta = load_checkpoint(path, tree)
    assert meta["step"] == 5 and meta["config"] == {"x": 1}
    leaves = zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(loaded), strict=True)
    for want, got in leaves:
        np.testing.assert_array_equal(want, got)
        assert np.asarray(want).dtype == got.dtype
    save_checkpoint(path, {"a": tree["a"] + 1, "b": tree["b"]}, step=6, config={"x": 1})
    assert read_meta(path)["step"] == 6
    with pytest.raises(CheckpointError, match="structure"):
        load_checkpoint(path, {"a": tree["a"]})
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(path, {"a": np.zeros((3, 2), np.float32), "b": tree["b"]})
    with pytest.raises(CheckpointError, match="no checkpoint"):
        read_meta(tmp_path / "missing.npz")


# ------------------------------------------------------------------------------ resume


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, background) -> tuple[TrainConfig, TrainResult]:
    run_dir = tmp_path_factory.mktemp("straight")
    config = tiny_config(run_dir)
    return config, run_fast(config)


def test_straight_run_writes_its_outputs(straight_run) -> None:
    config, result = straight_run
    run_dir = Path(config.run_dir)
    assert result.status == "completed" and result.step == config.steps
    for name in ("metrics.jsonl", "metrics.png", "checkpoint.npz", "config.json", "summary.json"):
        assert (run_dir / name).is_file(), name
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 7))
    assert [r["step"] for r in records if r["split"] == "valid"] == [2, 4, 6]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["valid_bpb"] == pytest.approx(result.valid_bpb)
    assert 0 < result.valid_bpb < 8.5 and 0 < result.unigram_bpb < 8
    # Every sequence's forward solve ends one way (solvers.Reason): the shares add up to 1.
    for record in [*records, {k[len("valid_"):]: v for k, v in summary.items()}]:
        shares = [record["converged"], *(record[key] for key in STOPPED_METRICS)]
        assert all(0 <= share <= 1 for share in shares), record
        assert sum(shares) == pytest.approx(1.0, abs=1e-6), record


def test_ctrl_c_then_resume_equals_an_uninterrupted_run(straight_run, tmp_path: Path) -> None:
    config, straight = straight_run
    config = dataclasses.replace(config, run_dir=str(tmp_path))

    def interrupt(step: int, metrics: dict) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    first = run_fast(config, on_step=interrupt)
    assert first.status == "interrupted" and first.step == 3
    assert read_meta(checkpoint_path(tmp_path))["step"] == 3
    resumed = run_fast(dataclasses.replace(config, resume=True))
    assert resumed.status == "completed" and resumed.step == config.steps

    for a, b in zip(jax.tree_util.tree_leaves(straight.state),
                    jax.tree_util.tree_leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed.valid_bpb == straight.valid_bpb
    assert comparable(read_metrics(tmp_path / "metrics.jsonl")) == comparable(
        read_metrics(Path(straight_run[0].run_dir) / "metrics.jsonl")
    )


def test_resume_with_a_different_config_is_refused(straight_run, tmp_path: Path) -> None:
    config, _ = straight_run
    with pytest.raises(CheckpointError, match=r"differs in lr, seq_len .*lr: checkpoint"):
        run_fast(dataclasses.replace(config, resume=True, lr=0.5, seq_len=4))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run_fast(dataclasses.replace(config, resume=True, run_dir=str(tmp_path)))


def test_main_maps_errors_to_exit_status_2(straight_run, capsys) -> None:
    config, _ = straight_run
    status = main(["--run-dir", config.run_dir, "--resume", "--lr", "0.5", "--no-progress"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resume") and "Traceback" not in err
    assert main(["--num-heads", "5", "--d-model", "16"]) == 2
    assert "--num-heads" in capsys.readouterr().err


# the subprocess checks last: they ran in the background meanwhile


def test_data_errors_through_the_cli(background) -> None:
    """Missing, empty, undecodable and too-short data: one clear line naming the path,
    status 2, no traceback."""
    for path, (proc, message) in background["data_errors"].items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (path, out, err)
        assert "Traceback" not in err, err
        assert err.startswith("error: ") and message in err, err
        assert os.path.basename(path) in err, err


def test_one_step_on_two_devices_equals_one_step_on_one(background) -> None:
    proc = background["two_devices"]
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "OK" in out
    # the per-sequence solve statistics reach the host callbacks by an all-gather, not by
    # XLA's "involuntary full rematerialization" onto one device
    assert "Involuntary full rematerialization" not in err, err[-3000:]
    assert jax.device_count() == 1  # the test process itself keeps one device
