"""What the PKCS#11 provider adds to each signature, over a bare python-pkcs11 call.

Run from the repository root: ``python benchmarks/bench_pkcs11.py [--quick]``. Needs
SoftHSM2 (Debian's ``softhsm2``) and python-pkcs11; a private token is made in a temporary
directory (``SOFTHSM2_CONF`` points at it).

Measured in the same run, on the same token and key, alternating:

- bare: ``key.sign(message, mechanism=CKM_EDDSA)`` of python-pkcs11 on an open session, in
  the benchmark's own thread (what the module and the binding take);
- provider: ``await Pkcs11Ed25519Signer.sign(message)`` from trio: the hand-off to the one
  PKCS#11 worker thread and back, the process-wide lock, the self-repairing connection, and
  the check of the signature against the public key.

``provider - bare`` is the provider's own overhead per signature (target: at most 0.15 ms),
back to back and after an idle gap (see :func:`overhead`).
Then the real `tmkms start` serves one chain from a PKCS#11 key and one from a softsign key,
each to its own simulated node over Secret Connection, and the single-chain latency is
timed at the node's socket as in ``python -m benchmarks``: p50 of each, and their ratio.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pkcs11
import trio
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.types import SignMixin

from benchmarks.harness import Signing, percentile
from kms.config.model import Pkcs11Config, Pkcs11KeyConfig
from kms.sim.node import SimulatedNode
from kms.transport.address import Address
from providers.pkcs11 import PKCS11_LOCK, open_pkcs11
from providers.pkcs11.objects import ED25519_PARAMS
from providers.pkcs11.signer import Pkcs11Ed25519Signer

MESSAGE = bytes(range(120))  # about the size of canonical vote sign bytes
MODULE = Path(os.environ.get("SOFTHSM2_MODULE", "/usr/lib/softhsm/libsofthsm2.so"))
PIN = "bench-pin-1234"
LABEL = "bench-key"


class NoHealth:
    def set_reachable(self, reachable: bool, reason: str | None = None) -> None:
        """Ignored."""

    def count_session_reopens_from(self, source: Callable[[], int]) -> None:
        """Ignored."""


def make_token(root: Path) -> None:
    """A private SoftHSM2 token ``kms`` with one Ed25519 key pair, made with python-pkcs11."""
    tokens = root / "tokens"
    tokens.mkdir(mode=0o700)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "kms", "--so-pin", "so-5678",
         "--pin", PIN],
        check=True,
        capture_output=True,
    )  # fmt: skip
    with PKCS11_LOCK:
        library = pkcs11.lib(os.path.realpath(MODULE))
        session = library.get_token(token_label="kms").open(rw=True, user_pin=PIN)
        session.generate_keypair(
            KeyType.EC_EDWARDS,
            store=True,
            label=LABEL,
            id=b"\x01",
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            public_template={Attribute.EC_PARAMS: ED25519_PARAMS},
            private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
        )
        session.close()
        library.finalize()


def config() -> Pkcs11Config:
    key = Pkcs11KeyConfig(chain_ids=("bench-1",), label=LABEL)
    return Pkcs11Config(module=MODULE, token_label="kms", pin=PIN, keys=(key,))


def overhead(rounds: int) -> dict[str, float]:
    """Median seconds of one signature, bare and through the provider, two ways.

    Back to back: batches of 50 bare calls and 50 provider calls alternate (the worker
    thread stays awake, as under load). After an idle gap: each call follows 1 ms of sleep,
    as a lone chain's requests do, so the worker thread and the trio thread both wake up
    from idle for it (on this virtual machine, each wake-up is tens of microseconds).
    Medians of single calls keep other processes' bursts on a shared machine out of it.
    """
    provider = open_pkcs11(config(), NoHealth())
    signer = provider.keys[0].signer
    assert isinstance(signer, Pkcs11Ed25519Signer)
    with PKCS11_LOCK:  # the provider holds the login: this session sees the key without it
        token = pkcs11.lib(os.path.realpath(MODULE)).get_token(token_label="kms")
        session = token.open()
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=LABEL)
    assert isinstance(key, SignMixin)

    def bare() -> float:
        with PKCS11_LOCK:
            started = time.perf_counter()
            key.sign(MESSAGE, mechanism=Mechanism.EDDSA)
            return time.perf_counter() - started

    async def through() -> float:
        started = time.perf_counter()
        await signer.sign(MESSAGE)
        return time.perf_counter() - started

    async def run() -> dict[str, list[float]]:
        samples: dict[str, list[float]] = {name: [] for name in NAMES}
        for batch in range(rounds // 50):
            keep = batch >= 2  # two batches warm up
            for _ in range(50):
                took = bare()
                if keep:
                    samples["bare"].append(took)
            for _ in range(50):
                took = await through()
                if keep:
                    samples["provider"].append(took)
        for _ in range(rounds // 5):
            await trio.sleep(0.001)
            samples["bare_idle"].append(bare())
            await trio.sleep(0.001)
            samples["provider_idle"].append(await through())
        return samples

    samples = trio.run(run)
    with PKCS11_LOCK:
        session.close()
    assert provider.close is not None
    provider.close()
    return {name: statistics.median(values) for name, values in samples.items()}


NAMES = ("bare", "provider", "bare_idle", "provider_idle")


def write_config(home: Path, nodes: dict[str, SimulatedNode]) -> Path:
    import base64

    from nacl.signing import SigningKey

    secrets = home / "secrets"
    secrets.mkdir(mode=0o700)
    for name in ("identity", "soft"):
        path = secrets / f"{name}.key"
        path.write_text(base64.b64encode(bytes(SigningKey.generate())).decode() + "\n")
        path.chmod(0o600)
    text = f"""
[[chain]]
id = "pkcs11-1"
key_format = {{ type = "hex" }}
state_file = "{home}/pkcs11-1.json"

[[chain]]
id = "soft-1"
key_format = {{ type = "hex" }}
state_file = "{home}/soft-1.json"

[[providers.softsign]]
chain_ids = ["soft-1"]
path = "{secrets}/soft.key"

[[providers.pkcs11]]
module = "{MODULE}"
token_label = "kms"
pin = "{PIN}"
keys = [{{ chain_ids = ["pkcs11-1"], label = "{LABEL}" }}]
"""
    for chain, node in nodes.items():
        text += f"""
[[validator]]
chain_id = "{chain}"
addr = "{node.address}"
secret_key = "{secrets}/identity.key"
"""
    path = home / "tmkms.toml"
    path.write_text(text)
    return path


async def single_chain_latency(home: Path, heights: int) -> dict[str, float]:
    """p50/p99 of sequential requests on each chain (one chain at a time), in ms."""
    nodes = {chain: SimulatedNode(chain_id=chain) for chain in ("pkcs11-1", "soft-1")}
    for node in nodes.values():
        await node.listen(Address(scheme="tcp", host="127.0.0.1", port=0))
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "kms", "start", "-c", str(write_config(home, nodes))],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples: dict[str, list[float]] = {}
    try:
        with trio.fail_after(30):
            clients = {chain: await node.accept() for chain, node in nodes.items()}
            for client in clients.values():
                await client.pub_key()
        signings = {chain: Signing(client) for chain, client in clients.items()}
        for _ in range(3):  # alternate rounds so both chains see the same machine
            for chain, signing in signings.items():
                for _ in range(20):
                    await signing.one_height()  # warm up
                signing.latencies.clear()
                for _ in range(heights // 3):
                    await signing.one_height()
                assert signing.errors == 0, f"{chain}: {signing.errors} errors"
                key = chain.split("-")[0]
                samples.setdefault(f"{key}_p50", []).append(statistics.median(signing.latencies))
                samples.setdefault(f"{key}_p99", []).append(percentile(signing.latencies, 0.99))
    finally:
        process.terminate()
        await process.wait()
        for node in nodes.values():
            await node.aclose()
    return {name: statistics.median(values) * 1e3 for name, values in samples.items()}


def main(argv: list[str]) -> int:
    """Print the overhead and the single-chain latencies; ``--quick`` runs fewer iterations."""
    quick = "--quick" in argv
    rounds, heights = (1000, 150) if quick else (10000, 1500)
    with tempfile.TemporaryDirectory(prefix="kms-bench-pkcs11-") as tmp:
        root = Path(tmp)
        make_token(root)
        m = overhead(rounds)
        for label, suffix in (("back to back", ""), ("after 1 ms idle", "_idle")):
            added = m["provider" + suffix] - m["bare" + suffix]
            print(
                f"{label:>15}: bare python-pkcs11 sign {m['bare' + suffix] * 1e3:.3f} ms, "
                f"provider {m['provider' + suffix] * 1e3:.3f} ms: overhead "
                f"{added * 1e3:.3f} ms per signature"
            )
        home = root / "kms"
        home.mkdir()
        lat = trio.run(single_chain_latency, home, heights)
        print(
            f"single chain, {heights} heights each: PKCS#11 key p50 {lat['pkcs11_p50']:.3f} ms "
            f"(p99 {lat['pkcs11_p99']:.3f}), softsign p50 {lat['soft_p50']:.3f} ms "
            f"(p99 {lat['soft_p99']:.3f}): p50 ratio {lat['pkcs11_p50'] / lat['soft_p50']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
