"""Reconnect delays: capped exponential backoff with jitter, reset after a good handshake."""

from __future__ import annotations

import random

import attrs


@attrs.define
class Backoff:
    """Yields the delay before each reconnect attempt.

    The n-th delay (from 0) is ``min(cap, initial * factor**n)`` scaled by a random factor in
    ``[1 - jitter, 1]``, so many validators that lost their nodes at once do not all dial in
    the same instant. The default cap keeps reconnects within about a second: a CometBFT
    node gives up on its signer after waiting only a few seconds at start.
    """

    initial: float = 0.1
    factor: float = 2.0
    cap: float = 1.0
    jitter: float = 0.2
    rng: random.Random = attrs.field(factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        base = min(self.cap, self.initial * self.factor**self.attempt)
        self.attempt += 1
        return base * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        """Start over from the initial delay (called after a successful handshake)."""
        self.attempt = 0
