"""End to end: scrape the real `tmkms start` over HTTP while a simulated node signs, refuses and
goes away; the counters, gauges and /readyz follow."""

from __future__ import annotations

import json
import random
from pathlib import Path

import trio
from nacl.signing import SigningKey

from kms.protocol.messages import SignedMsgType, SignVoteRequest
from kms.sim.consensus import make_proposal, make_vote, random_block_id
from kms.sim.node import simulated_node
from kms.transport.address import Address
from tests.support.kmsproc import (
    chain_toml,
    free_tcp_port,
    tmkms_start,
    validator_toml,
    write_key,
)
from tests.support.metrics import http_get, http_request, metrics_base, scrape, value, wait_ready


async def accept_and_slam(listener: trio.SocketListener, count: int) -> None:
    """Play a broken node: accept ``count`` connections and close each without a handshake."""
    for _ in range(count):
        stream = await listener.accept()
        await stream.aclose()


def write_config(tmp_path: Path, chain: str, port: int, *extra_validator: str) -> Path:
    key = SigningKey.generate()
    write_key(tmp_path / "secrets" / f"{chain}.key", key)
    write_key(tmp_path / "secrets" / "kms-identity.key", SigningKey.generate())
    (tmp_path / "state").mkdir()
    config = tmp_path / "tmkms.toml"
    config.write_text(
        chain_toml(chain, tmp_path)
        + validator_toml(chain, f"tcp://127.0.0.1:{port}", tmp_path, "v0.38", extra_validator)
    )
    return config


async def test_counters_and_readiness_follow_a_real_run(tmp_path: Path) -> None:
    chain = "metrics-1"
    port = free_tcp_port()
    config = write_config(tmp_path, chain, port, 'max_height = "1000"')
    laddr = Address(scheme="tcp", host="127.0.0.1", port=port)
    rng = random.Random(5)
    labels = {"chain_id": chain, "validator": f"tcp://127.0.0.1:{port}"}
    with trio.fail_after(90):
        async with tmkms_start(config, "--metrics", "127.0.0.1:0") as kms:
            base = await metrics_base(kms)
            status, _, body = await http_get(f"{base}/healthz")
            assert status == 200 and json.loads(body)["status"] == "ok"
            # No node yet: dials fail, not ready.
            await kms.wait_for(r"Connection refused", count=2)
            doc = await wait_ready(base, False)
            (validator,) = doc["validators"]
            assert validator["chain_id"] == chain and validator["connected"] is False
            assert "Connection refused" in validator["last_error"]
            assert doc["providers"] == [{"name": "softsign", "reachable": True}]
            before = await scrape(base)
            assert value(before, "tmkms_validator_connected", **labels) == 0
            assert value(before, "tmkms_validator_connect_failures_total", **labels) >= 2
            assert value(before, "tmkms_ready") == 0
            assert value(before, "tmkms_build_info") == 1
            assert value(before, "process_resident_memory_bytes") > 0

            async with simulated_node(chain, laddr) as node:
                client = await node.accept()
                await client.pub_key()
                await wait_ready(base, True)
                for height in (1, 2):
                    block = random_block_id(rng)
                    assert (
                        await client.sign_proposal(make_proposal(height, 0, block))
                    ).error is None
                    for step in (SignedMsgType.PREVOTE, SignedMsgType.PRECOMMIT):
                        reply = await client.sign_vote(make_vote(step, height, 0, block, b"x"))
                        assert reply.error is None
                signed = await scrape(base)
                for kind in ("proposal", "prevote", "precommit", "vote_extension"):
                    assert value(signed, "tmkms_signatures_total", type=kind, **labels) == 2
                for phase in ("queue", "state_write", "signer"):
                    assert (
                        value(signed, "tmkms_sign_duration_seconds_count", phase=phase, **labels)
                        == 6
                    )
                    inf = value(
                        signed,
                        "tmkms_sign_duration_seconds_bucket",
                        phase=phase,
                        le="+Inf",
                        **labels,
                    )
                    assert inf == 6
                # every signature rewrote the state durably: that took some time
                assert (
                    value(signed, "tmkms_sign_duration_seconds_sum", phase="state_write", **labels)
                    > 0
                )
                assert value(signed, "tmkms_last_signed_height", **labels) == 2
                assert value(signed, "tmkms_last_signed_step", **labels) == 2
                assert value(signed, "tmkms_chain_state_height", chain_id=chain) == 2
                assert value(signed, "tmkms_validator_connected", **labels) == 1
                assert value(signed, "tmkms_validator_connections_total", **labels) == 1
                assert value(signed, "tmkms_provider_reachable", provider="softsign") == 1

                # Refusals, one of each kind the node can provoke.
                conflicting = make_vote(SignedMsgType.PRECOMMIT, 2, 0, random_block_id(rng))
                assert (await client.sign_vote(conflicting)).error is not None
                old = make_vote(SignedMsgType.PREVOTE, 1, 0, random_block_id(rng))
                assert (await client.sign_vote(old)).error is not None
                too_high = make_vote(SignedMsgType.PREVOTE, 1001, 0, random_block_id(rng))
                assert (await client.sign_vote(too_high)).error is not None
                wrong_chain = SignVoteRequest(
                    vote=make_vote(SignedMsgType.PREVOTE, 3, 0, random_block_id(rng)),
                    chain_id="other-chain",
                )
                await client.request(wrong_chain)
                refused = await scrape(base)
                for reason in (
                    "double_sign",
                    "height_regression",
                    "max_height",
                    "chain_id_mismatch",
                ):
                    assert value(refused, "tmkms_refusals_total", reason=reason, **labels) == 1
                assert (
                    value(refused, "tmkms_refusals_total", reason="round_regression", **labels) == 0
                )
                assert value(refused, "tmkms_signatures_total", type="prevote", **labels) == 2
                await client.aclose()

            # The node went away: not ready; then a broken node fails two handshakes.
            await wait_ready(base, False)
            gone = await scrape(base)
            assert value(gone, "tmkms_validator_connected", **labels) == 0
            listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
            async with listeners[0]:
                await accept_and_slam(listeners[0], 2)
            async with simulated_node(chain, laddr) as node:
                client = await node.accept()
                await wait_ready(base, True)
                back = await scrape(base)
                assert value(back, "tmkms_validator_connections_total", **labels) == 2
                assert value(back, "tmkms_validator_handshake_failures_total", **labels) >= 2
                assert value(back, "tmkms_validator_reconnects_total", **labels) >= 3
                reply = await client.sign_vote(
                    make_vote(SignedMsgType.PREVOTE, 3, 0, random_block_id(rng))
                )
                assert reply.error is None
                after = await scrape(base)
                assert value(after, "tmkms_signatures_total", type="prevote", **labels) == 3
                assert value(after, "tmkms_chain_state_height", chain_id=chain) == 3
                await client.aclose()


async def test_endpoints_methods_and_unknown_paths(tmp_path: Path) -> None:
    """HEAD has no body, other methods are 405, unknown paths 404; the listener survives junk."""
    config = write_config(tmp_path, "http-1", free_tcp_port())
    with trio.fail_after(60):
        async with tmkms_start(config, "--metrics", "127.0.0.1:0") as kms:
            base = await metrics_base(kms)
            assert (await http_get(f"{base}/nope"))[0] == 404
            head = await trio.to_thread.run_sync(http_request, f"{base}/metrics", "HEAD")
            assert head[0] == 200 and head[1]["Content-Length"] != "0" and head[2] == b""
            post = await trio.to_thread.run_sync(http_request, f"{base}/metrics", "POST")
            assert post[0] == 405 and post[1]["Allow"] == "GET, HEAD"
            host, port = base.removeprefix("http://").rsplit(":", 1)
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream:
                await stream.send_all(b"\x00garbage\r\n\r\n")
                assert (await stream.receive_some(100)).startswith(b"HTTP/1.1 400 ")
            assert (await http_get(f"{base}/healthz"))[0] == 200


async def test_metrics_flag_overrides_config_and_bad_addresses_fail_cleanly(tmp_path: Path) -> None:
    """[metrics] laddr in tmkms.toml serves; a taken port is one error line and exit 1."""
    port = free_tcp_port()
    config = write_config(tmp_path, "flag-1", free_tcp_port())
    metrics_port = free_tcp_port()
    config.write_text(config.read_text() + f'\n[metrics]\nladdr = "127.0.0.1:{metrics_port}"\n')
    with trio.fail_after(60):
        async with tmkms_start(config) as kms:
            base = await metrics_base(kms)
            assert base == f"http://127.0.0.1:{metrics_port}"
            assert (await http_get(f"{base}/healthz"))[0] == 200
            # the same port again: a second KMS could not bind it, but first it meets the lock
        taken = await trio.open_tcp_listeners(port, host="127.0.0.1")
        async with taken[0], tmkms_start(config, "--metrics", f"127.0.0.1:{port}") as kms:
            assert await kms.wait() == 1
            lines = kms.matching(r"^error: ")
            assert lines == [
                f"error: cannot serve metrics on 127.0.0.1:{port}: address already in use"
            ]
            assert not kms.matching(r"added consensus")  # failed before loading any key
