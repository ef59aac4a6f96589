"""Where durable state writes run: inline when the process is idle, else batched in a thread.

A state write blocks for one fsync of the file and one of its folder. Handing it to a
worker thread keeps the event loop free for the other chains, but the thread round trip
costs more than the rest of the request's work (a large share of a signature's whole
latency; figures in benchmarks/README.md). So the writer decides per write:

- inline, when no other chain has written in the last few milliseconds, no threaded write is
  in flight and no other task is waiting to run: blocking the loop then delays nobody who
  is ready (at worst, a request arriving during the write waits for it, once);
- otherwise in a worker thread, so that chains signing at the same time do not wait for
  each other's fsyncs on the loop (trio runs the tasks woken together one after another,
  so "another chain wrote just now" is what reveals them, not the run queue);
- in a worker thread for a while after an inline write turned out slow (a disk stall), so a
  sick disk never holds up the whole process more than once per cool-down.

State file saves that go to a thread are group-committed: while one batch is being written,
the saves of other chains queue, and the next batch takes them all in one thread call
(:func:`kms.chain.store.save_all`: every temp file written and fsync'd, then each renamed,
then one fsync per folder). The thread round trip and the folder fsync are paid once per
batch instead of once per signature, and the first fsync's journal commit carries the other
files' data: with many chains signing at once, less worker time per save, less CPU, and
more signatures per second than one thread call per save (figures in benchmarks/README.md).
Each caller still gets exactly its own file's guarantee, and its own error.

Either way the write has finished, durably, before :meth:`StateWriter.run` returns. A save
that has joined the queue is never abandoned: its caller waits for it even if cancelled
(the cancellation is delivered at the caller's next checkpoint), as a caller waiting for a
worker thread does.

A save can also be split in two (:meth:`StateWriter.prepare`): the state is written into the
file's spare and fsync'd in a worker thread, the state file untouched, while its caller
waits for something else (the shared watermark's etcd check-and-set); then
:meth:`Prepared.install` swaps the spare in and fsyncs the folder, or :meth:`Prepared.discard`
drops it. Only when no other chain is writing: then the data fsync is off the signature's
critical path (about 0.1-0.15 ms of a 2.7 ms signature with ``[etcd]``, figures in
benchmarks/README.md); with other chains writing, their saves share one batch instead.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TypeVar, cast

import attrs
import trio

from kms.chain.durable import DurableFile, GroupCommitFile, TempFile
from kms.chain.state import SignState
from kms.chain.store import save_all
from kms.errors import StateError

T = TypeVar("T")

# seconds; an inline write slower than this is a disk stall. Healthy disks have rare fsyncs
# of several milliseconds: a threshold close to those sent a lone chain's writes through
# threads (each paying the round trip) for a whole cool-down after one such hiccup
# (figures in benchmarks/README.md).
SLOW_WRITE = 0.050
BUSY_WINDOW = 0.005  # seconds; another chain's write this recent means chains are concurrent
COOL_DOWN = 30.0  # seconds of threaded writes after a stall


@attrs.define(eq=False)
class _Queued:
    """One save waiting for (or in) a batch."""

    store: GroupCommitFile
    state: SignState
    taken: bool = False  # in a batch being written
    done: trio.Event = attrs.field(factory=trio.Event)
    error: BaseException | None = None


class StateWriter:
    """Runs blocking state writes for every chain of the process.

    ``limiter`` bounds the worker threads of writes that run one by one (a batch of saves
    takes one thread, one batch at a time). ``inline=False`` sends every write to a thread,
    so that the event loop (and a cancellation) keeps running while the write does.
    """

    def __init__(
        self,
        limiter: trio.CapacityLimiter | None = None,
        *,
        inline: bool = True,
        slow_write: float = SLOW_WRITE,
        busy_window: float = BUSY_WINDOW,
        cool_down: float = COOL_DOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limiter = limiter
        self._inline = inline
        self._slow_write = slow_write
        self._busy_window = busy_window
        self._last_key: str | None = None
        self._last_write = float("-inf")
        self._cool_down = cool_down
        self._clock = clock
        self._threaded = 0
        self._threads_until = float("-inf")
        self._queue: list[_Queued] = []
        self._committing = False  # a batch is being written
        self._slot_free = trio.Event()
        self.inline_writes = 0
        self.threaded_writes = 0
        self.batches = 0
        self.batched_writes = 0
        self.prepared_writes = 0

    def _may_block(self, key: str, now: float) -> bool:
        if not self._inline or self._threaded or self._committing or now < self._threads_until:
            return False
        if key != self._last_key and now - self._last_write < self._busy_window:
            return False
        return trio.lowlevel.current_statistics().tasks_runnable == 0

    def quiet(self, key: str) -> bool:
        """Whether :meth:`prepare` would prepare a save of chain ``key`` now."""
        return self._quiet(key, self._clock())

    def _quiet(self, key: str, now: float) -> bool:
        """No threaded write or batch in flight, and no other chain wrote just now."""
        if self._threaded or self._committing:
            return False
        return key == self._last_key or now - self._last_write >= self._busy_window

    async def prepare(
        self, file: GroupCommitFile, state: SignState, *, key: str
    ) -> Prepared | None:
        """Write ``state`` into ``file``'s spare and fsync it in a worker thread, the state
        file untouched; :meth:`Prepared.install` then makes it the state.

        None when other chains are writing (save as usual then: their saves share a batch),
        or when the write failed (the save will say why).
        """
        if not self._quiet(key, self._clock()):
            return None
        self._last_key = key
        self._threaded += 1
        self.prepared_writes += 1
        try:
            temp = await trio.to_thread.run_sync(_write_synced, file, state, limiter=self._limiter)
        except StateError:
            return None
        finally:
            self._threaded -= 1
            self._last_write = self._clock()
        return Prepared(self, file, temp, key)

    async def run(self, write: Callable[[], T], *, key: str) -> T:
        """Run ``write`` (for chain ``key``) to completion, inline or in a thread."""
        return await self._run(write, key, None)

    async def save(self, file: DurableFile, state: SignState, *, key: str) -> None:
        """Durably save ``state`` to ``file`` (for chain ``key``): inline, or in a thread.

        Raises the file's StateError when the save failed.
        """
        await self._run(functools.partial(file.save, state), key, None)

    async def commit(self, file: GroupCommitFile, state: SignState, *, key: str) -> None:
        """:meth:`save`, but a threaded save joins the group commit of other files' saves.

        Raises the StateError of this file's save when it failed (another file's failure
        in the same batch is not this caller's).
        """
        await self._run(functools.partial(file.save, state), key, (file, state))

    async def _run(
        self, write: Callable[[], T], key: str, saving: tuple[GroupCommitFile, SignState] | None
    ) -> T:
        started = self._clock()
        inline = self._may_block(key, started)
        self._last_key = key
        try:
            if inline:
                self.inline_writes += 1
                return write()
            if saving is not None:  # write is store.save(state): join the group commit
                await self._commit(_Queued(*saving))
                return cast(T, None)
            self._threaded += 1
            self.threaded_writes += 1
            try:
                return await trio.to_thread.run_sync(write, limiter=self._limiter)
            finally:
                self._threaded -= 1
        finally:
            # "recent" counts from the end of a write: the next chain's request may have
            # been waiting for this one.
            self._last_write = finished = self._clock()
            if inline and finished - started > self._slow_write:
                self._threads_until = finished + self._cool_down

    async def _commit(self, item: _Queued) -> None:
        """Queue ``item``, lead a batch if one may start, and wait until ``item`` is done.

        Shielded: once queued, an item is written and its caller waits for the outcome.
        """
        self._queue.append(item)
        with trio.CancelScope(shield=True):
            while not item.taken:
                if not self._committing:
                    await self._lead()  # its batch takes the whole queue, ``item`` included
                else:
                    await self._slot_free.wait()
            await item.done.wait()
        if item.error is not None:
            raise item.error

    async def _lead(self) -> None:
        """Write every queued item in one thread call; wake their callers.

        One batch at a time: with many chains, letting a second batch start while one is
        being written only made the batches smaller (and the thread round trips more).
        """
        batch, self._queue = self._queue, []
        for item in batch:
            item.taken = True
        self._committing = True
        self.batches += 1
        self.batched_writes += len(batch)
        outcomes: list[StateError | None] = []
        try:
            saves = [(item.store, item.state) for item in batch]
            outcomes = await trio.to_thread.run_sync(save_all, saves, limiter=self._limiter)
        except BaseException as exc:  # a bug, not a disk error: nobody's save is known durable
            outcomes = [_unknown_outcome(item, exc) for item in batch]
            raise
        finally:
            self._committing = False
            for index, item in enumerate(batch):  # every caller is woken, whatever happened
                item.error = outcomes[index] if index < len(outcomes) else _unknown_outcome(item)
                item.done.set()
            if self._queue:  # the callers queued meanwhile: one of them leads the next batch
                self._slot_free.set()
                self._slot_free = trio.Event()


@attrs.define(eq=False)
class Prepared:
    """A state in a file's synced spare (:meth:`StateWriter.prepare`), not installed yet."""

    _writer: StateWriter
    _file: GroupCommitFile
    _temp: TempFile
    _key: str

    async def install(self) -> None:
        """Swap the spare in and fsync the folder (inline, or in a thread when others write).

        Durable once this returns; StateError (the old state file intact, or the folder's
        fsync failed) otherwise.
        """
        await self._writer.run(self._install, key=self._key)

    def _install(self) -> None:
        self._file.install(self._temp)
        self._file.sync_folder()

    def discard(self) -> None:
        """Drop the spare; the state file stays as it is."""
        self._file.discard(self._temp)


def _write_synced(file: GroupCommitFile, state: SignState) -> TempFile:
    temp = file.write_temp(state)
    file.sync_temp(temp)  # on failure the temp file is discarded
    return temp


def _unknown_outcome(item: _Queued, exc: BaseException | None = None) -> StateError:
    """The error of an item whose batch ended without saying whether it was saved."""
    error = StateError(f"error writing state to {item.store.path}: the batch failed: {exc!r}")
    error.__cause__ = exc
    return error
