"""Signing providers: the Signer protocol every key backend implements, and the registry.

A provider (softsign file keys, a YubiHSM 2, a PKCS#11 token) is opened from its config
section into an :class:`OpenedProvider`: its keys (:class:`ProviderKey`, each a Signer and
the chains it signs for), the background tasks it needs while serving, and how to close it.
It reports its device's health through :class:`ProviderHealth`, which it is handed when it
is opened; it knows nothing of the metrics behind it, nor of the registry.

The registry holds, per chain ID, exactly one consensus key (what signs votes and proposals)
and at most one account key (secp256k1, for ``SignRawBytes``-style requests);
:func:`kms.keyring.build_registry` fills it from tmkms.toml and every session looks its
chain's keys up in it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol, runtime_checkable

import attrs

from kms.errors import ConfigError

log = logging.getLogger("providers")

KeyType = Literal["ed25519", "secp256k1"]

KeyKind = Literal["consensus", "account"]

__all__ = [
    "KeyKind",
    "KeyType",
    "OpenedProvider",
    "ProviderHealth",
    "ProviderKey",
    "Registry",
    "Signer",
]


@runtime_checkable
class Signer(Protocol):
    """One private key that can sign.

    ``key_type`` is ``"ed25519"`` or ``"secp256k1"``; ``public_key`` is the raw 32-byte
    Ed25519 key or the 33-byte compressed secp256k1 point; ``provider`` names the backend
    for logs (``"softsign"``, ``"yubihsm"``).
    """

    @property
    def key_type(self) -> KeyType:
        """The signature algorithm of this key."""
        ...

    @property
    def public_key(self) -> bytes:
        """The public key, raw (Ed25519) or compressed (secp256k1)."""
        ...

    @property
    def provider(self) -> str:
        """The backend's name, for log lines."""
        ...

    async def sign(self, message: bytes) -> bytes:
        """Sign ``message``; raises kms.errors.SignerError when the backend fails."""
        ...


class ProviderHealth(Protocol):
    """How a provider reports its device's health (kms.ops.stats.ProviderMetrics is one)."""

    def set_reachable(self, reachable: bool, reason: str | None = None) -> None:
        """The device answers again, or stopped answering (``reason`` says why)."""
        ...

    def count_session_reopens_from(self, source: Callable[[], int]) -> None:
        """Read ``source()`` (sessions the provider re-opened) whenever it is reported."""
        ...


class NoHealth:
    """A ProviderHealth that keeps nothing (commands that open a provider briefly)."""

    def set_reachable(self, reachable: bool, reason: str | None = None) -> None:
        """Ignored."""

    def count_session_reopens_from(self, source: Callable[[], int]) -> None:
        """Ignored."""


@attrs.frozen
class ProviderKey:
    """One key of a provider and the chains it signs for."""

    signer: Signer
    chain_ids: tuple[str, ...]
    kind: KeyKind = "consensus"


@attrs.define
class OpenedProvider:
    """What opening a provider's config section yields (see the module docstring)."""

    name: str
    keys: list[ProviderKey] = attrs.Factory(list)
    #: run beside the validator connections while serving (an HSM keepalive, say)
    tasks: list[Callable[[], Awaitable[None]]] = attrs.Factory(list)
    #: blocking; frees what the provider holds (an HSM session slot, say)
    close: Callable[[], None] | None = None


class Registry:
    """Consensus and account signers by chain ID."""

    def __init__(self) -> None:
        self._consensus: dict[str, Signer] = {}
        self._account: dict[str, Signer] = {}
        self._chains: dict[str, None] = {}
        self._closers: list[Callable[[], None]] = []
        self._tasks: list[Callable[[], Awaitable[None]]] = []

    def add(self, chain_id: str, signer: Signer, *, account: bool = False) -> None:
        """Register ``signer`` for ``chain_id``; ConfigError if that slot is already taken.

        A consensus key must be Ed25519 or secp256k1 (CometBFT accepts both); tmkms allows
        one consensus key per chain, and this registry also allows one account key.
        """
        slot = self._account if account else self._consensus
        role = "account" if account else "consensus"
        if chain_id in slot:
            existing = slot[chain_id]
            raise ConfigError(
                f"chain {chain_id!r} already has {'an' if account else 'a'} {role} key "
                f"(from {existing.provider}); "
                f"only one {role} key per chain is supported"
            )
        if signer.key_type not in ("ed25519", "secp256k1"):
            raise ConfigError(f"unsupported key type {signer.key_type!r} for chain {chain_id!r}")
        slot[chain_id] = signer
        self._chains.setdefault(chain_id, None)

    def remove_chain(self, chain_id: str) -> None:
        """Forget ``chain_id``'s keys (a chain removed by a reload); the provider stays open."""
        self._consensus.pop(chain_id, None)
        self._account.pop(chain_id, None)
        self._chains.pop(chain_id, None)

    def consensus(self, chain_id: str) -> Signer:
        """The consensus signer of ``chain_id``; ConfigError naming the chain if there is none."""
        signer = self._consensus.get(chain_id)
        if signer is None:
            raise ConfigError(
                f"no consensus key configured for chain {chain_id!r} "
                "(add a [[providers.softsign]] or [[providers.yubihsm]] key with that chain ID)"
            )
        return signer

    def account(self, chain_id: str) -> Signer | None:
        """The account signer of ``chain_id``, or None."""
        return self._account.get(chain_id)

    def chains(self) -> list[str]:
        """Chain IDs with any key, in the order they were first added."""
        return list(self._chains)

    def add_provider(self, opened: OpenedProvider) -> None:
        """Take over ``opened``'s tasks and closer, then register each of its keys.

        On a ConfigError (a chain given two keys) the provider is already owned by the
        registry: :meth:`close` releases it.
        """
        self._tasks.extend(opened.tasks)
        if opened.close is not None:
            self._closers.append(opened.close)
        for key in opened.keys:
            for chain_id in key.chain_ids:
                self.add(chain_id, key.signer, account=key.kind == "account")

    def tasks(self) -> list[Callable[[], Awaitable[None]]]:
        """The providers' background tasks, in the order they were added."""
        return list(self._tasks)

    def close(self) -> None:
        """Release what the providers hold, last opened first; blocking, never raises.

        A closer that fails is logged and the others still run: at shutdown there is
        nothing better to do with the error.
        """
        while self._closers:
            closer = self._closers.pop()
            try:
                closer()
            except Exception as exc:
                log.warning("closing a key provider failed: %s", exc)

    def __contains__(self, chain_id: object) -> bool:
        return chain_id in self._chains

    def __len__(self) -> int:
        return len(self._chains)
