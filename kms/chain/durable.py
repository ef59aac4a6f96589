"""The seams of the sign path's durability: what the tracker and the writer are given.

Two levels, each a small protocol:

* :class:`StateStore` -- what :class:`kms.chain.tracker.ChainTracker` is given: the durable
  home of one chain's last signed state, async. ``save`` returns only once the state is
  durable wherever this store keeps it; it may refuse (a :class:`kms.errors.SigningRefused`,
  answered to the node as a RemoteSignerError) or fail (a :class:`kms.errors.StateError`).
  :class:`kms.chain.local.LocalStore` keeps a state file on this host; a shared watermark
  (etcd) wraps a local store and adds its check-and-set in front of it. A store that can
  also :class:`PreparingStore.prepare` a save does the slow part of it (write and fsync a
  file beside the state file) while the shared watermark's check-and-set is in flight;
  the state file itself changes only when the prepared save is installed, after the
  check-and-set was won, so what a restart reads is never a state that was not allowed.
* :class:`DurableFile` -- one file saved with a blocking, durable ``save`` (run inline or in a
  worker thread by :class:`kms.chain.writer.StateWriter`). A file that can also be saved in
  phases across many files at once says so by being a :class:`GroupCommitFile`; the writer
  then batches its saves (:func:`kms.chain.store.save_all`). Test fault shims are plain
  DurableFiles: they save one by one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import attrs

from kms.chain.state import SignState
from kms.errors import StateError

__all__ = [
    "DurableFile",
    "GroupCommitFile",
    "PreparedSave",
    "PreparingStore",
    "StateStore",
    "TempFile",
]


class StateStore(Protocol):
    """The durable home of one chain's last signed state (see the module docstring)."""

    def describe(self) -> str:
        """Where the state lives, for log lines and errors (never a credential)."""
        ...

    async def load(self) -> SignState:
        """The stored state (created at height 0 when there is none); StateError if unusable."""
        ...

    async def save(self, state: SignState) -> None:
        """Make ``state`` durable, or raise (SigningRefused / StateError) with nothing changed.

        Called under the chain's lock, shielded from cancellation: a store that waits on the
        network bounds its own wait.
        """
        ...


class PreparedSave(Protocol):
    """A state written and fsync'd beside the state file, not in its place yet."""

    async def install(self) -> None:
        """Put it in the state file's place, durably; StateError (old file intact) if not."""
        ...

    def discard(self) -> None:
        """Drop it: the state file stays as it is."""
        ...


@runtime_checkable
class PreparingStore(StateStore, Protocol):
    """A StateStore whose save can begin before the caller knows it may save."""

    def may_prepare(self) -> bool:
        """Whether :meth:`prepare` would prepare now (a cheap check before it is started)."""
        ...

    async def prepare(self, state: SignState) -> PreparedSave | None:
        """Write ``state`` durably beside the state file, leaving the state file as it is.

        None when this store would rather :meth:`StateStore.save` as usual (say, other
        chains are saving: their saves share one batch), or when the write failed.
        """
        ...


class DurableFile(Protocol):
    """One state file with blocking reads and durable, blocking writes."""

    @property
    def path(self) -> Path:
        """Where the state lives."""
        ...

    def load(self) -> SignState:
        """Read the state (created at height 0 when missing); StateError if unusable."""
        ...

    def save(self, state: SignState) -> None:
        """Durably replace the state; StateError (previous state intact) on failure."""
        ...

    def remove_stale_temps(self) -> list[str]:
        """Delete what an interrupted save left behind; return the names removed."""
        ...


@attrs.define
class TempFile:
    """A temp file written by :meth:`GroupCommitFile.write_temp`; ``fd`` is None once synced.

    ``spare`` tells the state file's spare from a one-off temp file (used while the spare
    is taken by another save of the same file, as in a group commit).
    """

    path: str
    fd: int | None
    spare: bool = False


@runtime_checkable
class GroupCommitFile(DurableFile, Protocol):
    """A DurableFile whose save also runs as phases shared with other files' saves.

    :func:`kms.chain.store.save_all` drives the phases; see :class:`kms.chain.store.StateFile`.
    """

    @property
    def folder(self) -> str:
        """The absolute folder whose fsync makes a rename durable."""
        ...

    def write_temp(self, state: SignState) -> TempFile:
        """Phase 1: write ``state`` to a temp file beside the state file."""
        ...

    def sync_temp(self, temp: TempFile) -> None:
        """Phase 2: fsync the temp file."""
        ...

    def install(self, temp: TempFile) -> None:
        """Phase 3: put the temp file in the state file's place."""
        ...

    def discard(self, temp: TempFile) -> None:
        """Undo phase 1 after a failure."""
        ...

    def sync_folder(self) -> None:
        """Phase 4: fsync the folder."""
        ...

    def folder_error(self, exc: BaseException) -> StateError:
        """The error of this file's save when its folder's fsync failed with ``exc``."""
        ...
