"""Running the real `tmkms` command as a user would, and reading its log lines."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio
from nacl.signing import SigningKey

from kms.sim.process import terminate
from tests.support import REPO

TMKMS = [sys.executable, "-m", "kms"]


def tmkms_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the tree first on PYTHONPATH, no TMKMS_CONFIG_FILE, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if key != "TMKMS_CONFIG_FILE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def run_tmkms(
    *args: str | Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: str = "",
    umask: int = -1,
) -> subprocess.CompletedProcess[str]:
    """Run a short `tmkms` command to completion (init, keygen, import...), as a user would.

    It runs in ``cwd`` (default: the repository) with :func:`tmkms_env` plus ``env``, reads
    ``stdin`` (nothing, by default), and runs under ``umask`` when given.
    """
    return subprocess.run(
        [*TMKMS, *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=tmkms_env(env),
        umask=umask,
        timeout=60,
        check=False,
    )


def write_key(path: Path, key: SigningKey) -> None:
    """A softsign key file (base64 seed), 0600 in a 0700 folder."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(base64.b64encode(bytes(key)).decode() + "\n")
    path.chmod(0o600)


@attrs.define
class KmsProcess:
    """A running `tmkms start`; its combined output is collected line by line."""

    process: trio.Process
    lines: list[str] = attrs.field(factory=list)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        pending = b""
        async for chunk in self.process.stdout:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            self.lines.extend(line.decode(errors="replace") for line in complete)
            self._changed.set()
            self._changed = trio.Event()
        if pending:
            self.lines.append(pending.decode(errors="replace"))
        self._changed.set()

    def matching(self, pattern: str) -> list[str]:
        """Every line so far that matches the regular expression ``pattern``."""
        regex = re.compile(pattern)
        return [line for line in self.lines if regex.search(line)]

    async def wait_for(self, pattern: str, count: int = 1, timeout: float = 20.0) -> list[str]:
        """Wait until ``count`` lines match ``pattern``; TooSlowError shows the output."""
        try:
            with trio.fail_after(timeout):
                while len(found := self.matching(pattern)) < count:
                    if self.process.returncode is not None and self._changed.is_set():
                        raise AssertionError(f"tmkms exited ({self.process.returncode})")
                    await self._changed.wait()
        except (trio.TooSlowError, AssertionError) as exc:
            output = "\n".join(self.lines[-60:])
            raise AssertionError(f"no {count} lines matching {pattern!r}:\n{output}") from exc
        return found

    def send_signal(self, signum: int) -> None:
        """Signal the process (SIGTERM for a clean stop, SIGKILL for a crash)."""
        self.process.send_signal(signum)

    async def wait(self, timeout: float = 15.0) -> int:
        """Wait for the process to exit and return its status."""
        with trio.fail_after(timeout):
            return await self.process.wait()


@asynccontextmanager
async def tmkms_start(
    config: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    launcher: Sequence[str] = TMKMS,
) -> AsyncIterator[KmsProcess]:
    """Start `tmkms start -c CONFIG` and stop it (SIGTERM, then SIGKILL) on exit.

    ``launcher`` replaces ``python -m kms`` (the fault kit starts it through a shim).
    """
    process = await trio.lowlevel.open_process(
        [*launcher, "start", "-c", str(config), *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=tmkms_env(env),
        cwd=str(REPO),
    )
    kms = KmsProcess(process)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(kms._read)
        try:
            yield kms
        finally:
            await terminate(process)


def free_tcp_port() -> int:
    """A port nobody listens on right now (for starting the KMS before its node)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def chain_toml(chain_id: str, home: Path, extra: Sequence[str] = ()) -> str:
    """A `[[chain]]` + softsign section for ``chain_id`` with keys under ``home``."""
    lines = [
        "[[chain]]",
        f'id = "{chain_id}"',
        'key_format = { type = "hex" }',
        f'state_file = "{home}/state/{chain_id}.json"',
        *extra,
        "",
        "[[providers.softsign]]",
        f'chain_ids = ["{chain_id}"]',
        'key_type = "consensus"',
        f'path = "{home}/secrets/{chain_id}.key"',
        "",
    ]
    return "\n".join(lines)


def validator_toml(
    chain_id: str, addr: str, home: Path, version: str, extra: Sequence[str] = ()
) -> str:
    """A `[[validator]]` section."""
    lines = [
        "[[validator]]",
        f'chain_id = "{chain_id}"',
        f'addr = "{addr}"',
        f'secret_key = "{home}/secrets/kms-identity.key"',
        f'protocol_version = "{version}"',
        *extra,
        "",
    ]
    return "\n".join(lines)


def priv_validator_key_json(key: SigningKey) -> str:
    """What a CometBFT node's `init` leaves in config/priv_validator_key.json."""
    pub = bytes(key.verify_key)
    return json.dumps(
        {
            "address": hashlib.sha256(pub).digest()[:20].hex().upper(),
            "pub_key": {
                "type": "tendermint/PubKeyEd25519",
                "value": base64.b64encode(pub).decode(),
            },
            "priv_key": {
                "type": "tendermint/PrivKeyEd25519",
                "value": base64.b64encode(bytes(key) + pub).decode(),
            },
        },
        indent=2,
    )


def unix_home(tmp_path: Path, chains: list[str]) -> Path:
    """A KMS home: key files for ``chains`` (and the identity), a state folder."""
    (tmp_path / "state").mkdir(exist_ok=True)
    write_key(tmp_path / "secrets" / "kms-identity.key", SigningKey.generate())
    for chain in chains:
        write_key(tmp_path / "secrets" / f"{chain}.key", SigningKey(bytes([len(chain)]) * 32))
    return tmp_path


def unix_config(tmp_path: Path, chains: list[str], extra: str = "") -> str:
    """tmkms.toml text: each chain with its softsign key and a unix-socket validator."""
    text = "".join(
        chain_toml(chain, tmp_path)
        + validator_toml(chain, f"unix://{tmp_path}/{chain}.sock", tmp_path, "v0.38")
        for chain in chains
    )
    return text + extra
