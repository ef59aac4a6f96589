"""One PKCS#11 token as the trio service sees it: serialised, bounded, and quick to say no.

Theory of operation. Every call runs in the PKCS#11 worker thread (:mod:`.worker`), so the
module is never entered by two threads, and softsign chains never wait for it: the trio loop
only waits for an event. A CometBFT node gives up on its signer after 5 s and a late
signature is worth nothing, so each request has a deadline (:data:`DEFAULT_DEADLINE`)
covering the queue, any repair of the session and the signature. Past it the request fails
with a SignerError (the session turns it into a RemoteSignerError reply) and the call, if it
started, finishes in the worker thread unobserved. While a call has been running for longer
than a deadline, new requests fail at once: they would only queue behind it.

When the token cannot be used (gone, no session, repair failed), the next attempt is
scheduled with capped exponential backoff (:class:`kms.backoff.Backoff`, about a second at
most); a request arriving meanwhile waits for that attempt once if it falls within its
deadline, else fails at once. The first success resets the backoff and reports the token
reachable again. A refused PIN is final: every request fails at once until the KMS restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import trio

from kms.backoff import Backoff
from kms.errors import SignerError
from providers.pkcs11.errors import Pkcs11PinRejected, Pkcs11Timeout, Pkcs11Unavailable
from providers.pkcs11.token import TokenConnection
from providers.pkcs11.worker import Pkcs11Worker
from providers.retry import RetryGate

log = logging.getLogger("providers.pkcs11")

T = TypeVar("T")

#: Seconds one request may take, waiting for the worker and repairing the session included.
DEFAULT_DEADLINE = 2.0


class Pkcs11Device:
    """Signs with the keys of one :class:`TokenConnection`, through one worker thread.

    ``requests``, ``errors`` and ``fast_failures`` count signatures asked for, SignerErrors
    raised, and requests refused without trying (token known down, or a call stuck).
    """

    def __init__(
        self,
        connection: TokenConnection,
        worker: Pkcs11Worker | None = None,
        *,
        deadline: float = DEFAULT_DEADLINE,
        backoff: Backoff | None = None,
    ) -> None:
        if deadline <= 0:
            raise ValueError("the PKCS#11 request deadline must be positive")
        self.connection = connection
        self.worker = worker if worker is not None else Pkcs11Worker()
        self.deadline = deadline
        #: backoff after failures; its ``on_reachability`` hears the token go and come back
        self.gate = RetryGate(
            log, recovered=f"PKCS#11 {connection.token} is reachable again", backoff=backoff
        )
        self.requests = 0
        self.errors = 0
        self.fast_failures = 0

    @property
    def available(self) -> bool:
        """False while a repair is scheduled after a failure."""
        return self.gate.available

    async def sign(self, index: int, message: bytes, what: str) -> bytes:
        """Key ``index`` signs ``message``; SignerError (starting with ``what``) on failure."""
        self.requests += 1
        connection = self.connection
        try:
            return await self._run(lambda: connection.sign(index, message), what)
        except SignerError:
            self.errors += 1
            raise

    async def _run(self, call: Callable[[], T], what: str) -> T:
        stuck = self.worker.stuck_for()
        if stuck > self.deadline:
            self.fast_failures += 1
            reason = f"the PKCS#11 module has not returned from a call for {stuck:.1f} s"
            self.gate.report(False, reason)
            raise SignerError(f"{what}: {reason}")
        deadline = trio.current_time() + self.deadline
        waited = attempted = False
        while True:
            try:
                waited = await self.gate.wait(what, deadline, waited)
            except SignerError:
                if not attempted:
                    self.fast_failures += 1
                raise
            attempted = True
            try:
                result = await self.worker.run(call, deadline)
            except Pkcs11Unavailable as exc:
                self.gate.failed(str(exc))
                continue
            except Pkcs11Timeout as exc:
                reason = f"the PKCS#11 module did not answer within {self.deadline:g} s"
                if running := self.worker.stuck_for():
                    reason += f" (its current call has been running for {running:.2f} s)"
                self.gate.report(False, reason)
                raise SignerError(f"{what}: {reason}") from exc
            except Pkcs11PinRejected as exc:
                self.gate.report(False, str(exc))
                raise SignerError(f"{what}: {exc}") from exc
            except SignerError as exc:  # the token refused this operation
                raise SignerError(f"{what}: {exc}") from exc
            except Exception as exc:
                log.exception("unexpected error from the PKCS#11 module during %s", what)
                raise SignerError(f"{what}: unexpected {type(exc).__name__}: {exc}") from exc
            self.gate.succeeded()
            return result
