"""The PKCS#11 signing provider (`[[providers.pkcs11]]`): any HSM with a PKCS#11 module.

- :func:`open_pkcs11`: what ``kms.keyring`` calls at startup;
- :class:`TokenConnection`: a self-repairing logged-in session with one token (blocking);
- :class:`Pkcs11Worker` / :data:`PKCS11_LOCK`: the one thread that calls the module, and the
  process-wide lock every call holds (the module runs without its own locking);
- :class:`Pkcs11Device`: the token from trio (a deadline per request, backoff, health);
- :class:`Pkcs11Ed25519Signer`: the Signer of one Ed25519 consensus key;
- :mod:`providers.pkcs11.admin`: listing, generating and importing keys (`tmkms pkcs11`).

Needs the optional ``python-pkcs11`` package (``pip install tmkms-py[pkcs11]``).
"""

from __future__ import annotations

from providers.pkcs11.device import DEFAULT_DEADLINE, Pkcs11Device
from providers.pkcs11.errors import (
    Pkcs11CommandError,
    Pkcs11PinRejected,
    Pkcs11Timeout,
    Pkcs11Unavailable,
)
from providers.pkcs11.objects import KeySelector
from providers.pkcs11.provider import open_connection, open_pkcs11
from providers.pkcs11.signer import Pkcs11Ed25519Signer
from providers.pkcs11.token import TokenConnection, TokenStats
from providers.pkcs11.worker import PKCS11_LOCK, Pkcs11Worker

__all__ = [
    "DEFAULT_DEADLINE",
    "PKCS11_LOCK",
    "KeySelector",
    "Pkcs11CommandError",
    "Pkcs11Device",
    "Pkcs11Ed25519Signer",
    "Pkcs11PinRejected",
    "Pkcs11Timeout",
    "Pkcs11Unavailable",
    "Pkcs11Worker",
    "TokenConnection",
    "TokenStats",
    "open_connection",
    "open_pkcs11",
]
