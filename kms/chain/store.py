"""The durable double-sign state file, in tmkms's format (:mod:`kms.chain.stateformat`):
unreadable or damaged files are refused with a StateError that names the file, because
starting from zero when a file could not be read is how validators get slashed.

Unlike tmkms, every write is durable before ``save`` returns: a temp file in the same
folder is written and fsync'd, swapped with the state file (or renamed over it), then the
folder is fsync'd so the swap itself survives a power cut. A failure at any point raises
StateError and leaves the previous file in place. Those steps are also methods of their
own, so that :func:`save_all` can run them for many files at once (the group commit of
:mod:`kms.chain.writer`) with the same guarantee for each file.

The temp file is a *spare*, ``.<name>.spare.tmp`` beside the state file: each save rewrites
it in place, fsyncs it, and exchanges the two names atomically
(:func:`kms.chain.exchange.rename_exchange`), so the spare then holds the previous state,
ready for the next save. The file that holds the current state is never written to, and
the spare is never read. Where the exchange is not available the spare is renamed over the
state file, and the next save creates a new one: the classic sequence.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import itertools
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from kms.chain.durable import GroupCommitFile, TempFile
from kms.chain.exchange import rename_exchange
from kms.chain.state import SignState
from kms.chain.stateformat import format_state, parse_state
from kms.errors import StateError

__all__ = ["StateFile", "read_state", "save_all"]

_FILE_MODE = 0o600
_TEMP_COUNTER = itertools.count()


def read_state(path: Path) -> SignState | None:
    """The state in ``path``, or None if there is no such file; only reads.

    Creates nothing and removes nothing, so it is safe while a `tmkms start` holds the file
    (``tmkms state show``), and :meth:`StateFile.load` builds on it. Raises StateError
    naming the file when it exists but cannot be read, is empty, or is not a state file.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read state file {path}: {exc.strerror or exc}") from exc
    if not data.strip():
        raise StateError(
            f"cannot parse state file {path}: it is empty (truncated?); refusing to start from zero"
        )
    try:
        return parse_state(data)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise StateError(f"cannot parse state file {path}: {exc}") from exc


class StateFile:
    """One chain's state file: tolerant, strict-where-it-matters reads; durable writes."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._dir = self._path.parent
        self._folder = os.path.abspath(self._dir)
        self._temp_prefix = f".{self._path.name}."
        self._spare = os.path.join(self._dir, f"{self._temp_prefix}spare.tmp")
        self._spare_taken = False  # a TempFile of the spare is between write and install

    @property
    def path(self) -> Path:
        """Where the state lives."""
        return self._path

    def load(self) -> SignState:
        """Read the state; a missing file is created at height 0 (durably) and returned.

        Raises StateError naming the file when it exists but cannot be read or parsed
        (:func:`read_state`).
        """
        state = read_state(self._path)
        if state is None:
            self.save(SignState.INITIAL)
            return SignState.INITIAL
        return state

    def remove_stale_temps(self) -> list[str]:
        """Delete temp files a crashed save left beside the state file; return their names.

        Only for the process that holds the state lock (``tmkms start``): a temp file of a
        running KMS must not vanish under it. A temp file never stands in for the state.
        The spare stays: every save rewrites it whole, and its room on the disk is what lets
        the next save succeed on a full disk.
        """
        removed = []
        spare = os.path.basename(self._spare)
        with contextlib.suppress(FileNotFoundError), os.scandir(self._dir) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(self._temp_prefix) and name.endswith(".tmp") and name != spare:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed.append(name)
        return removed

    def save(self, state: SignState) -> None:
        """Durably replace the file with ``state``; StateError (old file intact) on failure.

        Spare (or temp file) in the same folder -> write -> fsync -> swap with (or rename
        over) the state file -> fsync the folder. The phases are the methods below, which
        :func:`save_all` runs for many files at once.
        """
        temp = self.write_temp(state)
        try:
            self.sync_temp(temp)
            self.install(temp)
        except BaseException:  # a bug, say: the spare must not stay taken
            self.discard(temp)
            raise
        self.sync_folder()

    def write_temp(self, state: SignState) -> TempFile:
        """Phase 1: create a temp file beside the state file and write ``state`` into it.

        The file is left open for :meth:`sync_temp`. StateError (nothing left behind) on
        failure.
        """
        payload = format_state(state)
        spare = not self._spare_taken
        if spare:
            path = self._spare
        else:
            path = os.path.join(
                self._dir, f"{self._temp_prefix}{os.getpid()}.{next(_TEMP_COUNTER)}.tmp"
            )
        try:
            fd, size = self._open_spare() if spare else (_create(path), 0)
        except OSError as exc:
            raise self._write_error(exc) from exc
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            if size > len(payload):  # the spare held a longer state
                os.ftruncate(fd, len(payload))
        except OSError as exc:
            _close_quietly(fd)
            _unlink_quietly(path)
            raise self._write_error(exc) from exc
        self._spare_taken = self._spare_taken or spare
        return TempFile(path, fd, spare)

    def _open_spare(self) -> tuple[int, int]:
        """Open the spare for rewriting, creating it if needed; (fd, its current size).

        The spare is rewritten in place and then becomes the state file, so it must be a
        plain file of this user's alone, mode 0600. Anything else at its name (a symlink, a
        hard link, a file of another user, say root's after a ``tmkms state`` run as root)
        is replaced by a new file.
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self._spare, flags, _FILE_MODE)
        except OSError as exc:  # ELOOP: O_NOFOLLOW met a symlink; EACCES: not ours
            if exc.errno not in (errno.ELOOP, errno.EACCES, errno.EPERM):
                raise
            if not os.path.lexists(self._spare):
                raise  # no spare in the way: the folder itself refuses
        else:
            found = os.fstat(fd)
            if stat.S_ISREG(found.st_mode) and found.st_nlink == 1 and found.st_uid == os.geteuid():
                if stat.S_IMODE(found.st_mode) != _FILE_MODE:
                    os.fchmod(fd, _FILE_MODE)
                return fd, found.st_size
            os.close(fd)
        os.unlink(self._spare)
        return _create(self._spare), 0

    def sync_temp(self, temp: TempFile) -> None:
        """Phase 2: fsync and close the temp file; StateError (temp removed) on failure."""
        fd, temp.fd = temp.fd, None
        if fd is None:
            raise ValueError(f"temp file {temp.path} was already synced or discarded")
        try:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.discard(temp)
            raise self._write_error(exc) from exc

    def install(self, temp: TempFile) -> None:
        """Phase 3: swap the synced temp file with the state file, or rename it over.

        Not durable until :meth:`sync_folder`. StateError (temp removed, old file intact) on
        failure.
        """
        if temp.fd is not None:
            raise ValueError(f"temp file {temp.path} must be synced before it is installed")
        try:
            if not (temp.spare and rename_exchange(temp.path, str(self._path))):
                os.replace(temp.path, self._path)
        except OSError as exc:
            self.discard(temp)
            raise self._write_error(exc) from exc
        if temp.spare:
            self._spare_taken = False

    def discard(self, temp: TempFile) -> None:
        """Close and delete a temp file that will not be installed (errors ignored)."""
        if temp.fd is not None:
            _close_quietly(temp.fd)
            temp.fd = None
        _unlink_quietly(temp.path)
        if temp.spare:
            self._spare_taken = False

    def sync_folder(self) -> None:
        """Phase 4: fsync the folder, making every rename in it durable; StateError on failure."""
        try:
            dir_fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise self.folder_error(exc) from exc

    @property
    def folder(self) -> str:
        """The folder holding the state file, as an absolute path (one fsync per folder)."""
        return self._folder

    def folder_error(self, exc: BaseException) -> StateError:
        """The StateError of a failed folder fsync, naming this state file."""
        return StateError(f"error syncing the folder of state file {self._path}: {exc}")

    def _write_error(self, exc: BaseException) -> StateError:
        return StateError(f"error writing state to {self._path}: {exc}")

    def __repr__(self) -> str:
        return f"StateFile({str(self._path)!r})"


def save_all(saves: Sequence[tuple[GroupCommitFile, SignState]]) -> list[StateError | None]:
    """Durably save several state files at once (a group commit); one outcome per item.

    Each item gets exactly the guarantee of :meth:`StateFile.save`: its temp file is fsync'd
    before the rename over its state file, and its folder is fsync'd after that rename,
    before this returns. The phases run across all items: every temp file is written, then
    all are fsync'd side by side, then each is renamed, then each distinct folder is fsync'd
    once. Items naming the same file are renamed in order: the last one wins.

    Returns None for an item now durable, or the StateError ``save`` would have raised. A
    failed write, fsync or rename fails that item only (old file intact, temp removed); a
    failed folder fsync fails every item renamed in that folder.
    """
    outcomes: list[StateError | None] = [None] * len(saves)
    temps: list[TempFile | None] = [None] * len(saves)
    folders: dict[str, list[int]] = {}
    try:
        for index, (store, state) in enumerate(saves):
            try:
                temps[index] = store.write_temp(state)
            except StateError as exc:
                outcomes[index] = exc
        _sync_temps(saves, temps, outcomes)
        for index, temp in enumerate(temps):
            if temp is not None:
                store, temps[index] = saves[index][0], None
                try:
                    store.install(temp)
                except StateError as exc:
                    outcomes[index] = exc
                else:
                    folders.setdefault(store.folder, []).append(index)
    finally:
        for index, temp in enumerate(temps):  # left over only when something unexpected
            if temp is not None:  # was raised
                saves[index][0].discard(temp)
    for members in folders.values():
        try:
            saves[members[0]][0].sync_folder()
        except StateError as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            for index in members:
                error = saves[index][0].folder_error(cause)
                error.__cause__ = cause
                outcomes[index] = error
    return outcomes


def _sync_temps(
    saves: Sequence[tuple[GroupCommitFile, SignState]],
    temps: list[TempFile | None],
    outcomes: list[StateError | None],
) -> None:
    """Phase 2 of every written temp file, the fsyncs running side by side.

    One after another, each fsync waits for its own journal commit and disk cache flush;
    side by side the filesystem and the disk merge them (figures in benchmarks/README.md).
    A small batch takes a thread per file; a large one runs in a few lanes, each a thread
    fsyncing its share one after another (a thread per file cost two GIL hand-offs per file
    against the busy event loop).
    A failed item gets its StateError (temp removed); anything else is raised once every
    fsync has returned.
    """
    pending = [index for index, temp in enumerate(temps) if temp is not None]

    def sync(index: int) -> BaseException | None:
        try:
            saves[index][0].sync_temp(cast(TempFile, temps[index]))
        except BaseException as exc:  # sorted out below, once every fsync has returned
            return exc
        return None

    if len(pending) >= _PARALLEL_FROM:
        width = len(pending) if len(pending) <= _THREAD_EACH_UP_TO else _FSYNC_LANES
        lanes = [pending[lane::width] for lane in range(width)]
        synced = _fsync_pool().map(lambda lane: [sync(index) for index in lane], lanes)
        found = dict(zip(itertools.chain(*lanes), itertools.chain(*synced), strict=True))
        errors = [found[index] for index in pending]
    else:
        errors = [sync(index) for index in pending]
    unexpected: BaseException | None = None
    for index, error in zip(pending, errors, strict=True):
        if isinstance(error, StateError):
            outcomes[index], temps[index] = error, None
        elif error is not None:
            unexpected = unexpected or error
    if unexpected is not None:
        raise unexpected


# Side-by-side fsyncs: a thread per file up to _THREAD_EACH_UP_TO files (the pool's size),
# _FSYNC_LANES lanes beyond. With 50 chains signing flat out (batches of 11-25), the lanes
# took 15-20% less of the KMS's CPU per signature than a thread per file, and with [etcd]
# gave 1,600-1,800 signatures/s instead of 1,340-1,490; lanes for small batches too (50
# chains paced at 1,500 signatures/s) made the p99 about 2 ms worse (benchmarks/README.md).
_FSYNC_LANES = 3
_THREAD_EACH_UP_TO = 8
# Fewer files than this are fsync'd one by one: handing two to the pool's threads cost more
# (each must win the GIL from the busy event loop) than the second fsync it saved.
_PARALLEL_FROM = 3
_pool: list[concurrent.futures.ThreadPoolExecutor] = []
_pool_lock = threading.Lock()


def _fsync_pool() -> concurrent.futures.ThreadPoolExecutor:
    with _pool_lock:
        if not _pool:
            pool = concurrent.futures.ThreadPoolExecutor(_THREAD_EACH_UP_TO, "fsync")
            _pool.append(pool)
        return _pool[0]


def _create(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
