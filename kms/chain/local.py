"""The state store of a single host: one state file, saved through the process's writer.

:class:`LocalStore` is the :class:`kms.chain.durable.StateStore` every chain has: it reads
its :class:`kms.chain.durable.DurableFile` in a worker thread (removing what an interrupted
save left behind first) and saves through the :class:`kms.chain.writer.StateWriter` shared
by all chains of the process, which batches the saves of files able to group-commit. It
is a :class:`kms.chain.durable.PreparingStore`: the writer can write and fsync a save into
the file's spare ahead of time, the state file changing only when it is installed.
"""

from __future__ import annotations

import logging

import trio

from kms.chain.durable import DurableFile, GroupCommitFile
from kms.chain.state import SignState
from kms.chain.writer import Prepared, StateWriter

__all__ = ["LocalStore"]

log = logging.getLogger("kms.chain")


class LocalStore:
    """A chain's state file on this host (see the module docstring)."""

    def __init__(
        self, file: DurableFile, writer: StateWriter | None = None, *, label: str = ""
    ) -> None:
        self._file = file
        self._writer = writer if writer is not None else StateWriter()
        self._key = str(file.path)
        self._label = label or self._key
        # decided once: a file that can save in phases shares the writer's group commit
        self._group: GroupCommitFile | None = file if isinstance(file, GroupCommitFile) else None

    @property
    def file(self) -> DurableFile:
        """The state file."""
        return self._file

    def describe(self) -> str:
        """``state file <path>``."""
        return f"state file {self._file.path}"

    async def load(self) -> SignState:
        """Remove stale temp files (logged), then read the state, in a worker thread."""
        for name in await trio.to_thread.run_sync(self._file.remove_stale_temps):
            log.warning("[%s] removed %s, left by an interrupted state write", self._label, name)
        return await trio.to_thread.run_sync(self._file.load)

    def may_prepare(self) -> bool:
        """Whether :meth:`prepare` would prepare now: phases, and no other chain writing."""
        return self._group is not None and self._writer.quiet(self._key)

    async def prepare(self, state: SignState) -> Prepared | None:
        """``state`` written and fsync'd in the spare, the state file untouched; or None.

        None when the file cannot save in phases, when other chains are writing (then
        :meth:`save` joins their batch), or when the write failed (:meth:`save` says why).
        """
        if self._group is None:
            return None
        return await self._writer.prepare(self._group, state, key=self._key)

    async def save(self, state: SignState) -> None:
        """Durably save ``state``: inline, in a thread, or in the writer's group commit."""
        if self._group is not None:
            await self._writer.commit(self._group, state, key=self._key)
        else:
            await self._writer.save(self._file, state, key=self._key)
