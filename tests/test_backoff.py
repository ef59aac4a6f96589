"""Reconnect backoff: the delay formula, and the supervisor's retry schedule in trio time."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey

from kms.backoff import Backoff
from kms.chain.local import LocalStore
from kms.chain.store import StateFile
from kms.chain.tracker import ChainTracker
from kms.handler import RequestHandler
from kms.ops.stats import ValidatorMetrics
from kms.protocol.version import ProtocolVersion
from kms.service import supervise
from kms.session import Session
from kms.transport.address import Address
from providers.softsign import Ed25519SoftSigner


def test_delays_grow_exponentially_up_to_the_cap_with_bounded_jitter() -> None:
    backoff = Backoff(initial=0.1, factor=2.0, cap=1.0, jitter=0.2, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(8)]
    bases = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    for delay, base in zip(delays, bases, strict=True):
        assert base * 0.8 <= delay <= base
    assert len(set(delays)) == len(delays), "jitter makes every delay different"


def test_reset_starts_over() -> None:
    backoff = Backoff(jitter=0.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.1)


class RecordingSession(Session):
    """A real session whose dial attempts are time-stamped with trio's clock."""

    attempts: list[float]

    async def run(self) -> None:
        self.attempts.append(trio.current_time())
        await super().run()


async def _session(tmp_path: Path, prefix: str) -> RecordingSession:
    signer = Ed25519SoftSigner(SigningKey.generate())
    tracker = ChainTracker("test-1", LocalStore(StateFile(tmp_path / "state.json")), signer)
    await tracker.open()
    handler = RequestHandler(
        chain_id="test-1",
        version=ProtocolVersion.V0_38,
        tracker=tracker,
        signer=signer,
        sign_extensions=True,
        peer="unix",
    )
    # A unix path nobody listens on: connect() fails at once, with no real waiting.
    session = RecordingSession(
        addr=Address(scheme="unix", path=str(tmp_path / "absent.sock")),
        version=ProtocolVersion.V0_38,
        identity=None,
        handler=handler,
        timeout=10.0,
        prefix=prefix,
    )
    session.attempts = []
    return session


async def test_supervisor_retries_on_the_backoff_schedule(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    session = await _session(tmp_path, "[test-1@unix]")
    rng_seed = 42
    expected = Backoff(rng=random.Random(rng_seed))
    backoff = Backoff(rng=random.Random(rng_seed))
    start = trio.current_time()
    with trio.move_on_after(5.0):
        await supervise(session, backoff, True, ValidatorMetrics())
    schedule = [start]
    while True:
        following = schedule[-1] + expected.next_delay()
        if following > start + 5.0:
            break
        schedule.append(following)
    assert session.attempts == pytest.approx(schedule)
    assert len(session.attempts) >= 8
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors[0] == "[test-1@unix] I/O error: No such file or directory (os error 2)"


async def test_no_reconnect_ends_the_task_after_one_failure(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    session = await _session(tmp_path, "[test-1@unix]")
    with trio.fail_after(1):
        await supervise(session, Backoff(), False, ValidatorMetrics())
    assert len(session.attempts) == 1
