"""Importing CometBFT's priv_validator_state.json, and decoding the sign bytes it holds."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kms.chain.filepv import decode_sign_bytes, parse_cometbft_state
from kms.chain.state import BlockRef, SignState
from kms.errors import ProtocolError, StateError
from tests.support.vectors import load_vectors, vector_checked

PRIVVAL_HASH = bytes.fromhex("8B01023386C371778ECB6368573E539AFC3CC860EC3A2F614E54FE5652F4FC80")
PRIVVAL_PARTS = bytes.fromhex("72DB3D959635DFF1BB567BEDAA70573392C5159666A3F8CAF11E413AAC52207A")
PRIVVAL_BLOCK = BlockRef(PRIVVAL_HASH, 1_000_000, PRIVVAL_PARTS)


def test_filepv_state_vectors() -> None:
    vectors = load_vectors("filepv_state.json")
    assert vectors["step_values"] == {"none": 0, "propose": 1, "prevote": 2, "precommit": 3}
    expected = {
        "initial state written by LoadOrGenFilePV": SignState(0, 0, 0, BlockRef.NIL),
        "upstream TestUnmarshalValidatorState input": SignState(1, 1, 0, BlockRef.NIL),
        "state after FilePV signs the privval example precommit (derived)": SignState(
            3, 2, 2, PRIVVAL_BLOCK
        ),
    }
    for example in vectors["examples"]:
        # exercise the file as CometBFT writes it: MarshalIndent with two spaces
        text = json.dumps(example["json"], indent=2)
        assert parse_cometbft_state(text) == expected[example["name"]], example["name"]
        vector_checked("filepv_state.json")


def _block_of(inputs: dict[str, Any]) -> BlockRef:
    raw = inputs.get("block_id")
    if raw is None:
        return BlockRef.NIL
    if "hash_ascii" in raw:
        return BlockRef(
            raw["hash_ascii"].encode(),
            raw["part_set_header_total"],
            raw["part_set_header_hash_ascii"].encode(),
        )
    return BlockRef(
        bytes.fromhex(raw["hash_hex"]),
        raw["part_set_header_total"],
        bytes.fromhex(raw["part_set_header_hash_hex"]),
    )


def test_decode_sign_bytes_vectors() -> None:
    vectors = load_vectors("sign_bytes.json")
    steps = {1: 1, 2: 2, 32: 0}
    checked = 0
    for vector in vectors["upstream_vectors"] + vectors["derived_vectors"]:
        if vector["kind"] not in ("vote", "proposal"):
            continue
        inputs = vector["inputs"]
        msg_type = 32 if vector["kind"] == "proposal" else inputs["type"]
        data = bytes.fromhex(vector["expected_hex"])
        if msg_type not in steps:
            with pytest.raises(ProtocolError, match="type"):
                decode_sign_bytes(data)
        else:
            assert decode_sign_bytes(data) == (
                steps[msg_type],
                inputs["height"],
                inputs["round"],
                _block_of(inputs),
            ), vector["name"]
        checked += 1
    assert checked >= 15
    vector_checked("sign_bytes.json", checked)


def _state(height: str, round_: int, step: int, signbytes: str | None = None) -> str:
    doc: dict[str, Any] = {"height": height, "round": round_, "step": step}
    if signbytes is not None:
        doc["signature"] = "AAAA"
        doc["signbytes"] = signbytes
    return json.dumps(doc)


PRECOMMIT_H3_R2 = (
    "770802110300000000000000190200000000000000224A0A208B01023386C371778ECB6368573E539AFC3CC8"
    "60EC3A2F614E54FE5652F4FC80122608C0843D122072DB3D959635DFF1BB567BEDAA70573392C5159666A3F8"
    "CAF11E413AAC52207A2A0608F49A8DED05320D746573745F636861696E5F6964"
)


def test_steps_are_mapped_down_by_one() -> None:
    assert parse_cometbft_state(_state("7", 1, 1)) == SignState(7, 1, 0)
    assert parse_cometbft_state(_state("7", 1, 2)) == SignState(7, 1, 1)
    assert parse_cometbft_state(_state("7", 1, 3)) == SignState(7, 1, 2)
    assert parse_cometbft_state(_state("7", 1, 0)) == SignState(7, 1, 0)


def test_signbytes_must_agree_with_the_state() -> None:
    assert parse_cometbft_state(_state("3", 2, 3, PRECOMMIT_H3_R2)).block == PRIVVAL_BLOCK
    for height, round_, step in (("4", 2, 3), ("3", 1, 3), ("3", 2, 2)):
        with pytest.raises(StateError, match="3/2/2"):
            parse_cometbft_state(_state(height, round_, step, PRECOMMIT_H3_R2))


@pytest.mark.parametrize(
    "signbytes",
    [
        PRECOMMIT_H3_R2[:-2],  # truncated
        "00" + PRECOMMIT_H3_R2[2:],  # wrong length prefix
        "0208FF",  # truncated varint inside
        "021003",  # type field missing -> type 0 (unknown)
        "XYZ",  # not hex
    ],
)
def test_bad_signbytes_are_refused(signbytes: str) -> None:
    with pytest.raises(StateError):
        parse_cometbft_state(_state("3", 2, 3, signbytes))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        '{"height":3,"round":0,"step":1}',
        '{"height":"3","round":"0","step":1}',
        '{"height":"3","round":0,"step":4}',
        '{"height":"3","round":0,"step":true}',
        '{"height":"3","round":-1,"step":1}',
        '{"height":"-3","round":0,"step":1}',
        '{"height":"3","round":0}',
    ],
)
def test_malformed_cometbft_state(text: str) -> None:
    with pytest.raises(StateError, match="priv_validator_state"):
        parse_cometbft_state(text)
