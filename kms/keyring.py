"""Builds the provider registry (chain ID -> signer) from tmkms.toml's provider sections."""

from __future__ import annotations

import logging

from kms.config import KmsConfig, SoftsignConfig
from kms.keys import (
    format_public_key,
    load_ed25519_key,
    load_secp256k1_key,
    read_priv_validator_key_json,
    warn_if_readable_by_others,
)
from providers import Registry, Signer
from providers.softsign import Ed25519SoftSigner, Secp256k1SoftSigner

log = logging.getLogger("kms.keyring")


def build_registry(config: KmsConfig) -> Registry:
    """Load every configured key and register it for its chains; KmsError on any problem."""
    registry = Registry()
    for softsign in config.softsign:
        signer = _softsign_signer(softsign)
        account = softsign.key_type == "account"
        for chain_id in softsign.chain_ids:
            registry.add(chain_id, signer, account=account)
            log_added(config, chain_id, "softsign", softsign.key_type, signer)
    if config.yubihsm is not None:
        from providers.yubihsm import add_yubihsm_signers

        add_yubihsm_signers(registry, config.yubihsm, config)
    return registry


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
