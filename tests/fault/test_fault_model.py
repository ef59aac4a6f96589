"""Model check: ChainTracker against a reference model of the rule table, under faults.

A hypothesis state machine drives one real ChainTracker (real StateFile on disk, real
Ed25519 signer) through signing requests, failed saves, failed signatures, requests
cancelled while their state is being saved, restarts (a new tracker reading the file) and
state-hook raises, and compares every outcome with a model written here from the spec's
table alone. Independently of the model, every signature handed out goes into a book that
must never hold two conflicting signatures.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Literal

import pytest
import trio
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from nacl.signing import SigningKey

from kms.chain.local import LocalStore
from kms.chain.state import BlockRef, SignState
from kms.chain.store import StateFile
from kms.chain.tracker import ChainTracker, Signed, SignRequest
from kms.chain.writer import StateWriter
from kms.errors import DoubleSignError, SignerError, SigningRefused, StateError
from providers.softsign import Ed25519SoftSigner
from tests.fault.kit import SignedBook, fault_counted
from tests.support.durable import ShimFile

BLOCKS = {
    "A": BlockRef(b"\xaa" * 32, 1, b"\x0a" * 32),
    "B": BlockRef(b"\xbb" * 32, 1, b"\x0b" * 32),
    "nil": BlockRef.NIL,
}
Block = Literal["A", "B", "nil"]
Model = tuple[int, int, int, str]


def model_allows(last: Model, req: Model, max_height: int | None) -> bool:
    """The spec's table, restated: may ``req`` be signed after ``last``?"""
    if max_height is not None and req[0] > max_height:
        return False
    if req[:3] < last[:3]:
        return False  # height, round or step went back
    if req[:2] != last[:2]:
        return True  # a later height or round: anything goes
    if req[3] == last[3]:
        return True  # the same block (or nil twice) again
    if req[2] == last[2]:
        return False  # two different blocks (nil counts) in the very same step
    return "nil" in (req[3], last[3])  # nil then a block, or a block then nil, later


class WasCancelled(Exception):
    """The request was cancelled (by its own cancel scope) before it returned."""


class FaultyStore(ShimFile):
    """A real state file whose next save can fail, or cancel the request saving it."""

    fail_next = False
    cancel: trio.CancelScope | None = None

    def save(self, state: SignState) -> None:
        if self.fail_next:
            self.fail_next = False
            raise StateError(f"error writing state to {self.path}: No space left on device")
        if self.cancel is not None:
            try:
                trio.lowlevel.current_task()
            except RuntimeError:  # a worker thread
                trio.from_thread.run_sync(self.cancel.cancel)
            else:  # written inline, on the event loop
                self.cancel.cancel()
            self.cancel = None
        super().save(state)


class FaultySigner(Ed25519SoftSigner):
    """A softsign key whose next signature can fail."""

    fail_next = False

    async def sign(self, message: bytes) -> bytes:
        if self.fail_next:
            self.fail_next = False
            raise SignerError("softsign: injected failure")
        return await super().sign(message)


def as_model(state: SignState) -> Model:
    name = next(n for n, b in BLOCKS.items() if b == state.block)
    return (state.height, state.round, state.step, name)


# heights relative to the last signed one: mostly here or just above, sometimes behind
requests = st.tuples(
    st.sampled_from(["proposal", "prevote", "precommit"]),
    st.sampled_from([-1, 0, 0, 0, 1, 1, 2]),
    st.integers(0, 2),
    st.sampled_from(["A", "B", "nil"]),
    st.integers(0, 5),
)


class TrackerModel(RuleBasedStateMachine):
    """One chain: the real tracker on one side, the table on the other."""

    counted = True  # False for deliberately broken trackers: keep them out of the summary

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="fault-model-", dir=_fast_tmp()))
        self.key = SigningKey.generate()
        self.signer = FaultySigner(self.key)
        self.store = FaultyStore(self.folder / "state.json")
        self.max_height: int | None = None
        self.inline = True
        self.tracker: ChainTracker | None = None
        self.model: Model = (0, 0, 0, "nil")
        self.cache: tuple[Model, Signed] | None = None
        self.book = SignedBook()
        self.steps = 0

    @initialize(max_height=st.none() | st.integers(1, 8), inline=st.booleans())
    def start(self, max_height: int | None, inline: bool) -> None:
        self.max_height = max_height
        self.inline = inline  # state writes on the event loop, or always in a worker thread
        self.tracker = trio.run(self._load)

    async def _load(self) -> ChainTracker:
        store = LocalStore(self.store, StateWriter(inline=self.inline))
        return await ChainTracker.load("model-1", store, self.signer, max_height=self.max_height)

    def _request(self, kind: str, height: int, round_: int, name: str, ts: int) -> SignRequest:
        step = {"proposal": 0, "prevote": 1, "precommit": 2}[kind]
        payload = f"{kind}|{height}|{round_}|{name}|{ts}".encode()
        return SignRequest(
            "proposal" if step == 0 else "vote",
            height,
            round_,
            step,
            BLOCKS[name],
            payload,
            (ts, 0),
        )

    def _sign(self, req: SignRequest, *, cancel: bool = False) -> Signed | BaseException:
        async def go() -> Signed | BaseException:
            assert self.tracker is not None
            with trio.CancelScope() as scope:
                if cancel:
                    self.store.cancel = scope
                try:
                    return await self.tracker.sign(req)
                except (SigningRefused, StateError, SignerError) as exc:
                    return exc
            return WasCancelled()  # the scope swallowed the cancellation

        return trio.run(go)

    @rule(request=requests, fault=st.sampled_from(["none", "none", "save", "signer", "cancel"]))
    def sign(self, request: tuple[str, int, int, str, int], fault: str) -> None:
        kind, delta, round_, name, ts = request
        height = max(0, self.model[0] + delta)
        req = self._request(kind, height, round_, name, ts)
        new: Model = (height, round_, req.step, name)
        allowed = model_allows(self.model, new, self.max_height)
        changes = new != self.model
        cached = (
            req.kind == "vote" and not changes and self.cache is not None and self.cache[0] == new
        )
        if fault == "save":
            self.store.fail_next = True
        elif fault == "signer":
            self.signer.fail_next = True
        result = self._sign(req, cancel=fault == "cancel")
        self.store.fail_next = self.signer.fail_next = False
        self.store.cancel = None
        self.steps += 1
        if not allowed:
            assert isinstance(result, SigningRefused), (self.model, new, result)
            is_double_sign = self.max_height is None or height <= self.max_height
            assert isinstance(result, DoubleSignError) == is_double_sign
            return
        if cached:
            # the earlier vote comes back: no signer, no save, so no fault can bite
            assert self.cache is not None
            assert result == self.cache[1], (new, result)
            return
        if fault == "save" and changes:
            assert isinstance(result, StateError)
            return  # nothing signed, state kept
        if fault == "cancel" and changes:
            assert isinstance(result, WasCancelled)
            self.model = new  # saved, then cancelled: state advanced, nothing signed
            return
        if fault == "signer":
            assert isinstance(result, SignerError)
            self.model = new  # state saved before the key was asked: advanced, nothing signed
            return
        assert isinstance(result, Signed), (self.model, new, fault, result)
        self.key.verify_key.verify(req.sign_bytes, result.signature)
        assert result.timestamp == (ts, 0)
        self.book.add(height, round_, req.step, "<nil>" if name == "nil" else name)
        self.model = new
        self.cache = (new, result) if req.kind == "vote" else None

    @rule()
    def restart(self) -> None:
        """A new process: the state comes back from disk, the vote cache does not."""
        self.tracker = trio.run(self._load)
        self.cache = None

    @rule(height=st.integers(0, 6))
    def state_hook(self, height: int) -> None:
        async def go() -> bool:
            assert self.tracker is not None
            return await self.tracker.raise_to_height(height)

        changed = trio.run(go)
        assert changed == (height > self.model[0])
        if changed:
            self.model = (height, 0, 0, "nil")
            self.cache = None

    @precondition(lambda self: self.tracker is not None)
    @invariant()
    def memory_and_disk_follow_the_model(self) -> None:
        assert self.tracker is not None
        assert as_model(self.tracker.state) == self.model
        assert as_model(StateFile(self.store.path).load()) == self.model

    @invariant()
    def no_conflicting_signatures(self) -> None:
        assert not self.book.conflicts(), self.book.conflicts()

    def teardown(self) -> None:
        if self.counted:
            fault_counted(
                "tracker model check",
                runs=1,
                requests=self.steps,
                signatures=self.book.count,
                conflicts=len(self.book.conflicts()),
            )
        shutil.rmtree(self.folder, ignore_errors=True)


def _fast_tmp() -> str | None:
    """tmpfs when there is one: the model makes thousands of durable writes."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


_BASE = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)

TestTrackerModel = TrackerModel.TestCase
TestTrackerModel.settings = settings(_BASE, max_examples=60, stateful_step_count=40)


@pytest.mark.slow
class TestTrackerModelLong(TrackerModel.TestCase):  # type: ignore[misc, valid-type]
    settings = settings(_BASE, max_examples=300, stateful_step_count=60)


def test_model_matches_the_spec_examples() -> None:
    """The model itself, on the spec's worded examples."""
    assert model_allows((5, 0, 1, "A"), (5, 0, 1, "A"), None)  # same HRS, same block
    assert model_allows((5, 0, 1, "nil"), (5, 0, 2, "A"), None)  # nil then block later
    assert not model_allows((5, 0, 1, "A"), (5, 0, 2, "B"), None)  # prevote A, precommit B
    assert not model_allows((5, 0, 1, "nil"), (5, 0, 1, "A"), None)  # nil vs block, same step
    assert not model_allows((5, 1, 0, "A"), (5, 0, 2, "A"), None)  # round regression
    assert model_allows((5, 1, 2, "A"), (6, 0, 0, "B"), None)
    assert not model_allows((5, 0, 0, "nil"), (6, 0, 0, "nil"), 5)  # above max_height


def test_the_model_catches_a_rule_that_forgets_nil_against_a_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The harness has teeth: a tracker that lets nil and a block share a step is caught."""
    import kms.chain.tracker

    real_check = kms.chain.tracker.check

    def lax_check(last: SignState, req: SignState, max_height: int | None = None) -> object:
        if req.hrs == last.hrs and (req.block.is_nil() or last.block.is_nil()):
            return None
        return real_check(last, req, max_height)

    monkeypatch.setattr(kms.chain.tracker, "check", lax_check)

    class BrokenTrackerModel(TrackerModel):
        counted = False

    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            BrokenTrackerModel,
            settings=settings(
                _BASE, max_examples=200, stateful_step_count=30, phases=[Phase.generate]
            ),
        )
