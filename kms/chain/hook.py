"""tmkms's ``state_hook``: ask an external command for the chain's height at startup.

``state_hook = { cmd = ["/path/to/script", "arg"], timeout_secs = 5, fail_closed = true }``
in a ``[[chain]]`` section. The command prints JSON naming the chain's latest block height,
in the shape tmkms documents (``tmkms.toml.example``): ``{"latest_block_height": "347290"}``.
That is the ``sync_info`` object of a node's RPC ``/status`` reply (where the height is a
quoted integer), so ``curl -s node:26657/status | jq .result.sync_info`` works as a hook;
extra keys are ignored, and for convenience the whole ``/status`` reply (``result.sync_info``
or ``sync_info``) is accepted too, as is an unquoted integer.

When that height is above the tracker's and less than 9,000 blocks ahead (tmkms's sanity
limit), the state is raised to ``height/0/0`` with a nil block and saved. A lower height or
a jump of 9,000 or more only logs a warning.

tmkms's implementation never captures the child's stdout, so its hook always fails; this
one reads it. The default timeout is 5 s, as tmkms's config documentation says (its code
uses 1 s). On failure ``fail_closed`` stops startup with a StateError; otherwise the
failure is logged and startup continues.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

from kms.chain.state import MAX_HEIGHT_VALUE
from kms.errors import StateError

if TYPE_CHECKING:
    from kms.chain.tracker import ChainTracker

__all__ = [
    "BLOCK_HEIGHT_SANITY_LIMIT",
    "DEFAULT_TIMEOUT_SECS",
    "apply_state_hook",
    "parse_hook_output",
    "run_state_hook",
]

log = logging.getLogger("kms.chain")

#: The hook may raise the height by less than this many blocks (tmkms's limit).
BLOCK_HEIGHT_SANITY_LIMIT = 9000
#: Seconds the command may take when the config gives no ``timeout_secs``.
DEFAULT_TIMEOUT_SECS = 5.0

_DECIMAL = re.compile(r"[0-9]+\Z")
_STDERR_EXCERPT = 200


def _find_height(doc: Any) -> object:
    if not isinstance(doc, dict):
        raise ValueError("output is not a JSON object")
    if "latest_block_height" in doc:
        return doc["latest_block_height"]
    for path in (("result", "sync_info"), ("sync_info",)):
        node: Any = doc
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and "latest_block_height" in node:
            return node["latest_block_height"]
    raise ValueError("no latest_block_height in output")


def parse_hook_output(stdout: bytes | str) -> int:
    """The height in a hook's output; StateError when there is none or it is malformed."""
    try:
        raw = _find_height(json.loads(stdout))
        if isinstance(raw, str) and _DECIMAL.match(raw):
            height = int(raw)
        elif isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
            height = raw
        else:
            raise ValueError(f"latest_block_height must be a non-negative integer, got {raw!r}")
        if height > MAX_HEIGHT_VALUE:
            raise ValueError(f"latest_block_height {height} is out of range")
    except (ValueError, RecursionError) as exc:
        raise StateError(f"state hook output is not usable: {exc}") from exc
    return height


async def _kill_now(process: trio.Process) -> None:
    process.kill()


async def run_state_hook(cmd: Sequence[str], timeout_secs: float | None = None) -> int:
    """Run the hook command and return the height it reports; StateError on any failure."""
    if not cmd:
        raise StateError("state hook command is empty")
    timeout = DEFAULT_TIMEOUT_SECS if timeout_secs is None else timeout_secs
    try:
        with trio.fail_after(timeout):
            result = await trio.run_process(
                list(cmd),
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                deliver_cancel=_kill_now,
            )
    except trio.TooSlowError as exc:
        raise StateError(f"state hook {cmd[0]} timed out after {timeout:g} s") from exc
    except OSError as exc:
        raise StateError(f"cannot run state hook {cmd[0]}: {exc}") from exc
    if result.returncode != 0:
        stderr = result.stderr.decode("utf-8", "replace").strip()[-_STDERR_EXCERPT:]
        raise StateError(
            f"state hook {cmd[0]} exited with status {result.returncode}"
            + (f": {stderr}" if stderr else "")
        )
    return parse_hook_output(result.stdout)


async def apply_state_hook(
    tracker: ChainTracker,
    cmd: Sequence[str],
    timeout_secs: float | None = None,
    fail_closed: bool = False,
) -> int | None:
    """Run the hook and raise ``tracker``'s state to its height when that is sane.

    Returns the new height when the state was raised, else None. A failing hook raises
    StateError when ``fail_closed`` and is logged as a warning otherwise. A state file
    that cannot be written always raises StateError.
    """
    try:
        height = await run_state_hook(cmd, timeout_secs)
    except StateError as exc:
        if fail_closed:
            raise StateError(f"[{tracker.chain_id}] state hook failed: {exc}") from exc
        log.warning("[%s] error invoking state hook: %s", tracker.chain_id, exc)
        return None
    current = tracker.state.height
    if height <= current:
        log.warning(
            "[%s] hook block height less than current? current: %d, hook: %d",
            tracker.chain_id,
            current,
            height,
        )
        return None
    delta = height - current
    if delta >= BLOCK_HEIGHT_SANITY_LIMIT:
        log.warning(
            "[%s] hook block height more than sanity limit: %d (delta: %d, max: %d)",
            tracker.chain_id,
            height,
            delta,
            BLOCK_HEIGHT_SANITY_LIMIT,
        )
        return None
    if not await tracker.raise_to_height(height):
        return None
    log.info("[%s] updated block height from hook: %d", tracker.chain_id, height)
    return height
