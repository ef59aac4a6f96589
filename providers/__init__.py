"""Signing providers: the Signer protocol every key backend implements, and the registry.

A provider (softsign file keys, a YubiHSM 2) hands out Signer objects. The registry holds,
per chain ID, exactly one consensus key (what signs votes and proposals) and at most one
account key (secp256k1, for ``SignRawBytes``-style requests); the service builds it from
tmkms.toml and every session looks its chain's keys up in it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol, runtime_checkable

from kms.errors import ConfigError

log = logging.getLogger("providers")

KeyType = Literal["ed25519", "secp256k1"]

__all__ = ["KeyType", "Registry", "Signer"]


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

    def add_task(self, task: Callable[[], Awaitable[None]]) -> None:
        """A provider's background task (a session keepalive, say), run while serving."""
        self._tasks.append(task)

    def tasks(self) -> list[Callable[[], Awaitable[None]]]:
        """The background tasks, in the order they were added."""
        return list(self._tasks)

    def on_close(self, closer: Callable[[], None]) -> None:
        """Have :meth:`close` call ``closer`` (blocking: a provider's session, say)."""
        self._closers.append(closer)

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
