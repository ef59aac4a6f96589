"""Opening `[[providers.yubihsm]]` at startup: the HSM session and one signer per key.

Startup connects to the HSM (blocking: nothing is being served yet), authenticates, and
reads every configured key's public key, because the node asks for the public key first and
a key of the wrong type must stop the KMS before it serves anything. An unreachable HSM or a
wrong password is therefore a clear startup error (tmkms exits too). After startup the
signers reconnect by themselves (see :mod:`providers.yubihsm.device`).
"""

from __future__ import annotations

import logging
from functools import partial

from kms.config import YubihsmConfig
from kms.errors import SignerError
from providers import OpenedProvider, ProviderHealth, ProviderKey, Signer
from providers.yubihsm.connection import HsmCommandError, HsmConnection, HsmUnavailable
from providers.yubihsm.device import HsmDevice
from providers.yubihsm.signers import ED25519, SECP256K1, YubiHsmSigner, read_public_key
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
        account = key.type == "account"
        expected = SECP256K1 if account else ED25519
        public_key = expected.public_key(algorithm, raw, key.key)
        signers.append((YubiHsmSigner(device, key.key, public_key, expected), account))
    return signers


def open_yubihsm(yubihsm: YubihsmConfig, health: ProviderHealth) -> OpenedProvider:
    """Connect, authenticate and load every `keys = [...]` entry (blocking).

    The session gets a keepalive task (it outlives idle spells) and is closed with the
    provider (freeing the HSM's session slot). ``health`` hears of the device going away and
    coming back, and of the sessions re-opened.
    """
    if not yubihsm.keys:
        return OpenedProvider("yubihsm")
    connection = open_connection(yubihsm)
    device = HsmDevice(connection)
    health.count_session_reopens_from(lambda: connection.stats.session_reopens)
    device.gate.on_reachability = health.set_reachable
    try:
        signers = load_signers(connection, yubihsm, device)
    except BaseException:
        connection.close()
        raise
    log.debug("YubiHSM serial %s: %d key(s) loaded", connection.serial, len(signers))
    keys = [
        ProviderKey(signer, key.chain_ids, "account" if account else "consensus")
        for key, (signer, account) in zip(yubihsm.keys, signers, strict=True)
    ]
    return OpenedProvider("yubihsm", keys=keys, tasks=[device.keep_alive], close=connection.close)
