"""Where durable state writes run: inline when the process is idle, else in worker threads.

A state write blocks for one fsync of the file and one of its folder (about 0.4 ms on this
project's machines). Handing it to a worker thread keeps the event loop free for the other
chains, but the thread round trip costs more than the rest of the request's work (measured
in the end-to-end benchmark: 0.2 ms per signature, a third of the whole latency). So the
writer decides per write:

- inline, when no other chain has written in the last few milliseconds, no threaded write is
  in flight and no other task is waiting to run: blocking the loop then delays nobody who
  is ready (at worst, a request arriving during the write waits for it, once);
- in a worker thread otherwise, so that chains signing at the same time overlap their
  fsyncs (trio runs the tasks woken together one after another, so "another chain wrote
  just now" is what reveals them, not the run queue);
- in a worker thread for a while after an inline write turned out slow (a disk stall), so a
  sick disk never holds up the whole process more than once per cool-down.

Either way the write has finished, durably, before :meth:`StateWriter.run` returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")

SLOW_WRITE = 0.005  # seconds; an inline write slower than this is a disk stall
BUSY_WINDOW = 0.005  # seconds; another chain's write this recent means chains are concurrent
COOL_DOWN = 30.0  # seconds of threaded writes after a stall


class StateWriter:
    """Runs blocking state writes for every chain of the process.

    ``inline=False`` sends every write to a thread (a caller that must be able to cancel
    while the write is running).
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
        self.inline_writes = 0
        self.threaded_writes = 0

    def _may_block(self, key: str, now: float) -> bool:
        if not self._inline or self._threaded or now < self._threads_until:
            return False
        if key != self._last_key and now - self._last_write < self._busy_window:
            return False
        return trio.lowlevel.current_statistics().tasks_runnable == 0

    async def run(self, write: Callable[[], T], *, key: str) -> T:
        """Run ``write`` (for chain ``key``) to completion, inline or in a thread."""
        started = self._clock()
        inline = self._may_block(key, started)
        self._last_key = key
        try:
            if inline:
                self.inline_writes += 1
                return write()
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
