"""`tmkms pkcs11 keys list|generate|import`, run as a user runs them, checked from outside.

Each command is the real `tmkms` process; what it left on the SoftHSM2 token is then read
with python-pkcs11 directly: the key exists, is an Ed25519 key, is sensitive and was never
extractable, and its public-key object holds the key the command printed.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from kms.keys import amino_encode_public_key, bech32_encode
from tests.support.kmsproc import priv_validator_key_json, run_tmkms
from tests.support.softhsm import (
    SoftHsm,
    private_key_flags,
    private_softhsm,
    public_key_of,
    put_ed25519,
    put_p256,
)

STATUS = re.compile(
    r'^ +(Generated|Imported) .*key "(?P<label>[^"]+)" \(id (?P<id>[0-9a-f]+)\): (?P<key>\S+)$'
)


@pytest.fixture
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHsm]:
    yield from private_softhsm(tmp_path, monkeypatch)


def write_config(hsm: SoftHsm, home: Path, keys: str = "", pin: str | None = None) -> Path:
    config = home / "tmkms.toml"
    config.write_text(
        '[[chain]]\nid = "cosmoshub-4"\nkey_format = { type = "bech32", account_key_prefix = '
        '"cosmospub", consensus_key_prefix = "cosmosvalconspub" }\n\n'
        '[[chain]]\nid = "other-1"\nkey_format = { type = "hex" }\n\n'
        f'[[providers.pkcs11]]\nmodule = "{hsm.module}"\ntoken_label = "{hsm.label}"\n'
        f'pin = "{pin or hsm.pin}"\nkeys = [{keys}]\n'
    )
    return config


def tmkms_ok(*args: str | Path) -> subprocess.CompletedProcess[str]:
    result = run_tmkms(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def status_line(result: subprocess.CompletedProcess[str]) -> re.Match[str]:
    lines = [STATUS.match(line) for line in result.stderr.splitlines()]
    found = [match for match in lines if match]
    assert len(found) == 1, result.stderr
    return found[0]


def assert_validator_key(
    hsm: SoftHsm, label: str, key_id: str, public: bytes, *, generated: bool = True
) -> None:
    """From outside the product: the key as a validator key must be kept.

    A generated key was always sensitive and never extractable; an imported one was known
    outside the token before, which PKCS#11 records (ALWAYS_SENSITIVE and NEVER_EXTRACTABLE
    false), but is sensitive and not extractable from now on.
    """
    with hsm.session() as session:
        flags = private_key_flags(session, label)
        assert public_key_of(session, label) == public
    assert flags["key_type"] == KeyType.EC_EDWARDS
    assert flags["sensitive"] is True and flags["extractable"] is False
    assert flags["always_sensitive"] is generated and flags["never_extractable"] is generated
    assert flags["private"] is True and flags["id"].hex() == key_id


def test_generate_then_list(softhsm: SoftHsm, tmp_path: Path) -> None:
    config = write_config(softhsm, tmp_path, '{ chain_ids = ["cosmoshub-4"], label = "validator" }')
    generated = status_line(
        tmkms_ok("pkcs11", "keys", "generate", "validator", "-p", "cosmosvalconspub", "-c", config)
    )
    assert generated["label"] == "validator" and len(generated["id"]) == 16
    shown = generated["key"]
    assert shown.startswith("cosmosvalconspub1")
    with softhsm.session() as session:
        public = public_key_of(session, "validator")
    assert shown == bech32_encode("cosmosvalconspub", amino_encode_public_key("ed25519", public))
    assert_validator_key(softhsm, "validator", generated["id"], public)

    plain = status_line(
        tmkms_ok("pkcs11", "keys", "generate", "spare", "--id", "0a0b", "-c", config)
    )
    with softhsm.session() as session:
        spare = public_key_of(session, "spare")
    assert plain["id"] == "0a0b" and plain["key"] == spare.hex().upper()
    assert_validator_key(softhsm, "spare", "0a0b", spare)

    listing = tmkms_ok("pkcs11", "keys", "list", "-c", config).stdout.splitlines()
    slot = softhsm.slots["kms"]
    assert listing == [
        f'Listing keys on PKCS#11 token "kms" (slot {slot}):',
        f'- "spare" (id 0a0b): [cons] {spare.hex().upper()}',
        f'- "validator" (id {generated["id"]}): [cons] {shown}',
    ]


def test_import_signs_like_the_seed_and_refuses_to_overwrite(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    validator_key = SigningKey.generate()
    key_file = tmp_path / "priv_validator_key.json"
    key_file.write_text(priv_validator_key_json(validator_key))
    key_file.chmod(0o600)
    config = write_config(softhsm, tmp_path)
    public = bytes(validator_key.verify_key)
    imported = status_line(
        tmkms_ok("pkcs11", "keys", "import", key_file, "validator", "--id", "01", "-c", config)
    )
    assert (imported["label"], imported["id"], imported["key"]) == (
        "validator",
        "01",
        public.hex().upper(),
    )
    assert_validator_key(softhsm, "validator", "01", public, generated=False)
    with softhsm.session() as session:
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="validator")
        for message in (b"", b"vote sign bytes", bytes(range(256))):
            signature = key.sign(message, mechanism=Mechanism.EDDSA)
            assert signature == validator_key.sign(message).signature
        before = len(list(session.get_objects()))

    again = run_tmkms("pkcs11", "keys", "import", key_file, "validator", "-c", config)
    assert again.returncode == 1
    assert again.stderr.strip() == (
        'error: the token already has an object labelled "validator"; not overwriting it'
    )
    taken_id = run_tmkms("pkcs11", "keys", "generate", "other", "--id", "01", "-c", config)
    assert taken_id.returncode == 1 and "already has an object with id 01" in taken_id.stderr
    with softhsm.session() as session:
        assert len(list(session.get_objects())) == before


def test_list_shows_keys_that_cannot_serve(softhsm: SoftHsm, tmp_path: Path) -> None:
    with softhsm.session() as session:
        put_p256(session, "p256", b"\x01")
        put_ed25519(session, "lonely", b"\x02", with_public=False)
        put_ed25519(session, "for-other", b"\x03")
        other = public_key_of(session, "for-other")
    config = write_config(softhsm, tmp_path, '{ chain_ids = ["other-1"], id = "03" }')
    listing = tmkms_ok("pkcs11", "keys", "list", "-c", config).stdout.splitlines()
    assert listing[1:] == [
        f'- "for-other" (id 03): [cons] {other.hex().upper()}',
        '- "lonely" (id 02): ed25519, no public-key object with the same label and id (not usable)',
        '- "p256" (id 01): ec (not usable as a consensus key)',
    ]
    with softhsm.session() as session:  # listing changed nothing
        assert {o[Attribute.LABEL] for o in session.get_objects()} == {
            "p256",
            "lonely",
            "for-other",
        }


def test_empty_token_wrong_pin_and_missing_section(softhsm: SoftHsm, tmp_path: Path) -> None:
    config = write_config(softhsm, tmp_path)
    empty = run_tmkms("pkcs11", "keys", "list", "-c", config)
    assert empty.returncode == 0 and empty.stdout == ""
    assert f'no private keys on PKCS#11 token "kms" (slot {softhsm.slots["kms"]})' in empty.stderr

    wrong = write_config(softhsm, tmp_path, pin="wrong-pin-123456")
    for args in (("list",), ("generate", "x")):
        result = run_tmkms("pkcs11", "keys", *args, "-c", wrong)
        assert result.returncode == 1
        assert (
            result.stderr.strip()
            == "error: PKCS#11 token 'kms' refused the PIN (CKR_PIN_INCORRECT)"
        )
        assert "wrong-pin-123456" not in result.stdout + result.stderr

    bare = tmp_path / "bare.toml"
    bare.write_text('[[chain]]\nid = "x-1"\nkey_format = { type = "hex" }\n')
    result = run_tmkms("pkcs11", "keys", "list", "-c", bare)
    assert result.returncode == 1 and "expected one [[providers.pkcs11]] section" in result.stderr
