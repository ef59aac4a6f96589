"""End to end: the real `tmkms start` process against simulated nodes, as an operator runs it."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey, VerifyKey

from kms.protocol.messages import SignedMsgType, Vote
from kms.protocol.version import ProtocolVersion
from kms.sim.consensus import NIL, make_proposal, make_vote, random_block_id
from kms.sim.node import SignerClient, simulated_node
from kms.transport.address import Address
from tests.support import oracle
from tests.support.kmsproc import (
    chain_toml,
    free_tcp_port,
    priv_validator_key_json,
    run_tmkms,
    tmkms_start,
    validator_toml,
    write_key,
)


def check_vote(chain_id: str, key: VerifyKey, vote: Vote | None, extension: bool) -> None:
    """The signature (and extension signature) verify over the oracle's sign bytes."""
    assert vote is not None
    key.verify(oracle.vote_sign_bytes(chain_id, vote), vote.signature)
    if extension:
        key.verify(oracle.vote_extension_sign_bytes(chain_id, vote), vote.extension_signature)
    else:
        assert vote.extension_signature == b""


async def sign_heights(
    client: SignerClient, key: VerifyKey, heights: range, *, extensions: bool, seed: int = 0
) -> int:
    """Propose, prevote and precommit each height; verify everything; return signatures."""
    rng = random.Random(seed)
    count = 0
    for height in heights:
        block = random_block_id(rng)
        reply = await client.sign_proposal(make_proposal(height, 0, block))
        assert reply.error is None and reply.proposal is not None
        key.verify(
            oracle.proposal_sign_bytes(client.chain_id, reply.proposal), reply.proposal.signature
        )
        for msg_type in (SignedMsgType.PREVOTE, SignedMsgType.PRECOMMIT):
            vote = await client.sign_vote(make_vote(msg_type, height, 0, block, b"ext"))
            assert vote.error is None
            wants_ext = extensions and msg_type == SignedMsgType.PRECOMMIT
            check_vote(client.chain_id, key, vote.vote, wants_ext)
        count += 3
    return count


async def test_seed_guide_verbatim(tmp_path: Path) -> None:
    """The Osmosis guide's steps 4-16, with the KMS started before the node exists."""
    home = tmp_path / "kms" / "osmosis"
    home.mkdir(parents=True)  # step 4
    assert run_tmkms("init", home).returncode == 0  # step 5
    for sub in ("schema", "secrets", "state"):
        assert (home / sub).is_dir()
    assert (home / "tmkms.toml").is_file()
    secret = home / "secrets" / "secret_connection_key"
    assert run_tmkms("softsign", "keygen", secret).returncode == 0  # step 6
    consensus_key = SigningKey.generate()  # the node's key, from its own `init` (step 3)
    (home / "secrets" / "priv_validator_key.json").write_text(
        priv_validator_key_json(consensus_key)
    )
    imported = home / "secrets" / "priv_validator_key"
    result = run_tmkms(
        "softsign", "import", home / "secrets" / "priv_validator_key.json", imported
    )  # step 8
    assert result.returncode == 0, result.stderr
    port = free_tcp_port()
    # Step 10: the guide's tmkms.toml, as the operator ends up writing it.
    config = home / "tmkms.toml"
    config.write_text(
        f"""# Tendermint KMS configuration file

## Chain Configuration

### Cosmos Hub Network

[[chain]]
id = "osmosis-1"
key_format = {{ type = "bech32", account_key_prefix = "osmopub", consensus_key_prefix = "osmovalconspub" }}
state_file = "{home}/state/priv_validator_state.json"

## Signing Provider Configuration

### Software-based Signer Configuration

[[providers.softsign]]
chain_ids = ["osmosis-1"]
key_type = "consensus"
path = "{imported}"

## Validator Configuration

[[validator]]
chain_id = "osmosis-1"
addr = "tcp://localhost:{port}"
secret_key = "{secret}"
protocol_version = "v0.34"
reconnect = true
"""
    )
    with trio.fail_after(60):
        async with tmkms_start(config) as kms:  # step 14: before the node
            await kms.wait_for(r"INFO tmkms::commands::start: tmkms .* starting up\.\.\.")
            await kms.wait_for(r"\[keyring:softsign\] added consensus Ed25519 key: osmovalconspub1")
            await kms.wait_for(r"KMS node ID: [0-9a-f]{40}")
            refused = r"ERROR .*\[osmosis-1@tcp://localhost:\d+\] I/O error: Connection refused \(os error 111\)"
            await kms.wait_for(refused, count=2)
            laddr = Address(scheme="tcp", host="127.0.0.1", port=port)
            async with simulated_node("osmosis-1", laddr, ProtocolVersion.V0_34) as node:  # step 15
                client = await node.accept()
                pub = await client.pub_key()
                assert pub.data == bytes(consensus_key.verify_key)
                await kms.wait_for(
                    r"\[osmosis-1@tcp://localhost:\d+\] connected to validator successfully"
                )
                await kms.wait_for(r"WARN .*: unverified validator peer ID! \([0-9a-f]{40}\)")
                signed = await sign_heights(
                    client, VerifyKey(pub.data), range(3399910, 3399915), extensions=False
                )
                assert signed == 15
                lines = await kms.wait_for(
                    r"signed (Proposal|Prevote|Precommit):[0-9A-F]{10} at h/r/s \d+/0/\d \(\d+ ms\)",
                    15,
                )
                assert any(
                    "signed Precommit:" in line and "at h/r/s 3399914/0/2" in line for line in lines
                )
                await client.aclose()
            kms.send_signal(signal.SIGTERM)
            assert await kms.wait() == 0
    state = json.loads((home / "state" / "priv_validator_state.json").read_text())
    assert (state["height"], state["round"], state["step"]) == ("3399914", "0", 2)


TRANSPORTS = ["tcp", "unix"]
VERSIONS = ["v0.34", "v0.38", "v1"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("version", VERSIONS)
async def test_transports_and_versions(tmp_path: Path, transport: str, version: str) -> None:
    chain = "e2e-1"
    key = SigningKey.generate()
    write_key(tmp_path / "secrets" / f"{chain}.key", key)
    write_key(tmp_path / "secrets" / "kms-identity.key", SigningKey.generate())
    (tmp_path / "state").mkdir()
    if transport == "tcp":
        laddr = Address(scheme="tcp", host="127.0.0.1", port=free_tcp_port())
    else:
        laddr = Address(scheme="unix", path=str(tmp_path / "priv_validator.sock"))
    config = tmp_path / "tmkms.toml"
    config.write_text(
        chain_toml(chain, tmp_path) + validator_toml(chain, str(laddr), tmp_path, version)
    )
    protocol = ProtocolVersion.parse(version)
    with trio.fail_after(60):
        async with simulated_node(chain, laddr, protocol) as node, tmkms_start(config) as kms:
            client = await node.accept()
            pub = await client.pub_key()
            assert pub.data == bytes(key.verify_key)
            count = await sign_heights(
                client, key.verify_key, range(1, 6), extensions=protocol.extensions_by_default
            )
            assert count == 15
            await client.ping()
            await kms.wait_for(r"signed Precommit:[0-9A-F]{10} at h/r/s 5/0/2", 1)
            assert not kms.matching(r"unverified validator peer ID") or transport == "tcp"


async def test_many_chains_and_validators_in_one_process(tmp_path: Path) -> None:
    """Two chains, two validator connections each; a double sign across connections is refused."""
    chains = ["alpha-1", "beta-2"]
    keys = {c: SigningKey.generate() for c in chains}
    write_key(tmp_path / "secrets" / "kms-identity.key", SigningKey.generate())
    (tmp_path / "state").mkdir()
    text = ""
    laddrs: dict[str, list[Address]] = {}
    for chain in chains:
        write_key(tmp_path / "secrets" / f"{chain}.key", keys[chain])
        text += chain_toml(chain, tmp_path)
        laddrs[chain] = [
            Address(scheme="tcp", host="127.0.0.1", port=free_tcp_port()),
            Address(scheme="unix", path=str(tmp_path / f"{chain}.sock")),
        ]
        for laddr in laddrs[chain]:
            text += validator_toml(chain, str(laddr), tmp_path, "v0.38")
    config = tmp_path / "tmkms.toml"
    config.write_text(text)
    with trio.fail_after(60):
        async with tmkms_start(config) as kms:
            for chain in chains:
                for index, laddr in enumerate(laddrs[chain]):
                    async with simulated_node(chain, laddr) as node:
                        client = await node.accept()
                        await sign_heights(
                            client,
                            keys[chain].verify_key,
                            range(10 * index + 1, 10 * index + 4),
                            extensions=True,
                            seed=index,
                        )
                        await client.aclose()
            # Both validators of one chain ask at once for conflicting precommits at one HRS.
            async with (
                simulated_node("alpha-1", laddrs["alpha-1"][0]) as n1,
                simulated_node("alpha-1", laddrs["alpha-1"][1]) as n2,
            ):
                c1, c2 = await n1.accept(), await n2.accept()
                rng = random.Random(11)
                votes = [
                    make_vote(SignedMsgType.PRECOMMIT, 50, 0, random_block_id(rng))
                    for _ in range(2)
                ]
                replies = []

                async def ask(client: SignerClient, vote: Vote) -> None:
                    replies.append(await client.sign_vote(vote))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ask, c1, votes[0])
                    nursery.start_soon(ask, c2, votes[1])
                signed = [r for r in replies if r.error is None]
                refused = [r for r in replies if r.error is not None]
                assert len(signed) == 1 and len(refused) == 1
                assert refused[0].error is not None and refused[0].error.code == 2
                await kms.wait_for(r"ERROR .*attempted double sign Precommit at h/r/s: 50/0/2")


async def test_restart_between_signature_and_conflicting_request(tmp_path: Path) -> None:
    """SIGKILL right after a signature; the restarted KMS refuses a conflicting request."""
    chain = "restart-1"
    key = SigningKey.generate()
    write_key(tmp_path / "secrets" / f"{chain}.key", key)
    write_key(tmp_path / "secrets" / "kms-identity.key", SigningKey.generate())
    (tmp_path / "state").mkdir()
    laddr = Address(scheme="unix", path=str(tmp_path / "pv.sock"))
    config = tmp_path / "tmkms.toml"
    config.write_text(
        chain_toml(chain, tmp_path) + validator_toml(chain, str(laddr), tmp_path, "v0.38")
    )
    rng = random.Random(2)
    with trio.fail_after(60):
        async with simulated_node(chain, laddr) as node:
            async with tmkms_start(config) as kms:
                client = await node.accept()
                first = await client.sign_vote(
                    make_vote(SignedMsgType.PREVOTE, 7, 1, random_block_id(rng))
                )
                assert first.error is None
                kms.send_signal(signal.SIGKILL)
                await kms.wait()
            async with tmkms_start(config):
                client = await node.accept()
                conflicting = await client.sign_vote(
                    make_vote(SignedMsgType.PREVOTE, 7, 1, random_block_id(rng))
                )
                assert conflicting.error is not None
                assert conflicting.vote is None or conflicting.vote.signature == b""
                nil_then = await client.sign_vote(make_vote(SignedMsgType.PREVOTE, 7, 1, NIL))
                assert nil_then.error is not None, "nil vs block at the same step is a double sign"
                later = await client.sign_vote(make_vote(SignedMsgType.PRECOMMIT, 7, 1, NIL))
                assert later.error is None
