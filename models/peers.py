"""A multi-process run that loses a process: it stops at once, in one line that names the
lost process, and can be resumed; it never hangs.

A ``--distributed`` run is one process per host (or device group) joined by JAX's
coordination service, which lives in process 0, and by cross-process collectives (gloo on
CPUs). When a process dies:

- **A collective with it fails** in every process that waits for it: on a closed connection
  (a killed process's sockets are closed by its kernel), at once. Training turns that error
  into :class:`PeerLostError`: one ``error:`` line naming the lost process (its index, pid
  and host, from :func:`peer_table`) and the last checkpoint, exit status 2.
- **JAX's runtime ends the others itself** when the coordination service reports the loss:
  at once when process 0 (the service) is gone, otherwise after the heartbeat timeout
  (``--peer-timeout``) of a process that stopped answering. It does so from C++, with a
  fatal log and no chance for Python to say anything. So ``python -m models.train
  --distributed`` trains in a child process under a small supervisor (:func:`supervise`):
  the child writes Python's output to the terminal itself and XLA's C++ log through the
  supervisor, which hides the runtime's fatal report and, when the child is ended by it,
  prints the one ``error:`` line naming the lost process instead.

The supervisor stays idle otherwise: it passes the child's exit status on, ignores Ctrl-C
(the terminal sends it to the child too, which checkpoints and exits), and forwards
``SIGTERM``. If the supervisor is killed, its child is killed with it (``PR_SET_PDEATHSIG``
on Linux), so killing the command kills the training. This module needs nothing but the
standard library until training starts.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "PeerLostError",
    "CHILD_ENV",
    "ERROR_EXIT",
    "wants_supervisor",
    "supervise",
    "join_supervisor",
    "peer_table",
    "lost_peer",
    "describe_process",
]

ERROR_EXIT: int = 2
"""The exit status of a run that lost a process (as of every expected failure)."""

CHILD_ENV: str = "MODELS_TRAIN_SUPERVISED"
"""Set in the training process a supervisor starts: the path of its file of peers."""
_TERMINAL_ENV = "MODELS_TRAIN_TERMINAL_FD"
_SUPERVISOR_ENV = "MODELS_TRAIN_SUPERVISOR_PID"
_PASSED_ON = (0, ERROR_EXIT, 3, 130)  # statuses with which the child has said what happened

# What XLA's collectives raise in the survivors when a process is gone.
_LOST_CONNECTION = re.compile(
    r"Gloo|Connection closed by peer|Connection reset by peer|Broken pipe|"
    r"coordination service|heartbeat", re.IGNORECASE)
# The C++ log of the coordination runtime's failure report (hidden by the supervisor).
_RUNTIME_REPORT = re.compile(
    r"coordination_service|preemption_sync_manager|client\.h:\d+|Check failure stack trace|"
    r"^\s+@\s+0x|GRPC error|RPC: /|PollForError|heartbeat|Terminating process because|"
    r"Barrier failed|CoordinationServiceError|distributed service|Shutdown barrier")
_GLOG_PREFIX = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")
_FATAL = "Terminating process because the JAX distributed service detected fatal errors"


class PeerLostError(RuntimeError):
    """A process of a multi-process run is gone (or cannot be reached); this one stopped."""


# ---------------------------------------------------------------- in the training process


def describe_process(index: int, table: Sequence[dict[str, Any]] | None) -> str:
    """``"process 1 (pid 4321 on host-a)"``, with what ``table`` knows of it."""
    if table and 0 <= index < len(table):
        entry = table[index]
        return f"process {index} (pid {entry['pid']} on {entry['host']})"
    return f"process {index}"


def peer_table() -> list[dict[str, Any]]:
    """Every process's pid and host name, in process order: gathered from all of them in a
    multi-process run (a collective: call it in every process, after
    ``jax.distributed.initialize``). A supervised process also writes it where its supervisor
    reads it (:data:`CHILD_ENV`)."""
    import socket

    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    name = socket.gethostname()
    if jax.process_count() == 1:
        table = [{"pid": os.getpid(), "host": name}]
    else:
        host = np.zeros(64, np.uint8)
        encoded = name.encode("utf-8")[:64]
        host[: len(encoded)] = np.frombuffer(encoded, np.uint8)
        pids, hosts = multihost_utils.process_allgather((np.int32(os.getpid()), host))
        table = [{"pid": int(pid), "host": bytes(h).rstrip(b"\0").decode("utf-8", "replace")}
                 for pid, h in zip(np.ravel(pids), np.asarray(hosts), strict=True)]
    path = os.environ.get(CHILD_ENV)
    if path:
        with contextlib.suppress(OSError):
            Path(path).write_text(json.dumps(table))
    return table


def lost_peer(
    err: BaseException, index: int, count: int, table: Sequence[dict[str, Any]] | None,
    when: str, then: str,
) -> PeerLostError | None:
    """The :class:`PeerLostError` that ``err`` means in process ``index`` of ``count``, or
    None when it is no sign of a lost process (then it should propagate as it is).

    ``when`` says where the run was (``"at step 7"``), ``then`` what the user can do."""
    if count < 2 or isinstance(err, PeerLostError):
        return None
    text = " ".join(str(err).split())
    if not _LOST_CONNECTION.search(text):
        return None
    if count == 2:
        who = describe_process(1 - index, table)
    else:
        who = f"another of the {count} processes"
    reason = text.split(": ", 1)[-1] if text.startswith(("UNKNOWN", "UNAVAILABLE",
                                                          "INTERNAL")) else text
    return PeerLostError(
        f"lost {who} {when}: {reason[:200]}; this process ({describe_process(index, None)} "
        f"of {count}) stopped. {then}"
    )


def join_supervisor() -> None:
    """In a supervised training process, first thing: die with the supervisor (Linux's
    ``PR_SET_PDEATHSIG``; at once if it is gone already), and write Python's output
    (messages, warnings, the progress bar) to the terminal it passed on, leaving file
    descriptor 2 (XLA's C++ log) to it. Does nothing elsewhere."""
    supervisor = os.environ.pop(_SUPERVISOR_ENV, None)
    if supervisor is None:
        return
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(supervisor):
        os._exit(128 + signal.SIGKILL)
    fd = os.environ.pop(_TERMINAL_ENV, None)
    if fd is not None:
        sys.stderr = open(int(fd), "w", buffering=1, encoding="utf-8",
                          errors="backslashreplace")


# ---------------------------------------------------------------------- the supervisor


def _number(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:  # the training process's own parser names it
        return default


def _flags(argv: Sequence[str]) -> argparse.Namespace:
    """What the supervisor reads of the training flags (the child parses and checks them
    all): ``--distributed``, ``--run-dir``, ``--process-id``, ``--num-processes`` and
    ``--coordinator-address``."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--distributed", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--run-dir", default="runs/deq_lm")
    parser.add_argument("--process-id", default="-1")
    parser.add_argument("--num-processes", default="0")
    parser.add_argument("--coordinator-address", default="")
    known, _ = parser.parse_known_args(list(argv))
    known.process_id = _number(known.process_id, -1)
    known.num_processes = _number(known.num_processes, 0)
    return known


def wants_supervisor(argv: Sequence[str]) -> bool:
    """Whether ``python -m models.train argv`` should train under :func:`supervise`: a
    ``--distributed`` run, in a process that is not already the supervised one."""
    return bool(_flags(argv).distributed) and not os.environ.get(CHILD_ENV)


def _lost_in_report(lines: Sequence[str], own: int) -> int | None:
    """The process the runtime's failure report names as lost, or None if none is named
    (0, the coordination service's process, when this process lost contact with it)."""
    text = "\n".join(lines)
    named = re.findall(r"[Tt]ask[: ]+(\d+)\s+heartbeat timeout", text)
    block = re.search(r"stopped sending heartbeats\):\s*\n(.*?)(?:\n[A-Z]|\Z)", text, re.S)
    if block:
        named += re.findall(r"(?:task:)?(\d+)", block.group(1))
    others = [int(n) for n in named if int(n) != own]
    if others:
        return others[0]
    if own != 0 and re.search(r"PollForError|Socket closed|Failed to connect|"
                              r"coordination service", text):
        return 0
    return None


def _verdict(status: int, lines: Sequence[str], flags: argparse.Namespace,
             table: list[dict[str, Any]] | None, pid: int) -> tuple[str, int]:
    """The one line to print, and the exit status, for a child that ended with ``status``
    without saying why itself."""
    own = flags.process_id if flags.process_id >= 0 else -1
    count = flags.num_processes or (len(table) if table else 0)
    if any(_FATAL in line for line in lines):
        lost = _lost_in_report(lines, own)
        who = (describe_process(lost, table) if lost is not None
               else "another process of the run")
        if lost == 0:
            who += (f", the coordinator at {flags.coordinator_address}"
                    if flags.coordinator_address else ", the coordinator")
        me = f"process {own}" if own >= 0 else "this process"
        of = f" of {count}" if count else ""
        return (f"lost {who}: JAX's distributed runtime reports it gone, and ended {me}{of} "
                f"(pid {pid}). When every process can run again, restart them all with the "
                f"same flags plus --resume to continue from the last checkpoint in "
                f"{flags.run_dir!r}", ERROR_EXIT)
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = str(-status)
        return (f"the training process (pid {pid}) was ended by signal {name}; its last "
                f"checkpoint is in {flags.run_dir!r} (continue with --resume)", 128 - status)
    return (f"the training process (pid {pid}) failed with exit status {status}",
            status)


def supervise(argv: Sequence[str]) -> int:
    """Run this command again as a child that trains (see the module docstring) and return
    its exit status; when it was ended without saying why (by JAX's runtime, on a lost
    process, or by a signal), print the one ``error:`` line that says so."""
    flags = _flags(argv)
    terminal = os.dup(sys.stderr.fileno())
    peers_fd, peers_path = tempfile.mkstemp(prefix="models-train-peers.", suffix=".json")
    os.close(peers_fd)
    env = {**os.environ, CHILD_ENV: peers_path, _TERMINAL_ENV: str(terminal),
           _SUPERVISOR_ENV: str(os.getpid())}
    command = [sys.executable, *sys.orig_argv[1:]]
    sys.stderr.flush()
    try:
        child = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, pass_fds=(terminal,))
    finally:
        os.close(terminal)
    previous = {sig: signal.signal(sig, handler) for sig, handler in (
        (signal.SIGINT, lambda *_: None),  # the child gets Ctrl-C from the terminal too
        (signal.SIGTERM, lambda signum, _: child.send_signal(signum)),
    )}
    report: list[str] = []  # the runtime's failure report, hidden
    hiding = False
    try:
        assert child.stderr is not None
        for raw in child.stderr:
            line = raw.decode("utf-8", "replace")
            if _GLOG_PREFIX.match(line):
                hiding = bool(_RUNTIME_REPORT.search(line))
            elif _RUNTIME_REPORT.search(line):
                hiding = True
            if hiding:
                report.append(line.rstrip("\n"))
            else:
                sys.stderr.write(line)
                sys.stderr.flush()
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        table = None
        with contextlib.suppress(OSError, ValueError):
            table = json.loads(Path(peers_path).read_text() or "null")
        with contextlib.suppress(OSError):
            os.unlink(peers_path)
    if status in _PASSED_ON:
        return status
    message, code = _verdict(status, report, flags, table, child.pid)
    print(f"error: {message}", file=sys.stderr)
    return code
