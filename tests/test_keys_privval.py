"""CometBFT priv_validator_key.json: read, cross-check, write."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from kms.errors import KeyFileError
from kms.keys import (
    format_priv_validator_key_json,
    generate_secp256k1_scalar,
    parse_priv_validator_key,
    read_priv_validator_key,
    read_priv_validator_key_json,
    secp256k1_public_key,
    validator_address,
)

SEED = bytes(range(100, 132))
PUBLIC = bytes(SigningKey(SEED).verify_key)


def doc() -> dict[str, object]:
    return json.loads(format_priv_validator_key_json(SEED))  # type: ignore[no-any-return]


def test_written_file_has_cometbft_layout() -> None:
    assert doc() == {
        "address": validator_address(PUBLIC),
        "pub_key": {"type": "tendermint/PubKeyEd25519", "value": base64.b64encode(PUBLIC).decode()},
        "priv_key": {
            "type": "tendermint/PrivKeyEd25519",
            "value": base64.b64encode(SEED + PUBLIC).decode(),
        },
    }


def test_read_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "priv_validator_key.json"
    path.write_text(format_priv_validator_key_json(SEED))
    key = read_priv_validator_key_json(path)
    assert bytes(key) == SEED
    parsed = read_priv_validator_key(path)
    assert (parsed.algorithm, parsed.secret, parsed.public_key) == ("ed25519", SEED, PUBLIC)
    assert base64.b64encode(SEED).decode()[:20] not in repr(parsed)


def test_address_may_be_absent_or_lower_case() -> None:
    without = doc()
    del without["address"]
    assert parse_priv_validator_key(json.dumps(without)).secret == SEED
    lower = doc()
    lower["address"] = validator_address(PUBLIC).lower()
    assert parse_priv_validator_key(json.dumps(lower)).secret == SEED


def corrupt(field: str) -> dict[str, object]:
    data = doc()
    other = bytes(SigningKey(bytes(32)).verify_key)
    if field == "pub_key":
        data["pub_key"] = {
            "type": "tendermint/PubKeyEd25519",
            "value": base64.b64encode(other).decode(),
        }
    elif field == "priv_half":
        data["priv_key"] = {
            "type": "tendermint/PrivKeyEd25519",
            "value": base64.b64encode(SEED + other).decode(),
        }
    elif field == "address":
        data["address"] = "00" * 20
    return data


@pytest.mark.parametrize(
    ("field", "problem"),
    [
        ("pub_key", "keypair mismatch: public key does not match the seed"),
        ("priv_half", "keypair mismatch: public key does not match the seed"),
        ("address", "address does not match the public key"),
    ],
)
def test_mismatches(field: str, problem: str) -> None:
    with pytest.raises(KeyFileError) as caught:
        parse_priv_validator_key(json.dumps(corrupt(field)), "pvk.json")
    assert str(caught.value) == f"pvk.json: {problem}"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"pub_key": {}}', "missing 'priv_key' object"),
        (
            json.dumps(
                {"priv_key": {"type": "tendermint/PrivKeyEd25519", "value": "!!"}, "pub_key": {}}
            ),
            "priv_key.value is not valid base64",
        ),
        (
            json.dumps(
                {
                    "priv_key": {"type": "tendermint/PrivKeySr25519", "value": "AAAA"},
                    "pub_key": {"type": "x", "value": "AAAA"},
                }
            ),
            "unsupported priv_key type 'tendermint/PrivKeySr25519'",
        ),
        (
            json.dumps(
                {
                    "priv_key": {"type": "tendermint/PrivKeyEd25519", "value": "AAAA"},
                    "pub_key": {"type": "tendermint/PubKeyEd25519", "value": "AAAA"},
                }
            ),
            "priv_key must hold 64 bytes (seed || public key)",
        ),
    ],
    ids=["truncated", "array", "no-priv", "bad-base64", "sr25519", "short"],
)
def test_malformed(text: str, problem: str) -> None:
    with pytest.raises(KeyFileError) as caught:
        parse_priv_validator_key(text, "pvk.json")
    assert str(caught.value) == f"pvk.json: {problem}"
    secret_b64 = base64.b64encode(SEED).decode()[:20]
    assert secret_b64 not in str(caught.value)


def test_secp256k1_validator_key() -> None:
    scalar = generate_secp256k1_scalar()
    public = secp256k1_public_key(scalar)
    text = json.dumps(
        {
            "priv_key": {
                "type": "tendermint/PrivKeySecp256k1",
                "value": base64.b64encode(scalar).decode(),
            },
            "pub_key": {
                "type": "tendermint/PubKeySecp256k1",
                "value": base64.b64encode(public).decode(),
            },
        }
    )
    parsed = parse_priv_validator_key(text)
    assert (parsed.algorithm, parsed.secret, parsed.public_key) == ("secp256k1", scalar, public)


def test_ed25519_reader_refuses_secp256k1(tmp_path: Path) -> None:
    scalar = generate_secp256k1_scalar()
    path = tmp_path / "pvk.json"
    path.write_text(
        json.dumps(
            {
                "priv_key": {
                    "type": "tendermint/PrivKeySecp256k1",
                    "value": base64.b64encode(scalar).decode(),
                },
                "pub_key": {
                    "type": "tendermint/PubKeySecp256k1",
                    "value": base64.b64encode(secp256k1_public_key(scalar)).decode(),
                },
            }
        )
    )
    with pytest.raises(KeyFileError, match="expected an Ed25519 validator key, found secp256k1"):
        read_priv_validator_key_json(path)
