"""Key display (bech32 / hex / cosmos-json), node IDs, against the golden vectors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.config import KeyFormat
from kms.keys import (
    amino_encode_public_key,
    bech32_decode,
    bech32_encode,
    format_public_key,
    node_id,
    public_key_json,
    validator_address,
)
from tests.support.vectors import load_vectors, vector_checked

VECTORS = "pubkey_encodings.json"
BECH32 = KeyFormat(
    "bech32", account_key_prefix="cosmospub", consensus_key_prefix="cosmosvalconspub"
)


def vectors_named(prefix: str) -> list[dict[str, object]]:
    found = [v for v in load_vectors(VECTORS)["vectors"] if str(v["name"]).startswith(prefix)]
    assert found, f"no vector named {prefix!r}"
    return found


def test_consensus_key_bech32_vector() -> None:
    for vector in vectors_named("cosmosvalconspub"):
        inputs = vector["inputs"]
        assert isinstance(inputs, dict)
        public = bytes.fromhex(inputs["ed25519_pub_key_hex"])
        assert amino_encode_public_key("ed25519", public).hex() == vector["amino_bytes_hex"]
        fmt = KeyFormat("bech32", "unused", inputs["hrp"])
        assert format_public_key("ed25519", public, fmt) == vector["expected"]
        assert format_public_key("consensus", public, fmt) == vector["expected"]
        assert format_public_key("ed25519", public, fmt, "consensus") == vector["expected"]
        assert bech32_decode(str(vector["expected"])) == (
            inputs["hrp"],
            b"\x16\x24\xde\x64\x20" + public,
        )
        vector_checked(VECTORS)


def test_account_key_bech32_vector() -> None:
    for vector in vectors_named("cosmospub"):
        inputs = vector["inputs"]
        assert isinstance(inputs, dict)
        public = bytes.fromhex(inputs["secp256k1_pub_key_hex"])
        assert amino_encode_public_key("secp256k1", public).hex() == vector["amino_bytes_hex"]
        fmt = KeyFormat("bech32", inputs["hrp"], "unused")
        assert format_public_key("secp256k1", public, fmt) == vector["expected"]
        assert format_public_key("account", public, fmt) == vector["expected"]
        vector_checked(VECTORS)


def test_node_id_vectors() -> None:
    checked = 0
    for vector in load_vectors(VECTORS)["vectors"]:
        if "node ID" in vector["name"] or "address" in vector["name"]:
            public = bytes.fromhex(vector["inputs"]["ed25519_pub_key_hex"])
            assert node_id(public) == vector["expected"]
            assert validator_address(public) == vector["expected"].upper()
            checked += 1
    assert checked == 2
    vector_checked(VECTORS, checked)


def test_amino_json_public_key_vector() -> None:
    for vector in vectors_named("JSON public key"):
        public = bytes.fromhex(str(vector["pub_key_hex"]))
        rendered = json.dumps(public_key_json(public), separators=(",", ":"))
        assert rendered == vector["expected_json"]
        vector_checked(VECTORS)


def test_amino_prefixes_match_vector_table() -> None:
    prefixes = load_vectors(VECTORS)["amino_type_prefixes"]["verified_against_upstream_vectors"]
    assert (
        amino_encode_public_key("ed25519", bytes(32))[:4].hex()
        == prefixes["tendermint/PubKeyEd25519"]
    )
    assert (
        amino_encode_public_key("secp256k1", b"\x02" + bytes(32))[:4].hex()
        == prefixes["tendermint/PubKeySecp256k1"]
    )
    vector_checked(VECTORS, 2)


def test_hex_and_cosmos_json() -> None:
    public = bytes(range(32))
    assert format_public_key("ed25519", public, KeyFormat("hex")) == public.hex().upper()
    rendered = format_public_key("ed25519", public, KeyFormat("cosmos-json"))
    assert rendered == (
        '{"@type":"/cosmos.crypto.ed25519.PubKey","key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}'
    )
    account = b"\x03" + bytes(range(32))
    assert json.loads(format_public_key("secp256k1", account, KeyFormat("cosmos-json"))) == {
        "@type": "/cosmos.crypto.secp256k1.PubKey",
        "key": "AwABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f",
    }


def test_kind_selects_the_prefix() -> None:
    public = bytes(32)
    as_consensus = format_public_key("ed25519", public, BECH32)
    as_account = format_public_key("ed25519", public, BECH32, "account")
    assert as_consensus.startswith("cosmosvalconspub1zcjduepq")
    assert as_account.startswith("cosmospub1zcjduepq")


@pytest.mark.parametrize(
    ("key_type", "public", "problem"),
    [
        ("ed25519", bytes(33), "ed25519 public key must be 32 bytes, got 33"),
        ("secp256k1", bytes(32), "secp256k1 public key must be 33 bytes, got 32"),
        ("rsa", bytes(32), "unknown key type 'rsa'"),
    ],
)
def test_bad_inputs(key_type: str, public: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        format_public_key(key_type, public, BECH32)


@given(
    hrp=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=20),
    data=st.binary(max_size=64),
)
def test_bech32_round_trip(hrp: str, data: bytes) -> None:
    encoded = bech32_encode(hrp, data)
    assert bech32_decode(encoded) == (hrp, data)
    assert bech32_decode(encoded.upper()) == (hrp, data)


@given(data=st.binary(min_size=1, max_size=40), position=st.integers(min_value=0))
def test_bech32_detects_a_changed_character(data: bytes, position: int) -> None:
    encoded = bech32_encode("cosmos", data)
    index = len("cosmos1") + position % (len(encoded) - len("cosmos1"))
    replacement = "q" if encoded[index] != "q" else "p"
    corrupted = encoded[:index] + replacement + encoded[index + 1 :]
    with pytest.raises(ValueError, match="checksum mismatch"):
        bech32_decode(corrupted)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Cosmos1qqqqqq", "mixed case"),
        ("qqqqqqqq", "missing prefix"),
        ("cosmos1qqqqqb", "bad character 'b'"),
        ("cosmos1", "missing prefix, separator or checksum"),
    ],
)
def test_bech32_decode_rejects(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        bech32_decode(text)
