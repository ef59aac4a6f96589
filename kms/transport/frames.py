"""Secret Connection frames: fixed-size ChaCha20-Poly1305 records with per-direction nonces.

A plaintext frame is a 4-byte little-endian data length, at most 1,024 data bytes, and zero
padding up to 1,028 bytes. Sealed without associated data it is 1,044 bytes on the wire. The
nonce is four zero bytes and a 64-bit little-endian counter that starts at 0 and goes up by
one after every frame; each direction has its own key and counter.

Pure functions and two tiny classes; no I/O. The AEAD is ``cryptography``'s
ChaCha20Poly1305, faster than PyNaCl's binding for frames of this size (figures in
benchmarks/README.md).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from kms.errors import ProtocolError

DATA_MAX = 1024
LENGTH_SIZE = 4
PLAINTEXT_FRAME_SIZE = LENGTH_SIZE + DATA_MAX  # 1028
TAG_SIZE = 16
SEALED_FRAME_SIZE = PLAINTEXT_FRAME_SIZE + TAG_SIZE  # 1044
KEY_SIZE = 32
MAX_COUNTER = (1 << 64) - 1

_ZERO_PAD = bytes(DATA_MAX)
_NONCE_PREFIX = bytes(4)


def nonce_for(counter: int) -> bytes:
    """Return the 12-byte nonce for frame number ``counter`` (4 zero bytes + LE u64)."""
    if not 0 <= counter <= MAX_COUNTER:
        raise ValueError(f"nonce counter {counter} is outside 0..2**64-1")
    return _NONCE_PREFIX + counter.to_bytes(8, "little")


class _Direction:
    """One direction of the connection: its AEAD key and the next nonce counter."""

    def __init__(self, key: bytes, counter: int = 0) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"frame key must be {KEY_SIZE} bytes, got {len(key)}")
        if not 0 <= counter <= MAX_COUNTER + 1:
            raise ValueError(f"nonce counter {counter} is outside 0..2**64")
        self._aead = ChaCha20Poly1305(key)
        self.counter = counter

    @property
    def next_nonce(self) -> bytes:
        """The nonce the next frame will use."""
        return nonce_for(self.counter)

    def _take_nonce(self) -> bytes:
        if self.counter > MAX_COUNTER:
            raise ProtocolError("secret connection: nonce counter exhausted (2**64 frames)")
        nonce = _NONCE_PREFIX + self.counter.to_bytes(8, "little")
        self.counter += 1
        return nonce


class FrameSealer(_Direction):
    """Seals outgoing data into 1,044-byte frames under the send key."""

    def seal(self, data: bytes) -> bytes:
        """Seal up to 1,024 bytes into one frame and advance the send counter."""
        size = len(data)
        if size > DATA_MAX:
            raise ValueError(f"a frame carries at most {DATA_MAX} bytes, got {size}")
        frame = size.to_bytes(LENGTH_SIZE, "little") + data + _ZERO_PAD[size:]
        return self._aead.encrypt(self._take_nonce(), frame, None)

    def seal_all(self, data: bytes) -> list[bytes]:
        """Cut ``data`` into 1,024-byte chunks and seal each one (nothing for empty data)."""
        return [self.seal(data[i : i + DATA_MAX]) for i in range(0, len(data), DATA_MAX)]


class FrameOpener(_Direction):
    """Opens incoming 1,044-byte frames under the receive key."""

    def open(self, sealed: bytes | memoryview) -> bytes:
        """Authenticate and decrypt one frame; return its data bytes (never the padding).

        Raises ProtocolError when the tag does not verify or the length field exceeds 1,024.
        """
        if len(sealed) != SEALED_FRAME_SIZE:
            raise ProtocolError(
                f"secret connection: sealed frame is {len(sealed)} bytes, "
                f"expected {SEALED_FRAME_SIZE}"
            )
        nonce = self._take_nonce()
        try:
            frame = self._aead.decrypt(nonce, sealed, None)
        except InvalidTag as exc:
            raise ProtocolError("secret connection: frame authentication failed") from exc
        size = int.from_bytes(frame[:LENGTH_SIZE], "little")
        if size > DATA_MAX:
            raise ProtocolError(
                f"secret connection: frame length field {size} exceeds {DATA_MAX} bytes"
            )
        return frame[LENGTH_SIZE : LENGTH_SIZE + size]
