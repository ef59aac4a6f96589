"""tmkms's state_hook: run a command at startup and raise the state to the height it prints."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import nacl.signing
import pytest
import trio

from kms.chain.hook import (
    BLOCK_HEIGHT_SANITY_LIMIT,
    apply_state_hook,
    parse_hook_output,
    run_state_hook,
)
from kms.chain.local import LocalStore
from kms.chain.state import BlockRef, SignState
from kms.chain.store import StateFile
from kms.chain.tracker import ChainTracker, DoubleSignRefused, SignRequest
from kms.errors import StateError
from providers.softsign import Ed25519SoftSigner


def printing(text: str) -> list[str]:
    """A hook command that prints ``text``."""
    return [sys.executable, "-c", f"import sys; sys.stdout.write({text!r})"]


async def tracker_at(tmp_path: Path, height: int) -> ChainTracker:
    store = StateFile(tmp_path / "state.json")
    store.save(SignState(height, 0, 2, BlockRef(b"\xaa" * 32, 1, b"\xbb" * 32)))
    signer = Ed25519SoftSigner(nacl.signing.SigningKey(bytes(32)))
    return await ChainTracker.load("hooked-1", LocalStore(store), signer)


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("output", "height"),
    [
        ('{"latest_block_height": "347290"}', 347290),  # tmkms.toml.example's shape
        ('{"latest_block_height": 347290}\n', 347290),
        # `curl .../status | jq .result.sync_info`: extra keys are ignored
        ('{"latest_block_hash": "AB", "latest_block_height": "12", "catching_up": false}', 12),
        # the whole /status reply
        ('{"jsonrpc":"2.0","id":-1,"result":{"sync_info":{"latest_block_height":"77"}}}', 77),
        ('{"sync_info":{"latest_block_height":"78"}}', 78),
    ],
)
def test_parse_hook_output(output: str, height: int) -> None:
    assert parse_hook_output(output) == height


@pytest.mark.parametrize(
    "output",
    [
        "",
        "347290",
        "[]",
        '{"height": "5"}',
        '{"latest_block_height": "-5"}',
        '{"latest_block_height": -5}',
        '{"latest_block_height": "5a"}',
        '{"latest_block_height": 5.0}',
        '{"latest_block_height": true}',
        '{"latest_block_height": null}',
        '{"latest_block_height": "9223372036854775808"}',
    ],
)
def test_parse_hook_output_rejects(output: str) -> None:
    with pytest.raises(StateError, match="state hook output"):
        parse_hook_output(output)


# ---------------------------------------------------------------- running


async def test_run_state_hook_reads_stdout() -> None:
    with trio.fail_after(20):
        assert await run_state_hook(printing(json.dumps({"latest_block_height": "123"}))) == 123


async def test_run_state_hook_failures() -> None:
    with trio.fail_after(20):
        with pytest.raises(StateError, match="status 3: boom"):
            await run_state_hook(
                [sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"]
            )
        with pytest.raises(StateError, match="cannot run"):
            await run_state_hook(["/nonexistent/hook-command"])
        with pytest.raises(StateError, match="empty"):
            await run_state_hook([])


async def test_run_state_hook_times_out_and_kills_the_command() -> None:
    with trio.fail_after(20):
        started = trio.current_time()
        # ignores SIGTERM: only a kill stops it
        cmd = [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
        ]
        with pytest.raises(StateError, match=r"timed out after 0\.5 s"):
            await run_state_hook(cmd, timeout_secs=0.5)
        assert trio.current_time() - started < 5


# ---------------------------------------------------------------- applying


async def test_hook_raises_the_height(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(20):
        tracker = await tracker_at(tmp_path, 1000)
        with caplog.at_level(logging.INFO, logger="kms.chain"):
            new = await apply_state_hook(
                tracker, printing('{"latest_block_height":"1500"}'), 5, fail_closed=True
            )
        assert new == 1500
        assert tracker.state == SignState(1500, 0, 0, BlockRef.NIL)
        assert StateFile(tmp_path / "state.json").load() == SignState(1500, 0, 0, BlockRef.NIL)
        assert "[hooked-1] updated block height from hook: 1500" in caplog.messages
        # and a request below it is now refused
        req = SignRequest("vote", 1400, 0, 1, BlockRef.NIL, b"m", (0, 0))
        with pytest.raises(DoubleSignRefused):
            await tracker.sign(req)


async def test_hook_just_below_the_sanity_limit(tmp_path: Path) -> None:
    with trio.fail_after(20):
        tracker = await tracker_at(tmp_path, 1000)
        target = 1000 + BLOCK_HEIGHT_SANITY_LIMIT - 1
        out = json.dumps({"latest_block_height": str(target)})
        assert await apply_state_hook(tracker, printing(out), 5, fail_closed=True) == target
        assert tracker.state.height == target


@pytest.mark.parametrize("height", [1000 + BLOCK_HEIGHT_SANITY_LIMIT, 10**9, 1000, 999, 0])
async def test_hook_ignores_heights_too_far_ahead_or_not_ahead(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, height: int
) -> None:
    with trio.fail_after(20):
        tracker = await tracker_at(tmp_path, 1000)
        before = tracker.state
        out = json.dumps({"latest_block_height": str(height)})
        with caplog.at_level(logging.WARNING, logger="kms.chain"):
            assert await apply_state_hook(tracker, printing(out), 5, fail_closed=True) is None
        assert tracker.state == before
        assert StateFile(tmp_path / "state.json").load() == before
        assert any("sanity limit" in m or "less than current" in m for m in caplog.messages), (
            caplog.messages
        )


async def test_hook_failure_fail_closed_raises(tmp_path: Path) -> None:
    with trio.fail_after(20):
        tracker = await tracker_at(tmp_path, 1000)
        with pytest.raises(StateError, match=r"\[hooked-1\] state hook failed"):
            await apply_state_hook(tracker, printing("not json"), 5, fail_closed=True)
        with pytest.raises(StateError, match="timed out"):
            await apply_state_hook(
                tracker, [sys.executable, "-c", "import time; time.sleep(30)"], 0.3, True
            )
        assert tracker.state.height == 1000


async def test_hook_failure_fail_open_warns_and_continues(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        tracker = await tracker_at(tmp_path, 1000)
        with caplog.at_level(logging.WARNING, logger="kms.chain"):
            assert (
                await apply_state_hook(tracker, [sys.executable, "-c", "exit(1)"], 5, False) is None
            )
        assert tracker.state.height == 1000
        [record] = [r for r in caplog.records if r.name == "kms.chain"]
        assert record.levelno == logging.WARNING
        assert "error invoking state hook" in record.getMessage()
