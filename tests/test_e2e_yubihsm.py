"""End to end with a (simulated) YubiHSM 2, the way an operator sets one up and runs it.

`tmkms yubihsm simulator` stands in for yubihsm-connector and the device; `tmkms yubihsm
setup` and `keys generate` provision it; `tmkms start` then serves one chain from the HSM and
one from softsign, in one process, to simulated nodes. Every signature is checked over sign
bytes computed by the test's own encoder, against the key `keys list` printed. Then the
simulator is SIGKILLed and restarted under signing load: the HSM chain gets errors (never a
stall, never a conflicting signature) and resumes, and the softsign chain never notices.
"""

from __future__ import annotations

import base64
import re
import signal
import subprocess
from pathlib import Path

import trio
from nacl.signing import SigningKey, VerifyKey

from kms.keys import bech32_decode
from kms.sim.node import simulated_node
from kms.sim.process import terminate
from kms.transport.address import Address
from tests.support import REPO
from tests.support.chainload import Load, hsm_chain_load, soft_chain_load
from tests.support.kmsproc import TMKMS, free_tcp_port, run_tmkms, tmkms_env, tmkms_start

SIMULATOR = [*TMKMS, "yubihsm", "simulator"]
HSM_CHAIN, SOFT_CHAIN = "hsm-1", "soft-1"
AMINO_ED25519 = bytes.fromhex("1624de6420")
#: Generous but meaningful: a softsign signature is a fraction of a millisecond; the point is
#: that an HSM outage in the same process never makes it wait for the HSM.
SOFTSIGN_BOUND = 1.0
#: A node gives up on a request after 5 s; HSM errors must come well before that.
HSM_ERROR_BOUND = 4.0


def tmkms(*args: str | Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    result = run_tmkms(*args, stdin=stdin)
    assert result.returncode == 0, f"tmkms {args} failed:\n{result.stdout}\n{result.stderr}"
    return result


async def start_simulator(port: int, state: Path) -> trio.Process:
    """`tmkms yubihsm simulator --laddr tcp://127.0.0.1:PORT --state FILE`, once it listens."""
    process = await trio.lowlevel.open_process(
        [*SIMULATOR, "--laddr", f"tcp://127.0.0.1:{port}", "--state", str(state)],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env=tmkms_env(),
    )
    assert process.stdout is not None
    line = b""
    with trio.fail_after(20):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            assert chunk, "the simulator exited before listening"
            line += chunk
    assert f"listening on http://127.0.0.1:{port}" in line.decode()
    return process


def write_secret(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    path.chmod(0o600)
    return path


def provision(home: Path, port: int) -> str:
    """setup, keys generate, then keys list with the final tmkms.toml; returns the listed key.

    tmkms.toml authenticates as the validator role (auth key 4) through a password file,
    holding the password `setup` printed.
    """
    addr = f'adapter = {{ type = "http", addr = "tcp://127.0.0.1:{port}" }}'
    factory = home / "setup.toml"
    factory.write_text(
        f'[[providers.yubihsm]]\n{addr}\nauth = {{ key = 1, password = "password" }}\n'
    )
    printed = tmkms("yubihsm", "setup", "--yes", "-c", factory).stdout
    passwords = dict(re.findall(r"^- authkey 0x000\d \[(\w+)\]: +(\S+)$", printed, re.MULTILINE))
    operator = home / "operator.toml"
    operator.write_text(
        f'[[providers.yubihsm]]\n{addr}\nauth = {{ key = 2, password = "{passwords["operator"]}" }}\n'
    )
    generated = tmkms("yubihsm", "keys", "generate", "1", "-p", "cosmosvalconspub", "-c", operator)
    assert "Generated consensus (ed25519) key 0x0001: cosmosvalconspub1" in generated.stderr
    write_secret(home / "secrets" / "hsm-password", passwords["validator"] + "\n")
    listing = tmkms("yubihsm", "keys", "list", "-c", home / "tmkms.toml").stdout
    match = re.search(r"^- 0x0001: \[cons\] (cosmosvalconspub1\w+)$", listing, re.MULTILINE)
    assert match, listing
    assert match.group(1) in generated.stderr
    return match.group(1)


def write_config(home: Path, port: int, soft_key: SigningKey) -> dict[str, Address]:
    """tmkms.toml: one chain on the HSM (validator auth key), one on softsign."""
    write_secret(
        home / "secrets" / "kms-identity.key", base64.b64encode(bytes(SigningKey.generate()))
    )
    write_secret(home / "secrets" / "soft.key", base64.b64encode(bytes(soft_key)))
    (home / "state").mkdir(exist_ok=True)
    laddrs = {
        HSM_CHAIN: Address(scheme="unix", path=str(home / "hsm.sock")),
        SOFT_CHAIN: Address(scheme="tcp", host="127.0.0.1", port=free_tcp_port()),
    }
    bech32 = (
        'key_format = { type = "bech32", account_key_prefix = "cosmospub", '
        'consensus_key_prefix = "cosmosvalconspub" }'
    )
    text = f"""
[[chain]]
id = "{HSM_CHAIN}"
{bech32}
state_file = "{home}/state/{HSM_CHAIN}.json"

[[chain]]
id = "{SOFT_CHAIN}"
key_format = {{ type = "hex" }}
state_file = "{home}/state/{SOFT_CHAIN}.json"

[[providers.softsign]]
chain_ids = ["{SOFT_CHAIN}"]
path = "{home}/secrets/soft.key"

[[providers.yubihsm]]
adapter = {{ type = "http", addr = "tcp://127.0.0.1:{port}" }}
auth = {{ key = 4, password_file = "{home}/secrets/hsm-password" }}
keys = [{{ chain_ids = ["{HSM_CHAIN}"], key = 1 }}]
"""
    for chain, laddr in laddrs.items():
        text += f"""
[[validator]]
chain_id = "{chain}"
addr = "{laddr}"
secret_key = "{home}/secrets/kms-identity.key"
protocol_version = "v0.38"
"""
    (home / "tmkms.toml").write_text(text)
    return laddrs


async def test_yubihsm_and_softsign_chains_through_an_hsm_crash(tmp_path: Path) -> None:
    home = tmp_path / "kms"
    home.mkdir()
    port = free_tcp_port()
    state = tmp_path / "hsm-state.json"
    soft_key = SigningKey.generate()
    laddrs = write_config(home, port, soft_key)
    simulator = await start_simulator(port, state)
    try:
        listed = await trio.to_thread.run_sync(provision, home, port)
        prefix, amino = bech32_decode(listed)
        assert prefix == "cosmosvalconspub" and amino.startswith(AMINO_ED25519)
        hsm_key = VerifyKey(amino[len(AMINO_ED25519) :])
        hsm_load, soft_load = Load(hsm_key), Load(soft_key.verify_key)
        with trio.fail_after(120):
            async with (
                simulated_node(HSM_CHAIN, laddrs[HSM_CHAIN]) as hsm_node,
                simulated_node(SOFT_CHAIN, laddrs[SOFT_CHAIN]) as soft_node,
                tmkms_start(home / "tmkms.toml") as kms,
            ):
                await kms.wait_for(rf"\[keyring:yubihsm\] added consensus Ed25519 key: {listed}$")
                await kms.wait_for(
                    r"\[keyring:softsign\] added consensus Ed25519 key: [0-9A-F]{64}"
                )
                hsm_client, soft_client = await hsm_node.accept(), await soft_node.accept()
                assert (await hsm_client.pub_key()).data == bytes(hsm_key)
                stop = trio.Event()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(hsm_chain_load, hsm_client, hsm_load, stop, 1)
                    nursery.start_soon(soft_chain_load, soft_client, soft_load, stop, 2)
                    await trio.sleep(1.0)
                    before = hsm_load.signed_count
                    assert before > 5, "the HSM chain signs before the crash"
                    simulator.send_signal(signal.SIGKILL)
                    await simulator.wait()
                    await trio.sleep(2.0)  # the HSM is gone; both chains keep asking
                    during = hsm_load.signed_count
                    simulator = await start_simulator(port, state)
                    with trio.fail_after(20):
                        await hsm_load.wait_signed(during + 10)
                    stop.set()
                await kms.wait_for(r"YubiHSM is reachable again")
                await kms.wait_for(r"signed Precommit:[0-9A-F]{10} at h/r/s \d+/0/2")
                kms.send_signal(signal.SIGTERM)
                assert await kms.wait() == 0
    finally:
        await terminate(simulator)
    assert hsm_load.errors > 0, "the outage should have produced errors"
    assert hsm_load.refused_conflicts == hsm_load.errors
    assert all(len(blocks) == 1 for blocks in hsm_load.signed.values()), "conflicting signatures"
    assert max(hsm_load.latencies) < HSM_ERROR_BOUND
    assert soft_load.errors == 0 and soft_load.signed_count > 100
    assert max(soft_load.latencies) < SOFTSIGN_BOUND, max(soft_load.latencies)
    print(
        f"HSM chain: {hsm_load.signed_count} signed, {hsm_load.errors} errors, slowest reply "
        f"{max(hsm_load.latencies) * 1e3:.0f} ms; softsign: {soft_load.signed_count} signed, "
        f"slowest {max(soft_load.latencies) * 1e3:.1f} ms"
    )


def test_start_fails_clearly_when_the_hsm_is_unreachable(tmp_path: Path) -> None:
    """tmkms needs the public keys before serving: no HSM at start is a one-line error."""
    home = tmp_path / "kms"
    home.mkdir()
    write_config(home, free_tcp_port(), SigningKey.generate())
    write_secret(home / "secrets" / "hsm-password", "whatever\n")
    result = run_tmkms("start", "-c", home / "tmkms.toml")
    assert result.returncode == 6, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "error connecting to YubiHSM2" in errors[0], result.stderr
    assert "connection failed" in errors[0]
    assert not list((home / "state").glob("*.json")), "no state is written without keys"
