"""The shared watermark's value: tmkms's state-file JSON plus who wrote it, and a nonce.

``{"height":"H","round":"R","step":S,"block_id":{...},"host":"kms-a","nonce":"<hex>"}``:
the first four keys are byte for byte what :func:`kms.chain.stateformat.format_state`
writes (so an operator can read a watermark as a tmkms state), then the writer's host name
and a fresh random nonce. Two hosts may share a name; the nonce is what tells two writes
apart, and what lets a host recognise its own write when it re-sends a txn whose first
answer was lost.

Reading is strict where it matters: a value that is not a tmkms state, or lacks a host or a
hex nonce, is *malformed*, and the sign path refuses on it rather than guess (it may be
another program's key, or a damaged write). Pure functions; no I/O.
"""

from __future__ import annotations

import json
import re
import secrets

import attrs

from kms.chain.state import SignState
from kms.chain.stateformat import format_state, parse_state
from kms.ha.wire import KeyValue, RangeResult

__all__ = [
    "Stored",
    "Watermark",
    "format_watermark",
    "new_nonce",
    "parse_watermark",
    "watermark_key",
]

NONCE_BYTES = 12
_NONCE = re.compile(r"[0-9a-f]{16,64}\Z")
MAX_HOST = 255


def watermark_key(prefix: str, chain_id: str) -> bytes:
    """The etcd key of ``chain_id``'s watermark: ``<prefix><chain_id>``."""
    return f"{prefix}{chain_id}".encode()


def new_nonce() -> str:
    """A fresh random nonce (96 bits, lower-case hex)."""
    return secrets.token_hex(NONCE_BYTES)


@attrs.frozen
class Watermark:
    """A decoded watermark: the last signed state of the chain, by whom, which write."""

    state: SignState
    host: str
    nonce: str


def format_watermark(state: SignState, host: str, nonce: str) -> bytes:
    """The stored value for ``state`` written by ``host`` with ``nonce``."""
    if not _NONCE.match(nonce):
        raise ValueError(f"nonce must be 16-64 lower-case hex digits, got {nonce!r}")
    head = format_state(state)[:-1]  # drop the closing brace, append who wrote it
    tail = f',"host":{json.dumps(host)},"nonce":"{nonce}"}}'
    return head + tail.encode("ascii")


def parse_watermark(value: bytes) -> Watermark:
    """Decode a stored value; ValueError saying why it is not a watermark."""
    try:
        text = value.decode("utf-8")
        doc = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    host, nonce = doc.get("host"), doc.get("nonce")
    if not isinstance(host, str) or not host or len(host) > MAX_HOST:
        raise ValueError(f"host must be a non-empty string, got {host!r}")
    if not isinstance(nonce, str) or not _NONCE.match(nonce):
        raise ValueError(f"nonce must be 16-64 lower-case hex digits, got {nonce!r}")
    try:
        state = parse_state(text)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ValueError(f"not a tmkms state: {exc}") from exc
    return Watermark(state, host, nonce)


@attrs.frozen
class Stored:
    """What a chain's key held at ``mod_revision`` (0: the key does not exist).

    ``watermark`` is None for a missing key or a malformed value (then ``problem`` says why).
    ``fresh`` marks a value read during the current check-and-set (a linearizable range, or
    the failure branch of a txn); a value remembered from an earlier one is only a guess,
    confirmed by the next txn's compare.
    """

    mod_revision: int
    watermark: Watermark | None = None
    problem: str | None = None
    fresh: bool = True

    @property
    def missing(self) -> bool:
        return self.mod_revision == 0

    @classmethod
    def from_kv(cls, kv: KeyValue | None) -> Stored:
        """Decode a range's key (None: not found) into what is stored."""
        if kv is None:
            return cls(0)
        try:
            return cls(kv.mod_revision, parse_watermark(kv.value))
        except ValueError as exc:
            return cls(kv.mod_revision, problem=str(exc))

    @classmethod
    def from_range(cls, result: RangeResult, key: bytes) -> Stored:
        """What ``result`` (a range of exactly ``key``) says is stored."""
        kv = next((kv for kv in result.kvs if kv.key == key), None)
        return cls.from_kv(kv)

    def remembered(self) -> Stored:
        """The same, as a guess for a later check-and-set."""
        return attrs.evolve(self, fresh=False)
