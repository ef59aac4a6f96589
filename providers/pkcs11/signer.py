"""The Signer of an Ed25519 consensus key that lives on a PKCS#11 token.

The token signs with CKM_EDDSA (64 bytes, identical to software Ed25519 for the same key);
each signature is checked against the key's public key before it leaves the KMS: a
verification costs tens of microseconds, a bad signature a missed block.
"""

from __future__ import annotations

from typing import Literal

import nacl.exceptions
import nacl.signing

from kms.errors import SignerError
from providers.pkcs11.device import Pkcs11Device
from providers.pkcs11.objects import KeySelector


class Pkcs11Ed25519Signer:
    """Key number ``index`` of ``device``'s connection (found by ``selector``)."""

    key_type: Literal["ed25519"] = "ed25519"
    provider = "pkcs11"

    def __init__(
        self, device: Pkcs11Device, index: int, selector: KeySelector, public_key: bytes
    ) -> None:
        self.device = device
        self.index = index
        self.selector = selector
        self._public = bytes(public_key)
        self._verify = nacl.signing.VerifyKey(self._public)
        self._what = f"CKM_EDDSA with {selector}"

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return self._public

    async def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``, made by the token."""
        data = bytes(message)
        signature = await self.device.sign(self.index, data, self._what)
        try:
            self._verify.verify(data, signature)
        except (nacl.exceptions.BadSignatureError, ValueError) as exc:
            self.device.errors += 1
            raise SignerError(f"{self._what}: the token returned an invalid signature") from exc
        return signature

    def __repr__(self) -> str:
        return f"Pkcs11Ed25519Signer({self.selector})"
