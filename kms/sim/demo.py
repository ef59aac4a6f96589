"""`tmkms demo`: a local simulated node and a real `tmkms start` on a temporary home.

Shows, in a dozen seconds and without any setup, what the KMS does for a validator: it dials
the node over Secret Connection, hands over its public key, signs proposals, prevotes and
precommits height after height (every signature checked by the node), and refuses a
double-sign attempt with a RemoteSignerError while the connection stays up.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import trio
from nacl.signing import SigningKey, VerifyKey

from kms.protocol.messages import SignedMsgType
from kms.protocol.version import ProtocolVersion
from kms.sim.consensus import ConsensusDriver, make_vote, random_block_id
from kms.sim.node import simulated_node
from kms.transport.address import Address

CHAIN_ID = "demo-1"
HEIGHTS = 5


def write_demo_home(
    home: Path,
    node_addr: Address,
    *,
    chain_id: str = CHAIN_ID,
    consensus_key: SigningKey | None = None,
    extra: str = "",
) -> Path:
    """Write keys and a tmkms.toml for one chain and one validator; return the config path.

    ``consensus_key`` (default: a new one) is written as the softsign key; ``extra`` is
    appended to the tmkms.toml (``tmkms demo --ha``'s ``[etcd]``).
    """
    for sub in ("secrets", "state"):
        (home / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = {
        "priv_validator_key": consensus_key or SigningKey.generate(),
        "kms-identity.key": SigningKey.generate(),
    }
    for name, key in keys.items():
        key_path = home / "secrets" / name
        key_path.write_text(base64.b64encode(bytes(key)).decode() + "\n")
        key_path.chmod(0o600)
    config = home / "tmkms.toml"
    config.write_text(
        f"""# tmkms demo configuration (generated)
[[chain]]
id = "{chain_id}"
key_format = {{ type = "bech32", account_key_prefix = "cosmospub", \
consensus_key_prefix = "cosmosvalconspub" }}
state_file = "{home}/state/{chain_id}-consensus.json"

[[providers.softsign]]
chain_ids = ["{chain_id}"]
key_type = "consensus"
path = "{home}/secrets/priv_validator_key"

[[validator]]
chain_id = "{chain_id}"
addr = "{node_addr}"
secret_key = "{home}/secrets/kms-identity.key"
protocol_version = "v0.38"
reconnect = true
{extra}"""
    )
    return config


def say(text: str) -> None:
    """The node's side of the story, printed between the KMS's own log lines."""
    print(f"--- node: {text}", flush=True)


async def _demo(home: Path) -> int:
    async with simulated_node(
        CHAIN_ID, Address(scheme="tcp", host="127.0.0.1", port=0), ProtocolVersion.V0_38
    ) as node:
        assert node.address is not None
        config = write_demo_home(home, node.address)
        say(f"listening on {node.address} (chain {CHAIN_ID}); starting `tmkms start -c {config}`")
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "kms", "start", "-c", str(config)],
            stdin=subprocess.DEVNULL,
        )
        try:
            with trio.fail_after(15):
                client = await node.accept()
                pub = await client.pub_key()
            say(f"KMS connected; consensus key {pub.data.hex()}")
            driver = ConsensusDriver(client, VerifyKey(pub.data), rng=random.Random(7))
            for height in range(1, HEIGHTS + 1):
                await driver.height(height)
            say(f"{driver.signatures} signatures received, all verified")
            say(f"asking for a second precommit at height {HEIGHTS} for a different block")
            conflicting = make_vote(
                SignedMsgType.PRECOMMIT, HEIGHTS, 0, random_block_id(random.Random(99))
            )
            reply = await client.sign_vote(conflicting)
            if reply.error is None:
                say("the KMS signed a conflicting vote: this must never happen")
                return 1
            error = reply.error
            say(f"refused as expected: RemoteSignerError {error.code}: {error.description}")
            await client.ping()
            say("connection still up after the refusal (ping answered)")
            await client.aclose()
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        say(f"KMS exited with status {process.returncode}")
        return 0 if process.returncode == 0 else 1


def main() -> int:
    """Run the demo on a temporary home that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="tmkms-demo-") as tmp:
        os.chmod(tmp, 0o700)
        return trio.run(_demo, Path(tmp))
