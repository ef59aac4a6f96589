"""The YubiHSM 2 signing provider (`[[providers.yubihsm]]`) and HSM administration helpers.

- :func:`open_yubihsm`: what ``kms.keyring`` calls at startup;
- :class:`HsmConnection`: a self-repairing authenticated session (blocking);
- :class:`HsmDevice`: one HSM from trio (one command at a time, bounded per request);
- :class:`YubiHsmSigner`: the Signer of one key, given its algorithm (:data:`ED25519`,
  :data:`SECP256K1`);
- :mod:`providers.yubihsm.mnemonic` / :mod:`providers.yubihsm.setup`: `tmkms yubihsm setup`;
- :mod:`providers.yubihsm.admin`: key generation, listing, export and import.

Needs the optional ``yubihsm`` package (``pip install tmkms-py[yubihsm]``).
"""

from __future__ import annotations

from providers.yubihsm.connection import (
    ConnectionStats,
    HsmCommandError,
    HsmConnection,
    HsmUnavailable,
)
from providers.yubihsm.device import DEFAULT_DEADLINE, HsmDevice
from providers.yubihsm.provider import load_signers, open_connection, open_yubihsm
from providers.yubihsm.signers import ED25519, SECP256K1, HsmAlgorithm, YubiHsmSigner

__all__ = [
    "DEFAULT_DEADLINE",
    "ED25519",
    "SECP256K1",
    "ConnectionStats",
    "HsmAlgorithm",
    "HsmCommandError",
    "HsmConnection",
    "HsmDevice",
    "HsmUnavailable",
    "YubiHsmSigner",
    "load_signers",
    "open_connection",
    "open_yubihsm",
]
