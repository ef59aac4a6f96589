"""The YubiHSM 2 signing provider (`[[providers.yubihsm]]`) and HSM administration helpers.

- :func:`open_yubihsm`: what ``kms.keyring`` calls at startup;
- :class:`HsmConnection`: a self-repairing authenticated session (blocking);
- :class:`HsmDevice`: one HSM from trio (one command at a time, bounded per request);
- :class:`YubiHsmEd25519Signer` / :class:`YubiHsmSecp256k1Signer`: the Signer objects;
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
from providers.yubihsm.signers import YubiHsmEd25519Signer, YubiHsmSecp256k1Signer

__all__ = [
    "DEFAULT_DEADLINE",
    "ConnectionStats",
    "HsmCommandError",
    "HsmConnection",
    "HsmDevice",
    "HsmUnavailable",
    "YubiHsmEd25519Signer",
    "YubiHsmSecp256k1Signer",
    "load_signers",
    "open_connection",
    "open_yubihsm",
]
