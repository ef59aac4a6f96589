"""The shared watermark for operators' tools: ``tmkms state show|init|import|set``.

``show`` reads a chain's watermark (a linearizable read) and says who wrote it; ``init``
creates a missing one from the local state, and only a missing one (the sign path never
creates it: :mod:`kms.ha.store`); ``import``/``set`` raise it to the state they install
locally, by check-and-set (a concurrent writer is never overwritten), creating it if
missing, and never lower it unless forced. These run
outside the sign path, in a CLI process: bound them with a cancel scope
(``trio.fail_after``) as every call of the client.
"""

from __future__ import annotations

import enum

import attrs

from kms.chain.state import SignState
from kms.ha.cas import CasOp
from kms.ha.client import EtcdClient, encode
from kms.ha.errors import EtcdCause, EtcdError
from kms.ha.watermark import Stored, Watermark, format_watermark, new_nonce, watermark_key
from kms.ha.wire import RangeResult

__all__ = [
    "RaiseOutcome",
    "Raised",
    "create_watermark",
    "raise_watermark",
    "read_watermark",
    "watermark_key",
]


async def read_watermark(client: EtcdClient, key: bytes) -> Stored:
    """What ``key`` holds now: a watermark, nothing (``missing``), or a malformed value."""
    return Stored.from_range(await client.range(key), key)


class RaiseOutcome(enum.Enum):
    RAISED = "raised"  # the watermark now holds the state
    UNCHANGED = "unchanged"  # it was already at or past the state's height/round/step
    MALFORMED = "malformed"  # the key holds no watermark; left alone (use force)
    EXISTS = "exists"  # create_watermark: there already is one, left as it is


@attrs.frozen
class Raised:
    """What :func:`raise_watermark` did, and what the key holds after it."""

    outcome: RaiseOutcome
    stored: Stored


async def raise_watermark(
    client: EtcdClient, key: bytes, state: SignState, host: str, *, force: bool = False
) -> Raised:
    """Move the watermark at ``key`` up to ``state`` (written by ``host``).

    A watermark at or past ``state``'s height/round/step is left as it is, and so is a
    malformed value, unless ``force``: then ``state`` replaces whatever is there (lowering
    it). EtcdError when etcd cannot be asked (``sent``: the write may have been applied;
    running it again then finds it); loops on lost compares until it decides.
    """
    stored = await read_watermark(client, key)
    while True:
        if not force:
            if stored.problem is not None:
                return Raised(RaiseOutcome.MALFORMED, stored)
            if stored.watermark is not None and stored.watermark.state.hrs >= state.hrs:
                return Raised(RaiseOutcome.UNCHANGED, stored)
        put = await _put(client, key, stored.mod_revision, state, host)
        if isinstance(put, Raised):
            return put
        stored = put  # someone else wrote meanwhile: decide again


async def create_watermark(client: EtcdClient, key: bytes, state: SignState, host: str) -> Raised:
    """Create the watermark at ``key`` holding ``state`` (written by ``host``), if missing.

    One txn whose compare is ``CREATE(key) == 0``: RAISED when it created the key, else
    EXISTS (or MALFORMED) with what the key holds, left as it is. EtcdError when etcd
    cannot be asked (``sent``: the key may have been created; running it again tells).
    """
    put = await _put(client, key, 0, state, host)
    if isinstance(put, Raised):
        return put
    return Raised(RaiseOutcome.MALFORMED if put.problem is not None else RaiseOutcome.EXISTS, put)


async def _put(
    client: EtcdClient, key: bytes, revision: int, state: SignState, host: str
) -> Raised | Stored:
    """One check-and-set of ``state`` at ``revision`` (0: create): RAISED, or what is there."""
    nonce = new_nonce()
    op = CasOp(key, revision, format_watermark(state, host, nonce), nonce)
    result = await client.txn(encode(op.txn()))
    answer = result.responses[0] if result.responses else None
    if result.succeeded:
        revision = answer if isinstance(answer, int) and answer else result.revision
        return Raised(RaiseOutcome.RAISED, Stored(revision, Watermark(state, host, nonce)))
    if not isinstance(answer, RangeResult):
        raise EtcdError(
            EtcdCause.PROTOCOL, "a failed check-and-set reply lacks the key's value", sent=True
        )
    return Stored.from_range(answer, key)
