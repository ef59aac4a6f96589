"""The PKCS#11 provider against a real SoftHSM2 token (no mocks): keys, signatures, startup.

Keys are put on the token with python-pkcs11 directly (tests/support/softhsm.py), and every
signature is checked against the public key read from the token by that independent path.
Startup failures are one-line errors of the right class (hence exit code), never showing
the PIN. Faults (tokens going away, sessions invalidated, a stuck module) are in
test_pkcs11_faults.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey, VerifyKey

from kms.config import config_from_dict
from kms.errors import ConfigError, KeyFileError, KmsError, SignerError
from kms.keyring import build_registry
from kms.keys import format_public_key
from kms.ops import KmsMetrics
from kms.service import Service
from providers.pkcs11 import Pkcs11Ed25519Signer
from providers.pkcs11.provider import open_connection
from tests.support.softhsm import (
    SoftHsm,
    document,
    module_initialized,
    opened,
    pkcs11_section,
    private_softhsm,
    public_key_of,
    put_ed25519,
    put_p256,
)

MESSAGE = b"\x70canonical vote sign bytes" + bytes(100)


@pytest.fixture
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHsm]:
    yield from private_softhsm(tmp_path, monkeypatch)


async def test_keys_sign_with_the_tokens_keys(softhsm: SoftHsm) -> None:
    """A generated key and an imported seed: signatures verify, the seed's byte for byte."""
    seed = bytes(SigningKey.generate())
    with softhsm.session() as session:
        put_ed25519(session, "generated", b"\x01")
        put_ed25519(session, "imported", b"\x02", seed)
        put_ed25519(session, "by-id", b"\xab\xcd")
        public = {
            label: public_key_of(session, label) for label in ("generated", "imported", "by-id")
        }
    keys = [
        {"chain_ids": ["gen-1"], "label": "generated"},
        {"chain_ids": ["imp-1"], "label": "imported", "id": "02"},
        {"chain_ids": ["id-1"], "id": "abcd", "type": "consensus"},
    ]
    with opened(pkcs11_section(softhsm, keys)) as provider:
        signers = {key.chain_ids[0]: key.signer for key in provider.keys}
        assert provider.name == "pkcs11" and len(signers) == 3
        for chain, label in (("gen-1", "generated"), ("imp-1", "imported"), ("id-1", "by-id")):
            signer = signers[chain]
            assert isinstance(signer, Pkcs11Ed25519Signer)
            assert signer.provider == "pkcs11" and signer.key_type == "ed25519"
            assert signer.public_key == public[label]
            signature = await signer.sign(MESSAGE)
            VerifyKey(public[label]).verify(MESSAGE, signature)
        for message in (b"", MESSAGE, bytes(range(256)) * 4):
            assert await signers["imp-1"].sign(message) == SigningKey(seed).sign(message).signature


def test_startup_registers_the_keys_and_logs_them(
    softhsm: SoftHsm, caplog: pytest.LogCaptureFixture
) -> None:
    with softhsm.session() as session:
        put_ed25519(session, "validator", b"\x01")
        public = public_key_of(session, "validator")
    doc = document(softhsm, [{"chain_ids": ["hsm-1"], "label": "validator"}])
    config = config_from_dict(doc, Path("tmkms.toml"), Path.cwd())
    metrics = KmsMetrics()
    with caplog.at_level(logging.INFO):
        registry = build_registry(config, metrics)
    try:
        signer = registry.consensus("hsm-1")
        assert signer.provider == "pkcs11" and signer.public_key == public
        shown = format_public_key("ed25519", public, config.chain("hsm-1").key_format)
        assert shown.startswith("cosmosvalconspub1")
        assert f"[keyring:pkcs11] added consensus Ed25519 key: {shown}" in caplog.messages
        health = metrics.providers["pkcs11"]
        assert health.reachable and health.session_reopens == 0
    finally:
        registry.close()
    assert not module_initialized(softhsm.module), "closing finalises the module"
    assert softhsm.pin not in caplog.text


def test_close_logs_out_and_finalises(softhsm: SoftHsm) -> None:
    with softhsm.session() as session:
        put_ed25519(session, "validator", b"\x01")
    with opened(pkcs11_section(softhsm, [{"chain_ids": ["hsm-1"], "label": "validator"}])):
        assert module_initialized(softhsm.module)
    assert not module_initialized(softhsm.module)
    with softhsm.session() as session:  # a fresh login works: nobody is logged in any more
        assert list(session.get_objects())


def _startup_error(hsm: SoftHsm, keys: list[dict[str, Any]], **extra: Any) -> KmsError:
    config = pkcs11_section(hsm, keys, **extra)
    with pytest.raises(KmsError) as caught, opened(config):
        pass
    error = caught.value
    assert "\n" not in str(error)
    assert hsm.pin not in str(error) and hsm.pin not in repr(config)
    assert not module_initialized(hsm.module), "a failed start leaves nothing open"
    return error


def test_startup_errors_name_the_problem(softhsm: SoftHsm, tmp_path: Path) -> None:
    with softhsm.session() as session:
        put_ed25519(session, "good", b"\x01")
        put_p256(session, "p256", b"\x02")
        put_ed25519(session, "no-public", b"\x03", with_public=False)
        other = bytes(SigningKey.generate().verify_key)
        put_ed25519(session, "wrong-public", b"\x04", bytes(32), public_key=other)
    good = [{"chain_ids": ["hsm-1"], "label": "good"}]

    missing = tmp_path / "nope.so"
    error = _startup_error(softhsm, good, module=str(missing))
    assert isinstance(error, ConfigError) and f"PKCS#11 module {missing}: no such file" in str(
        error
    )

    not_a_library = tmp_path / "notes.so"
    not_a_library.write_text("not a library\n")
    error = _startup_error(softhsm, good, module=str(not_a_library))
    assert isinstance(error, ConfigError) and "is not a PKCS#11 library" in str(error)

    error = _startup_error(softhsm, good, token_label="absent")
    assert type(error) is not ConfigError and isinstance(error, SignerError)
    assert 'PKCS#11 token "absent" not found' in str(error) and '"kms" in slot' in str(error)

    error = _startup_error(softhsm, good, pin="not-the-pin")
    assert isinstance(error, ConfigError)
    assert 'token "kms" refused the PIN (CKR_PIN_INCORRECT); not retried' in str(error)
    assert "not-the-pin" not in str(error)

    for label, expected in (
        ("absent", 'label "absent": no such private key on the token'),
        ("p256", 'label "p256" is not an Ed25519 private key (key type ec)'),
        ("no-public", 'label "no-public": the private key has no public-key object'),
        ("wrong-public", 'label "wrong-public": its public-key object holds another key'),
    ):
        error = _startup_error(softhsm, [{"chain_ids": ["hsm-1"], "label": label}])
        assert isinstance(error, KeyFileError), error
        assert expected in str(error)


def test_a_library_that_is_not_pkcs11_is_refused(softhsm: SoftHsm) -> None:
    libz = next(
        (p for p in Path("/usr/lib/x86_64-linux-gnu").glob("libz.so.1*") if p.is_file()), None
    )
    if libz is None:
        pytest.skip("no libz.so.1 to try")
    error = _startup_error(softhsm, [{"chain_ids": ["hsm-1"], "label": "x"}], module=str(libz))
    assert isinstance(error, ConfigError)
    assert "is not a PKCS#11 library" in str(error) and "C_GetFunctionList" in str(error)


@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
async def test_pin_file_may_end_with_one_newline(
    softhsm: SoftHsm, tmp_path: Path, ending: str
) -> None:
    with softhsm.session() as session:
        put_ed25519(session, "validator", b"\x01")
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm.pin + ending)
    pin_file.chmod(0o600)
    config = pkcs11_section(
        softhsm, [{"chain_ids": ["hsm-1"], "label": "validator"}], pin_file=str(pin_file)
    )
    with opened(config) as provider:
        signer = provider.keys[0].signer
        VerifyKey(signer.public_key).verify(b"x", await signer.sign(b"x"))


def test_pin_file_problems_are_key_file_errors(softhsm: SoftHsm, tmp_path: Path) -> None:
    keys = [{"chain_ids": ["hsm-1"], "label": "validator"}]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(KeyFileError, match="PIN file is empty"):
        open_connection(pkcs11_section(softhsm, keys, pin_file=str(empty)))
    with pytest.raises(KeyFileError, match="cannot read PKCS#11 PIN file"):
        open_connection(pkcs11_section(softhsm, keys, pin_file=str(tmp_path / "missing")))
    two_lines = tmp_path / "two"
    two_lines.write_text(softhsm.pin + "\n\n")
    two_lines.chmod(0o600)
    error = _startup_error(softhsm, keys, pin_file=str(two_lines))
    assert "refused the PIN" in str(error)  # only one newline is not part of the PIN


async def test_a_signature_that_does_not_verify_is_never_returned(softhsm: SoftHsm) -> None:
    with softhsm.session() as session:
        put_ed25519(session, "validator", b"\x01")
    with opened(
        pkcs11_section(softhsm, [{"chain_ids": ["hsm-1"], "label": "validator"}])
    ) as provider:
        good = provider.keys[0].signer
        assert isinstance(good, Pkcs11Ed25519Signer)
        wrong = bytes(SigningKey.generate().verify_key)
        liar = Pkcs11Ed25519Signer(good.device, good.index, good.selector, wrong)
        with pytest.raises(SignerError, match="the token returned an invalid signature"):
            await liar.sign(b"x")
        VerifyKey(good.public_key).verify(b"x", await good.sign(b"x"))


def test_the_pin_stays_out_of_reprs_and_logs(
    softhsm: SoftHsm, caplog: pytest.LogCaptureFixture
) -> None:
    with softhsm.session() as session:
        put_ed25519(session, "validator", b"\x01")
    config = pkcs11_section(softhsm, [{"chain_ids": ["hsm-1"], "label": "validator"}])
    with caplog.at_level(logging.DEBUG):
        connection = open_connection(config)
        with opened(config) as provider:
            shown = [repr(config), repr(connection), repr(provider), repr(provider.keys)]
    assert "pin=<redacted>" in repr(config)
    for text in [*shown, caplog.text]:
        assert softhsm.pin not in text


async def test_the_service_closes_the_token_when_it_stops(softhsm: SoftHsm, tmp_path: Path) -> None:
    with softhsm.session() as session:
        put_ed25519(session, "validator", b"\x01")
    doc = document(softhsm, [{"chain_ids": ["hsm-1"], "label": "validator"}])
    config = config_from_dict(doc, tmp_path / "tmkms.toml", tmp_path)
    service = await Service.open(config)
    assert module_initialized(softhsm.module)
    await service.serve()  # no validators: returns at once
    await service.aclose()
    assert not module_initialized(softhsm.module)


async def test_the_token_may_be_named_by_slot(softhsm: SoftHsm) -> None:
    with softhsm.session() as session:
        put_ed25519(session, "validator", b"\x01")
        public = public_key_of(session, "validator")
    doc = document(softhsm, [{"chain_ids": ["hsm-1"], "label": "validator"}])
    provider_doc = doc["providers"]["pkcs11"][0]
    del provider_doc["token_label"]
    provider_doc["slot"] = softhsm.slots["kms"]
    config = config_from_dict(doc, Path("tmkms.toml"), Path.cwd())
    assert config.pkcs11 is not None and config.pkcs11.slot == softhsm.slots["kms"]
    with opened(config.pkcs11) as provider:
        signer = provider.keys[0].signer
        VerifyKey(public).verify(b"x", await signer.sign(b"x"))
    provider_doc["slot"] = softhsm.slots["kms"] + 1
    config = config_from_dict(doc, Path("tmkms.toml"), Path.cwd())
    assert config.pkcs11 is not None
    with pytest.raises(SignerError, match=r"PKCS#11 slot \d+ not found"), opened(config.pkcs11):
        pass
