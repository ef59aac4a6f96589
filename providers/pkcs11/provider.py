"""Opening `[[providers.pkcs11]]` at startup: the module, the login, one signer per key.

Startup loads the module, finds the token, logs in and finds every configured key with its
public key (blocking: nothing is being served yet), because the node asks for the public key
first and a wrong key must stop the KMS before it serves anything. Each key then signs a
test message that must verify under the public key read from the token, so a public-key
object that belongs to another key is caught here, not at the first vote.

Startup errors are one line each, with the CLI's exit codes: the module missing or not a
PKCS#11 library (ConfigError, 1); the token refusing the PIN (ConfigError, 1: restarting
would spend another of the token's PIN attempts, and a systemd unit with
``RestartPreventExitStatus=1 3`` does not restart); a key missing, of the wrong type or
without its public-key object (KeyFileError, 3); the token not found or not answering
(SignerError, 6). After startup the connection repairs itself (see :mod:`.device`).
"""

from __future__ import annotations

import logging
from functools import partial

import nacl.exceptions
import nacl.signing

from kms.backoff import Backoff
from kms.config.model import Pkcs11Config
from kms.errors import ConfigError, KeyFileError
from providers import OpenedProvider, ProviderHealth, ProviderKey
from providers.pkcs11.device import DEFAULT_DEADLINE, Pkcs11Device
from providers.pkcs11.errors import Pkcs11PinRejected, Pkcs11Timeout
from providers.pkcs11.module import read_pin
from providers.pkcs11.objects import KeySelector
from providers.pkcs11.signer import Pkcs11Ed25519Signer
from providers.pkcs11.token import TokenConnection
from providers.pkcs11.worker import Pkcs11Worker

log = logging.getLogger("providers.pkcs11")

#: Seconds startup may spend in the module (a network HSM's client can be slow to connect).
OPEN_TIMEOUT = 30.0
#: Seconds closing may take (the registry gives all providers 5 s at shutdown).
CLOSE_TIMEOUT = 3.0
#: What each key signs at startup to prove its public-key object belongs to it.
SELF_TEST_MESSAGE = b"tmkms-py: does this PKCS#11 key match its public-key object?"


def key_selectors(config: Pkcs11Config) -> list[KeySelector]:
    """How each configured key is found on the token, in configuration order."""
    return [KeySelector(label=key.label, id=key.id) for key in config.keys]


def open_connection(config: Pkcs11Config) -> TokenConnection:
    """An unopened connection to the configured token, with the PIN read (KeyFileError)."""
    return TokenConnection(
        config.module,
        read_pin(config),
        key_selectors(config),
        token_label=config.token_label,
        slot=config.slot,
    )


def open_pkcs11(
    config: Pkcs11Config,
    health: ProviderHealth,
    *,
    deadline: float = DEFAULT_DEADLINE,
    backoff: Backoff | None = None,
) -> OpenedProvider:
    """Log in and load every `keys = [...]` entry (blocking); see the module docstring.

    ``health`` hears of the token going away and coming back, and of the sessions re-opened;
    closing the provider logs out and finalises the module. ``deadline`` (seconds per
    request) and ``backoff`` (between repairs) are for tests.
    """
    if not config.keys:
        return OpenedProvider("pkcs11")
    connection = open_connection(config)
    worker = Pkcs11Worker()
    try:
        public_keys = _load(connection, worker)
    except BaseException:
        _close(connection, worker)
        raise
    device = Pkcs11Device(connection, worker, deadline=deadline, backoff=backoff)
    device.gate.on_reachability = health.set_reachable
    health.count_session_reopens_from(lambda: connection.stats.session_reopens)
    keys = [
        ProviderKey(
            Pkcs11Ed25519Signer(device, index, selector, public_key),
            key.chain_ids,
            "consensus",
        )
        for index, (key, selector, public_key) in enumerate(
            zip(config.keys, connection.selectors, public_keys, strict=True)
        )
    ]
    log.debug("PKCS#11 %s: %d key(s) loaded", connection.token, len(keys))
    return OpenedProvider("pkcs11", keys=keys, close=lambda: _close(connection, worker))


def _load(connection: TokenConnection, worker: Pkcs11Worker) -> list[bytes]:
    """Open the connection and self-test every key, in the worker thread."""
    try:
        public_keys = worker.run_blocking(connection.open, OPEN_TIMEOUT)
        for index, (selector, public_key) in enumerate(
            zip(connection.selectors, public_keys, strict=True)
        ):
            signature = worker.run_blocking(
                partial(connection.sign, index, SELF_TEST_MESSAGE), OPEN_TIMEOUT
            )
            try:
                nacl.signing.VerifyKey(public_key).verify(SELF_TEST_MESSAGE, signature)
            except (nacl.exceptions.BadSignatureError, ValueError) as exc:
                raise KeyFileError(
                    f"{selector}: its public-key object holds another key "
                    "(a test signature does not verify under it)"
                ) from exc
    except Pkcs11PinRejected as exc:
        raise ConfigError(f"{exc}; fix pin or pin_file in [[providers.pkcs11]]") from exc
    except Pkcs11Timeout as exc:
        raise Pkcs11Timeout(f"PKCS#11 {connection.token}: {exc}") from exc
    return public_keys


def _close(connection: TokenConnection, worker: Pkcs11Worker) -> None:
    """Log out and finalise the module in the worker thread, then let the thread end."""
    try:
        worker.run_blocking(connection.close, CLOSE_TIMEOUT)
    except Pkcs11Timeout:
        log.warning("PKCS#11 module did not return; the session was left open at shutdown")
    finally:
        worker.stop()
