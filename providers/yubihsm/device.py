"""One YubiHSM 2 as the trio service sees it: serialised, bounded, and quick to say no.

Theory of operation. The ``yubihsm`` library blocks, so every call runs in a worker thread
(``trio.to_thread.run_sync``) under this device's own ``CapacityLimiter(1)``: the HSM
executes one command at a time anyway, and nothing else in the process shares that limiter,
so softsign chains never wait behind the HSM.

A CometBFT node gives up on its signer after a few seconds, and a signature that arrives late
is worth nothing; so every request gets a deadline (:data:`DEFAULT_DEADLINE`, well under the
node's 5 s) covering the wait for the device, reconnecting and signing. Past it the worker
thread is abandoned (it ends by itself: every backend I/O call has a timeout, and the limiter
stays held until it does, so the device is never used by two threads) and the request fails
with a SignerError, which the session turns into a RemoteSignerError reply.

When the device cannot be reached, the next attempt is scheduled with capped exponential
backoff (:class:`kms.backoff.Backoff`, at most about a second). A request arriving meanwhile
waits for that attempt once, if it falls within its deadline; if the device is still down it
fails right away. So during an outage each request fails within about one backoff step, and
the first request after the device is back is signed. The first successful call resets the
backoff. Only trio's clock is used for waiting, so tests can drive it.
"""

from __future__ import annotations

import logging
from typing import TypeVar

import trio
from yubihsm.core import AuthSession
from yubihsm.defs import COMMAND

from kms.backoff import Backoff
from kms.errors import SignerError
from providers.retry import RetryGate
from providers.yubihsm.connection import HsmCommandError, HsmConnection, HsmUnavailable, Operation

log = logging.getLogger("providers.yubihsm")

T = TypeVar("T")

#: Seconds one request may spend on the HSM, waiting and reconnecting included.
DEFAULT_DEADLINE = 2.0
#: Seconds without a command after which :meth:`HsmDevice.keep_alive` pings the session
#: (the YubiHSM 2 closes a session after 30 s without one).
KEEPALIVE_IDLE = 20.0


class HsmDevice:
    """Runs operations on one HSM from trio: one at a time, each within a deadline.

    ``requests``, ``errors`` and ``fast_failures`` count calls, SignerErrors raised, and
    requests refused without trying because the device was known to be down; the
    connection's own counters (``connection.stats``) count session re-opens and reconnects.
    """

    def __init__(
        self,
        connection: HsmConnection,
        *,
        deadline: float = DEFAULT_DEADLINE,
        backoff: Backoff | None = None,
    ) -> None:
        if deadline <= 0:
            raise ValueError("the YubiHSM request deadline must be positive")
        self.connection = connection
        self.deadline = deadline
        #: backoff after failures; its ``on_reachability`` hears the device go and come back
        self.gate = RetryGate(
            log,
            recovered="YubiHSM is reachable again",
            attempt="reconnect attempt",
            backoff=backoff,
        )
        self._limiter: trio.CapacityLimiter | None = None
        self._last_used: float | None = None  # trio time of the last request
        self.requests = 0
        self.errors = 0
        self.fast_failures = 0

    @property
    def limiter(self) -> trio.CapacityLimiter:
        """This device's own one-slot thread limiter (created inside the trio run)."""
        if self._limiter is None:
            self._limiter = trio.CapacityLimiter(1)
        return self._limiter

    @property
    def available(self) -> bool:
        """False while a reconnect is scheduled after a failure."""
        return self.gate.available

    async def run(self, operation: Operation[T], what: str) -> T:
        """Run ``operation(session)`` in a worker thread; SignerError on any failure.

        ``what`` names the operation in error messages (e.g. ``"SIGN_EDDSA with key 0x0001"``).
        """
        self.requests += 1
        self._last_used = trio.current_time()
        try:
            return await self._run(operation, what)
        except SignerError:
            self.errors += 1
            raise

    async def keep_alive(self, idle: float = KEEPALIVE_IDLE) -> None:
        """Forever: after ``idle`` seconds without a request, send an ECHO in the session.

        The device would otherwise close an idle session after 30 s, and the next signature
        would pay for authenticating a new one. A failed ping is only logged (at debug):
        the device's own reconnect logic reports outages.
        """
        if self._last_used is None:
            self._last_used = trio.current_time()
        while True:
            await trio.sleep_until(self._last_used + idle)
            if trio.current_time() - self._last_used < idle:
                continue  # a request came meanwhile
            try:
                await self.run(_echo, "ECHO (session keepalive)")
            except SignerError as exc:
                log.debug("YubiHSM keepalive failed: %s", exc)

    async def _run(self, operation: Operation[T], what: str) -> T:
        deadline = trio.current_time() + self.deadline
        waited = attempted = False
        with trio.move_on_at(deadline):
            while True:
                try:
                    waited = await self.gate.wait(what, deadline, waited)
                except SignerError:
                    if not attempted:
                        self.fast_failures += 1
                    raise
                attempted = True
                try:
                    result = await trio.to_thread.run_sync(
                        self.connection.execute,
                        operation,
                        limiter=self.limiter,
                        abandon_on_cancel=True,
                    )
                except HsmUnavailable as exc:
                    self.gate.failed(str(exc))
                    continue
                except HsmCommandError as exc:
                    raise SignerError(f"{what}: {exc}") from exc
                except Exception as exc:
                    log.exception("unexpected error from the YubiHSM library during %s", what)
                    raise SignerError(f"{what}: unexpected {type(exc).__name__}: {exc}") from exc
                self.gate.succeeded()
                return result
        raise SignerError(f"{what}: YubiHSM did not answer within {self.deadline:g} s")


def _echo(session: AuthSession) -> bytes:
    """A session command with no effect: it only counts as activity."""
    return session.send_secure_cmd(COMMAND.ECHO, b"keepalive")
