"""The admin mnemonic and what `setup` derives from it, checked against tmkms's own vectors.

tmkms's README shows a full setup transcript (a mnemonic and the passwords and wrap key it
printed) and its source has HKD32 derivation vectors for the key 00 01 .. 1f; matching them
means a phrase written down with either tool provisions identical HSMs.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.yubihsm import mnemonic
from providers.yubihsm.mnemonic import WORDS
from providers.yubihsm.setup import SetupPlan

# SHA-256 of the BIP-39 English wordlist file (one word a line), as published with BIP-39.
WORDLIST_SHA256 = "2f5eed53a4727b4bf8880d8f3f199efc90e58503646d9ff8eff3a2ed3b24dbda"

README_PHRASE = (
    "double section release consider diet pilot flip shell mother alone what fantasy "
    "much answer lottery crew nut reopen stereo square popular addict just animal"
)
README_SECRETS = {
    "operator": "kms-operator-password-1k02vtxh4ggxct5tngncc33rk9yy5yjhk",
    "auditor": "kms-auditor-password-1s0ynq69ezavnqgq84p0rkhxvkqm54ks9",
    "validator": "kms-validator-password-1x4anf3n8vqkzm0klrwljhcx72sankcw0",
}
README_WRAP_KEY = "21a6ca8cfd5dbe9c26320b5c4935ff1e63b9ab54e2dfe24f66677aba8852be13"
TEST_KEY = bytes(range(32))
TEST_PHRASE = (
    "abandon amount liar amount expire adjust cage candy arch gather drum bullet "
    "absurd math era live bid rhythm alien crouch range attend journey unaware"
)


def test_wordlist_is_the_standard_english_list() -> None:
    assert len(WORDS) == 2048 and len(set(WORDS)) == 2048
    text = "\n".join(WORDS) + "\n"
    assert hashlib.sha256(text.encode()).hexdigest() == WORDLIST_SHA256
    assert (WORDS[0], WORDS[1], WORDS[2047]) == ("abandon", "ability", "zoo")


def test_phrase_of_the_hkd32_test_key() -> None:
    assert mnemonic.phrase_from_entropy(TEST_KEY) == TEST_PHRASE
    assert mnemonic.entropy_from_phrase(TEST_PHRASE) == TEST_KEY


@pytest.mark.parametrize(
    ("path", "prefix"),
    [
        ([b"1"], bytes([3, 76, 227, 91, 100, 247, 29, 7])),
        ([b"1", b"2"], bytes([236, 169, 7, 38, 98, 113, 230, 246])),
        ([b"1", b"2", b"3"], bytes([60, 230, 72, 98, 156, 75, 72, 142])),
    ],
)
def test_hkd32_derivation_vectors(path: list[bytes], prefix: bytes) -> None:
    assert mnemonic.derive_secret(TEST_KEY, path)[:8] == prefix


def test_readme_setup_transcript_is_reproduced() -> None:
    plan = SetupPlan.from_phrase(README_PHRASE)
    assert plan.phrase == README_PHRASE
    assert {role.name: role.password for role in plan.roles[1:]} == README_SECRETS
    assert plan.role("admin").password == README_PHRASE
    assert plan.wrap_key.hex() == README_WRAP_KEY
    assert [(role.key_id, role.name) for role in plan.roles] == [
        (1, "admin"),
        (2, "operator"),
        (3, "auditor"),
        (4, "validator"),
    ]
    assert plan.role("validator").domains == 1
    assert "double" not in repr(plan) and README_WRAP_KEY not in repr(plan)


def test_a_restored_phrase_may_be_spaced_any_way() -> None:
    messy = "  " + README_PHRASE.replace(" ", "\n", 3).replace(" ", "   ", 2) + "\n"
    assert mnemonic.normalize_phrase(messy) == README_PHRASE


@pytest.mark.parametrize(
    ("phrase", "message"),
    [
        (README_PHRASE.rsplit(" ", 1)[0], "24-word"),
        (README_PHRASE.replace("double", "dooble"), "word #1 is not"),
        (README_PHRASE.replace("animal", "ability"), "checksum"),
        (README_PHRASE.replace("double section", "section double"), "checksum"),
        (README_PHRASE.upper(), "not in the BIP-39"),
        ("", "got 0 words"),
    ],
)
def test_invalid_phrases_are_refused(phrase: str, message: str) -> None:
    with pytest.raises(mnemonic.MnemonicError, match=message):
        mnemonic.entropy_from_phrase(phrase)


@given(st.binary(min_size=32, max_size=32))
def test_entropy_round_trips_through_the_phrase(entropy: bytes) -> None:
    phrase = mnemonic.phrase_from_entropy(entropy)
    assert len(phrase.split(" ")) == 24
    assert mnemonic.entropy_from_phrase(phrase) == entropy


def test_new_entropy_mixes_both_sources_with_hkdf_sha512() -> None:
    hsm, host = bytes([1]) * 32, bytes([2]) * 32
    # RFC 5869 by hand: extract with a zero salt, then one expand block (32 <= 64 bytes).
    prk = hmac.new(bytes(64), hsm + host, hashlib.sha512).digest()
    expected = hmac.new(prk, mnemonic.HKDF_INFO + b"\x01", hashlib.sha512).digest()[:32]
    assert mnemonic.new_entropy(hsm, host) == expected
    assert mnemonic.new_entropy(hsm, bytes(32)) != expected
    assert mnemonic.new_entropy(hsm) != mnemonic.new_entropy(hsm)  # the OS half is random
    with pytest.raises(ValueError):
        mnemonic.new_entropy(bytes(31))


def test_each_role_and_wrap_key_get_distinct_secrets() -> None:
    secrets = [mnemonic.role_password(TEST_KEY, role) for role in mnemonic.ROLES]
    secrets += [
        mnemonic.wrap_key_secret(TEST_KEY, 1).hex(),
        mnemonic.wrap_key_secret(TEST_KEY, 2).hex(),
    ]
    assert len(set(secrets)) == 5
    with pytest.raises(ValueError):
        mnemonic.derive_secret(TEST_KEY, [])
