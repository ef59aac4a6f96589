"""A real Session against the simulated node over real sockets, in one trio run."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey, VerifyKey

from kms.chain.local import LocalStore
from kms.chain.store import StateFile
from kms.chain.tracker import ChainTracker
from kms.handler import RequestHandler
from kms.protocol.messages import (
    SignBytesRequest,
    SignBytesResponse,
    SignedMsgType,
    SignedVoteResponse,
    SignVoteRequest,
)
from kms.protocol.version import ProtocolVersion
from kms.session import Session
from kms.sim.consensus import NIL, ConsensusDriver, make_vote, random_block_id
from kms.sim.node import SignerClient, simulated_node
from kms.transport.address import Address
from providers.softsign import Ed25519SoftSigner

CHAIN = "session-test-1"


@asynccontextmanager
async def connected(
    tmp_path: Path,
    laddr: Address,
    version: ProtocolVersion = ProtocolVersion.V0_38,
    sign_extensions: bool = True,
) -> AsyncIterator[tuple[SignerClient, SigningKey]]:
    """A KMS session dialled into a simulated node; yields the node's client and the key."""
    key = SigningKey.generate()
    signer = Ed25519SoftSigner(key)
    tracker = ChainTracker(CHAIN, LocalStore(StateFile(tmp_path / "state.json")), signer)
    await tracker.open()
    async with simulated_node(CHAIN, laddr, version) as node:
        assert node.address is not None
        session = Session(
            addr=node.address,
            version=version,
            identity=SigningKey.generate(),
            handler=RequestHandler(
                chain_id=CHAIN,
                version=version,
                tracker=tracker,
                signer=signer,
                sign_extensions=sign_extensions,
                peer=str(node.address),
            ),
            timeout=5.0,
            prefix=f"[{CHAIN}@{node.address}]",
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            client = await node.accept()
            yield client, key
            await client.aclose()
            nursery.cancel_scope.cancel()


LADDRS = {
    "tcp": lambda tmp: Address(scheme="tcp", host="127.0.0.1", port=0),
    "unix": lambda tmp: Address(scheme="unix", path=str(tmp / "node.sock")),
}


@pytest.mark.parametrize("transport", sorted(LADDRS))
@pytest.mark.parametrize("version", list(ProtocolVersion))
async def test_signs_heights_over_real_sockets(
    tmp_path: Path, transport: str, version: ProtocolVersion
) -> None:
    with trio.fail_after(20):
        async with connected(tmp_path, LADDRS[transport](tmp_path), version) as (client, key):
            pub = await client.pub_key()
            assert pub.data == bytes(key.verify_key)
            driver = ConsensusDriver(client, VerifyKey(pub.data), rng=random.Random(3))
            for height in range(1, 6):
                await driver.height(height)
            extension_signatures = 5 if version.extensions_by_default else 0
            assert driver.signatures == 15 + extension_signatures
            await client.ping()


async def test_extension_rule(tmp_path: Path) -> None:
    laddr = Address(scheme="unix", path=str(tmp_path / "n.sock"))
    with trio.fail_after(20):
        async with connected(tmp_path, laddr) as (client, _):
            block = random_block_id(random.Random(1))
            prevote = (
                await client.sign_vote(make_vote(SignedMsgType.PREVOTE, 1, 0, block, b"x"))
            ).vote
            assert prevote is not None and prevote.extension_signature == b""
            nil_commit = (
                await client.sign_vote(make_vote(SignedMsgType.PRECOMMIT, 2, 0, NIL))
            ).vote
            assert nil_commit is not None and nil_commit.extension_signature == b""
            empty_ext = (
                await client.sign_vote(make_vote(SignedMsgType.PRECOMMIT, 3, 0, block))
            ).vote
            assert empty_ext is not None and len(empty_ext.extension_signature) == 64


async def test_v1_skip_extension_signing(tmp_path: Path) -> None:
    laddr = Address(scheme="unix", path=str(tmp_path / "n.sock"))
    with trio.fail_after(20):
        async with connected(tmp_path, laddr, ProtocolVersion.V1) as (client, _):
            block = random_block_id(random.Random(1))
            skipped = await client.sign_vote(
                make_vote(SignedMsgType.PRECOMMIT, 4, 0, block, b"e"), skip_extension_signing=True
            )
            assert skipped.vote is not None and skipped.vote.extension_signature == b""
            signed = await client.sign_vote(make_vote(SignedMsgType.PRECOMMIT, 5, 0, block, b"e"))
            assert signed.vote is not None and len(signed.vote.extension_signature) == 64


async def test_refusals_keep_the_connection(tmp_path: Path) -> None:
    laddr = Address(scheme="tcp", host="127.0.0.1", port=0)
    with trio.fail_after(20):
        async with connected(tmp_path, laddr) as (client, _):
            rng = random.Random(5)
            first = await client.sign_vote(
                make_vote(SignedMsgType.PREVOTE, 10, 0, random_block_id(rng))
            )
            assert first.error is None
            conflict = await client.sign_vote(
                make_vote(SignedMsgType.PREVOTE, 10, 0, random_block_id(rng))
            )
            assert conflict.error is not None and conflict.error.code == 2
            assert conflict.error.description == "double signing requested at height: 10"
            regression = await client.sign_vote(make_vote(SignedMsgType.PREVOTE, 9, 0, NIL))
            assert regression.error is not None
            client.chain_id = "other-chain"
            wrong_chain = await client.sign_vote(make_vote(SignedMsgType.PREVOTE, 11, 0, NIL))
            assert (
                wrong_chain.error is not None
                and "chain ID mismatch" in wrong_chain.error.description
            )
            await client.ping()


async def test_v1_raw_sign_bytes_refuses_consensus_shaped_values(tmp_path: Path) -> None:
    laddr = Address(scheme="unix", path=str(tmp_path / "n.sock"))
    with trio.fail_after(20):
        async with connected(tmp_path, laddr, ProtocolVersion.V1) as (client, key):
            ok = await client.request(SignBytesRequest(value=b"hello world"))
            assert isinstance(ok, SignBytesResponse) and ok.error is None
            key.verify_key.verify(b"hello world", ok.signature)
            shaped = await client.request(SignBytesRequest(value=b"\x03abc"))
            assert isinstance(shaped, SignBytesResponse) and shaped.error is not None
            assert shaped.signature == b""


async def test_the_signed_line_waits_for_report(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """answer() signs without logging; report() logs once: the session sends in between."""
    signer = Ed25519SoftSigner(SigningKey.generate())
    tracker = ChainTracker(CHAIN, LocalStore(StateFile(tmp_path / "state.json")), signer)
    await tracker.open()
    handler = RequestHandler(
        chain_id=CHAIN,
        version=ProtocolVersion.V0_38,
        tracker=tracker,
        signer=signer,
        sign_extensions=False,
        peer="node",
    )
    vote = make_vote(SignedMsgType.PREVOTE, 7, 0, random_block_id(random.Random(1)))

    def signed_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if " signed " in r.getMessage()]

    caplog.set_level("INFO")
    answer = await handler.answer(SignVoteRequest(vote=vote, chain_id=CHAIN))
    reply = answer.response
    assert isinstance(reply, SignedVoteResponse) and reply.error is None
    assert signed_lines() == []
    assert handler.metrics.last_signed is None
    handler.report(answer)
    assert len(signed_lines()) == 1 and "at h/r/s 7/0/1" in signed_lines()[0]
    assert handler.metrics.last_signed == (7, 0, 1)
    refused = await handler.answer(SignVoteRequest(vote=vote, chain_id="other-chain"))
    assert refused.signed is None
    handler.report(refused)  # nothing signed: nothing logged
    assert len(signed_lines()) == 1
