"""The run directory: one process at a time, no stale temporary files, atomic writes.

A training run owns its ``--run-dir`` while it runs:

- **Writable.** A directory this process cannot create files in (no permission, a read-only
  file system) is refused at once (:func:`check_writable`), not when the first checkpoint is
  due.
- **A lock.** ``run.lock`` holds the owner's pid under an exclusive ``fcntl.flock``. A second
  process is refused with :class:`RunDirError` naming that pid. The kernel releases a flock
  when its process dies, however it dies, so a lock file left by a killed process (``kill
  -9``) is taken over, with a note. On file systems without ``flock`` the lock falls back to
  asking whether the recorded pid is alive on this host.
- **One user's.** A lock file owned by another user (another uid than this process's
  effective one) is refused, naming that user and the pid it records, whether or not their
  process still runs: this process can neither signal theirs to ask nor take over a run
  whose files are theirs. Only they (or an administrator) remove it.
- **No stale temporary files.** Every file of the run is written to ``<name>.tmp`` or
  ``<name>.<random>.tmp`` in the same folder, flushed to disk and renamed over ``<name>``
  (:func:`atomic_write`); a crash mid-write leaves the temporary file, which
  :func:`remove_stale_temporaries` deletes at the next start (under the lock, so never one
  that a live run is writing). A write that fails (a full disk: ``ENOSPC``, a file-size
  limit: ``EFBIG``) deletes its temporary file, so the file it would have replaced stays as
  it was; :func:`writing` turns the failure into one :class:`RunDirError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

__all__ = [
    "LOCK_NAME",
    "RunDirError",
    "RunLock",
    "atomic_write",
    "check_writable",
    "describe_os_error",
    "ensure_run_dir",
    "remove_stale_temporaries",
    "writing",
]

LOCK_NAME: str = "run.lock"

_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class RunDirError(ValueError):
    """The run directory cannot be used: it is a file, unwritable, in use, or holds a run
    that this one would replace without being told to."""


def ensure_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` (and its parents) or raise :class:`RunDirError` saying why not."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--run-dir {str(run_dir)!r} is a file, not a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create --run-dir {str(run_dir)!r}: {err.strerror}") from err


def describe_os_error(err: OSError) -> str:
    """``"No space left on device (ENOSPC)"``: the reason of a failed system call, and its
    symbolic errno."""
    name = errno.errorcode.get(err.errno or 0)
    reason = err.strerror or str(err)
    return f"{reason} ({name})" if name else reason


def check_writable(run_dir: Path) -> None:
    """Create and delete a file in ``run_dir``, or raise :class:`RunDirError` saying why this
    process cannot (``EACCES``: no permission; ``EROFS``: a read-only file system)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=run_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise RunDirError(
            f"run directory {str(run_dir)!r} is not writable: {describe_os_error(err)}; "
            "training writes its checkpoints and metrics there: make it writable, or use "
            "another --run-dir"
        ) from err


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into one :class:`RunDirError`
    naming the file and the fault (e.g. ``ENOSPC``, ``EFBIG``)."""
    try:
        yield
    except OSError as err:
        raise RunDirError(f"cannot write {str(path)!r}: {describe_os_error(err)}") from err


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform can)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: bytes | str, *, previous: Path | None = None) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically: a temporary file in the same
    folder, fsync,
    ``os.replace``. With ``previous``, the file at ``path`` (if any) is first renamed to
    ``previous``, so that the old version survives as ``previous``; a crash between the two
    renames leaves ``previous`` intact and ``path`` missing, never a half-written file."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def remove_stale_temporaries(run_dir: Path, names: Iterable[str]) -> list[str]:
    """Delete ``<name>.tmp`` and ``<name>.*.tmp`` left in ``run_dir`` by a crash mid-write,
    for each of the run's file ``names``; return the names of the files deleted. Call it
    only while holding the :class:`RunLock`."""
    removed = []
    for name in names:
        for path in sorted({*run_dir.glob(f"{name}.tmp"), *run_dir.glob(f"{name}.*.tmp")}):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path.name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _read_pid(fd: int) -> int | None:
    """The pid recorded in the open lock file, or None if it holds none (yet)."""
    text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _user_id() -> int:
    """The user whose files this process creates (its effective uid)."""
    return os.geteuid()


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


class RunLock:
    """The exclusive claim of one process on a run directory (see the module docstring).

    ``with RunLock(run_dir) as lock:`` acquires it (or raises :class:`RunDirError`) and
    releases it on exit, by exception or Ctrl-C included. ``lock.took_over`` is the pid of a
    dead process whose lock file was found and taken over, else None.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.took_over: int | None = None
        self._fd: int | None = None

    def _refuse(self, pid: int | None) -> RunDirError:
        holder = f"process {pid}" if pid is not None else "another process"
        return RunDirError(
            f"run directory {str(self.run_dir)!r} is in use by {holder} (lock file "
            f"{str(self.path)!r}); wait for it to finish or stop it, or use another --run-dir"
        )

    def _holder(self, fd: int) -> int | None:
        """The pid of the process holding the lock; it writes it just after locking."""
        for _ in range(20):
            pid = _read_pid(fd)
            if pid is not None:
                return pid
            time.sleep(0.05)
        return None

    def _lock(self, fd: int) -> None:
        """Take the flock on ``fd``, or raise :class:`RunDirError` if another process holds it
        (by flock, or by a live pid where flock is not supported)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._refuse(self._holder(fd)) from None
        except OSError as err:
            if err.errno not in _NO_FLOCK:
                raise
            pid = _read_pid(fd)
            if pid is not None and pid != os.getpid() and _pid_alive(pid):
                raise self._refuse(pid) from None

    def _refuse_foreign(self) -> None:
        """Raise :class:`RunDirError` if the lock file belongs to another user."""
        try:
            owner = os.stat(self.path).st_uid
        except FileNotFoundError:
            return
        if owner == _user_id():
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            recorded = "it cannot be read"
        else:
            try:
                pid = _read_pid(fd)
            finally:
                os.close(fd)
            recorded = f"it records process {pid}" if pid is not None else "it records no pid"
        raise RunDirError(
            f"run directory {str(self.run_dir)!r} is locked by another user, "
            f"{_user_name(owner)}: the lock file {str(self.path)!r} is theirs ({recorded}), "
            "and a run directory is one user's; use another --run-dir, or ask them to delete "
            "the lock file once their run has ended"
        )

    def _open_locked(self) -> int:
        """Open and lock the lock file that is at ``self.path`` at the moment of locking (a
        releasing owner deletes its file; locking that deleted file would be no lock)."""
        self._refuse_foreign()
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise RunDirError(
                    f"cannot write to run directory {str(self.run_dir)!r}: {err.strerror}"
                ) from err
            try:
                self._lock(fd)
                current = os.stat(self.path)
            except FileNotFoundError:  # its owner deleted it meanwhile: open the new one
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            if os.path.samestat(os.fstat(fd), current):
                return fd
            os.close(fd)

    def acquire(self) -> RunLock:
        """Claim the run directory for this process."""
        fd = self._open_locked()
        previous = _read_pid(fd)
        self.took_over = previous if previous != os.getpid() else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the run directory up: delete the lock file, then unlock."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
