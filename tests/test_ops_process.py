"""The real `tmkms start` as systemd and an operator see it: the state lock, sd_notify over a
real unix datagram socket, JSON logs and the log level."""

from __future__ import annotations

import json
import random
import re
import signal
import socket
from pathlib import Path

import trio
from nacl.signing import SigningKey

from kms.chain.state import SignState
from kms.chain.stateformat import parse_state
from kms.protocol.messages import SignedMsgType
from kms.sim.consensus import make_vote, random_block_id
from kms.sim.node import simulated_node
from kms.transport.address import Address
from tests.support.kmsproc import run_tmkms, tmkms_start, write_key
from tests.support.metrics import http_get, metrics_base

CHAIN = "ops-1"


def unix_home(tmp_path: Path, key: SigningKey | None = None) -> tuple[Path, Address]:
    """A KMS home with one chain and one unix-socket validator (nobody listening yet)."""
    write_key(tmp_path / "secrets" / f"{CHAIN}.key", key or SigningKey.generate())
    (tmp_path / "state").mkdir()
    laddr = Address(scheme="unix", path=str(tmp_path / "pv.sock"))
    config = tmp_path / "tmkms.toml"
    config.write_text(
        f'[[chain]]\nid = "{CHAIN}"\nkey_format = {{ type = "hex" }}\n'
        f'state_file = "{tmp_path}/state/{CHAIN}.json"\n\n'
        f'[[providers.softsign]]\nchain_ids = ["{CHAIN}"]\nkey_type = "consensus"\n'
        f'path = "{tmp_path}/secrets/{CHAIN}.key"\n\n'
        f'[[validator]]\nchain_id = "{CHAIN}"\naddr = "{laddr}"\n'
    )
    return config, laddr


async def test_one_kms_per_state_file_and_no_changes_underneath_it(tmp_path: Path) -> None:
    config, _ = unix_home(tmp_path)
    state_file = tmp_path / "state" / f"{CHAIN}.json"
    with trio.fail_after(90):
        async with tmkms_start(config) as first:
            await first.wait_for(r"I/O error")  # serving: locks held, state file created
            pid = first.process.pid
            async with tmkms_start(config) as second:
                assert await second.wait() == 4
                (line,) = second.matching(r"^error: ")
                assert line == (
                    f"error: state file {state_file} is in use by process {pid} "
                    "(a running `tmkms start`?); refusing to start a second KMS "
                    f"(lock file {state_file}.lock)"
                )
                assert not second.matching(r"added consensus")
            before = state_file.read_bytes()
            refused = await trio.to_thread.run_sync(
                lambda: run_tmkms("state", "set", CHAIN, "500", "-c", config)
            )
            assert refused.returncode == 4
            assert f"is in use by process {pid}" in refused.stderr
            assert "stop it before changing the state" in refused.stderr
            assert state_file.read_bytes() == before
            shown = await trio.to_thread.run_sync(lambda: run_tmkms("state", "show", "-c", config))
            assert shown.returncode == 0
            assert f"(in use by a running tmkms start, pid {pid})" in shown.stdout
            # A crash leaves the lock file behind but not the lock.
            first.send_signal(signal.SIGKILL)
            await first.wait()
        assert (tmp_path / "state" / f"{CHAIN}.json.lock").exists()
        done = await trio.to_thread.run_sync(
            lambda: run_tmkms("state", "set", CHAIN, "500", "-c", config)
        )
        assert done.returncode == 0, done.stderr
        assert parse_state(state_file.read_bytes()) == SignState(500, 0, 0)
        async with tmkms_start(config) as third:
            await third.wait_for(r"I/O error")
            third.send_signal(signal.SIGTERM)
            assert await third.wait() == 0


async def test_a_symlinked_state_file_is_still_one_lock(tmp_path: Path) -> None:
    """Two configurations reaching one state file through a symlink cannot both start."""
    config, _ = unix_home(tmp_path)
    alias = tmp_path / "alias"
    alias.symlink_to(tmp_path / "state")
    other = tmp_path / "other.toml"
    other.write_text(config.read_text().replace(f"{tmp_path}/state/", f"{alias}/"))
    with trio.fail_after(60):
        async with tmkms_start(config) as first:
            await first.wait_for(r"I/O error")
            async with tmkms_start(other) as second:
                assert await second.wait() == 4
                assert second.matching(r"^error: state file .* is in use by process")


async def test_sd_notify_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    config, _ = unix_home(tmp_path)
    path = str(tmp_path / "notify.sock")
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        await sock.bind(path)
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
        with trio.fail_after(60):
            async with tmkms_start(config, env=env) as kms:
                ready = (await sock.recv(4096)).decode()
                assert ready == "READY=1\nSTATUS=serving 1 validator(s)"
                # ready means keys and state are loaded: the key line was logged before
                await kms.wait_for(r"added consensus Ed25519 key", timeout=5)
                pings = [(await sock.recv(4096)).decode() for _ in range(3)]
                assert pings == ["WATCHDOG=1"] * 3
                kms.send_signal(signal.SIGTERM)
                rest = []
                while (message := (await sock.recv(4096)).decode()) != "STOPPING=1":
                    rest.append(message)
                assert set(rest) <= {"WATCHDOG=1"}
                assert await kms.wait() == 0


async def test_no_notify_socket_no_notifications_and_a_vanished_socket_is_harmless(
    tmp_path: Path,
) -> None:
    config, _ = unix_home(tmp_path)
    env = {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock"), "WATCHDOG_USEC": "100000"}
    with trio.fail_after(60):
        async with tmkms_start(config, env=env) as kms:
            await kms.wait_for(r"I/O error", count=3)
            await kms.wait_for(r"WARN tmkms::sdnotify: cannot notify systemd \(READY=1\)")
            kms.send_signal(signal.SIGTERM)
            assert await kms.wait() == 0


def normalise(message: str) -> str:
    """A log message with what legitimately differs between two runs blanked out."""
    return re.sub(r"\(\d+ ms\)", "(N ms)", message)


async def run_and_log(tmp_path: Path, *flags: str) -> list[str]:
    """Start the KMS, sign three heights over a unix socket, stop it; its output lines."""
    config, laddr = unix_home(tmp_path, SigningKey(b"\x07" * 32))
    rng = random.Random(9)
    with trio.fail_after(60):
        async with tmkms_start(config, *flags) as kms:
            await kms.wait_for(r"I/O error")
            async with simulated_node(CHAIN, laddr) as node:
                client = await node.accept()
                await client.pub_key()
                for height in (1, 2, 3):
                    vote = make_vote(SignedMsgType.PREVOTE, height, 0, random_block_id(rng))
                    assert (await client.sign_vote(vote)).error is None
                refused = make_vote(SignedMsgType.PREVOTE, 2, 0, random_block_id(rng))
                assert (await client.sign_vote(refused)).error is not None
                await kms.wait_for(r"attempted double sign")
                await client.aclose()
                await kms.wait_for(r"validator closed the connection")
            kms.send_signal(signal.SIGTERM)
            assert await kms.wait() == 0
            return kms.lines


TEXT_LINE = re.compile(r"^(\S+Z) +(TRACE|DEBUG|INFO|WARN|ERROR) (\S+): (.*)$")


async def test_json_logs_carry_the_same_events_as_text(tmp_path: Path) -> None:
    text_lines = await run_and_log(tmp_path / "text")
    json_lines = await run_and_log(tmp_path / "json", "--log-format", "json")
    text_events = []
    for line in text_lines:
        match = TEXT_LINE.match(line)
        assert match is not None, line
        level, target, message = match.group(2, 3, 4)
        text_events.append((level, target, normalise(message.replace(str(tmp_path / "text"), ""))))
    json_events = []
    for line in json_lines:
        doc = json.loads(line)
        assert set(doc) == {"timestamp", "level", "target", "message"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", doc["timestamp"])
        message = doc["message"].replace(str(tmp_path / "json"), "")
        json_events.append((doc["level"], doc["target"], normalise(message)))
    # The dial loop runs on its own clock: compare everything else, in order.
    dials = re.compile(r"I/O error")
    assert [e for e in text_events if not dials.search(e[2])] == [
        e for e in json_events if not dials.search(e[2])
    ]
    messages = [e[2] for e in json_events]
    assert any(m.startswith("tmkms ") and m.endswith(" starting up...") for m in messages)
    assert sum("signed Prevote:" in m for m in messages) == 3
    assert any("attempted double sign Prevote at h/r/s: 2/0/1" in m for m in messages)
    assert ("INFO", "tmkms::client", "received SIGTERM; shutting down") in json_events


async def test_log_level_flag(tmp_path: Path) -> None:
    lines = await run_and_log(tmp_path / "warn", "--log-level", "warn")
    matches = [TEXT_LINE.match(line) for line in lines]
    levels = {match.group(2) for match in matches if match is not None}
    assert None not in matches
    assert "ERROR" in levels and levels <= {"WARN", "ERROR"}
    assert any("attempted double sign" in line for line in lines)
    config, _ = unix_home(tmp_path / "debug")
    with trio.fail_after(60):
        async with tmkms_start(config, "--log-level", "debug", "--metrics", "127.0.0.1:0") as kms:
            base = await metrics_base(kms)
            assert (await http_get(f"{base}/healthz"))[0] == 200
            await kms.wait_for(r"DEBUG tmkms::ops: HTTP GET /healthz -> 200 \(\d+\.\d\d ms\)")
    bad = run_tmkms("start", "--log-level", "loud", "-c", config)
    assert bad.returncode == 2 and "invalid choice: 'loud'" in bad.stderr
