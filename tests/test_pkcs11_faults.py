"""The PKCS#11 provider when the real SoftHSM2 token misbehaves: refusals, never bad signatures.

Faults come from outside the provider: session handles invalidated and the process logged
out through the module's own C_* functions (ctypes, same module instance), the token
directory moved away and back, a token replaced by one with another PIN, the process-wide
PKCS#11 lock held by the test (the worker stalls exactly as in a hung module call), and many
chains signing at once. Every signature that comes back verifies under the token's key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey, VerifyKey

from kms.backoff import Backoff
from kms.errors import SignerError
from providers import Signer
from providers.pkcs11 import PKCS11_LOCK, Pkcs11Ed25519Signer
from providers.softsign import Ed25519SoftSigner
from tests.support.softhsm import (
    Health,
    SoftHsm,
    opened,
    pkcs11_section,
    private_softhsm,
    public_key_of,
    put_ed25519,
    raw_call,
)

FAST = Backoff(initial=0.05, cap=0.2, jitter=0.0)
CKF_SERIAL_SESSION = 4


@pytest.fixture
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHsm]:
    yield from private_softhsm(tmp_path, monkeypatch)


def make_keys(hsm: SoftHsm, count: int) -> dict[str, bytes]:
    labels = [f"validator-{n}" for n in range(count)]
    with hsm.session() as session:
        for n, label in enumerate(labels):
            put_ed25519(session, label, bytes([n + 1]))
        return {label: public_key_of(session, label) for label in labels}


def keys_for(public: dict[str, bytes]) -> list[dict[str, object]]:
    return [{"chain_ids": [f"chain-{n}"], "label": label} for n, label in enumerate(public)]


def signer_of(provider_keys: list[object], n: int = 0) -> Pkcs11Ed25519Signer:
    signer = provider_keys[n].signer  # type: ignore[attr-defined]
    assert isinstance(signer, Pkcs11Ed25519Signer)
    return signer


async def sign_until_it_works(signer: Signer, message: bytes, limit: float = 10.0) -> bytes:
    """Ask again every 50 ms until a signature comes back; each one is checked."""
    with trio.fail_after(limit):
        while True:
            try:
                signature = await signer.sign(message)
            except SignerError:
                await trio.sleep(0.05)
                continue
            VerifyKey(signer.public_key).verify(message, signature)
            return signature


async def test_invalidated_session_handles_are_reopened(softhsm: SoftHsm) -> None:
    public = make_keys(softhsm, 1)
    health = Health()
    with opened(pkcs11_section(softhsm, keys_for(public)), health) as provider:
        signer = signer_of(provider.keys)
        connection = signer.device.connection
        VerifyKey(public["validator-0"]).verify(b"one", await signer.sign(b"one"))
        assert raw_call(softhsm.module, "C_CloseAllSessions", softhsm.slots["kms"]) == 0
        VerifyKey(public["validator-0"]).verify(b"two", await signer.sign(b"two"))
        assert connection.stats.session_reopens == 1 and health.session_reopens == 1
        assert connection.stats.module_restarts == 0
        assert signer.device.errors == 0 and health.reports == []


async def test_a_process_logged_out_elsewhere_logs_in_again(softhsm: SoftHsm) -> None:
    """C_Logout in another session of the process: SoftHSM hides the key, the provider
    starts over (finalise, initialise, log in) within the same request."""
    import ctypes

    public = make_keys(softhsm, 1)
    with opened(pkcs11_section(softhsm, keys_for(public))) as provider:
        signer = signer_of(provider.keys)
        await signer.sign(b"one")
        with PKCS11_LOCK:
            module = ctypes.CDLL(str(softhsm.module))
            handle = ctypes.c_ulong()
            slot = ctypes.c_ulong(softhsm.slots["kms"])
            assert (
                module.C_OpenSession(slot, CKF_SERIAL_SESSION, None, None, ctypes.byref(handle))
                == 0
            )
            assert module.C_Logout(handle) == 0
            assert module.C_CloseSession(handle) == 0
        VerifyKey(public["validator-0"]).verify(b"two", await signer.sign(b"two"))
        stats = signer.device.connection.stats
        assert stats.logins == 2 and stats.login_failures == 0


async def test_token_taken_away_fails_fast_then_signing_resumes(softhsm: SoftHsm) -> None:
    public = make_keys(softhsm, 1)
    health = Health()
    config = pkcs11_section(softhsm, keys_for(public))
    with opened(config, health, deadline=1.0, backoff=FAST) as provider:
        signer = signer_of(provider.keys)
        device, connection = signer.device, signer.device.connection
        await signer.sign(b"before")
        softhsm.take_away()
        for n in range(5):
            started = time.monotonic()
            with pytest.raises(SignerError, match="CKM_EDDSA with PKCS#11 key") as caught:
                await signer.sign(b"during %d" % n)
            assert time.monotonic() - started < 1.0, "a request during an outage fails fast"
            assert "not found" in str(caught.value) or "CKR_" in str(caught.value)
        assert not device.available
        assert health.reports and health.reports[0][0] is False
        softhsm.bring_back()
        await sign_until_it_works(signer, b"after")
        assert device.available
        assert [up for up, _ in health.reports] == [False, True]
        assert connection.stats.module_restarts >= 1
        assert connection.stats.session_reopens >= 1 and health.session_reopens >= 1


async def test_many_chains_on_one_token_sign_at_once(softhsm: SoftHsm) -> None:
    """Four keys, 200 concurrent requests: one thread ever enters the module, at most one
    call at a time, and no CKR_GENERAL_ERROR (the crash SoftHSM shows without the lock)."""
    public = make_keys(softhsm, 4)
    with opened(pkcs11_section(softhsm, keys_for(public))) as provider:
        signers = [signer_of(provider.keys, n) for n in range(4)]
        connection = signers[0].device.connection
        threads: set[str] = set()
        active = peak = 0
        guard = threading.Lock()
        real_sign = connection.sign

        def watched_sign(index: int, message: bytes) -> bytes:
            nonlocal active, peak
            with guard:
                active += 1
                peak = max(peak, active)
                threads.add(threading.current_thread().name)
            try:
                return real_sign(index, message)
            finally:
                with guard:
                    active -= 1

        connection.sign = watched_sign  # type: ignore[method-assign]
        results: list[tuple[Signer, bytes, bytes]] = []

        async def ask(signer: Signer, n: int) -> None:
            message = b"height %d" % n
            results.append((signer, message, await signer.sign(message)))

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for n in range(50):
                    for signer in signers:
                        nursery.start_soon(ask, signer, n)
        assert len(results) == 200 and peak == 1 and threads == {"pkcs11-worker"}
        for signer, message, signature in results:
            VerifyKey(signer.public_key).verify(message, signature)
        assert signers[0].device.errors == 0 and connection.stats.module_restarts == 0


async def test_a_stuck_module_call_is_refused_in_time_and_never_stalls_softsign(
    softhsm: SoftHsm,
) -> None:
    public = make_keys(softhsm, 1)
    health = Health()
    config = pkcs11_section(softhsm, keys_for(public))
    with opened(config, health, deadline=0.5) as provider:
        signer = signer_of(provider.keys)
        device, connection = signer.device, signer.device.connection
        soft = Ed25519SoftSigner(SigningKey.generate())
        await signer.sign(b"warm up")
        signed_before = connection.stats.signatures
        failures: list[tuple[float, str]] = []
        latencies: list[float] = []

        async def hsm_requests() -> None:
            for n in range(4):
                started = trio.current_time()
                with pytest.raises(SignerError) as caught:
                    await signer.sign(b"stuck %d" % n)
                failures.append((trio.current_time() - started, str(caught.value)))

        async def softsign_requests() -> None:
            for n in range(100):
                started = trio.current_time()
                assert len(await soft.sign(n.to_bytes(4, "big"))) == 64
                latencies.append(trio.current_time() - started)
                await trio.sleep(0.01)

        assert PKCS11_LOCK.acquire(timeout=5)  # the worker now stalls on its next call
        try:
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(hsm_requests)
                    nursery.start_soon(softsign_requests)
        finally:
            PKCS11_LOCK.release()
        assert len(failures) == 4 and max(took for took, _ in failures) < 0.8
        assert "did not answer within 0.5 s" in failures[0][1]
        assert all("has not returned from a call for" in text for _, text in failures[1:])
        assert all(took < 0.05 for took, _ in failures[1:]), "refused at once while stuck"
        assert max(latencies) < 0.25, "softsign never waits for the token"
        assert health.reports and health.reports[0][0] is False
        with trio.fail_after(5):
            # the worker thread wakes up and moves on (a thread's state: no event to wait on)
            while device.worker.stuck_for():  # noqa: ASYNC110
                await trio.sleep(0.01)
            signature = await signer.sign(b"unstuck")
        VerifyKey(public["validator-0"]).verify(b"unstuck", signature)
        assert connection.stats.signatures == signed_before + 1, "abandoned requests never ran"
        assert device.worker.abandoned == 1
        assert health.reports[-1] == (True, None)


async def test_a_refused_pin_is_never_tried_again(softhsm: SoftHsm) -> None:
    """The token comes back with another PIN: one login attempt, then refusals only."""
    public = make_keys(softhsm, 1)
    config = pkcs11_section(softhsm, keys_for(public))
    with opened(config, deadline=1.0, backoff=FAST) as provider:
        signer = signer_of(provider.keys)
        connection = signer.device.connection
        await signer.sign(b"before")
        softhsm.take_away()
        softhsm.write_conf()  # an empty token directory again
        softhsm.init_token(pin="another-pin-0000")
        messages = []
        with trio.fail_after(10):
            while connection.stats.login_failures == 0:
                with pytest.raises(SignerError) as caught:
                    await signer.sign(b"x")
                messages.append(str(caught.value))
                await trio.sleep(0.05)
        assert "refused the PIN (CKR_PIN_INCORRECT); not retried" in messages[-1]
        for _ in range(5):
            started = time.monotonic()
            with pytest.raises(SignerError, match="refused the PIN"):
                await signer.sign(b"y")
            assert time.monotonic() - started < 0.05
        assert connection.stats.login_failures == 1 and connection.stats.logins == 1
        for text in messages:
            assert softhsm.pin not in text and "another-pin-0000" not in text


async def test_a_module_finalised_behind_the_providers_back_is_initialised_again(
    softhsm: SoftHsm,
) -> None:
    public = make_keys(softhsm, 1)
    with opened(pkcs11_section(softhsm, keys_for(public))) as provider:
        signer = signer_of(provider.keys)
        await signer.sign(b"one")
        assert raw_call(softhsm.module, "C_Finalize", 0) == 0  # C_Finalize(NULL)
        VerifyKey(public["validator-0"]).verify(b"two", await signer.sign(b"two"))
        assert signer.device.connection.stats.module_restarts == 1
