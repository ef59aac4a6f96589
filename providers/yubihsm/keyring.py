"""Registering the keys of `[[providers.yubihsm]]` at startup, as tmkms does.

Startup connects to the HSM (blocking: nothing is being served yet), authenticates, and
reads every configured key's public key, because the node asks for the public key first and
a key of the wrong type must stop the KMS before it serves anything. An unreachable HSM or a
wrong password is therefore a clear startup error (tmkms exits too). After startup the
signers reconnect by themselves (see :mod:`providers.yubihsm.device`).
"""

from __future__ import annotations

import logging
from functools import partial

from kms.config import KmsConfig, YubihsmConfig
from kms.errors import SignerError
from providers import Registry, Signer
from providers.yubihsm.connection import HsmCommandError, HsmConnection, HsmUnavailable
from providers.yubihsm.device import HsmDevice
from providers.yubihsm.signers import (
    YubiHsmEd25519Signer,
    YubiHsmSecp256k1Signer,
    account_public_key,
    consensus_public_key,
    read_public_key,
)
from providers.yubihsm.transport import backend_factory, expected_serial, read_password

log = logging.getLogger("providers.yubihsm")


def open_connection(config: YubihsmConfig, *, timeout: float | None = None) -> HsmConnection:
    """An (unopened) connection with the configured adapter and credentials.

    ``timeout`` (seconds) bounds each backend I/O call; default the adapter's ``timeout_ms``.
    """
    return HsmConnection(
        backend_factory(config.adapter, config.serial_number, timeout),
        config.auth.key,
        read_password(config.auth),
        serial=expected_serial(config),
    )


def load_signers(
    connection: HsmConnection, config: YubihsmConfig, device: HsmDevice | None = None
) -> list[tuple[Signer, bool]]:
    """One signer per configured key, with whether it is an account key (blocking).

    All signers share ``device`` (default: a new HsmDevice on ``connection``). SignerError
    if the HSM cannot be reached; KeyFileError if a key has the wrong type.
    """
    if device is None:
        device = HsmDevice(connection)
    signers: list[tuple[Signer, bool]] = []
    for key in config.keys:
        try:
            algorithm, raw = connection.execute(partial(read_public_key, key_id=key.key))
        except HsmUnavailable as exc:
            raise SignerError(f"error connecting to YubiHSM2: {exc}") from exc
        except HsmCommandError as exc:
            raise SignerError(f"cannot read YubiHSM key 0x{key.key:04x}: {exc}") from exc
        signer: Signer
        if key.type == "account":
            signer = YubiHsmSecp256k1Signer(
                device, key.key, account_public_key(algorithm, raw, key.key)
            )
        else:
            signer = YubiHsmEd25519Signer(
                device, key.key, consensus_public_key(algorithm, raw, key.key)
            )
        signers.append((signer, key.type == "account"))
    return signers


def add_yubihsm_signers(registry: Registry, yubihsm: YubihsmConfig, config: KmsConfig) -> None:
    """Register every `keys = [...]` entry for its chains, logging each like tmkms."""
    if not yubihsm.keys:
        return
    from kms.keyring import log_added
    from kms.ops import provider_metrics

    connection = open_connection(yubihsm)
    device = HsmDevice(connection)
    metrics = provider_metrics("yubihsm")
    metrics.count_session_reopens_from(lambda: connection.stats.session_reopens)
    device.on_reachability = metrics.set_reachable
    try:
        signers = load_signers(connection, yubihsm, device)
    except BaseException:
        connection.close()
        raise
    registry.add_task(device.keep_alive)  # the session outlives idle spells
    registry.on_close(connection.close)  # frees the HSM's session slot at shutdown
    for key, (signer, account) in zip(yubihsm.keys, signers, strict=True):
        for chain_id in key.chain_ids:
            registry.add(chain_id, signer, account=account)
            log_added(config, chain_id, "yubihsm", key.type, signer)
    log.debug("YubiHSM serial %s: %d key(s) loaded", connection.serial, len(signers))
