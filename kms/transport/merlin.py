"""Merlin v1.0 transcripts (the subset Secret Connection needs), on a small STROBE-128.

Secret Connection derives its authentication challenge from a Merlin transcript. Merlin is a
thin framing over STROBE-128, which is a duplex construction over Keccak-f[1600]. Only three
STROBE operations are needed here: meta-AD, AD and PRF (no keys, no transport directions).

This module exists because the PyPI ``merlin-transcripts`` package runs the permutation
byte-by-byte, which makes the challenge a large part of a handshake's cost; this one
absorbs whole slices, runs a table-driven permutation on 64-bit lanes and starts every
transcript from a precomputed state, several times faster (benchmarks/bench_transport.py
compares the two). The tests check it against the published Merlin vectors, against that
package on random inputs, and the permutation against hashlib's SHA3.
"""

from __future__ import annotations

import struct

_MASK = (1 << 64) - 1
_LANES = struct.Struct("<25Q")


def _keccak_tables() -> tuple[list[tuple[int, int, int, int]], list[int]]:
    """Build the rho/pi lane moves and the iota round constants from their definitions.

    Returns ``(moves, round_constants)``: each move is ``(source lane, destination lane,
    rotation, source column)`` with lane index ``x + 5*y`` (FIPS 202, section 3.2).
    """
    rotation = [0] * 25
    x, y = 1, 0
    for t in range(24):
        rotation[x + 5 * y] = ((t + 1) * (t + 2) // 2) % 64
        x, y = y, (2 * x + 3 * y) % 5
    moves = [
        (x + 5 * y, y + 5 * ((2 * x + 3 * y) % 5), rotation[x + 5 * y], x)
        for y in range(5)
        for x in range(5)
    ]
    constants = []
    lfsr = 1
    for _ in range(24):
        constant = 0
        for j in range(7):
            if lfsr & 1:
                constant |= 1 << ((1 << j) - 1)
            lfsr = ((lfsr << 1) ^ (0x71 if lfsr & 0x80 else 0)) & 0xFF
        constants.append(constant)
    return moves, constants


_MOVES, _ROUND_CONSTANTS = _keccak_tables()


def keccak_f1600(state: bytearray) -> None:
    """Apply Keccak-f[1600] in place to a 200-byte state (lanes little-endian)."""
    a = list(_LANES.unpack(state))
    b = [0] * 25
    for rc in _ROUND_CONSTANTS:
        # theta: XOR each lane with the parities of two neighbouring columns.
        c0 = a[0] ^ a[5] ^ a[10] ^ a[15] ^ a[20]
        c1 = a[1] ^ a[6] ^ a[11] ^ a[16] ^ a[21]
        c2 = a[2] ^ a[7] ^ a[12] ^ a[17] ^ a[22]
        c3 = a[3] ^ a[8] ^ a[13] ^ a[18] ^ a[23]
        c4 = a[4] ^ a[9] ^ a[14] ^ a[19] ^ a[24]
        d = (
            c4 ^ (((c1 << 1) | (c1 >> 63)) & _MASK),
            c0 ^ (((c2 << 1) | (c2 >> 63)) & _MASK),
            c1 ^ (((c3 << 1) | (c3 >> 63)) & _MASK),
            c2 ^ (((c4 << 1) | (c4 >> 63)) & _MASK),
            c3 ^ (((c0 << 1) | (c0 >> 63)) & _MASK),
        )
        # rho and pi: rotate every lane and move it to its new position.
        for source, dest, rot, column in _MOVES:
            v = a[source] ^ d[column]
            b[dest] = ((v << rot) | (v >> (64 - rot))) & _MASK
        # chi: non-linear mixing along each row; iota: break the symmetry.
        for y in (0, 5, 10, 15, 20):
            b0, b1, b2, b3, b4 = b[y : y + 5]
            a[y] = b0 ^ (~b1 & b2)
            a[y + 1] = b1 ^ (~b2 & b3)
            a[y + 2] = b2 ^ (~b3 & b4)
            a[y + 3] = b3 ^ (~b4 & b0)
            a[y + 4] = b4 ^ (~b0 & b1)
        a[0] ^= rc
    state[:] = _LANES.pack(*a)


_RATE = 166  # STROBE-128 over Keccak-f[1600]: 200 - 2*16 - 2 bytes
_FLAG_I = 0x01
_FLAG_A = 0x02
_FLAG_C = 0x04
_FLAG_M = 0x10


class _Strobe128:
    """The keyless part of STROBE v1.0.2 at 128-bit security: meta-AD, AD and PRF."""

    def __init__(self, protocol_label: bytes) -> None:
        self._state = bytearray(200)
        self._state[0:6] = bytes((1, _RATE + 2, 1, 0, 1, 96))
        self._state[6:18] = b"STROBEv1.0.2"
        keccak_f1600(self._state)
        self._pos = 0
        self._pos_begin = 0
        self._flags = 0
        self.meta_ad(protocol_label, more=False)

    def clone(self) -> _Strobe128:
        """An independent copy of this object's current state."""
        twin = object.__new__(_Strobe128)
        twin._state = bytearray(self._state)
        twin._pos, twin._pos_begin, twin._flags = self._pos, self._pos_begin, self._flags
        return twin

    def meta_ad(self, data: bytes, *, more: bool) -> None:
        self._begin(_FLAG_M | _FLAG_A, more)
        self._absorb(data)

    def ad(self, data: bytes, *, more: bool) -> None:
        self._begin(_FLAG_A, more)
        self._absorb(data)

    def prf(self, length: int) -> bytes:
        self._begin(_FLAG_I | _FLAG_A | _FLAG_C, more=False)
        return self._squeeze(length)

    def _begin(self, flags: int, more: bool) -> None:
        if more:
            if flags != self._flags:
                raise ValueError("STROBE: cannot continue an operation with different flags")
            return
        previous_begin = self._pos_begin
        self._pos_begin = self._pos + 1
        self._flags = flags
        self._absorb(bytes((previous_begin, flags)))
        if flags & _FLAG_C and self._pos != 0:
            self._run_f()

    def _run_f(self) -> None:
        self._state[self._pos] ^= self._pos_begin
        self._state[self._pos + 1] ^= 0x04
        self._state[_RATE + 1] ^= 0x80
        keccak_f1600(self._state)
        self._pos = 0
        self._pos_begin = 0

    def _absorb(self, data: bytes) -> None:
        state = self._state
        offset = 0
        while offset < len(data):
            take = min(_RATE - self._pos, len(data) - offset)
            start, end = self._pos, self._pos + take
            mixed = int.from_bytes(state[start:end], "little") ^ int.from_bytes(
                data[offset : offset + take], "little"
            )
            state[start:end] = mixed.to_bytes(take, "little")
            offset += take
            self._pos = end
            if self._pos == _RATE:
                self._run_f()

    def _squeeze(self, length: int) -> bytes:
        out = bytearray()
        while len(out) < length:
            take = min(_RATE - self._pos, length - len(out))
            start, end = self._pos, self._pos + take
            out += self._state[start:end]
            self._state[start:end] = bytes(take)
            self._pos = end
            if self._pos == _RATE:
                self._run_f()
        return bytes(out)


# Every Merlin transcript starts from the same STROBE state; computing it once saves one of
# the three permutations a Secret Connection challenge costs.
_MERLIN_START = _Strobe128(b"Merlin v1.0")


class Transcript:
    """A Merlin v1.0 transcript: label it, append labelled messages, draw challenges."""

    def __init__(self, label: bytes) -> None:
        """Start a transcript for the protocol named ``label``."""
        self._strobe = _MERLIN_START.clone()
        self.append_message(b"dom-sep", label)

    def append_message(self, label: bytes, message: bytes) -> None:
        """Absorb ``message`` under ``label`` (its length is framed in, as Merlin requires)."""
        self._strobe.meta_ad(label, more=False)
        self._strobe.meta_ad(len(message).to_bytes(4, "little"), more=True)
        self._strobe.ad(message, more=False)

    def challenge_bytes(self, label: bytes, length: int) -> bytes:
        """Squeeze ``length`` challenge bytes bound to everything appended so far."""
        self._strobe.meta_ad(label, more=False)
        self._strobe.meta_ad(length.to_bytes(4, "little"), more=True)
        return self._strobe.prf(length)
