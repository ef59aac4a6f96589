"""After a device failure: when to try it again, and telling the metrics it went and came back.

Both HSM providers (YubiHSM, PKCS#11) keep one :class:`RetryGate` per device. A request
calls :meth:`RetryGate.wait` before each attempt: while a retry is scheduled it either
sleeps until then (once, and only if that is before the request's deadline) or fails fast
with the last failure, so a dead device costs a request nothing but a RemoteSignerError
reply. :meth:`failed` schedules the next attempt with capped exponential backoff (logging
the first failure of an outage as an ERROR); :meth:`succeeded` resets it. Reachability
changes go to ``on_reachability`` (a provider's :class:`providers.ProviderHealth`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from kms.backoff import Backoff
from kms.errors import SignerError

__all__ = ["RetryGate"]


class RetryGate:
    """Backoff and reachability of one device (see the module docstring).

    ``recovered`` is the INFO line logged when the device answers again; ``attempt`` names
    an attempt in the fast-failure message (``"... (next <attempt> in 4.2 s)"``).
    """

    def __init__(
        self,
        log: logging.Logger,
        *,
        recovered: str,
        attempt: str = "attempt",
        backoff: Backoff | None = None,
    ) -> None:
        self._log = log
        self._recovered = recovered
        self._attempt = attempt
        self._backoff = backoff if backoff is not None else Backoff()
        self._retry_at: float | None = None
        self._last_failure = ""
        self._reachable = True
        #: Called with (False, reason) when the device goes away and (True, None) when it is
        #: back, e.g. ``ProviderHealth.set_reachable``.
        self.on_reachability: Callable[[bool, str | None], None] | None = None

    @property
    def available(self) -> bool:
        """False while a retry is scheduled after a failure."""
        return self._retry_at is None

    async def wait(self, what: str, deadline: float, waited: bool) -> bool:
        """Before an attempt: sleep until a scheduled retry, or raise SignerError if that is
        past ``deadline`` or this request already ``waited`` once. Returns whether it slept."""
        if self._retry_at is None:
            return waited
        if waited or self._retry_at > deadline:
            left = max(self._retry_at - trio.current_time(), 0.0)
            raise SignerError(
                f"{what}: {self._last_failure} (next {self._attempt} in {left:.1f} s)"
            )
        await trio.sleep_until(self._retry_at)
        return True

    def failed(self, reason: str) -> None:
        """The device could not be reached: schedule the next attempt."""
        delay = self._backoff.next_delay()
        if self._retry_at is None:
            self._log.error("%s; retrying in %.2f s", reason, delay)
        self.report(False, reason)
        self._last_failure = reason
        self._retry_at = trio.current_time() + delay

    def succeeded(self) -> None:
        """An attempt reached the device: no retry pending, the backoff starts over."""
        self._retry_at = None
        self._backoff.reset()
        if not self._reachable:
            self._log.info("%s", self._recovered)
            self.report(True, None)

    def report(self, reachable: bool, reason: str | None) -> None:
        """Tell ``on_reachability`` when reachability changes (its errors only logged)."""
        changed = reachable != self._reachable
        self._reachable = reachable
        if not changed or self.on_reachability is None:
            return
        try:
            self.on_reachability(reachable, reason)
        except Exception:  # monitoring must never break signing
            self._log.exception("reachability callback failed")
