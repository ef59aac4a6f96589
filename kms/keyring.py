"""Builds the provider registry (chain ID -> signer) from tmkms.toml's provider sections.

Each provider section is opened into a :class:`providers.OpenedProvider` (the provider knows
nothing of the registry or of the metrics); this module registers its keys, logs each one
as tmkms does, and hands the provider its :class:`providers.ProviderHealth` (the metrics of
that provider, when the KMS keeps metrics).
"""

from __future__ import annotations

import logging

from kms.config import KmsConfig, SoftsignConfig
from kms.errors import ConfigError
from kms.keys import (
    format_public_key,
    load_ed25519_key,
    load_secp256k1_key,
    read_priv_validator_key_json,
    warn_if_readable_by_others,
)
from kms.ops.stats import KmsMetrics
from providers import OpenedProvider, ProviderKey, Registry, Signer
from providers.softsign import Ed25519SoftSigner, Secp256k1SoftSigner

log = logging.getLogger("kms.keyring")


def build_registry(config: KmsConfig, metrics: KmsMetrics | None = None) -> Registry:
    """Load every configured key and register it for its chains; KmsError on any problem.

    Providers opened before a failure are closed again before the error propagates.
    """
    metrics = metrics if metrics is not None else KmsMetrics()
    registry = Registry()
    try:
        _add(registry, config, _softsign(config.softsign))
        if config.yubihsm is not None:
            from providers.yubihsm import open_yubihsm

            _add(registry, config, open_yubihsm(config.yubihsm, metrics.provider("yubihsm")))
        if config.pkcs11 is not None:
            from providers.pkcs11 import open_pkcs11

            _add(registry, config, open_pkcs11(config.pkcs11, metrics.provider("pkcs11")))
    except BaseException:
        registry.close()
        raise
    return registry


def add_softsign(
    registry: Registry, config: KmsConfig, sections: tuple[SoftsignConfig, ...]
) -> None:
    """Load and register the key files of ``sections`` (new chains of a reload).

    All or nothing: a key that fails to load (KmsError) registers none of them.
    """
    opened = _softsign(sections)
    for key in opened.keys:
        for chain_id in key.chain_ids:
            if chain_id in registry:
                raise ConfigError(f"chain {chain_id!r} already has its keys")
    _add(registry, config, opened)


def _add(registry: Registry, config: KmsConfig, opened: OpenedProvider) -> None:
    registry.add_provider(opened)
    for key in opened.keys:
        for chain_id in key.chain_ids:
            log_added(config, chain_id, opened.name, key.kind, key.signer)


def _softsign(sections: tuple[SoftsignConfig, ...]) -> OpenedProvider:
    return OpenedProvider(
        "softsign",
        keys=[
            ProviderKey(_softsign_signer(section), section.chain_ids, section.key_type)
            for section in sections
        ],
    )


def _softsign_signer(softsign: SoftsignConfig) -> Signer:
    warn_if_readable_by_others(softsign.path, log)
    if softsign.key_type == "account":
        return Secp256k1SoftSigner(load_secp256k1_key(softsign.path))
    if softsign.key_format == "json":
        return Ed25519SoftSigner(read_priv_validator_key_json(softsign.path))
    return Ed25519SoftSigner(load_ed25519_key(softsign.path))


def log_added(config: KmsConfig, chain_id: str, provider: str, kind: str, signer: Signer) -> None:
    """`[keyring:<provider>] added consensus Ed25519 key: <formatted key>`, as tmkms logs it."""
    algorithm = "Ed25519" if signer.key_type == "ed25519" else "secp256k1"
    shown = format_public_key(
        signer.key_type, signer.public_key, config.chain(chain_id).key_format, kind
    )
    log.info("[keyring:%s] added %s %s key: %s", provider, kind, algorithm, shown)
