"""Classic bech32 (BIP-173), the encoding of Cosmos keys and addresses.

Only the original checksum constant is supported: Cosmos SDK key strings such as
``cosmosvalconspub1...`` are bech32, never bech32m. Strings may exceed BIP-173's 90
characters (an Amino-prefixed secp256k1 key does), so no length limit is applied.
"""

from __future__ import annotations

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_INDEX = {char: index for index, char in enumerate(CHARSET)}
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: list[int]) -> int:
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for bit, generator in enumerate(_GENERATOR):
            if (top >> bit) & 1:
                checksum ^= generator
    return checksum


def _expand_hrp(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _regroup(data: bytes | list[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    """Regroup a sequence of ``from_bits``-wide values into ``to_bits``-wide ones."""
    accumulator = 0
    bits = 0
    out: list[int] = []
    mask = (1 << to_bits) - 1
    for value in data:
        accumulator = (accumulator << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((accumulator >> bits) & mask)
    if pad:
        if bits:
            out.append((accumulator << (to_bits - bits)) & mask)
    elif bits >= from_bits or (accumulator << (to_bits - bits)) & mask:
        raise ValueError("invalid padding in bech32 data")
    return out


def _check_hrp(hrp: str) -> None:
    if not hrp or any(not 33 <= ord(c) <= 126 for c in hrp):
        raise ValueError(f"invalid bech32 prefix {hrp!r}: use printable ASCII characters")
    if hrp.lower() != hrp and hrp.upper() != hrp:
        raise ValueError(f"invalid bech32 prefix {hrp!r}: mixed case")


def bech32_encode(hrp: str, data: bytes) -> str:
    """Encode ``data`` under the human-readable prefix ``hrp`` (lower-case output)."""
    _check_hrp(hrp)
    hrp = hrp.lower()
    words = _regroup(data, 8, 5, pad=True)
    polymod = _polymod([*_expand_hrp(hrp), *words, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(CHARSET[w] for w in words + checksum)


def bech32_decode(text: str) -> tuple[str, bytes]:
    """Decode a classic bech32 string into (prefix, data); ValueError when it is invalid."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("invalid bech32 string: mixed case")
    text = text.lower()
    separator = text.rfind("1")
    if separator < 1 or separator + 7 > len(text):
        raise ValueError("invalid bech32 string: missing prefix, separator or checksum")
    hrp, payload = text[:separator], text[separator + 1 :]
    _check_hrp(hrp)
    try:
        words = [_CHARSET_INDEX[c] for c in payload]
    except KeyError as exc:
        raise ValueError(f"invalid bech32 string: bad character {exc.args[0]!r}") from exc
    if _polymod([*_expand_hrp(hrp), *words]) != 1:
        raise ValueError("invalid bech32 string: checksum mismatch")
    return hrp, bytes(_regroup(words[:-6], 5, 8, pad=False))
