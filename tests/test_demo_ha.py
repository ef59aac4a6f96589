"""`tmkms demo --ha` as a user runs it: a real process, real etcd, two real `tmkms start`.

The demo's own output is checked against what it promises (one host signs each contested
step, the other is refused; after the etcd leader and a KMS are killed the survivor still
refuses what the dead one signed and keeps signing), the relayed KMS log lines are checked
against the demo's claims, and afterwards no process it started is left running.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support import REPO
from tests.support.etcd import etcd_binary

DEMO_LIMIT = 180.0
CONTESTED = re.compile(
    r"^--- demo: height (\d+) (Proposal|Prevote|Precommit), both asked at once: "
    r"(kms-[ab]) signed block ([0-9A-F]{10}); (kms-[ab]) refused block ([0-9A-F]{10}) "
    r"\(RemoteSignerError 2: double signing requested at height: (\d+)\)$"
)
AFTER = re.compile(
    r"^--- demo: height (\d+) (Proposal|Prevote|Precommit): (kms-[ab]) signed block "
    r"([0-9A-F]{10}), (\d+) ms after the kills$"
)
RELAYED_SIGNED = re.compile(
    r"^(kms-[ab]) \| \S+ +INFO tmkms::session: \[demo-ha-1@\S+\] signed "
    r"(Proposal|Prevote|Precommit):([0-9A-F]{10}) at h/r/s (\d+)/0/(\d)"
)
STEPS = {"Proposal": 0, "Prevote": 1, "Precommit": 2}


def demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TMKMS_CONFIG_FILE", "ETCD_BINARY")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (the demo's folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_demo_ha_one_signs_one_is_refused_and_signing_survives_the_kills() -> None:
    binary = etcd_binary()  # skipped without etcd (a failure under CI=true)
    env = demo_env(PATH=os.pathsep.join([str(Path(binary).parent), os.environ.get("PATH", "")]))
    result = subprocess.run(
        [sys.executable, "-m", "kms", "demo", "--ha"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=DEMO_LIMIT,
        check=False,
    )
    output = result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert result.returncode == 0, output
    assert "Traceback" not in output

    # every process it started is gone, and so is its folder
    folder = re.search(r"^--- demo: working in (\S+) \(removed at the end\)$", output, re.M)
    assert folder is not None, output
    assert processes_mentioning(folder.group(1)) == []
    assert not Path(folder.group(1)).exists()
    assert "--- demo: KMS processes stopped" in lines and "--- demo: etcd members stopped" in lines

    # contested steps: exactly one host signs, the other is refused as a double sign
    contested = [m for line in lines if (m := CONTESTED.match(line))]
    assert len(contested) == 9, output
    for match in contested:
        signer, refused = match.group(3), match.group(5)
        assert signer != refused and match.group(1) == match.group(7)
    assert (
        "--- demo: 9 steps asked of both hosts at once for different blocks: 9 signed by "
        "exactly one host, 0 by none, 0 by both" in lines
    )

    # the KMS processes' own log lines agree: one signature per step, the block the demo saw
    relayed = [m for line in lines if (m := RELAYED_SIGNED.match(line))]
    signed_at: dict[tuple[int, int], set[tuple[str, str]]] = {}
    for match in relayed:
        host, kind, block, height, step = match.groups()
        assert STEPS[kind] == int(step)
        signed_at.setdefault((int(height), int(step)), set()).add((host, block))
    for match in contested:
        key = (int(match.group(1)), STEPS[match.group(2)])
        if key not in signed_at and match is contested[-1]:
            continue  # a KMS logs after replying: the host killed next may not have yet
        assert signed_at[key] == {(match.group(3), match.group(4))}, output
    assert all(len(signers) == 1 for signers in signed_at.values()), signed_at

    # the kills: the survivor is bound by what the dead host signed, then keeps signing
    kill = re.search(
        r"^--- demo: SIGKILL to the etcd leader m\d \(pid \d+\) and to (kms-[ab]) \(pid \d+\), "
        r"the host that signed last$",
        output,
        re.M,
    )
    assert kill is not None, output
    dead = kill.group(1)
    survivor = "kms-a" if dead == "kms-b" else "kms-b"
    last = contested[-1]
    assert last.group(3) == dead
    bound = re.search(
        rf"^--- demo:   {survivor} refused block [0-9A-F]{{10}} \(RemoteSignerError 2: "
        rf"double signing requested at height: {last.group(1)}\)$",
        output,
        re.M,
    )
    assert bound is not None, output
    after = [m for line in lines if (m := AFTER.match(line))]
    assert len(after) == 9, output
    assert {m.group(3) for m in after} == {survivor}
    assert [int(m.group(1)) for m in after] == [h for h in (4, 5, 6) for _ in range(3)]
    assert f"--- demo: signing continues after the kills: {survivor} signed 9 of 9" in output
    assert "--- demo: done: no conflicting signature" in lines
    print(f"\ndemo --ha: first signature {after[0].group(5)} ms after killing the etcd leader")


def test_demo_ha_without_etcd_is_one_line_and_exit_code_1(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kms", "demo", "--ha"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=demo_env(PATH=str(tmp_path)),  # no etcd here, and no ETCD_BINARY
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "error: tmkms demo --ha needs etcd: no `etcd` binary on PATH (Debian/Ubuntu: "
        "apt-get install etcd-server; or set ETCD_BINARY to its path)\n"
    )
    missing = tmp_path / "no-etcd-here"
    result = subprocess.run(
        [sys.executable, "-m", "kms", "demo", "--ha"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=demo_env(PATH=str(tmp_path), ETCD_BINARY=str(missing)),
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"error: tmkms demo --ha needs etcd: ETCD_BINARY={missing} is not executable\n"
    )
