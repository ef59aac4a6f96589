"""The per-chain tracker: check -> persist -> sign, refusals, refinement, faults, concurrency."""

from __future__ import annotations

import itertools
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import nacl.signing
import pytest
import trio
import trio.lowlevel

from kms.chain.local import LocalStore
from kms.chain.state import BlockRef, Refusal, SignState, check
from kms.chain.store import StateFile
from kms.chain.tracker import (
    ChainTracker,
    DoubleSignRefused,
    MaxHeightRefused,
    Signed,
    SignRequest,
)
from kms.chain.writer import StateWriter
from kms.errors import DoubleSignError, SignerError, SigningRefused, StateError
from providers.softsign import Ed25519SoftSigner
from tests.support import REPO
from tests.support.durable import ShimFile

SEED = bytes(range(32))
A = BlockRef(
    bytes.fromhex("26C0A41F3243C6BCD7AD2DFF8A8D83A71D29D307B5326C227F734A1A512FE47D"),
    1,
    b"\x01" * 32,
)
B = BlockRef(
    bytes.fromhex("2470A41F3243C6BCD7AD2DFF8A8D83A71D29D307B5326C227F734A1A512FE47D"),
    1,
    b"\x01" * 32,
)
NIL = BlockRef.NIL
CHAIN = "test-chain"


def request(height: int, round_: int, step: int, block: BlockRef = NIL, ts: int = 1) -> SignRequest:
    """A request whose sign bytes name everything that identifies it (like real ones do)."""
    kind: Literal["vote", "proposal"] = "proposal" if step == 0 else "vote"
    sign_bytes = f"{CHAIN}|{kind}|{height}|{round_}|{step}|{block.hash.hex()}|{ts}".encode()
    return SignRequest(kind, height, round_, step, block, sign_bytes, (ts, 0))


class CountingSigner(Ed25519SoftSigner):
    """The softsign key, counting signatures and optionally checking the disk first."""

    def __init__(self, state_path: Path | None = None, yield_inside: bool = False) -> None:
        super().__init__(nacl.signing.SigningKey(SEED))
        self.calls: list[bytes] = []
        self.state_path = state_path
        self.yield_inside = yield_inside
        self.on_disk_when_called: list[SignState] = []

    async def sign(self, message: bytes) -> bytes:
        if self.state_path is not None:
            self.on_disk_when_called.append(StateFile(self.state_path).load())
        if self.yield_inside:
            await trio.lowlevel.checkpoint()
        self.calls.append(message)
        return await super().sign(message)


class FailingSigner(CountingSigner):
    async def sign(self, message: bytes) -> bytes:
        self.calls.append(message)
        raise SignerError("device unplugged")


class CountingStore(ShimFile):
    """A real state file whose saves are counted, and can stall or fail."""

    def __init__(self, path: Path, fail: bool = False, delay: float = 0.0) -> None:
        super().__init__(path)
        self.saves: list[SignState] = []
        self.fail = fail
        self.delay = delay

    def save(self, state: SignState) -> None:
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise StateError(f"error writing state to {self.path}: disk full")
        super().save(state)
        self.saves.append(state)


def verify(signer: Ed25519SoftSigner, message: bytes, signature: bytes) -> None:
    nacl.signing.VerifyKey(signer.public_key).verify(message, signature)


async def make(
    tmp_path: Path,
    signer: CountingSigner | None = None,
    writer: StateWriter | None = None,
    **kwargs: object,
) -> tuple[ChainTracker, CountingStore, CountingSigner]:
    store = CountingStore(tmp_path / "state.json")
    signer = signer or CountingSigner()
    local = LocalStore(store, writer, label=CHAIN)
    tracker = await ChainTracker.load(CHAIN, local, signer, **kwargs)  # type: ignore[arg-type]
    return tracker, store, signer


# ---------------------------------------------------------------- the happy path


async def test_signs_persists_and_verifies(tmp_path: Path) -> None:
    with trio.fail_after(10):
        tracker, store, signer = await make(tmp_path, CountingSigner(tmp_path / "state.json"))
        assert tracker.state == SignState.INITIAL
        req = request(5, 0, 1, A, ts=42)
        signed = await tracker.sign(req)
        assert signed.timestamp == (42, 0)
        verify(signer, req.sign_bytes, signed.signature)
        assert tracker.state == SignState(5, 0, 1, A)
        assert StateFile(store.path).load() == SignState(5, 0, 1, A)
        # the signer found the new state already on disk when it was called
        assert signer.on_disk_when_called == [SignState(5, 0, 1, A)]


async def test_state_is_on_disk_before_every_signature(tmp_path: Path) -> None:
    with trio.fail_after(10):
        signer = CountingSigner(tmp_path / "state.json")
        tracker, _, _ = await make(tmp_path, signer)
        sequence = [request(1, 0, 0, A), request(1, 0, 1, A), request(1, 0, 2, A), request(2, 0, 1)]
        for req in sequence:
            await tracker.sign(req)
        assert signer.on_disk_when_called == [r.state for r in sequence]


async def test_state_before_open_is_an_error(tmp_path: Path) -> None:
    tracker = ChainTracker(CHAIN, LocalStore(StateFile(tmp_path / "s.json")), CountingSigner())
    with pytest.raises(StateError, match=CHAIN):
        _ = tracker.state
    with pytest.raises(StateError):
        await tracker.sign(request(1, 0, 1))


async def test_load_refuses_a_corrupt_file(tmp_path: Path) -> None:
    with trio.fail_after(10):
        path = tmp_path / "s.json"
        path.write_text('{"height":"5"')
        with pytest.raises(StateError, match=r"s\.json"):
            await ChainTracker.load(CHAIN, LocalStore(StateFile(path)), CountingSigner())


def test_sign_request_kind_and_step_must_agree() -> None:
    with pytest.raises(ValueError, match="proposal cannot be at step 1"):
        SignRequest("proposal", 1, 0, 1, NIL, b"m", (0, 0))
    with pytest.raises(ValueError, match="vote cannot be at step 0"):
        SignRequest("vote", 1, 0, 0, NIL, b"m", (0, 0))
    with pytest.raises(ValueError, match="kind"):
        SignRequest("commit", 1, 0, 1, NIL, b"m", (0, 0))  # type: ignore[arg-type]
    assert SignRequest("vote", 1, 2, 2, A, b"m", (0, 0)).state == SignState(1, 2, 2, A)


# ---------------------------------------------------------------- refusals


async def test_double_sign_is_refused_with_tmkms_reply_and_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(10):
        tracker, store, signer = await make(tmp_path)
        await tracker.sign(request(10, 0, 1, A))
        with (
            caplog.at_level(logging.ERROR, logger="kms.chain"),
            pytest.raises(DoubleSignRefused) as info,
        ):
            await tracker.sign(request(10, 0, 2, B), peer="tcp://127.0.0.1:26658")
        err = info.value
        assert isinstance(err, DoubleSignError)
        assert err.code == 2
        assert str(err) == "double signing requested at height: 10"
        assert err.refusal is Refusal.DOUBLE_SIGN
        assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
            (
                "kms.chain",
                logging.ERROR,
                "[test-chain@tcp://127.0.0.1:26658] attempted double sign Precommit at h/r/s: "
                "10/0/2 (26C0A41F32 != 2470A41F32)",
            )
        ]
        assert len(signer.calls) == 1
        assert store.saves[-1] == SignState(10, 0, 1, A)
        assert tracker.state == SignState(10, 0, 1, A)


@pytest.mark.parametrize(
    ("req", "refusal", "detail"),
    [
        (request(9, 0, 1, A), Refusal.HEIGHT_REGRESSION, "height regression: last height:10"),
        (request(10, 0, 1, A), Refusal.ROUND_REGRESSION, "round regression at height:10"),
        (request(10, 1, 1, A), Refusal.STEP_REGRESSION, "step regression at height:10 round:1"),
        (request(10, 1, 2), Refusal.DOUBLE_SIGN, "double sign detected"),
    ],
)
async def test_regressions_are_refused_too(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    req: SignRequest,
    refusal: Refusal,
    detail: str,
) -> None:
    with trio.fail_after(10):
        tracker, store, signer = await make(tmp_path)
        await tracker.sign(request(10, 1, 2, A))
        saves = len(store.saves)
        with (
            caplog.at_level(logging.ERROR, logger="kms.chain"),
            pytest.raises(DoubleSignRefused) as info,
        ):
            await tracker.sign(req)
        assert info.value.refusal is refusal
        assert info.value.code == 2
        assert str(info.value) == f"double signing requested at height: {req.height}"
        assert detail in info.value.detail
        message = caplog.records[-1].getMessage()
        assert message.startswith(f"[test-chain] attempted double sign {req.state.type_name} ")
        assert len(signer.calls) == 1
        assert len(store.saves) == saves
        assert tracker.state == SignState(10, 1, 2, A)


async def test_max_height(tmp_path: Path) -> None:
    with trio.fail_after(10):
        tracker, _, signer = await make(tmp_path, max_height=100)
        await tracker.sign(request(100, 0, 1, A))  # at the limit: allowed
        with pytest.raises(MaxHeightRefused) as info:
            await tracker.sign(request(101, 0, 1, A))
        assert isinstance(info.value, SigningRefused)
        assert not isinstance(info.value, DoubleSignError)
        assert info.value.code == 1
        assert "101" in str(info.value)
        assert "100" in str(info.value)
        assert tracker.state.height == 100
        assert len(signer.calls) == 1


# ---------------------------------------------------------------- the refinement


async def test_repeated_vote_returns_the_cached_signature_and_timestamp(tmp_path: Path) -> None:
    with trio.fail_after(10):
        tracker, store, signer = await make(tmp_path)
        first = await tracker.sign(request(7, 0, 2, A, ts=100))
        saves = len(store.saves)
        again = await tracker.sign(request(7, 0, 2, A, ts=200))
        assert again == first == Signed(first.signature, (100, 0))
        assert len(signer.calls) == 1  # not signed anew
        assert len(store.saves) == saves  # and the unchanged state not rewritten
        # the returned signature covers the *earlier* sign bytes, which the node will use
        verify(signer, request(7, 0, 2, A, ts=100).sign_bytes, again.signature)


async def test_repeated_nil_vote_is_cached_too(tmp_path: Path) -> None:
    with trio.fail_after(10):
        tracker, _, signer = await make(tmp_path)
        first = await tracker.sign(request(7, 0, 1, NIL, ts=1))
        assert await tracker.sign(request(7, 0, 1, NIL, ts=2)) == first
        assert len(signer.calls) == 1


async def test_repeated_proposal_is_signed_again_with_its_timestamp(tmp_path: Path) -> None:
    with trio.fail_after(10):
        tracker, store, signer = await make(tmp_path)
        await tracker.sign(request(7, 0, 0, A, ts=100))
        saves = len(store.saves)
        second = await tracker.sign(request(7, 0, 0, A, ts=200))
        assert second.timestamp == (200, 0)
        verify(signer, request(7, 0, 0, A, ts=200).sign_bytes, second.signature)
        assert len(signer.calls) == 2
        assert len(store.saves) == saves


async def test_cache_does_not_survive_a_later_vote(tmp_path: Path) -> None:
    with trio.fail_after(10):
        tracker, _, signer = await make(tmp_path)
        await tracker.sign(request(7, 0, 1, A, ts=1))
        await tracker.sign(request(7, 0, 2, A, ts=2))
        again = await tracker.sign(request(7, 0, 2, A, ts=3))
        assert again.timestamp == (2, 0)
        with pytest.raises(DoubleSignRefused):
            await tracker.sign(request(7, 0, 1, A, ts=4))  # step regression, not a cache hit
        assert len(signer.calls) == 2


async def test_restart_forgets_the_cache_but_not_the_state(tmp_path: Path) -> None:
    with trio.fail_after(10):
        tracker, store, _ = await make(tmp_path)
        await tracker.sign(request(20, 1, 2, A))
        signer = CountingSigner()
        restarted = await ChainTracker.load(CHAIN, LocalStore(StateFile(store.path)), signer)
        assert restarted.state == SignState(20, 1, 2, A)
        with pytest.raises(DoubleSignRefused):
            await restarted.sign(request(20, 1, 2, B))
        with pytest.raises(DoubleSignRefused):
            await restarted.sign(request(20, 1, 2, NIL))
        with pytest.raises(DoubleSignRefused):
            await restarted.sign(request(20, 0, 2, A))
        # the same vote is signed anew (no cache after a restart): same block, never slashable
        signed = await restarted.sign(request(20, 1, 2, A, ts=9))
        assert signed.timestamp == (9, 0)
        assert len(signer.calls) == 1


# ---------------------------------------------------------------- faults


async def test_failed_save_means_no_signature_and_old_state(tmp_path: Path) -> None:
    with trio.fail_after(10):
        tracker, store, signer = await make(tmp_path)
        await tracker.sign(request(3, 0, 1, A))
        store.fail = True
        with pytest.raises(StateError, match="disk full"):
            await tracker.sign(request(4, 0, 1, A))
        assert len(signer.calls) == 1
        assert tracker.state == SignState(3, 0, 1, A)
        assert StateFile(store.path).load() == SignState(3, 0, 1, A)
        store.fail = False
        await tracker.sign(request(4, 0, 1, A))  # recovers once the disk does
        assert tracker.state == SignState(4, 0, 1, A)


async def test_failed_fsync_at_the_lowest_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(10):
        tracker, store, signer = await make(tmp_path)
        await tracker.sign(request(3, 0, 1, A))

        def broken_fsync(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fsync", broken_fsync)
        with pytest.raises(StateError) as info:
            await tracker.sign(request(4, 0, 1, A))
        monkeypatch.undo()
        assert isinstance(info.value.__cause__, OSError)
        assert len(signer.calls) == 1
        assert tracker.state == SignState(3, 0, 1, A)
        assert StateFile(store.path).load() == SignState(3, 0, 1, A)


async def test_failed_signature_after_save_leaves_state_advanced(tmp_path: Path) -> None:
    with trio.fail_after(10):
        tracker, store, _ = await make(tmp_path, FailingSigner())
        with pytest.raises(SignerError):
            await tracker.sign(request(3, 0, 1, A))
        assert tracker.state == SignState(3, 0, 1, A)
        assert StateFile(store.path).load() == SignState(3, 0, 1, A)
        with pytest.raises(DoubleSignRefused):
            await tracker.sign(request(3, 0, 1, B))


async def test_cancelled_during_save_still_completes_the_save(tmp_path: Path) -> None:
    with trio.fail_after(10):
        store = CountingStore(tmp_path / "state.json")
        signer = CountingSigner()
        # a thread write: an inline one finishes before any cancellation can be delivered
        tracker = await ChainTracker.load(
            CHAIN, LocalStore(store, StateWriter(inline=False)), signer
        )
        store.delay = 0.2
        with trio.move_on_after(0.02) as scope:
            await tracker.sign(request(5, 0, 1, A))
        assert scope.cancelled_caught
        assert signer.calls == []  # cancelled before signing
        # memory and disk agree: both moved on together, so nothing can be signed that the
        # disk does not cover, nor a conflicting request slip through
        assert tracker.state == SignState(5, 0, 1, A)
        assert StateFile(store.path).load() == SignState(5, 0, 1, A)
        store.delay = 0
        with pytest.raises(DoubleSignRefused):
            await tracker.sign(request(5, 0, 1, B))


# ---------------------------------------------------------------- raise_to_height


async def test_raise_to_height_never_lowers(tmp_path: Path) -> None:
    with trio.fail_after(10):
        tracker, store, _ = await make(tmp_path)
        await tracker.sign(request(50, 2, 2, A))
        assert not await tracker.raise_to_height(50)
        assert not await tracker.raise_to_height(10)
        assert tracker.state == SignState(50, 2, 2, A)
        assert await tracker.raise_to_height(60)
        assert tracker.state == SignState(60, 0, 0, NIL)
        assert StateFile(store.path).load() == SignState(60, 0, 0, NIL)
        with pytest.raises(DoubleSignRefused):
            await tracker.sign(request(59, 0, 1, A))
        with pytest.raises(ValueError, match="non-negative"):
            await tracker.raise_to_height(-1)


# ---------------------------------------------------------------- concurrency


@pytest.mark.parametrize("seed", range(12))
async def test_concurrent_conflicting_requests_yield_no_conflicting_signatures(
    tmp_path: Path, seed: int
) -> None:
    """Many connections fire conflicting and identical requests for one chain at once."""
    rng = random.Random(seed)
    with trio.fail_after(30):
        signer = CountingSigner(yield_inside=True)
        tracker, store, _ = await make(tmp_path, signer)
        blocks = [A, B, NIL]
        results: list[tuple[SignRequest, Signed]] = []
        refused = 0

        async def connection(requests: list[SignRequest]) -> None:
            nonlocal refused
            for req in requests:
                try:
                    results.append((req, await tracker.sign(req)))
                except DoubleSignRefused:
                    refused += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                reqs = [
                    request(h, r, s, rng.choice(blocks), ts=rng.randrange(1000))
                    for h in range(1, 6)
                    for r in range(2)
                    for s in range(3)
                    if rng.random() < 0.8
                ]
                nursery.start_soon(connection, reqs)

        assert results
        assert refused > 0
        # every returned signature is valid for the request it answers (or, for a cached
        # vote, for the identical earlier vote)
        signed_messages = set(signer.calls)
        for req, signed in results:
            matches = [
                m
                for m in signed_messages
                if m.rsplit(b"|", 1)[0] == req.sign_bytes.rsplit(b"|", 1)[0]
            ]
            assert any(_verifies(signer, m, signed.signature) for m in matches), (
                f"bad signature for {req.state}"
            )
        # no two signatures conflict: one block per slot, and one non-nil block among the
        # votes of a height/round (a proposal for A, a nil prevote, then a precommit for B
        # is allowed by tmkms's rule, so proposals are left out of the second check)
        by_slot: dict[tuple[int, int, int], set[BlockRef]] = {}
        by_round: dict[tuple[int, int], set[BlockRef]] = {}
        for req, _ in results:
            by_slot.setdefault(req.state.hrs, set()).add(req.block)
            if req.kind == "vote" and not req.block.is_nil():
                by_round.setdefault((req.height, req.round), set()).add(req.block)
        assert all(len(blocks) == 1 for blocks in by_slot.values()), by_slot
        assert all(len(blocks) == 1 for blocks in by_round.values()), by_round
        # the signatures went out in an order the rule accepts, one after the other
        by_hash = {block.hash.hex().encode(): block for block in blocks}
        previous = SignState.INITIAL
        for message in signer.calls:
            _, _, height, round_, step, block_hex, _ = message.split(b"|")
            current = SignState(int(height), int(round_), int(step), by_hash[block_hex])
            assert check(previous, current) is None, (previous, current)
            previous = current
        assert previous == tracker.state
        # and the state on disk is the last one signed
        assert StateFile(store.path).load() == tracker.state
        assert max(s.hrs for s in store.saves) == tracker.state.hrs


def _verifies(signer: Ed25519SoftSigner, message: bytes, signature: bytes) -> bool:
    try:
        verify(signer, message, signature)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


async def test_identical_concurrent_votes_return_one_signature(tmp_path: Path) -> None:
    with trio.fail_after(10):
        signer = CountingSigner(yield_inside=True)
        tracker, _, _ = await make(tmp_path, signer)
        results: list[Signed] = []

        async def one(ts: int) -> None:
            results.append(await tracker.sign(request(9, 0, 2, A, ts=ts)))

        async with trio.open_nursery() as nursery:
            for ts in range(20):
                nursery.start_soon(one, ts)
        assert len(results) == 20
        assert len(set(results)) == 1
        assert len(signer.calls) == 1


# ---------------------------------------------------------------- SIGKILL at any instant

CHILD = r"""
import sys, trio, nacl.signing
from pathlib import Path
from typing import Literal
from kms.chain.state import BlockRef
from kms.chain.local import LocalStore
from kms.chain.store import StateFile
from kms.chain.tracker import ChainTracker, SignRequest
from providers.softsign import Ed25519SoftSigner

async def main() -> None:
    signer = Ed25519SoftSigner(nacl.signing.SigningKey(bytes(32)))
    tracker = await ChainTracker.load("c", LocalStore(StateFile(Path(sys.argv[1]))), signer)
    height = tracker.state.height
    while True:
        height += 1
        for step in (1, 2):
            block = BlockRef(height.to_bytes(32, "big"), 1, bytes(32))
            req = SignRequest("vote", height, 0, step, block, b"x", (0, 0))
            await tracker.sign(req)
            # only now does the "signature" leave the process
            sys.stdout.write(f"{height} {step}\n")
            sys.stdout.flush()

trio.run(main)
"""


@pytest.mark.slow
def test_sigkill_never_leaves_a_signature_the_disk_does_not_cover(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = random.Random(99)
    last_height_seen = 0
    for round_no in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert proc.stdout is not None
        wanted = rng.randrange(20, 200)
        last: tuple[int, int] = (0, 0)
        for line in itertools.islice(proc.stdout, wanted):
            height, step = map(int, line.split())
            last = (height, step)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        # drain whatever was emitted before the kill: it counts as "given out"
        for line in proc.stdout:
            height, step = map(int, line.split())
            last = (height, step)
        proc.stdout.close()
        on_disk = StateFile(path).load()
        assert last > (0, 0), f"round {round_no}: child produced nothing"
        assert on_disk.hrs >= (last[0], 0, last[1]), (round_no, on_disk, last)
        assert last[0] > last_height_seen  # each run resumed above the previous one
        last_height_seen = last[0]
