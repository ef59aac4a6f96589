"""One chain's signing loop against the real `tmkms start`, for the HSM end-to-end tests.

:class:`Load` records what a chain's node saw (every signature checked against the chain's
public key, over sign bytes from the tests' own encoder); :func:`hsm_chain_load` keeps an
HSM chain signing through faults (after an error, a conflicting request at the same step
must be refused as a double sign), :func:`soft_chain_load` a softsign chain that must never
fail.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict

import attrs
import trio
from nacl.signing import SigningKey, VerifyKey

from kms.protocol.messages import SignedMsgType, Vote
from kms.sim.consensus import make_vote, random_block_id
from kms.sim.node import SignerClient
from tests.support import oracle


@attrs.define
class Load:
    """What one chain's signing loop saw; ``twin`` is the software key that must sign alike."""

    key: VerifyKey
    twin: SigningKey | None = None
    signed: dict[tuple[int, int, int], set[bytes]] = attrs.field(factory=lambda: defaultdict(set))
    latencies: list[float] = attrs.field(factory=list)
    errors: int = 0
    refused_conflicts: int = 0
    signed_count: int = 0
    identical: int = 0
    height: int = 1
    _progress: trio.Event = attrs.field(factory=trio.Event)

    async def wait_signed(self, count: int) -> None:
        while self.signed_count < count:
            await self._progress.wait()

    async def ask(self, client: SignerClient, vote: Vote) -> bool:
        started = time.monotonic()
        reply = await client.sign_vote(vote)
        self.latencies.append(time.monotonic() - started)
        if reply.error is not None:
            assert reply.vote is None or not reply.vote.signature
            return False
        assert reply.vote is not None
        self.check(client.chain_id, reply.vote)
        self.signed[(vote.height, vote.round, vote.type)].add(bytes(reply.vote.block_id.hash))
        self.signed_count += 1
        self._progress.set()
        self._progress = trio.Event()
        return True

    def check(self, chain_id: str, vote: Vote) -> None:
        sign_bytes = oracle.vote_sign_bytes(chain_id, vote)
        self.key.verify(sign_bytes, vote.signature)
        pairs = [(sign_bytes, vote.signature)]
        if vote.type == SignedMsgType.PRECOMMIT and vote.block_id.hash:
            extension = oracle.vote_extension_sign_bytes(chain_id, vote)
            self.key.verify(extension, vote.extension_signature)
            pairs.append((extension, vote.extension_signature))
        if self.twin is not None:
            for message, signature in pairs:
                assert signature == self.twin.sign(message).signature, "not byte for byte"
                self.identical += 1


async def hsm_chain_load(client: SignerClient, load: Load, stop: trio.Event, seed: int) -> None:
    """Prevote then precommit each height; after an error, a conflicting request at the same
    step must be refused as a double sign, and the original is retried until signed."""
    rng = random.Random(seed)
    while not stop.is_set():
        block = random_block_id(rng)
        for msg_type in (SignedMsgType.PREVOTE, SignedMsgType.PRECOMMIT):
            while not await load.ask(client, make_vote(msg_type, load.height, 0, block, b"x")):
                load.errors += 1
                conflict = make_vote(msg_type, load.height, 0, random_block_id(rng), b"x")
                reply = await client.sign_vote(conflict)
                assert reply.error is not None and reply.error.code == 2, reply
                load.refused_conflicts += 1
                await trio.sleep(0.05)
        load.height += 1
        await trio.sleep(0.01)


async def soft_chain_load(client: SignerClient, load: Load, stop: trio.Event, seed: int) -> None:
    """Prevotes, one per height; every one must be signed."""
    rng = random.Random(seed)
    while not stop.is_set():
        vote = make_vote(SignedMsgType.PREVOTE, load.height, 0, random_block_id(rng))
        assert await load.ask(client, vote), "the softsign chain must never fail"
        load.height += 1
        await trio.sleep(0.01)
