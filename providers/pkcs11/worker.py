"""The one thread that calls the PKCS#11 module, and the one lock around every call.

Theory of operation. python-pkcs11 initialises the module without OS locking, so the module
runs without its own mutexes: two threads in it at once crashed SoftHSM (segfault) or got
CKR_GENERAL_ERROR. So every call into a module, from anywhere in the process (the provider,
the `tmkms pkcs11` commands, tests), holds :data:`PKCS11_LOCK`; and the provider makes its
calls from one dedicated thread, :class:`Pkcs11Worker`, fed by a queue.

A signature is worthless once the node has given up on it (after 5 s), so each request
carries a deadline. A request still queued at its deadline is dropped without running; one
running past it is abandoned: the caller gets :class:`Pkcs11Timeout` at once while the call
finishes in the worker thread (a PKCS#11 call cannot be interrupted), its result discarded.
While a call has been running longer than ``stuck_after`` seconds, new requests are refused
at once instead of queueing behind it (:meth:`Pkcs11Worker.stuck_for`).

The lock is taken by the worker thread around each job, after the job is taken from the
queue, and a job whose caller already gave up is skipped once the lock is held: a test (or
anything else) holding the lock stalls the worker exactly as a hung module call would.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import trio

from providers.pkcs11.errors import Pkcs11Timeout

log = logging.getLogger("providers.pkcs11")

T = TypeVar("T")

#: Held around every call into a PKCS#11 module, process-wide.
PKCS11_LOCK = threading.Lock()

_PENDING, _RUNNING, _DONE, _ABANDONED = range(4)


class _Job(Generic[T]):
    """One call to make in the worker thread, and its outcome."""

    def __init__(self, call: Callable[[], T], notify: Callable[[], None]) -> None:
        self.call = call
        self.notify = notify
        self.state = _PENDING
        self.result: T | None = None
        self.error: BaseException | None = None
        self._guard = threading.Lock()

    def start(self) -> bool:
        """Pending -> running; False if the caller gave up first."""
        with self._guard:
            if self.state != _PENDING:
                return False
            self.state = _RUNNING
            return True

    def finish(self) -> None:
        """Running -> done, and tell the caller (if it is still waiting)."""
        with self._guard:
            abandoned = self.state == _ABANDONED
            self.state = _DONE
        if not abandoned:
            self.notify()

    def abandon(self) -> bool:
        """The caller gives up; True if the job had already finished (its result is valid)."""
        with self._guard:
            if self.state == _DONE:
                return True
            self.state = _ABANDONED
            return False

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class Pkcs11Worker:
    """A daemon thread running PKCS#11 calls one at a time, under :data:`PKCS11_LOCK`."""

    def __init__(self, name: str = "pkcs11-worker") -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job[object] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._busy_since: float | None = None  # time.monotonic() the current job started
        self.abandoned = 0  # requests given up at their deadline (queued or running)

    def stuck_for(self) -> float:
        """Seconds the current call has been running (0.0 when idle)."""
        started = self._busy_since
        return 0.0 if started is None else max(0.0, time.monotonic() - started)

    async def run(self, call: Callable[[], T], deadline: float) -> T:
        """Run ``call()`` in the worker thread; Pkcs11Timeout at trio time ``deadline``.

        Cancelling the caller abandons the job the same way (it never runs if still queued).
        The caller sleeps in trio until the worker wakes it (one ``run_sync_soon``).
        """
        token = trio.lowlevel.current_trio_token()
        waiter: list[trio.lowlevel.Task] = [trio.lowlevel.current_task()]

        def wake() -> None:  # in the trio thread, so never concurrent with give_up()
            if waiter:
                trio.lowlevel.reschedule(waiter.pop())

        def notify() -> None:  # in the worker thread
            with contextlib.suppress(trio.RunFinishedError):  # the caller's run has ended
                token.run_sync_soon(wake)

        def give_up(_: object) -> trio.lowlevel.Abort:
            waiter.clear()
            job.abandon()
            return trio.lowlevel.Abort.SUCCEEDED

        job: _Job[T] = _Job(call, notify)
        self._submit(job)
        with trio.move_on_at(deadline):
            await trio.lowlevel.wait_task_rescheduled(give_up)
        if job.state == _DONE:  # finished, possibly just as the deadline passed
            return job.outcome()
        self.abandoned += 1
        raise Pkcs11Timeout("the PKCS#11 module did not answer in time")

    def run_blocking(self, call: Callable[[], T], timeout: float) -> T:
        """Run ``call()`` in the worker thread from plain (non-trio) code, like :meth:`run`."""
        done = threading.Event()
        job: _Job[T] = _Job(call, done.set)
        self._submit(job)
        if done.wait(timeout) or job.abandon():
            return job.outcome()
        self.abandoned += 1
        raise Pkcs11Timeout(f"the PKCS#11 module did not answer within {timeout:g} s")

    def stop(self) -> None:
        """Let the thread end after the jobs already queued (it is a daemon: never joined)."""
        with self._start_lock:
            if self._thread is not None:
                self._jobs.put(None)
                self._thread = None

    def _submit(self, job: _Job[T]) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._jobs.put(job)  # type: ignore[arg-type]

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._busy_since = time.monotonic()
            try:
                with PKCS11_LOCK:
                    if not job.start():
                        continue  # its caller gave up while it waited
                    try:
                        job.result = job.call()
                    except BaseException as exc:  # handed to the caller, who raises it
                        job.error = exc
                job.finish()
            finally:
                self._busy_since = None
