"""End to end with a real SoftHSM2 token, the way an operator sets one up and runs it.

`tmkms pkcs11 keys generate` and `keys import priv_validator_key.json` provision the token;
`tmkms start` then serves two chains from it and one from softsign, in one process, each to
its own simulated node. Every signature is checked over sign bytes computed by the test's
own encoder; the imported key's signatures must equal, byte for byte, those of the same seed
in software. Under signing load the token directory is moved away and back, then the module
is made to hang in a real call (the token's object file replaced by a FIFO nobody writes,
which SoftHSM blocks on when it re-initialises): the token's chains get refusals, never a
stall past the node's timeout and never a conflicting signature; they resume when the token
is back; the softsign chain never notices. Startup errors are one line with an exit code.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey, VerifyKey

from kms.sim.node import simulated_node
from kms.transport.address import Address
from tests.support.chainload import Load, hsm_chain_load, soft_chain_load
from tests.support.kmsproc import (
    KmsProcess,
    free_tcp_port,
    priv_validator_key_json,
    run_tmkms,
    tmkms_start,
)
from tests.support.softhsm import SoftHsm, private_softhsm, public_key_of, put_ed25519, put_p256

HSM_CHAIN, IMPORTED_CHAIN, SOFT_CHAIN = "hsm-1", "imported-1", "soft-1"
#: A softsign signature takes a fraction of a millisecond; the point is that a token outage
#: or hang in the same process never makes it wait.
SOFTSIGN_BOUND = 1.0
#: A node gives up on a request after 5 s; the token's refusals must come well before that.
HSM_ERROR_BOUND = 4.0


@pytest.fixture
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHsm]:
    yield from private_softhsm(tmp_path, monkeypatch)


def write_secret(path: Path, data: str) -> Path:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(data)
    path.chmod(0o600)
    return path


def write_config(hsm: SoftHsm, home: Path, soft_key: SigningKey) -> dict[str, Address]:
    """Two chains on the token (PIN in a file), one on softsign; a node address for each."""
    write_secret(
        home / "secrets" / "kms-identity.key",
        base64.b64encode(bytes(SigningKey.generate())).decode(),
    )
    write_secret(home / "secrets" / "soft.key", base64.b64encode(bytes(soft_key)).decode())
    write_secret(home / "secrets" / "pkcs11-pin", hsm.pin + "\n")
    (home / "state").mkdir(exist_ok=True)
    laddrs = {
        HSM_CHAIN: Address(scheme="unix", path=str(home / "hsm.sock")),
        IMPORTED_CHAIN: Address(scheme="unix", path=str(home / "imported.sock")),
        SOFT_CHAIN: Address(scheme="tcp", host="127.0.0.1", port=free_tcp_port()),
    }
    text = f"""
[[chain]]
id = "{HSM_CHAIN}"
key_format = {{ type = "bech32", account_key_prefix = "cosmospub", consensus_key_prefix = "cosmosvalconspub" }}
state_file = "{home}/state/{HSM_CHAIN}.json"

[[chain]]
id = "{IMPORTED_CHAIN}"
key_format = {{ type = "hex" }}
state_file = "{home}/state/{IMPORTED_CHAIN}.json"

[[chain]]
id = "{SOFT_CHAIN}"
key_format = {{ type = "hex" }}
state_file = "{home}/state/{SOFT_CHAIN}.json"

[[providers.softsign]]
chain_ids = ["{SOFT_CHAIN}"]
path = "{home}/secrets/soft.key"

[[providers.pkcs11]]
module = "{hsm.module}"
token_label = "{hsm.label}"
pin_file = "{home}/secrets/pkcs11-pin"
keys = [
    {{ chain_ids = ["{HSM_CHAIN}"], label = "hsm-key", type = "consensus" }},
    {{ chain_ids = ["{IMPORTED_CHAIN}"], label = "imported", id = "0102" }},
]
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


def provision(home: Path, seed_key: SigningKey) -> str:
    """`keys generate` and `keys import`, as an operator runs them; the generated key."""
    generated = run_tmkms(
        "pkcs11", "keys", "generate", "hsm-key", "-p", "cosmosvalconspub", "-c", home / "tmkms.toml"
    )
    assert generated.returncode == 0, generated.stderr
    key_file = write_secret(home / "priv_validator_key.json", priv_validator_key_json(seed_key))
    imported = run_tmkms(
        "pkcs11", "keys", "import", key_file, "imported", "--id", "0102", "-c", home / "tmkms.toml"
    )
    assert imported.returncode == 0, imported.stderr
    assert bytes(seed_key.verify_key).hex().upper() in imported.stderr
    return generated.stderr.split(": ")[-1].strip()


def token_object(tokens: Path) -> Path:
    (found,) = tokens.glob("*/token.object")
    return found


async def hang_the_module(hsm: SoftHsm, load: Load, kms: KmsProcess) -> tuple[bytes, Path]:
    """Take the token away until ``load`` sees it gone, then bring it back with token.object
    a FIFO: the provider's next repair re-initialises the module, and SoftHSM blocks opening
    the FIFO, until the KMS logs a request that ran out of time. Returns the file's bytes and
    a second name of the FIFO (to release the reader later)."""
    away = hsm.take_away()
    errors = load.errors
    with trio.fail_after(10):
        while load.errors == errors:  # noqa: ASYNC110 - polls another task's counter
            await trio.sleep(0.02)
    path = token_object(away)
    content = path.read_bytes()
    path.unlink()
    os.mkfifo(path, 0o600)
    handle = hsm.root / "fifo"
    os.link(path, handle)
    hsm.bring_back()
    await kms.wait_for(r"signing failed: .*the PKCS#11 module did not answer within 2 s")
    return content, handle


def unhang_the_module(hsm: SoftHsm, content: bytes, handle: Path) -> None:
    """Put the real file back, then give the reader stuck on the FIFO an end of file."""
    path = token_object(hsm.tokens)
    path.unlink()
    path.write_bytes(content)
    path.chmod(0o600)
    fd = os.open(handle, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO if nobody were stuck on it
    os.close(fd)
    handle.unlink()


async def test_token_and_softsign_chains_through_outages_and_a_hang(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    home = tmp_path / "kms"
    home.mkdir()
    soft_key, seed_key = SigningKey.generate(), SigningKey.generate()
    laddrs = write_config(softhsm, home, soft_key)
    listed = await trio.to_thread.run_sync(provision, home, seed_key)
    with softhsm.session() as session:
        hsm_public = public_key_of(session, "hsm-key")
    hsm_load = Load(VerifyKey(hsm_public))
    imported_load = Load(seed_key.verify_key, twin=seed_key)
    soft_load = Load(soft_key.verify_key)
    with trio.fail_after(150):
        async with (
            simulated_node(HSM_CHAIN, laddrs[HSM_CHAIN]) as hsm_node,
            simulated_node(IMPORTED_CHAIN, laddrs[IMPORTED_CHAIN]) as imported_node,
            simulated_node(SOFT_CHAIN, laddrs[SOFT_CHAIN]) as soft_node,
            tmkms_start(home / "tmkms.toml") as kms,
        ):
            await kms.wait_for(rf"\[keyring:pkcs11\] added consensus Ed25519 key: {listed}$")
            seed_hex = bytes(seed_key.verify_key).hex().upper()
            await kms.wait_for(rf"\[keyring:pkcs11\] added consensus Ed25519 key: {seed_hex}$")
            clients = {
                HSM_CHAIN: await hsm_node.accept(),
                IMPORTED_CHAIN: await imported_node.accept(),
                SOFT_CHAIN: await soft_node.accept(),
            }
            assert (await clients[HSM_CHAIN].pub_key()).data == hsm_public
            assert (await clients[IMPORTED_CHAIN].pub_key()).data == bytes(seed_key.verify_key)
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hsm_chain_load, clients[HSM_CHAIN], hsm_load, stop, 1)
                nursery.start_soon(hsm_chain_load, clients[IMPORTED_CHAIN], imported_load, stop, 2)
                nursery.start_soon(soft_chain_load, clients[SOFT_CHAIN], soft_load, stop, 3)
                await trio.sleep(1.0)
                assert hsm_load.signed_count > 5 and imported_load.signed_count > 5

                softhsm.take_away()  # the token is gone...
                await trio.sleep(2.0)
                errors_while_away = hsm_load.errors
                softhsm.bring_back()  # ...and back
                with trio.fail_after(20):
                    await hsm_load.wait_signed(hsm_load.signed_count + 10)
                    await imported_load.wait_signed(imported_load.signed_count + 10)
                await kms.wait_for(r"PKCS#11 token \"kms\" is reachable again")

                hung_at = hsm_load.errors + imported_load.errors
                content, fifo = await hang_the_module(softhsm, hsm_load, kms)  # a call hangs
                await trio.sleep(3.5)  # later requests are refused at once
                errors_while_hung = hsm_load.errors + imported_load.errors - hung_at
                unhang_the_module(softhsm, content, fifo)
                with trio.fail_after(20):
                    await hsm_load.wait_signed(hsm_load.signed_count + 10)
                    await imported_load.wait_signed(imported_load.signed_count + 10)
                stop.set()
            await kms.wait_for(r"signing failed: .*has not returned from a call for [2-9]\.\d s")
            kms.send_signal(signal.SIGTERM)
            assert await kms.wait() == 0
    assert errors_while_away > 0 and errors_while_hung > 0
    for load in (hsm_load, imported_load):
        assert load.refused_conflicts == load.errors
        assert all(len(blocks) == 1 for blocks in load.signed.values()), "conflicting signatures"
        assert max(load.latencies) < HSM_ERROR_BOUND, max(load.latencies)
    assert imported_load.identical >= imported_load.signed_count
    assert soft_load.errors == 0 and soft_load.signed_count > 200
    assert max(soft_load.latencies) < SOFTSIGN_BOUND, max(soft_load.latencies)
    assert all(softhsm.pin not in line for line in kms.lines)
    print(
        f"token chains: {hsm_load.signed_count} + {imported_load.signed_count} signed "
        f"({imported_load.identical} byte-for-byte with softsign), {hsm_load.errors} + "
        f"{imported_load.errors} refused, slowest reply "
        f"{max(hsm_load.latencies + imported_load.latencies) * 1e3:.0f} ms; softsign: "
        f"{soft_load.signed_count} signed, slowest {max(soft_load.latencies) * 1e3:.1f} ms"
    )


def start_error(home: Path) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "kms", "start", "-c", str(home / "tmkms.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stdout + result.stderr
    return result.returncode, errors[0] + result.stdout


def test_startup_errors_are_one_line_with_an_exit_code(softhsm: SoftHsm, tmp_path: Path) -> None:
    with softhsm.session() as session:
        put_ed25519(session, "hsm-key", b"\x01")
        put_ed25519(session, "imported", b"\x01\x02")
        put_p256(session, "p256", b"\x03")
        put_ed25519(session, "lonely", b"\x04", with_public=False)
    home = tmp_path / "kms"
    home.mkdir()
    write_config(softhsm, home, SigningKey.generate())
    good = (home / "tmkms.toml").read_text()
    cases = [
        ("/nonexistent/libvendor.so", softhsm.label, softhsm.pin, "hsm-key", 1, "/nonexistent/libvendor.so: no such file"),
        (str(home / "tmkms.toml"), softhsm.label, softhsm.pin, "hsm-key", 1, "is not a PKCS#11 library"),
        (str(softhsm.module), "elsewhere", softhsm.pin, "hsm-key", 6, 'PKCS#11 token "elsewhere" not found'),
        (str(softhsm.module), softhsm.label, "wrong-pin-1234567", "hsm-key", 1, "refused the PIN (CKR_PIN_INCORRECT); not retried"),
        (str(softhsm.module), softhsm.label, softhsm.pin, "absent", 3, 'label "absent": no such private key'),
        (str(softhsm.module), softhsm.label, softhsm.pin, "p256", 3, 'label "p256" is not an Ed25519 private key'),
        (str(softhsm.module), softhsm.label, softhsm.pin, "lonely", 3, 'label "lonely": the private key has no public-key object'),
    ]  # fmt: skip
    for module, token, pin, label, code, expected in cases:
        text = good.replace(f'module = "{softhsm.module}"', f'module = "{module}"')
        text = text.replace(f'token_label = "{softhsm.label}"', f'token_label = "{token}"')
        text = text.replace('label = "hsm-key"', f'label = "{label}"')
        (home / "tmkms.toml").write_text(text)
        write_secret(home / "secrets" / "pkcs11-pin", pin + "\n")
        returncode, output = start_error(home)
        assert returncode == code and expected in output, (code, output)
        assert softhsm.pin not in output and "wrong-pin-1234567" not in output
        assert not list((home / "state").glob("*.json")), "no state is written without keys"
