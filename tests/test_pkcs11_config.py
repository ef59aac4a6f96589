"""`[[providers.pkcs11]]` in tmkms.toml: what is accepted, and one-line errors for the rest.

Every error names the file, the section and the key; the PIN is never echoed, whatever its
type. No module is loaded and no token touched by loading the configuration.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kms.config import load_config
from kms.config.model import Pkcs11KeyConfig
from kms.errors import ConfigError

CHAIN = '[[chain]]\nid = "hsm-1"\nkey_format = { type = "hex" }\n\n'
SECRET_PIN = "pin-that-must-not-leak"


def section(body: str) -> str:
    return CHAIN + "[[providers.pkcs11]]\n" + body


GOOD = 'module = "/usr/lib/softhsm/libsofthsm2.so"\ntoken_label = "kms"\n'


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "tmkms.toml"
    path.write_text(text)
    return load_config(path)


def test_a_full_section_parses(tmp_path: Path) -> None:
    chains = "".join(CHAIN.replace("hsm-1", chain) for chain in ("hsm-1", "other-1", "third-1"))
    text = (
        chains
        + "[[providers.pkcs11]]\n"
        + GOOD
        + (
            'pin_file = "secrets/pin"\nkeys = [\n'
            '  { chain_ids = ["hsm-1"], label = "consensus", type = "consensus" },\n'
            '  { chain_ids = ["other-1"], id = "0x0A0b" },\n'
            '  { chain_ids = ["third-1"], label = "both", id = "01" },\n]\n'
        )
    )
    pkcs11 = load(tmp_path, text).pkcs11  # type: ignore[attr-defined]
    assert pkcs11.module == Path("/usr/lib/softhsm/libsofthsm2.so")
    assert pkcs11.token_label == "kms" and pkcs11.slot is None
    assert pkcs11.pin is None and pkcs11.pin_file == Path.cwd() / "secrets/pin"
    assert pkcs11.keys == (
        Pkcs11KeyConfig(chain_ids=("hsm-1",), label="consensus"),
        Pkcs11KeyConfig(chain_ids=("other-1",), id=b"\x0a\x0b"),
        Pkcs11KeyConfig(chain_ids=("third-1",), label="both", id=b"\x01"),
    )


def test_slot_and_inline_pin(tmp_path: Path) -> None:
    text = section(
        f'module = "/x.so"\nslot = 359138118\npin = "{SECRET_PIN}"\n'
        'keys = [{ chain_ids = ["hsm-1"], label = "k" }]\n'
    )
    pkcs11 = load(tmp_path, text).pkcs11  # type: ignore[attr-defined]
    assert pkcs11.slot == 359138118 and pkcs11.token_label is None and pkcs11.pin == SECRET_PIN
    assert SECRET_PIN not in repr(pkcs11) and "pin=<redacted>" in repr(pkcs11)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (GOOD + 'pin = "1"\nlabel = "x"\n', 'key "label": unknown key (expected one of: module, token_label, slot, pin, pin_file, keys)'),
        ('token_label = "kms"\npin = "1"\n', 'key "module": missing required key'),
        ('module = "/x.so"\npin = "1"\n', 'key "token_label": give exactly one of token_label or slot'),
        (GOOD + 'slot = 1\npin = "1"\n', 'key "slot": give exactly one of token_label or slot'),
        ('module = "/x.so"\ntoken_label = "' + "x" * 33 + '"\npin = "1"\n', 'key "token_label": a PKCS#11 token label has at most 32 bytes'),
        ('module = "/x.so"\nslot = -1\npin = "1"\n', 'key "slot": -1 is out of range'),
        (GOOD, 'key "pin_file": give exactly one of pin or pin_file'),
        (GOOD + 'pin = "1"\npin_file = "/p"\n', 'key "pin": give exactly one of pin or pin_file'),
        (GOOD + 'pin = ""\n', 'key "pin": expected a non-empty string, got string'),
        (GOOD + 'pin = "1"\nkeys = [{ chain_ids = ["hsm-1"] }]\n', 'key "keys[0].label": missing required key: give label or id (or both)'),
        (GOOD + 'pin = "1"\nkeys = [{ chain_ids = ["hsm-1"], id = "xyz" }]\n', 'key "keys[0].id": expected the CKA_ID as hex digits such as "01", got string "xyz"'),
        (GOOD + 'pin = "1"\nkeys = [{ chain_ids = ["hsm-1"], id = "abc" }]\n', 'key "keys[0].id": expected the CKA_ID as hex digits'),
        (GOOD + 'pin = "1"\nkeys = [{ chain_ids = ["hsm-1"], label = "k", type = "account" }]\n', 'key "keys[0].type": account keys are not supported by [[providers.pkcs11]]'),
        (GOOD + 'pin = "1"\nkeys = [{ chain_ids = ["hsm-1"], label = "k", key = 1 }]\n', 'key "keys[0].key": unknown key'),
        (GOOD + 'pin = "1"\nkeys = [{ chain_ids = ["nope-1"], label = "k" }]\n', 'key "keys[0].chain_ids[0]": unknown chain id "nope-1"'),
    ],
)  # fmt: skip
def test_errors_name_file_section_and_key(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, section(body))
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'tmkms.toml'}: [[providers.pkcs11]] #1: "), message
    assert expected in message, message
    assert "\n" not in message


@pytest.mark.parametrize("value", ["123456", "12345678901234567890", "true", "[1, 2]"])
def test_a_pin_of_the_wrong_type_is_never_echoed(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, section(GOOD + f"pin = {value}\n"))
    message = str(caught.value)
    assert 'key "pin": expected a non-empty string, got' in message
    for part in ("123456", "1234567890", "[1, 2]"):
        assert part not in message


def test_one_section_and_one_consensus_key_per_chain(tmp_path: Path) -> None:
    both = section(GOOD + 'pin = "1"\n') + "\n[[providers.pkcs11]]\n" + GOOD + 'pin = "1"\n'
    with pytest.raises(ConfigError, match=r"only one \[\[providers.pkcs11\]\] section"):
        load(tmp_path, both)
    clash = (
        section(GOOD + 'pin = "1"\nkeys = [{ chain_ids = ["hsm-1"], label = "k" }]\n')
        + '\n[[providers.softsign]]\nchain_ids = ["hsm-1"]\npath = "/k"\n'
    )
    with pytest.raises(ConfigError, match=r'chain "hsm-1" already has a consensus key'):
        load(tmp_path, clash)


def test_a_validator_may_use_a_pkcs11_key(tmp_path: Path) -> None:
    text = section(GOOD + 'pin = "1"\nkeys = [{ chain_ids = ["hsm-1"], label = "k" }]\n')
    text += '\n[[validator]]\nchain_id = "hsm-1"\naddr = "unix:///tmp/node.sock"\n'
    config = load(tmp_path, text)
    assert config.validators[0].chain_id == "hsm-1"  # type: ignore[attr-defined]
