"""Secret Connection (CometBFT v0.34+): a sans-IO handshake and frame state machine.

No I/O and no trio here: the caller feeds bytes from the peer to ``receive_data()``, sends
whatever ``data_to_send()`` returns, and reads decrypted bytes with ``next_plaintext()``
(the h11 pattern). ``kms.transport.stream`` drives it over a trio stream.

The handshake, from this side's point of view (both sides run the same steps at once):

1. Write ``uvarint(34) || 0a 20 || eph_pub`` (our fresh X25519 key as a length-delimited
   ``google.protobuf.BytesValue``) before reading anything; then read the peer's, refusing
   any other shape and any length prefix over 1 MiB.
2. Refuse low-order ephemeral keys (and our own key echoed back), then
   ``dh = X25519(eph_priv, peer_eph_pub)``, refusing an all-zero result.
3. Sort the two ephemeral keys into ``lo``/``hi``. A Merlin transcript absorbs lo, hi and dh
   and yields the 32-byte challenge; HKDF-SHA256(dh) yields two keys, and which one this side
   sends with depends on whether its ephemeral key is ``lo``.
4. From now on every byte travels in sealed frames. Each side sends
   ``AuthSigMessage{PublicKey{ed25519}, sig}``: its long-term identity key and its signature
   over the challenge. Signing the shared challenge proves the identity holder took part in
   this very key exchange, so nobody in the middle can relay it.
5. Verify the peer's signature, derive its node ID, compare it to a pinned ID if any.

Only then does ``handshake_complete`` turn true and ``send()`` become available. Any error
breaks the machine for good: every later call raises ProtocolError.
"""

from __future__ import annotations

import enum
import hmac
import os
import re

from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from kms.errors import HandshakeError, KmsError, ProtocolError
from kms.transport.frames import DATA_MAX, SEALED_FRAME_SIZE, FrameOpener, FrameSealer
from kms.transport.handshake import (
    AUTH_BODY_SIZE,
    AUTH_KEY_PREFIX,
    AUTH_SIG_PREFIX,
    EPHEMERAL_BODY_PREFIX,
    EPHEMERAL_BODY_SIZE,
    HANDSHAKE_MESSAGE_LIMIT,
    derive_key_material,
    derive_secrets,
    encode_auth_sig_message,
    encode_ephemeral_message,
    is_low_order_point,
    peer_id_from_pubkey,
    take_delimited,
    transcript_challenge,
)

__all__ = [
    "HANDSHAKE_MESSAGE_LIMIT",
    "Phase",
    "SecretConnection",
    "derive_key_material",
    "derive_secrets",
    "encode_auth_sig_message",
    "encode_ephemeral_message",
    "is_low_order_point",
    "peer_id_from_pubkey",
    "transcript_challenge",
]

_PEER_ID_FORMAT = re.compile(r"^[0-9a-f]{40}$")


class Phase(enum.Enum):
    """Where the state machine is."""

    AWAIT_EPHEMERAL = "awaiting the peer's ephemeral key"
    AWAIT_AUTH = "awaiting the peer's AuthSigMessage"
    OPEN = "open"
    BROKEN = "broken"


class SecretConnection:
    """One side of a Secret Connection, without I/O.

    ``data_to_send()`` holds the 35-byte ephemeral key message from the start.
    """

    def __init__(
        self,
        identity: SigningKey,
        *,
        ephemeral_private: bytes | None = None,
        expected_peer_id: str | None = None,
    ) -> None:
        """Start a handshake as ``identity``; ``ephemeral_private`` is for tests and vectors."""
        if ephemeral_private is None:
            ephemeral_private = os.urandom(32)
        if len(ephemeral_private) != 32:
            raise ValueError("the ephemeral X25519 private key must be 32 bytes")
        if expected_peer_id is not None:
            expected_peer_id = expected_peer_id.lower()
            if not _PEER_ID_FORMAT.match(expected_peer_id):
                raise ValueError(f"peer ID {expected_peer_id!r} is not 40 hex characters")
        self._identity = identity
        self._expected_peer_id = expected_peer_id
        self._eph_private: bytes | None = ephemeral_private
        self.local_public_key: bytes = bytes(identity.verify_key)
        self.local_id: str = peer_id_from_pubkey(self.local_public_key)
        self.ephemeral_public_key: bytes = crypto_scalarmult_base(ephemeral_private)
        self.challenge: bytes | None = None
        self._peer_public_key: bytes | None = None
        self._peer_closed = False
        self._phase = Phase.AWAIT_EPHEMERAL
        self._error: KmsError | None = None
        self._sealer: FrameSealer | None = None
        self._opener: FrameOpener | None = None
        self._inbound = bytearray()  # ciphertext (or the raw first message) not yet used
        self._plaintext = bytearray()  # decrypted data not yet taken
        self._outbound: list[bytes] = [encode_ephemeral_message(self.ephemeral_public_key)]

    # -- state -------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """The current phase of the handshake (or OPEN / BROKEN)."""
        return self._phase

    @property
    def handshake_complete(self) -> bool:
        """True once the peer's identity is verified (and matched the pinned ID, if any)."""
        return self._phase is Phase.OPEN

    @property
    def keys_established(self) -> bool:
        """True once the peer's ephemeral key arrived and the frame keys exist."""
        return self._sealer is not None and self._phase is not Phase.BROKEN

    @property
    def peer_public_key(self) -> bytes:
        """The peer's verified Ed25519 identity key (kept after a later error, for logs)."""
        if self._peer_public_key is None:
            raise RuntimeError("secret connection: the peer has not been authenticated")
        return self._peer_public_key

    @property
    def peer_id(self) -> str:
        """The peer's node ID (only after the handshake)."""
        return peer_id_from_pubkey(self.peer_public_key)

    @property
    def peer_closed(self) -> bool:
        """True after ``receive_eof()`` at a frame boundary."""
        return self._peer_closed

    @property
    def has_partial_frame(self) -> bool:
        """True while received bytes wait for the rest of their frame or message."""
        return bool(self._inbound)

    # -- I/O-free API ----------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Return (and forget) every byte produced for the peer so far."""
        self._check_usable()
        outbound = self._outbound
        out = outbound[0] if len(outbound) == 1 else b"".join(outbound)
        outbound.clear()
        return out

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes received from the peer, in any chunking.

        Raises HandshakeError while handshaking and ProtocolError afterwards; either way the
        machine is broken from then on.
        """
        self._check_usable()
        if self._peer_closed:
            raise RuntimeError("secret connection: receive_data() after receive_eof()")
        self._inbound += data
        try:
            if self._phase is Phase.OPEN:
                self._open_frames()
            else:
                self._advance()
        except HandshakeError as exc:
            self._fail(exc)
            raise
        except ProtocolError as exc:
            if self._phase is Phase.OPEN:
                self._fail(exc)
                raise
            wrapped = HandshakeError(str(exc))
            self._fail(wrapped)
            raise wrapped from exc

    def receive_eof(self) -> None:
        """Tell the machine the peer closed its side; refuses a close mid-handshake or mid-frame."""
        self._check_usable()
        if self._phase is not Phase.OPEN:
            error: KmsError = HandshakeError(
                "secret connection: peer closed the connection during the handshake"
            )
        elif self._inbound:
            error = ProtocolError(
                f"secret connection: connection closed in the middle of a frame "
                f"({len(self._inbound)} of {SEALED_FRAME_SIZE} bytes)"
            )
        else:
            self._peer_closed = True
            return
        self._fail(error)
        raise error

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Seal application bytes into frames (1,024 data bytes each) for ``data_to_send()``."""
        self._check_usable()
        if self._phase is not Phase.OPEN or self._sealer is None:
            raise RuntimeError("secret connection: send() before the handshake completed")
        data = bytes(data)
        try:
            if len(data) <= DATA_MAX:
                if data:
                    self._outbound.append(self._sealer.seal(data))
            else:
                self._outbound.extend(self._sealer.seal_all(data))
        except ProtocolError as exc:
            self._fail(exc)
            raise

    def next_plaintext(self, max_bytes: int | None = None) -> bytes:
        """Take up to ``max_bytes`` (default: all) decrypted bytes; b"" when none are ready."""
        self._check_usable()
        if max_bytes is None or max_bytes >= len(self._plaintext):
            out = bytes(self._plaintext)
            self._plaintext.clear()
        else:
            out = bytes(self._plaintext[:max_bytes])
            del self._plaintext[:max_bytes]
        return out

    # -- internals -------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._error is not None:
            raise ProtocolError(
                f"secret connection is unusable after an earlier error: {self._error}"
            ) from self._error

    def _fail(self, error: KmsError) -> None:
        self._error = error
        self._phase = Phase.BROKEN
        self._outbound.clear()
        self._plaintext.clear()

    def _advance(self) -> None:
        if self._phase is Phase.AWAIT_EPHEMERAL:
            body = take_delimited(self._inbound, EPHEMERAL_BODY_SIZE, "ephemeral key message")
            if body is None:
                return
            if not body.startswith(EPHEMERAL_BODY_PREFIX):
                raise HandshakeError(
                    "secret connection: ephemeral key message is not a 32-byte BytesValue"
                )
            self._on_peer_ephemeral(body[2:])
        self._open_frames()
        if self._phase is Phase.AWAIT_AUTH:
            body = take_delimited(self._plaintext, AUTH_BODY_SIZE, "AuthSigMessage")
            if body is not None:
                self._on_peer_auth(body)

    def _on_peer_ephemeral(self, peer_eph: bytes) -> None:
        if self._eph_private is None:  # pragma: no cover - guarded by the phase
            raise HandshakeError("secret connection: ephemeral key already used")
        if peer_eph == self.ephemeral_public_key:
            raise HandshakeError("secret connection: peer echoed our own ephemeral key")
        if is_low_order_point(peer_eph):
            raise HandshakeError("secret connection: peer ephemeral key is a low-order point")
        try:
            dh = crypto_scalarmult(self._eph_private, peer_eph)
        except CryptoError as exc:
            raise HandshakeError("secret connection: X25519 shared secret is all zeros") from exc
        if not any(dh):
            raise HandshakeError("secret connection: X25519 shared secret is all zeros")
        self._eph_private = None  # forward secrecy: the ephemeral key is single-use
        ours = self.ephemeral_public_key
        local_is_lo = ours < peer_eph
        lo, hi = (ours, peer_eph) if local_is_lo else (peer_eph, ours)
        recv_key, send_key = derive_secrets(dh, local_is_lo)
        self.challenge = transcript_challenge(lo, hi, dh)
        self._sealer = FrameSealer(send_key)
        self._opener = FrameOpener(recv_key)
        signature = self._identity.sign(self.challenge).signature
        auth = encode_auth_sig_message(self.local_public_key, signature)
        self._outbound.extend(self._sealer.seal_all(auth))
        self._phase = Phase.AWAIT_AUTH

    def _open_frames(self) -> None:
        inbound, opener = self._inbound, self._opener
        usable = len(inbound) - len(inbound) % SEALED_FRAME_SIZE
        if not usable or opener is None:
            return
        with memoryview(inbound) as view:
            for start in range(0, usable, SEALED_FRAME_SIZE):
                self._plaintext += opener.open(view[start : start + SEALED_FRAME_SIZE])
        del inbound[:usable]

    def _on_peer_auth(self, body: bytes) -> None:
        if not (body.startswith(AUTH_KEY_PREFIX) and body[36:38] == AUTH_SIG_PREFIX):
            raise HandshakeError(
                "secret connection: malformed AuthSigMessage "
                "(expected an Ed25519 key and a 64-byte signature)"
            )
        peer_pub, signature = body[4:36], body[38:102]
        assert self.challenge is not None
        try:
            VerifyKey(peer_pub).verify(self.challenge, signature)
        except CryptoError as exc:
            raise HandshakeError(
                "secret connection: peer's signature over the challenge is invalid"
            ) from exc
        peer_id = peer_id_from_pubkey(peer_pub)
        expected = self._expected_peer_id
        if expected is not None and not hmac.compare_digest(expected.encode(), peer_id.encode()):
            raise HandshakeError(
                f"validator peer ID mismatch! (expected {expected}, got {peer_id})"
            )
        self._peer_public_key = peer_pub
        self._phase = Phase.OPEN
