"""One writer per state file: an advisory ``flock`` on ``<state_file>.lock``.

Two KMS processes signing from one state file is the classic double-sign setup: each keeps
its own idea of the last signed height in memory and overwrites the other's file. So
`tmkms start` holds an exclusive lock on every configured state file for its whole life,
and the `tmkms state` commands that change a state take the same lock for the moment they
write.

The lock is ``flock(LOCK_EX)`` on a sibling file ``<state_file>.lock`` (the state file
itself is replaced by rename on every write, so it cannot carry a lock). The kernel drops a
flock when its holder exits in any way, SIGKILL included, so a crashed KMS never leaves a
stale lock behind: the lock file may remain on disk, but it is unlocked. The holder writes
its PID into the file, only to make the refusal message useful.

The lock file is named after the state file's real path, so two configurations that reach
one state file through different symlinks still contend for one lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from kms.errors import StateError

__all__ = [
    "StateLockedError",
    "StateLocks",
    "lock_path_for",
    "lock_state_files",
    "state_lock_holder",
]

LOCK_SUFFIX = ".lock"
_RETRY_INTERVAL = 0.05
_LOCK_FILE_MODE = 0o600


class StateLockedError(StateError):
    """Another process (normally a running `tmkms start`) holds a state file's lock."""

    def __init__(self, message: str, state_file: Path, holder_pid: int | None) -> None:
        super().__init__(message)
        self.state_file = state_file
        self.holder_pid = holder_pid


def lock_path_for(state_file: Path) -> Path:
    """The lock file guarding ``state_file``: ``<real path of the state file>.lock``."""
    real = Path(os.path.realpath(state_file))
    return real.with_name(real.name + LOCK_SUFFIX)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _open_lock_file(state_file: Path) -> int:
    path = lock_path_for(state_file)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _LOCK_FILE_MODE)
    except OSError as exc:
        raise StateError(
            f"cannot open lock file {path} for state file {state_file}: {exc.strerror or exc}"
        ) from exc


def _try_flock(fd: int, operation: int) -> bool:
    """True when the lock was taken; False when someone else holds it."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def _refusal(state_file: Path, fd: int, purpose: str) -> StateLockedError:
    pid = _read_pid(fd)
    holder = f"process {pid}" if pid is not None else "another process"
    return StateLockedError(
        f"state file {state_file} is in use by {holder} (a running `tmkms start`?); "
        f"{purpose} (lock file {lock_path_for(state_file)})",
        state_file,
        pid,
    )


class StateLocks:
    """Exclusive locks on a set of state files, released by :meth:`release` (or on exit)."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    @property
    def paths(self) -> list[Path]:
        """The lock files held, in the order they were taken."""
        return list(self._fds)

    def acquire(self, state_file: Path, *, wait: float = 0.0, purpose: str) -> None:
        """Lock ``state_file``, retrying for up to ``wait`` seconds; StateLockedError if held.

        ``purpose`` ends the refusal message (e.g. "stop it first"). Locking a state file
        this object already holds is a no-op.
        """
        key = lock_path_for(state_file)
        if key in self._fds:
            return
        fd = _open_lock_file(state_file)
        deadline = time.monotonic() + wait
        try:
            while not _try_flock(fd, fcntl.LOCK_EX):
                if time.monotonic() >= deadline:
                    raise _refusal(state_file, fd, purpose)
                time.sleep(_RETRY_INTERVAL)
            # Only for the refusal message: a full disk must not stop a start over it.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fds[key] = fd

    def release_one(self, state_file: Path) -> None:
        """Drop the lock on ``state_file`` if held (a chain removed by a reload)."""
        fd = self._fds.pop(lock_path_for(state_file), None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)

    def release(self) -> None:
        """Drop every lock (closing the descriptor releases the flock)."""
        while self._fds:
            _, fd = self._fds.popitem()
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)

    def __enter__(self) -> StateLocks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def lock_state_files(
    state_files: Iterable[Path], *, wait: float = 0.0, purpose: str
) -> Iterator[StateLocks]:
    """Hold exclusive locks on all ``state_files`` for the ``with`` block.

    All or nothing: if one is held elsewhere, the ones already taken are released and
    StateLockedError is raised.
    """
    locks = StateLocks()
    try:
        for state_file in state_files:
            locks.acquire(state_file, wait=wait, purpose=purpose)
        yield locks
    finally:
        locks.release()


def state_lock_holder(state_file: Path) -> int | None:
    """The PID holding ``state_file``'s lock (0 if unknown), or None when it is free.

    Probes with a shared lock that is dropped at once and never creates the lock file.
    """
    path = lock_path_for(state_file)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot open lock file {path}: {exc.strerror or exc}") from exc
    try:
        if _try_flock(fd, fcntl.LOCK_SH):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        pid = _read_pid(fd)
        return pid if pid is not None else 0
    finally:
        os.close(fd)
