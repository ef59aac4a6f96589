"""End to end: SIGHUP makes the real `tmkms start` add and remove a chain while another signs.

The first chain's node signs back to back through the whole test on one connection; the
largest gap between its signatures while the KMS reloads stays under 50 ms, and the KMS
never reconnects it (one `connected` line, one connection in the metrics).
"""

from __future__ import annotations

import itertools
import random
import signal
import time
from pathlib import Path

import trio

from kms.protocol.messages import SignedMsgType
from kms.sim.consensus import make_vote, random_block_id
from kms.sim.node import SignerClient, simulated_node
from kms.transport.address import Address
from tests.support.kmsproc import KmsProcess, tmkms_start, unix_config, unix_home
from tests.support.metrics import metrics_base, scrape, value

MAX_GAP = 0.050


async def hup(kms: KmsProcess, config: Path, text: str, expect: str, count: int) -> float:
    """Write ``text`` to the config, send SIGHUP, wait for the ``count``-th ``expect`` line."""
    await trio.Path(config).write_text(text)
    started = time.monotonic()
    kms.send_signal(signal.SIGHUP)
    await kms.wait_for(expect, count=count)
    return started


async def test_sighup_adds_and_removes_a_chain_without_touching_the_other(
    tmp_path: Path,
) -> None:
    unix_home(tmp_path, ["a-1", "b-1"])
    config = tmp_path / "tmkms.toml"
    config.write_text(unix_config(tmp_path, ["a-1"]))
    a_addr = Address(scheme="unix", path=f"{tmp_path}/a-1.sock")
    b_addr = Address(scheme="unix", path=f"{tmp_path}/b-1.sock")
    rng = random.Random(7)
    times: list[float] = []
    labels = {"chain_id": "a-1", "validator": f"unix://{tmp_path}/a-1.sock"}

    async def keep_signing(client: SignerClient, task_status: trio.TaskStatus[None]) -> None:
        height = 1
        task_status.started()
        while True:
            vote = make_vote(SignedMsgType.PREVOTE, height, 0, random_block_id(rng))
            reply = await client.sign_vote(vote)
            assert reply.error is None, reply.error
            times.append(time.monotonic())
            height += 1

    def largest_gap(since: float) -> float:
        window = [t for t in times if t >= since]
        return max(b - a for a, b in itertools.pairwise(window))

    with trio.fail_after(90):
        async with (
            simulated_node("a-1", a_addr) as node_a,
            simulated_node("b-1", b_addr) as node_b,
            tmkms_start(config, "--metrics", "127.0.0.1:0") as kms,
            trio.open_nursery() as nursery,
        ):
            base = await metrics_base(kms)
            client_a = await node_a.accept()
            await nursery.start(keep_signing, client_a)
            await trio.sleep(0.3)

            # add b-1
            text = unix_config(tmp_path, ["a-1", "b-1"])
            since = await hup(kms, config, text, r"reloaded .*: added chain\(s\) b-1", 1)
            client_b = await node_b.accept()
            reply = await client_b.sign_vote(
                make_vote(SignedMsgType.PREVOTE, 1, 0, random_block_id(rng))
            )
            assert reply.error is None
            await trio.sleep(0.3)
            assert largest_gap(since - 0.1) < MAX_GAP, largest_gap(since - 0.1)

            # remove it again
            text = unix_config(tmp_path, ["a-1"])
            since = await hup(kms, config, text, r"reloaded .*: removed chain\(s\) b-1", 1)
            await trio.sleep(0.3)
            assert largest_gap(since - 0.1) < MAX_GAP
            try:
                await client_b.sign_vote(
                    make_vote(SignedMsgType.PREVOTE, 2, 0, random_block_id(rng))
                )
                raise AssertionError("b-1 still answered after its removal")
            except trio.BrokenResourceError:
                pass

            # a broken file: nothing changes, one error line
            since = await hup(kms, config, text + "\n[[chain]\n", "reload of .* refused", 1)
            await trio.sleep(0.3)
            assert len(kms.matching(r"ERROR.*reload of .* refused, nothing changed")) == 1
            assert largest_gap(since - 0.1) < MAX_GAP

            assert len(kms.matching(r"\[a-1@.*connected to validator successfully")) == 1
            samples = await scrape(base)
            assert value(samples, "tmkms_validator_connections_total", **labels) == 1
            assert value(samples, "tmkms_validator_reconnects_total", **labels) == 0
            assert not [k for k in samples if dict(k[1]).get("chain_id") == "b-1"]
            assert len(times) > 100
            nursery.cancel_scope.cancel()
