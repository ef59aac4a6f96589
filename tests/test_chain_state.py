"""The double-sign rule: every row of the spec table, tmkms's own cases, and a model check."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kms.chain.state import (
    NIL_PLACEHOLDER,
    STEP_PRECOMMIT,
    STEP_PREVOTE,
    STEP_PROPOSAL,
    BlockRef,
    Refusal,
    SignState,
    check,
    describe_refusal,
)

A = BlockRef(
    bytes.fromhex("26C0A41F3243C6BCD7AD2DFF8A8D83A71D29D307B5326C227F734A1A512FE47D"),
    1,
    b"\x11" * 32,
)
B = BlockRef(
    bytes.fromhex("2470A41F3243C6BCD7AD2DFF8A8D83A71D29D307B5326C227F734A1A512FE47D"),
    1,
    b"\x11" * 32,
)
# same hash as A but another part-set header: a different block ID
A_OTHER_PARTS = BlockRef(A.hash, 2, b"\x22" * 32)
NIL = BlockRef.NIL


def s(h: int, r: int, step: int, block: BlockRef = NIL) -> SignState:
    return SignState(h, r, step, block)


# ---------------------------------------------------------------- value types


def test_nil_block() -> None:
    assert BlockRef().is_nil()
    assert BlockRef(b"", 0, b"") == NIL
    assert not A.is_nil()
    assert not BlockRef(b"", 1, b"").is_nil()
    assert not BlockRef(b"", 0, b"\x01").is_nil()


def test_block_prefix_matches_tmkms_display() -> None:
    # tmkms: block::Id::prefix() = upper-case hex of the hash truncated to 10 characters
    assert A.prefix() == "26C0A41F32"
    assert str(B) == "2470A41F32"
    assert NIL.prefix() == NIL_PLACEHOLDER == "<nil>"


def test_sign_state_display_and_order() -> None:
    state = s(3399910, 0, STEP_PRECOMMIT, A)
    assert str(state) == "3399910/0/2"
    assert state.hrs == (3399910, 0, 2)
    assert state.type_name == "Precommit"
    assert s(1, 0, STEP_PROPOSAL).type_name == "Proposal"
    assert s(1, 0, STEP_PREVOTE).type_name == "Prevote"
    assert s(0, 0, 0, NIL) == SignState.INITIAL


# ---------------------------------------------------------------- the spec table, row by row

TABLE = [
    # (row, last, request, expected)
    ("H < H0", s(10, 0, 0), s(9, 5, 2), Refusal.HEIGHT_REGRESSION),
    ("H < H0 same block", s(10, 0, 1, A), s(9, 0, 1, A), Refusal.HEIGHT_REGRESSION),
    ("H > H0", s(10, 3, 2, A), s(11, 0, 0, B), None),
    ("H > H0 lower round and step", s(10, 3, 2, A), s(11, 0, 1, NIL), None),
    ("H = H0, R < R0", s(10, 3, 0), s(10, 2, 2), Refusal.ROUND_REGRESSION),
    ("H = H0, R < R0 same block", s(10, 3, 1, A), s(10, 2, 1, A), Refusal.ROUND_REGRESSION),
    ("H = H0, R > R0", s(10, 3, 2, A), s(10, 4, 0, B), None),
    ("H = H0, R > R0 lower step nil", s(10, 3, 2, A), s(10, 4, 1, NIL), None),
    ("H = H0, R = R0, S < S0", s(10, 3, 2, A), s(10, 3, 1, A), Refusal.STEP_REGRESSION),
    ("H = H0, R = R0, S < S0 nil", s(10, 3, 1), s(10, 3, 0), Refusal.STEP_REGRESSION),
    # double sign: different non-nil blocks, same or later step
    ("both non-nil, later step", s(10, 3, 1, A), s(10, 3, 2, B), Refusal.DOUBLE_SIGN),
    ("both non-nil, same step", s(10, 3, 1, A), s(10, 3, 1, B), Refusal.DOUBLE_SIGN),
    ("both non-nil, proposal then prevote", s(10, 3, 0, A), s(10, 3, 1, B), Refusal.DOUBLE_SIGN),
    ("parts differ, same hash", s(10, 3, 1, A), s(10, 3, 2, A_OTHER_PARTS), Refusal.DOUBLE_SIGN),
    # double sign: nil vs block at the same step, either way round
    ("nil then block, same step", s(10, 3, 1, NIL), s(10, 3, 1, A), Refusal.DOUBLE_SIGN),
    ("block then nil, same step", s(10, 3, 2, A), s(10, 3, 2, NIL), Refusal.DOUBLE_SIGN),
    # anything else: accepted
    ("same HRS same block", s(10, 3, 1, A), s(10, 3, 1, A), None),
    ("same HRS both nil", s(10, 3, 2), s(10, 3, 2), None),
    ("same block, later step", s(10, 3, 1, A), s(10, 3, 2, A), None),
    ("nil then block, later step", s(10, 3, 1, NIL), s(10, 3, 2, A), None),
    ("block then nil, later step", s(10, 3, 1, A), s(10, 3, 2, NIL), None),
    ("both nil, later step", s(10, 3, 0), s(10, 3, 2), None),
    ("initial state, first request", SignState.INITIAL, s(1, 0, 0, A), None),
    ("initial state, height 0 block", SignState.INITIAL, s(0, 0, 0, A), Refusal.DOUBLE_SIGN),
]


@pytest.mark.parametrize(("row", "last", "req", "expected"), TABLE, ids=[t[0] for t in TABLE])
def test_spec_table(row: str, last: SignState, req: SignState, expected: Refusal | None) -> None:
    assert check(last, req) is expected


# tmkms's own unit tests (src/chain/state.rs), as facts: (old, new, double sign?)
TMKMS_CASES = [
    (s(1, 1, 0), s(2, 0, 0), False),
    (s(1, 1, 1), s(1, 1, 2, A), False),
    (s(1, 1, 0, A), s(2, 0, 0, B), False),
    (s(1, 1, 0, A), s(2, 0, 0), False),
    (s(1, 0, 0, A), s(1, 0, 1), False),
    (s(1, 1, 0, A), s(1, 1, 1, B), True),
    (s(1, 1, 2), s(1, 1, 2, A), True),
]


@pytest.mark.parametrize(("last", "req", "double"), TMKMS_CASES)
def test_tmkms_unit_cases(last: SignState, req: SignState, double: bool) -> None:
    assert check(last, req) is (Refusal.DOUBLE_SIGN if double else None)


# ---------------------------------------------------------------- max_height


def test_max_height_allows_at_and_refuses_above() -> None:
    last = s(99, 0, 2, A)
    assert check(last, s(100, 0, 0, B), max_height=100) is None
    assert check(last, s(101, 0, 0, B), max_height=100) is Refusal.MAX_HEIGHT
    assert check(last, s(101, 0, 0, B), max_height=None) is None


def test_max_height_checked_before_the_table() -> None:
    # a request that is a regression and above max_height reports max_height (tmkms order)
    assert check(s(200, 0, 0), s(150, 0, 0), max_height=100) is Refusal.MAX_HEIGHT


# ---------------------------------------------------------------- descriptions


def test_describe_uses_tmkms_wording() -> None:
    last, req = s(10, 3, 1, A), s(10, 3, 2, B)
    assert describe_refusal(Refusal.DOUBLE_SIGN, last, req) == (
        "double sign detected: attempting to sign a second precommit at height:10 round:3 "
        "step:2 old block id:26C0A41F32 new block 2470A41F32"
    )
    assert describe_refusal(Refusal.HEIGHT_REGRESSION, s(10, 0, 0), s(9, 0, 0)) == (
        "height regression: last height:10 new height:9"
    )
    assert describe_refusal(Refusal.ROUND_REGRESSION, s(10, 3, 0), s(10, 2, 0)) == (
        "round regression: round regression at height:10 last round:3 new round:2"
    )
    assert describe_refusal(Refusal.STEP_REGRESSION, s(10, 3, 2), s(10, 3, 1)) == (
        "step regression: step regression at height:10 round:3 last step:2 new step:1"
    )
    assert describe_refusal(Refusal.MAX_HEIGHT, last, s(101, 0, 0), 100) == (
        "attempted to sign at height 101 which is greater than 100"
    )


# ---------------------------------------------------------------- model check


def oracle(last: SignState, req: SignState, max_height: int | None) -> Refusal | None:
    """An independent encoding of the table: an explicit decision list over facts."""
    above_limit = max_height is not None and req.height > max_height
    position = "before" if req.hrs < last.hrs else ("same" if req.hrs == last.hrs else "after")
    same_hr = (req.height, req.round) == (last.height, last.round)
    same_block = (req.block.hash, req.block.parts_total, req.block.parts_hash) == (
        last.block.hash,
        last.block.parts_total,
        last.block.parts_hash,
    )
    req_nil = req.block.hash == b"" and req.block.parts_total == 0 and req.block.parts_hash == b""
    last_nil = (
        last.block.hash == b"" and last.block.parts_total == 0 and last.block.parts_hash == b""
    )
    decisions: list[tuple[bool, Refusal | None]] = [
        (above_limit, Refusal.MAX_HEIGHT),
        (req.height < last.height, Refusal.HEIGHT_REGRESSION),
        (req.height == last.height and req.round < last.round, Refusal.ROUND_REGRESSION),
        (position == "before", Refusal.STEP_REGRESSION),
        (not same_hr, None),  # a later height or round: anything goes
        (same_block, None),  # identical content is never a conflict
        (not req_nil and not last_nil, Refusal.DOUBLE_SIGN),  # two real blocks
        (position == "same", Refusal.DOUBLE_SIGN),  # nil vs block in one step
        (True, None),  # nil <-> block at a later step
    ]
    return next(result for condition, result in decisions if condition)


blocks = st.sampled_from(
    [NIL, A, B, A_OTHER_PARTS, BlockRef(b"", 1, b""), BlockRef(b"\x01", 0, b"")]
)
states = st.builds(
    SignState,
    height=st.integers(0, 3),
    round=st.integers(0, 2),
    step=st.integers(0, 2),
    block=blocks,
)


@settings(max_examples=3000)
@given(last=states, req=states, max_height=st.none() | st.integers(0, 3))
def test_check_matches_oracle(last: SignState, req: SignState, max_height: int | None) -> None:
    assert check(last, req, max_height) is oracle(last, req, max_height)


@given(last=states, req=states)
def test_check_never_accepts_two_different_blocks_for_one_slot(
    last: SignState, req: SignState
) -> None:
    # the property that keeps a validator from being slashed, stated on its own
    if last.hrs == req.hrs and last.block != req.block:
        assert check(last, req) is Refusal.DOUBLE_SIGN


def test_oracle_is_not_trivial() -> None:
    # guard the oracle itself against always agreeing by accident
    assert oracle(s(1, 0, 1, A), s(1, 0, 2, B), None) is Refusal.DOUBLE_SIGN
    assert oracle(s(1, 0, 1), s(1, 0, 2, B), None) is None
    assert oracle(s(1, 0, 1), s(1, 0, 1, B), None) is Refusal.DOUBLE_SIGN
