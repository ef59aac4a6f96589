"""The shared watermark's sans-IO core: the stored value, the check-and-set machine, reconcile.

The machine is driven by hand here with the results etcd would give (built with the same
types the client parses replies into), so every transition is checked synchronously:
won, lost compare then retry, the rule refusing, a stale remembered value, a malformed
value, and the resolution of an ambiguous txn by its nonce.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.chain.state import BlockRef, Refusal, SignState
from kms.chain.stateformat import format_state
from kms.ha.cas import (
    CasMachine,
    CasOp,
    ReadOp,
    ReconcileAction,
    Verdict,
    plan_reconcile,
)
from kms.ha.watermark import Stored, Watermark, format_watermark, new_nonce, parse_watermark
from kms.ha.wire import KeyValue, RangeResult, TxnResult, b64

KEY = b"/tmkms/test-chain"
A = BlockRef(b"\xaa" * 32, 1, b"\x0a" * 32)
B = BlockRef(b"\xbb" * 32, 1, b"\x0b" * 32)
NONCES = iter(f"{i:024x}" for i in range(1, 10_000))


def nonce() -> str:
    return next(NONCES)


def kv(state: SignState, host: str, nonce_: str, revision: int) -> KeyValue:
    return KeyValue(KEY, format_watermark(state, host, nonce_), 1, revision, 1)


def found(*kvs: KeyValue) -> RangeResult:
    return RangeResult(10, kvs)


def failed_with(*kvs: KeyValue) -> TxnResult:
    return TxnResult(False, 0, (found(*kvs),))


def won(revision: int) -> TxnResult:
    return TxnResult(True, 0, (revision,))


blocks = st.builds(
    BlockRef,
    st.binary(min_size=32, max_size=32),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=32, max_size=32),
) | st.just(BlockRef.NIL)
states = st.builds(
    SignState, st.integers(0, 2**63 - 1), st.integers(0, 2**31 - 1), st.integers(0, 2), blocks
)


@given(states, st.text(min_size=1, max_size=50).filter(str.isprintable))
def test_watermark_round_trip(state: SignState, host: str) -> None:
    n = new_nonce()
    value = format_watermark(state, host, n)
    assert parse_watermark(value) == Watermark(state, host, n)


def test_watermark_is_the_state_file_plus_writer() -> None:
    state = SignState(7, 1, 2, A)
    value = format_watermark(state, "kms-a", "00" * 12)
    assert value.startswith(format_state(state)[:-1])
    doc = json.loads(value)
    assert list(doc) == ["height", "round", "step", "block_id", "host", "nonce"]
    assert doc["height"] == "7" and doc["block_id"]["hash"] == "AA" * 32
    assert doc["host"] == "kms-a"


def test_nonces_are_fresh() -> None:
    assert len({new_nonce() for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"hello", "not JSON"),
        (b"[1]", "not a JSON object"),
        (format_state(SignState(1, 0, 0)), "host"),
        (format_state(SignState(1, 0, 0))[:-1] + b',"host":"a"}', "nonce"),
        (format_state(SignState(1, 0, 0))[:-1] + b',"host":"a","nonce":"XYZ"}', "nonce"),
        (b'{"host":"a","nonce":"' + b"0" * 24 + b'"}', "not a tmkms state"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_malformed_values_say_why(value: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_watermark(value)
    stored = Stored.from_kv(KeyValue(KEY, value, 1, 5, 1))
    assert stored.watermark is None and stored.problem is not None and why in stored.problem


def test_nothing_known_reads_then_compares_on_the_mod_revision() -> None:
    machine = CasMachine(KEY, SignState(5, 0, 1, A), "kms-a", nonce=nonce)
    assert machine.op == ReadOp(KEY)
    machine.answered(found(kv(SignState(4, 0, 2, B), "kms-b", "2" * 24, 9)))
    op = machine.op
    assert isinstance(op, CasOp) and op.revision == 9
    txn = op.txn()
    assert txn["compare"] == [
        {"result": "EQUAL", "target": "MOD", "key": b64(KEY), "mod_revision": "9"}
    ]
    assert txn["failure"] == [{"request_range": {"key": b64(KEY)}}]
    machine.answered(won(11))
    assert machine.decision is not None
    assert machine.decision.verdict is Verdict.WON
    assert machine.decision.stored.mod_revision == 11
    assert machine.decision.stored.watermark == Watermark(SignState(5, 0, 1, A), "kms-a", op.nonce)


def test_a_missing_key_is_refused_not_created() -> None:
    machine = CasMachine(KEY, SignState(5, 0, 1, A), "kms-a", nonce=nonce)
    machine.answered(found())
    assert machine.op is None and machine.decision is not None
    assert machine.decision.verdict is Verdict.MALFORMED


def test_a_create_compares_on_the_create_revision() -> None:
    """Revision 0 is a create (`tmkms state init`): the key must not exist."""
    txn = CasOp(KEY, 0, b"v", "n").txn()
    assert txn["compare"] == [
        {"result": "EQUAL", "target": "CREATE", "key": b64(KEY), "create_revision": "0"}
    ]


def test_remembered_value_goes_straight_to_the_txn() -> None:
    known = Stored(9, Watermark(SignState(5, 0, 1, A), "kms-a", "1" * 24), fresh=False)
    machine = CasMachine(KEY, SignState(5, 0, 2, A), "kms-a", known=known, nonce=nonce)
    op = machine.op
    assert isinstance(op, CasOp)
    assert op.txn()["compare"][0] == {
        "result": "EQUAL",
        "target": "MOD",
        "key": b64(KEY),
        "mod_revision": "9",
    }


def test_lost_compare_retries_against_the_new_value() -> None:
    known = Stored(9, Watermark(SignState(5, 0, 1, A), "kms-a", "1" * 24), fresh=False)
    machine = CasMachine(KEY, SignState(6, 0, 1, B), "kms-a", known=known, nonce=nonce)
    first = machine.op
    assert isinstance(first, CasOp)
    other = kv(SignState(5, 0, 2, A), "kms-b", "2" * 24, 12)
    machine.answered(failed_with(other))
    second = machine.op
    assert isinstance(second, CasOp) and second.revision == 12
    assert second.nonce != first.nonce  # a fresh write, a fresh nonce
    assert machine.lost_compares == 1
    machine.answered(won(13))
    assert machine.decision is not None and machine.decision.verdict is Verdict.WON


def test_lost_compare_then_the_rule_refuses() -> None:
    known = Stored(9, Watermark(SignState(5, 0, 0, A), "kms-a", "1" * 24), fresh=False)
    machine = CasMachine(KEY, SignState(5, 0, 1, A), "kms-a", known=known, nonce=nonce)
    machine.answered(failed_with(kv(SignState(5, 0, 1, B), "kms-b", "2" * 24, 12)))
    assert machine.op is None
    assert machine.decision is not None
    assert machine.decision.verdict is Verdict.LOST
    assert machine.decision.refusal is Refusal.DOUBLE_SIGN
    assert machine.decision.stored.watermark is not None
    assert machine.decision.stored.watermark.host == "kms-b"


def test_the_same_vote_is_allowed_after_another_host() -> None:
    machine = CasMachine(KEY, SignState(5, 0, 1, A), "kms-a", nonce=nonce)
    machine.answered(found(kv(SignState(5, 0, 1, A), "kms-b", "2" * 24, 12)))
    op = machine.op
    assert isinstance(op, CasOp) and op.revision == 12


def test_a_stale_refusal_is_read_again_before_refusing() -> None:
    # remembered: proposal A at 5/0; asked: precommit B. The rule refuses against the
    # remembered value, but the current one (prevote nil at 5/0/1) allows it.
    known = Stored(9, Watermark(SignState(5, 0, 0, A), "kms-a", "1" * 24), fresh=False)
    machine = CasMachine(KEY, SignState(5, 0, 2, B), "kms-a", known=known, nonce=nonce)
    assert machine.op == ReadOp(KEY)
    machine.answered(found(kv(SignState(5, 0, 1, BlockRef.NIL), "kms-b", "2" * 24, 14)))
    op = machine.op
    assert isinstance(op, CasOp) and op.revision == 14


def test_malformed_value_is_a_decision_only_when_fresh() -> None:
    machine = CasMachine(KEY, SignState(5, 0, 1, A), "kms-a", nonce=nonce)
    machine.answered(found(KeyValue(KEY, b"hello", 1, 3, 1)))
    assert machine.decision is not None
    assert machine.decision.verdict is Verdict.MALFORMED
    stale = Stored(3, problem="not JSON", fresh=False)
    again = CasMachine(KEY, SignState(5, 0, 1, A), "kms-a", known=stale, nonce=nonce)
    assert again.op == ReadOp(KEY)


#: A watermark at 4/0/2 (revision 8), as a previous check-and-set left it.
EARLIER = Stored(8, Watermark(SignState(4, 0, 2, A), "kms-a", "5" * 24), fresh=False)


def test_ambiguous_txn_is_resent_identically_and_won_by_its_nonce() -> None:
    machine = CasMachine(KEY, SignState(5, 0, 1, A), "kms-a", known=EARLIER, nonce=nonce)
    op = machine.op
    assert isinstance(op, CasOp)
    machine.unanswered(maybe_applied=True)
    assert machine.ambiguous
    assert machine.op is op  # the identical txn again
    machine.unanswered(maybe_applied=False)  # e.g. the next member refused the connection
    assert machine.ambiguous and machine.op is op
    # the resend fails its compare: the key holds our value, from the first copy
    machine.answered(failed_with(KeyValue(KEY, op.value, 20, 20, 1)))
    assert not machine.ambiguous
    assert machine.decision is not None and machine.decision.verdict is Verdict.WON
    assert machine.decision.stored.mod_revision == 20


def test_ambiguous_txn_resolved_as_not_ours() -> None:
    machine = CasMachine(KEY, SignState(5, 0, 1, A), "kms-a", known=EARLIER, nonce=nonce)
    machine.unanswered(maybe_applied=True)
    machine.answered(failed_with(kv(SignState(5, 0, 1, B), "kms-a", "9" * 24, 21)))
    assert not machine.ambiguous
    assert machine.decision is not None and machine.decision.verdict is Verdict.LOST


def test_reads_are_never_ambiguous() -> None:
    machine = CasMachine(KEY, SignState(5, 0, 1, A), "kms-a", nonce=nonce)
    machine.unanswered(maybe_applied=True)
    assert not machine.ambiguous


@pytest.mark.parametrize(
    "result",
    [
        TxnResult(True, 0, ()),
        TxnResult(True, 0, (0,)),
        TxnResult(False, 0, (5,)),
        found(),
    ],
)
def test_answers_of_the_wrong_shape_are_refused(result: TxnResult | RangeResult) -> None:
    machine = CasMachine(KEY, SignState(5, 0, 1, A), "kms-a", known=EARLIER, nonce=nonce)
    with pytest.raises(ValueError):
        machine.answered(result)


def _stored(state: SignState | None) -> Stored:
    if state is None:
        return Stored(0)
    return Stored(4, Watermark(state, "kms-b", "3" * 24))


@pytest.mark.parametrize(
    ("local", "shared", "action"),
    [
        (SignState(5, 0, 1, A), None, ReconcileAction.MISSING),
        (SignState(5, 0, 1, A), SignState(4, 0, 2, B), ReconcileAction.RAISE),
        (SignState(5, 0, 1, A), SignState(6, 0, 0, B), ReconcileAction.ADOPT),
        (SignState(5, 0, 1, A), SignState(5, 0, 1, A), ReconcileAction.UNCHANGED),
        (SignState(5, 0, 1, A), SignState(5, 0, 1, B), ReconcileAction.CONFLICT),
        (SignState(5, 0, 1, A), SignState(5, 0, 0, B), ReconcileAction.CONFLICT),
        (SignState(5, 0, 2, A), SignState(5, 0, 1, BlockRef.NIL), ReconcileAction.RAISE),
    ],
)
def test_reconcile_plans(
    local: SignState, shared: SignState | None, action: ReconcileAction
) -> None:
    assert plan_reconcile(local, _stored(shared)) is action


def test_reconcile_refuses_a_malformed_value() -> None:
    stored = Stored(3, problem="not JSON")
    assert plan_reconcile(SignState.INITIAL, stored) is ReconcileAction.MALFORMED
