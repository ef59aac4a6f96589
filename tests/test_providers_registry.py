"""The provider registry: one consensus key per chain, optional account key, clear errors."""

from __future__ import annotations

import hashlib

import nacl.signing
import pytest

from kms.errors import ConfigError
from providers import OpenedProvider, ProviderKey, Registry, Signer
from providers.softsign import Ed25519SoftSigner, Secp256k1SoftSigner


def ed(seed: bytes) -> Ed25519SoftSigner:
    return Ed25519SoftSigner(nacl.signing.SigningKey(hashlib.sha256(seed).digest()))


def test_consensus_and_account_keys_per_chain() -> None:
    registry = Registry()
    a, b = ed(b"a"), ed(b"b")
    account = Secp256k1SoftSigner(hashlib.sha256(b"acct").digest())
    registry.add("osmosis-1", a)
    registry.add("cosmoshub-4", b)
    registry.add("osmosis-1", account, account=True)
    assert registry.consensus("osmosis-1") is a
    assert registry.consensus("cosmoshub-4") is b
    assert registry.account("osmosis-1") is account
    assert registry.account("cosmoshub-4") is None
    assert registry.chains() == ["osmosis-1", "cosmoshub-4"]
    assert "osmosis-1" in registry
    assert "juno-1" not in registry
    assert len(registry) == 2


def test_second_consensus_key_for_a_chain_is_a_config_error() -> None:
    registry = Registry()
    registry.add("osmosis-1", ed(b"a"))
    with pytest.raises(ConfigError, match=r"osmosis-1.*already has a consensus key"):
        registry.add("osmosis-1", ed(b"b"))
    registry.add("osmosis-1", Secp256k1SoftSigner(hashlib.sha256(b"x").digest()), account=True)
    with pytest.raises(ConfigError, match=r"osmosis-1.*already has an account key"):
        registry.add("osmosis-1", Secp256k1SoftSigner(hashlib.sha256(b"y").digest()), account=True)


def test_missing_consensus_key_is_a_clear_error() -> None:
    registry = Registry()
    registry.add("osmosis-1", Secp256k1SoftSigner(hashlib.sha256(b"x").digest()), account=True)
    with pytest.raises(ConfigError, match="no consensus key configured for chain 'osmosis-1'"):
        registry.consensus("osmosis-1")
    with pytest.raises(ConfigError, match="'juno-1'"):
        registry.consensus("juno-1")


def test_unknown_key_type_is_refused() -> None:
    class Odd:
        key_type = "rsa"
        public_key = b"k"
        provider = "test"

        async def sign(self, message: bytes) -> bytes:
            return b""

    odd = Odd()
    assert isinstance(odd, Signer)  # structurally a Signer...
    with pytest.raises(ConfigError, match="unsupported key type 'rsa'"):
        Registry().add("c", odd)  # ...but not a supported one


def test_close_runs_every_closer_last_first_despite_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = Registry()
    calls: list[str] = []

    def failing() -> None:
        calls.append("failing")
        raise OSError("device gone")

    for closer in (lambda: calls.append("first"), failing, lambda: calls.append("last")):
        registry.add_provider(OpenedProvider("hsm", close=closer))
    registry.close()
    assert calls == ["last", "failing", "first"]
    assert any("device gone" in m for m in caplog.messages)
    registry.close()  # once only
    assert calls == ["last", "failing", "first"]


def test_background_tasks_are_kept_in_order() -> None:
    registry = Registry()

    async def first() -> None: ...

    async def second() -> None: ...

    registry.add_provider(OpenedProvider("a", tasks=[first]))
    registry.add_provider(OpenedProvider("b", tasks=[second]))
    assert registry.tasks() == [first, second]


def test_a_provider_registers_each_key_for_each_chain() -> None:
    consensus, account = ed(b"c"), Secp256k1SoftSigner(hashlib.sha256(b"acct").digest())
    registry = Registry()
    registry.add_provider(
        OpenedProvider(
            "hsm",
            keys=[
                ProviderKey(consensus, ("a-1", "b-1")),
                ProviderKey(account, ("a-1",), kind="account"),
            ],
        )
    )
    assert registry.consensus("a-1") is consensus is registry.consensus("b-1")
    assert registry.account("a-1") is account
    assert registry.account("b-1") is None
    assert registry.chains() == ["a-1", "b-1"]
