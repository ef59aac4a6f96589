"""Secrets: file modes whatever the umask, a warning for exposed keys, and no key material in
any output: not in a verbose run through signing, refusals, hostile peers and reconnects
(text and JSON logs), not in any error message.

Every secret the test knows is searched for in every encoding a careless line could carry
it in: base64 (padded, unpadded, URL-safe, and the seed's prefix inside base64(seed||pub)),
hex in both cases, and Python's bytes repr. Besides the two keys on disk, the test knows
the Secret Connection's session secrets too: it plays the node with an ephemeral key of
its own choosing and derives the shared secret and both frame keys from the KMS's
ephemeral public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
from pathlib import Path

import trio
from nacl.bindings import crypto_scalarmult
from nacl.signing import SigningKey

from kms.protocol.delimited import frame
from kms.protocol.messages import BlockId, SignVoteRequest, Timestamp, Vote
from kms.protocol.version import ProtocolVersion
from kms.sim.node import SignerClient, SimulatedNode
from kms.transport.address import Address
from kms.transport.handshake import derive_key_material
from kms.transport.stream import SecretStream
from tests.fault.kit import KmsHome, Ledger, ask, block, fault_counted, start_kms
from tests.support.files import mode
from tests.support.kmsproc import free_tcp_port, priv_validator_key_json, run_tmkms

CHAIN = "secret-1"


def encodings(secret: bytes) -> set[str]:
    """Every text form a secret could leak in."""
    b64 = base64.b64encode(secret).decode()
    forms = {
        b64,
        b64.rstrip("="),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        secret.hex(),
        secret.hex().upper(),
        repr(secret)[2:-1][:40],
    }
    if len(secret) >= 30:
        forms.add(b64[:40])  # the seed inside base64(seed || public key)
    return {form for form in forms if len(form) >= 16}


def leaks(text: str, secrets: dict[str, bytes]) -> list[str]:
    return [name for name, secret in secrets.items() for form in encodings(secret) if form in text]


def key_secrets(name: str, key: SigningKey) -> dict[str, bytes]:
    seed = bytes(key)
    return {
        f"{name} seed": seed,
        f"{name} seed||pub": seed + bytes(key.verify_key),
        f"{name} expanded": hashlib.sha512(seed).digest(),
    }


# ---------------------------------------------------------------- modes


def test_init_keygen_and_import_make_private_files_under_any_umask(tmp_path: Path) -> None:
    """umask 000 would make everything world-readable; the commands must not rely on it."""
    home = tmp_path / "kms"
    assert run_tmkms("init", home, umask=0).returncode == 0
    assert mode(home / "secrets") == 0o700
    assert mode(home / "state") == 0o700, "nobody else may rewind the double-sign state"
    assert mode(home / "tmkms.toml") == 0o600
    identity = home / "secrets" / "kms-identity.key"
    assert mode(identity) == 0o600
    consensus = tmp_path / "new" / "deeper" / "consensus.key"
    assert run_tmkms("softsign", "keygen", consensus, umask=0).returncode == 0
    assert mode(consensus) == 0o600
    assert mode(consensus.parent) == 0o700 and mode(consensus.parent.parent) == 0o700
    account = home / "secrets" / "account.key"
    assert run_tmkms("softsign", "keygen", "-t", "account", account, umask=0).returncode == 0
    assert mode(account) == 0o600
    key = SigningKey.generate()
    pvk = tmp_path / "priv_validator_key.json"
    pvk.write_text(priv_validator_key_json(key))
    imported = tmp_path / "imported" / "priv_validator_key"
    result = run_tmkms("softsign", "import", pvk, imported, umask=0)
    assert result.returncode == 0, result.stderr
    assert mode(imported) == 0o600 and mode(imported.parent) == 0o700
    assert base64.b64decode(imported.read_text()) == bytes(key)
    # an existing 0755 secrets folder is tightened by `init --force`
    (home / "secrets").chmod(0o755)
    assert run_tmkms("init", "--force", home, umask=0).returncode == 0
    assert mode(home / "secrets") == 0o700 and mode(identity) == 0o600
    fault_counted("secrets", files_checked=7)


async def test_keys_readable_by_others_are_warned_about(tmp_path: Path) -> None:
    home = KmsHome.create(tmp_path, chain_id=CHAIN)
    consensus = tmp_path / "secrets" / f"{CHAIN}.key"
    identity = tmp_path / "secrets" / "kms-identity.key"
    consensus.chmod(0o644)
    identity.chmod(0o640)
    config = home.write_config([f"tcp://127.0.0.1:{free_tcp_port()}"])
    with trio.fail_after(20):
        async with start_kms(config) as kms:
            await kms.wait_for(
                rf"WARN .*{consensus} is accessible by group or others \(mode 0644\)"
            )
            await kms.wait_for(rf"WARN .*{identity} is accessible by group or others \(mode 0640\)")
            assert kms.process.returncode is None  # a warning, as tmkms: still serving


# ---------------------------------------------------------------- no secret in any output


class Recording(trio.abc.Stream):
    """Passes bytes through and keeps the first bytes received (the KMS's ephemeral key)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.received = b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = bytes(await self.inner.receive_some(max_bytes))
        if len(self.received) < 35:
            self.received += data[: 35 - len(self.received)]
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


async def session_with_known_secrets(
    node: SimulatedNode, secrets: dict[str, bytes], index: int
) -> SignerClient:
    """Accept the KMS as the node, with an ephemeral key we choose; record the session keys."""
    assert node.listener is not None
    with trio.fail_after(10):
        raw = Recording(await node.listener.accept())
    ephemeral = hashlib.sha256(f"ephemeral {index}".encode()).digest()
    stream = SecretStream(raw, node.identity, ephemeral_private=ephemeral)
    with trio.fail_after(10):
        await stream.do_handshake()
    kms_ephemeral = raw.received[3:35]
    shared = crypto_scalarmult(ephemeral, kms_ephemeral)
    okm = derive_key_material(shared)
    secrets[f"session {index} shared secret"] = shared
    secrets[f"session {index} key a"] = okm[:32]
    secrets[f"session {index} key b"] = okm[32:]
    secrets[f"session {index} node ephemeral"] = ephemeral
    return SignerClient(stream=stream, chain_id=CHAIN, version=ProtocolVersion.V0_38)


async def verbose_run(tmp_path: Path, log_format: str) -> tuple[str, dict[str, bytes], int]:
    home = KmsHome.create(tmp_path, chain_id=CHAIN)
    secrets = {**key_secrets("consensus", home.consensus), **key_secrets("identity", home.identity)}
    node = SimulatedNode(chain_id=CHAIN)
    await node.listen(Address(scheme="tcp", host="127.0.0.1", port=0))
    assert node.address is not None
    config = home.write_config([str(node.address)])
    ledger = Ledger(CHAIN, home.verify_key)
    rng = random.Random(log_format)
    async with start_kms(config, "-v", "--log-format", log_format) as kms:
        for index in range(3):
            client = await session_with_known_secrets(node, secrets, index)
            await client.pub_key()
            for height in range(10 * index + 1, 10 * index + 4):
                chosen = block(rng)
                for step in (0, 1, 2):
                    assert await ask(client, ledger, step, (height, 0, chosen))
            # refusals and odd requests: double sign, wrong chain, negative round
            assert not await ask(client, ledger, 2, (height, 0, block(rng)))
            for request in (
                SignVoteRequest(Vote(1, height, 0, BlockId(), Timestamp(1, 0), b"", 0), "other"),
                SignVoteRequest(Vote(1, height + 1, -1, BlockId(), Timestamp(1, 0), b"", 0), CHAIN),
            ):
                reply = await client.request(request)
                assert getattr(reply, "error", None) is not None
            if index == 1:  # garbage: the KMS drops the link and dials again
                assert isinstance(client.stream, SecretStream)
                await client.stream.send_all(frame(b"\xff" * 50))
            await trio.aclose_forcefully(client.stream)
        await kms.wait_for("connected to validator successfully", count=3)
        await kms.wait_for("protocol error")
    await node.aclose()
    return "\n".join(kms.lines), secrets, ledger.signatures


async def test_no_secret_in_verbose_text_or_json_output(tmp_path: Path) -> None:
    checked = 0
    with trio.fail_after(60):
        for log_format in ("text", "json"):
            output, secrets, signatures = await verbose_run(tmp_path / log_format, log_format)
            assert "signed Precommit" in output and signatures == 27
            assert len(secrets) == 6 + 3 * 4
            assert leaks(output, secrets) == []
            checked += len(secrets)
    fault_counted("secrets", secrets_grepped=checked)


def test_the_leak_check_finds_a_leak() -> None:
    """The grep has teeth: each encoding of a secret inside a line is found."""
    key = SigningKey(bytes(range(32)))
    secrets = key_secrets("k", key)
    for form in encodings(bytes(key)):
        assert "k seed" in leaks(f"INFO tmkms: something {form} here", secrets), form
    expanded = base64.b64encode(bytes(key) + bytes(key.verify_key)).decode()
    assert "k seed" in leaks(f"x {expanded} y", secrets)
    assert not leaks("INFO tmkms: nothing to see", secrets)


def test_error_paths_never_echo_key_material(tmp_path: Path) -> None:
    """Bad key files and mismatched imports: the message names the file, never the bytes."""
    secret = os.urandom(33)  # one byte too many for a seed
    secrets = {"bad key": secret, "bad key prefix": secret[:32]}
    home = KmsHome.create(tmp_path, chain_id=CHAIN)
    bad = tmp_path / "secrets" / f"{CHAIN}.key"
    bad.write_text(base64.b64encode(secret).decode())
    config = home.write_config([f"tcp://127.0.0.1:{free_tcp_port()}"])
    outputs = []
    result = run_tmkms("start", "-v", "-c", config)
    assert result.returncode == 3, result.stderr
    assert str(bad) in result.stderr
    outputs.append(result.stdout + result.stderr)
    # an identity key that is not base64 at all, but holds a secret-looking hex string
    hex_secret = os.urandom(32)
    secrets["hex identity"] = hex_secret
    bad.write_text(base64.b64encode(bytes(home.consensus)).decode())
    (tmp_path / "secrets" / "kms-identity.key").write_text(hex_secret.hex() + "!")
    result = run_tmkms("start", "-v", "-c", config)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path}/secrets/kms-identity.key: key file is not valid base64"
    ], result.stderr  # one line, no traceback
    outputs.append(result.stdout + result.stderr)
    # a priv_validator_key.json whose public key does not match its private key
    other = SigningKey.generate()
    mismatched = json.loads(priv_validator_key_json(other))
    mismatched["pub_key"]["value"] = base64.b64encode(
        bytes(SigningKey.generate().verify_key)
    ).decode()
    pvk = tmp_path / "mismatched.json"
    pvk.write_text(json.dumps(mismatched))
    secrets.update(key_secrets("imported", other))
    result = run_tmkms("softsign", "import", pvk, tmp_path / "out.key")
    assert result.returncode != 0 and str(pvk) in result.stderr
    assert not (tmp_path / "out.key").exists()
    outputs.append(result.stdout + result.stderr)
    for text in outputs:
        assert leaks(text, secrets) == [], text
    fault_counted("secrets", error_paths=len(outputs))
