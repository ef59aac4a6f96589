"""The YubiHSM provider against the simulator, through the real ``yubihsm`` library.

Transports: the in-process backend object, HTTP (the yubihsm-connector look-alike) and the
fake USB bus; sessions expire on the simulator's manual clock; outages are a stopped
connector, an unplugged device, or a backend that refuses or hangs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import attrs
import pytest
import trio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nacl.signing import SigningKey, VerifyKey
from yubihsm import YubiHsm
from yubihsm.backends import YhsmBackend
from yubihsm.core import AuthSession
from yubihsm.defs import ALGORITHM, CAPABILITY
from yubihsm.exceptions import YubiHsmConnectionError
from yubihsm.objects import AsymmetricKey, AuthenticationKey

from kms.backoff import Backoff
from kms.config import (
    YubihsmAdapter,
    YubihsmAuth,
    YubihsmConfig,
    YubihsmKeyConfig,
    config_from_dict,
)
from kms.errors import KeyFileError, SignerError
from kms.keyring import build_registry
from kms.keys import format_public_key
from kms.ops import KmsMetrics
from kms.service import Service
from kms.sim.yubihsm import (
    ConnectorServer,
    ManualClock,
    SimulatorBackend,
    YubiHsmDevice,
    fake_usb_devices,
)
from providers import Signer
from providers.softsign import SECP256K1_ORDER, Ed25519SoftSigner, low_s_signature
from providers.yubihsm import (
    HsmConnection,
    HsmDevice,
    YubiHsmSigner,
    load_signers,
)
from providers.yubihsm.signers import (
    ED25519,
    SECP256K1,
    account_public_key,
    algorithm_of,
    read_public_key,
)
from providers.yubihsm.transport import BackendFactory, backend_factory, read_password

VALIDATOR_KEY = 4
VALIDATOR_PASSWORD = "validator-password"
ED_KEY, K256_KEY, P256_KEY, NO_SIGN_KEY = 1, 2, 3, 5
SIGNING = CAPABILITY.SIGN_EDDSA | CAPABILITY.SIGN_ECDSA
MESSAGE = b"\x70canonical vote sign bytes" + bytes(100)


def admin_session(device: YubiHsmDevice) -> AuthSession:
    return YubiHsm(SimulatorBackend(device)).create_session_derived(1, "password")


def provision(device: YubiHsmDevice) -> dict[int, bytes]:
    """Keys as `keys generate` makes them, and a validator auth key as `setup` makes it."""
    admin = admin_session(device)
    AuthenticationKey.put_derived(
        admin, VALIDATOR_KEY, "validator", 1, SIGNING, CAPABILITY.NONE, VALIDATOR_PASSWORD
    )
    for key_id, algorithm, caps in (
        (ED_KEY, ALGORITHM.EC_ED25519, CAPABILITY.SIGN_EDDSA),
        (K256_KEY, ALGORITHM.EC_K256, CAPABILITY.SIGN_ECDSA),
        (P256_KEY, ALGORITHM.EC_P256, CAPABILITY.SIGN_ECDSA),
        (NO_SIGN_KEY, ALGORITHM.EC_ED25519, CAPABILITY.EXPORTABLE_UNDER_WRAP),
    ):
        AsymmetricKey.generate(admin, key_id, f"key {key_id}", 1, caps, algorithm)
    public = {key_id: read_public_key(admin, key_id)[1] for key_id in (ED_KEY, K256_KEY)}
    admin.close()
    return public


@attrs.define
class Rig:
    """A provisioned simulated HSM reachable through one transport, with an off switch."""

    device: YubiHsmDevice
    clock: ManualClock
    transport: str
    open_backend: BackendFactory
    public: dict[int, bytes]
    down: Callable[[], None]
    up: Callable[[], None]
    adapter: dict[str, object] = attrs.field(factory=dict)

    def connection(self, password: str = VALIDATOR_PASSWORD) -> HsmConnection:
        return HsmConnection(self.open_backend, VALIDATOR_KEY, password)


class SwitchableBackend(YhsmBackend):
    """The in-process backend, with a power switch shared by every instance."""

    powered = True

    def __init__(self, device: YubiHsmDevice) -> None:
        self.inner = SimulatorBackend(device)

    def transceive(self, msg: bytes) -> bytes:
        if not SwitchableBackend.powered:
            raise YubiHsmConnectionError("backend switched off")
        return self.inner.transceive(msg)

    def close(self) -> None:
        self.inner.close()


def make_rig(transport: str, stack: ExitStack) -> Rig:
    clock = ManualClock()
    device = YubiHsmDevice(clock=clock)
    public = provision(device)
    if transport == "backend":
        SwitchableBackend.powered = True

        def switch(on: bool) -> Callable[[], None]:
            return lambda: setattr(SwitchableBackend, "powered", on)

        stack.callback(switch(True))
        factory: BackendFactory = lambda: SwitchableBackend(device)  # noqa: E731
        return Rig(device, clock, transport, factory, public, switch(False), switch(True))
    if transport == "http":
        server = stack.enter_context(ConnectorServer(device))
        adapter = YubihsmAdapter(type="http", addr=server.url, timeout_ms=1000)

        def restart() -> None:
            device.power_cycle()  # a restarted simulator process has no sessions
            server.start()

        return Rig(
            device,
            clock,
            transport,
            backend_factory(adapter),
            public,
            server.stop,
            restart,
            {"type": "http", "addr": server.url},
        )
    (fake,) = stack.enter_context(fake_usb_devices([device]))
    factory = backend_factory(YubihsmAdapter(type="usb", timeout_ms=1000), str(device.serial))
    return Rig(device, clock, transport, factory, public, fake.unplug, fake.replug, {"type": "usb"})


@pytest.fixture(params=["backend", "http", "usb"])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    with ExitStack() as stack:
        yield make_rig(request.param, stack)


@pytest.fixture(params=["http", "usb"])
def served_rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    """A rig reachable from tmkms.toml (the backend object has no adapter type)."""
    with ExitStack() as stack:
        yield make_rig(request.param, stack)


def yubihsm_config(rig: Rig, keys: list[dict[str, object]], **auth: object) -> dict[str, object]:
    """A tmkms.toml document (as parsed TOML) with one chain and the rig's HSM."""
    return {
        "chain": [
            {
                "id": "hsm-1",
                "key_format": {
                    "type": "bech32",
                    "account_key_prefix": "cosmospub",
                    "consensus_key_prefix": "cosmosvalconspub",
                },
            }
        ],
        "providers": {
            "yubihsm": [
                {
                    "adapter": rig.adapter,
                    "auth": auth or {"key": VALIDATOR_KEY, "password": VALIDATOR_PASSWORD},
                    "keys": keys,
                }
            ]
        },
    }


async def test_ed25519_and_secp256k1_signatures_verify(rig: Rig) -> None:
    device = HsmDevice(rig.connection())
    ed = YubiHsmSigner(device, ED_KEY, rig.public[ED_KEY], ED25519)
    signature = await ed.sign(MESSAGE)
    VerifyKey(rig.public[ED_KEY]).verify(MESSAGE, signature)
    compressed = account_public_key(ALGORITHM.EC_K256, rig.public[K256_KEY], K256_KEY)
    account = YubiHsmSigner(device, K256_KEY, compressed, SECP256K1)
    signature = await account.sign(MESSAGE)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    assert s <= SECP256K1_ORDER // 2
    point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), compressed)
    point.verify(encode_dss_signature(r, s), MESSAGE, ec.ECDSA(hashes.SHA256()))
    assert device.requests == 2 and device.errors == 0


@pytest.mark.parametrize("keepalive", [True, False])
async def test_keepalive_keeps_an_idle_session_open(rig: Rig, keepalive: bool) -> None:
    """60 s of the device's time without a signature: the keepalive spares a new session."""
    connection = rig.connection()
    device = HsmDevice(connection)
    signer = YubiHsmSigner(device, ED_KEY, rig.public[ED_KEY], ED25519)
    await signer.sign(b"one")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            if keepalive:  # pings after 0.05 s idle; the device's clock moves 10 s per 0.2 s
                nursery.start_soon(device.keep_alive, 0.05)
            for _ in range(6):
                await trio.sleep(0.2)
                rig.clock.advance(10)
            nursery.cancel_scope.cancel()
    VerifyKey(rig.public[ED_KEY]).verify(b"two", await signer.sign(b"two"))
    assert connection.stats.session_reopens == (0 if keepalive else 1)
    assert (device.requests > 2) == keepalive and device.errors == 0


async def test_session_expiry_reopens_the_session_transparently(rig: Rig) -> None:
    connection = rig.connection()
    signer = YubiHsmSigner(HsmDevice(connection), ED_KEY, rig.public[ED_KEY], ED25519)
    await signer.sign(b"one")
    rig.clock.advance(31)  # the device's 30 s idle timeout
    second = await signer.sign(b"two")
    VerifyKey(rig.public[ED_KEY]).verify(b"two", second)
    assert connection.stats.sessions_opened == 2
    assert connection.stats.session_reopens == 1
    assert connection.stats.reconnects == 0
    assert rig.device.session_count() == 1  # the expired one is gone, the new one is open


async def test_outage_fails_fast_then_reconnects(rig: Rig) -> None:
    connection = rig.connection()
    backoff = Backoff(initial=0.05, cap=0.2, jitter=0.0)
    device = HsmDevice(connection, deadline=1.5, backoff=backoff)
    transitions: list[tuple[bool, str | None]] = []
    device.gate.on_reachability = lambda up, why: transitions.append((up, why))
    signer = YubiHsmSigner(device, ED_KEY, rig.public[ED_KEY], ED25519)
    await signer.sign(b"before")
    rig.down()
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(SignerError, match="YubiHSM"):
            await signer.sign(b"during")
        assert time.monotonic() - started < 1.0, "a request during an outage must fail fast"
    assert not device.available
    assert device.errors == 3
    rig.up()
    signature = b""
    with trio.fail_after(5):
        while not signature:
            try:
                signature = await signer.sign(b"after")
            except SignerError:
                await trio.sleep(0.05)
    VerifyKey(rig.public[ED_KEY]).verify(b"after", signature)
    assert device.available
    assert [up for up, _ in transitions] == [False, True]
    assert transitions[0][1] and "YubiHSM" in transitions[0][1]
    assert connection.stats.connection_losses >= 1
    assert connection.stats.reconnects >= 1 or rig.transport == "backend"
    assert connection.stats.session_reopens >= 1


async def test_requests_fail_at_once_when_the_next_attempt_is_past_their_deadline() -> None:
    device_sim = YubiHsmDevice()
    public = provision(device_sim)
    SwitchableBackend.powered = False
    try:
        connection = HsmConnection(
            lambda: SwitchableBackend(device_sim), VALIDATOR_KEY, VALIDATOR_PASSWORD
        )
        backoff = Backoff(initial=5.0, cap=5.0, jitter=0.0)
        device = HsmDevice(connection, deadline=1.0, backoff=backoff)
        signer = YubiHsmSigner(device, ED_KEY, public[ED_KEY], ED25519)
        with pytest.raises(SignerError, match="backend switched off"):
            await signer.sign(b"first")  # tries, fails, next attempt in 5 s
        started = time.monotonic()
        with pytest.raises(SignerError, match=r"next reconnect attempt in [45]\.\d s"):
            await signer.sign(b"second")
        assert time.monotonic() - started < 0.05
        assert (device.fast_failures, device.errors, device.requests) == (1, 2, 2)
    finally:
        SwitchableBackend.powered = True


async def test_hung_hsm_answers_within_the_deadline_and_never_stalls_softsign() -> None:
    device_sim = YubiHsmDevice()
    public = provision(device_sim)
    release = threading.Event()
    hanging = threading.Event()

    class HangingBackend(SimulatorBackend):
        def transceive(self, msg: bytes) -> bytes:
            if hanging.is_set():
                release.wait(10)
            return super().transceive(msg)

    connection = HsmConnection(
        lambda: HangingBackend(device_sim), VALIDATOR_KEY, VALIDATOR_PASSWORD
    )
    device = HsmDevice(connection, deadline=0.5)
    hsm = YubiHsmSigner(device, ED_KEY, public[ED_KEY], ED25519)
    soft = Ed25519SoftSigner(SigningKey.generate())
    await hsm.sign(b"warm up")
    hanging.set()
    latencies: list[float] = []
    failures: list[float] = []

    async def hsm_requests() -> None:
        for _ in range(3):
            started = trio.current_time()
            with pytest.raises(SignerError):
                await hsm.sign(b"stuck")
            failures.append(trio.current_time() - started)

    async def softsign_requests() -> None:
        for n in range(100):
            started = trio.current_time()
            soft_sig = await soft.sign(n.to_bytes(4, "big"))
            latencies.append(trio.current_time() - started)
            assert len(soft_sig) == 64
            await trio.sleep(0.01)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hsm_requests)
            nursery.start_soon(softsign_requests)
    assert len(failures) == 3 and max(failures) < 0.9
    assert max(latencies) < 0.25  # well under the 0.5 s a stall behind the HSM would cost
    hanging.clear()
    release.set()
    with trio.fail_after(5):
        signature = await hsm.sign(b"unstuck")
    VerifyKey(public[ED_KEY]).verify(b"unstuck", signature)


async def test_the_device_runs_one_command_at_a_time() -> None:
    device_sim = YubiHsmDevice()
    public = provision(device_sim)
    active = 0
    peak = 0
    lock = threading.Lock()

    class CountingBackend(SimulatorBackend):
        def transceive(self, msg: bytes) -> bytes:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
            try:
                time.sleep(0.001)
                return super().transceive(msg)
            finally:
                with lock:
                    active -= 1

    connection = HsmConnection(
        lambda: CountingBackend(device_sim), VALIDATOR_KEY, VALIDATOR_PASSWORD
    )
    device = HsmDevice(connection)
    ed = YubiHsmSigner(device, ED_KEY, public[ED_KEY], ED25519)
    results: list[tuple[bytes, bytes]] = []

    async def sign(n: int) -> None:
        message = f"message {n}".encode()
        results.append((message, await ed.sign(message)))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for n in range(24):
                nursery.start_soon(sign, n)
    assert len(results) == 24 and peak == 1
    for message, signature in results:
        VerifyKey(public[ED_KEY]).verify(message, signature)


async def test_refused_commands_are_errors_not_outages() -> None:
    device_sim = YubiHsmDevice()
    public = provision(device_sim)
    connection = HsmConnection(
        lambda: SimulatorBackend(device_sim), VALIDATOR_KEY, VALIDATOR_PASSWORD
    )
    device = HsmDevice(connection)
    no_sign = YubiHsmSigner(device, NO_SIGN_KEY, public[ED_KEY], ED25519)
    with pytest.raises(SignerError, match="INSUFFICIENT_PERMISSIONS"):
        await no_sign.sign(b"x")
    missing = YubiHsmSigner(device, 77, public[ED_KEY], ED25519)
    with pytest.raises(SignerError, match="OBJECT_NOT_FOUND"):
        await missing.sign(b"x")
    assert device.available and device.errors == 2
    assert connection.stats.session_reopens == 0


@pytest.mark.parametrize("account", [False, True], ids=["ed25519", "secp256k1"])
async def test_a_signature_that_does_not_verify_is_never_returned(account: bool) -> None:
    device_sim = YubiHsmDevice()
    provision(device_sim)
    connection = HsmConnection(
        lambda: SimulatorBackend(device_sim), VALIDATOR_KEY, VALIDATOR_PASSWORD
    )
    device = HsmDevice(connection)
    if account:  # another secp256k1 key's public key
        other = ec.generate_private_key(ec.SECP256K1()).public_key()
        wrong_public = other.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
        signer = YubiHsmSigner(device, K256_KEY, wrong_public, SECP256K1)
        what = f"SIGN_ECDSA with YubiHSM key 0x{K256_KEY:04x}"
    else:
        wrong_public = bytes(SigningKey.generate().verify_key)
        signer = YubiHsmSigner(device, ED_KEY, wrong_public, ED25519)
        what = f"SIGN_EDDSA with YubiHSM key 0x{ED_KEY:04x}"
    with pytest.raises(SignerError, match=f"^{what}: the HSM returned an invalid signature$"):
        await signer.sign(b"x")
    assert device.errors == 1


def test_one_signer_class_told_its_algorithm() -> None:
    assert algorithm_of(ALGORITHM.EC_ED25519) is ED25519
    assert algorithm_of(ALGORITHM.EC_K256) is SECP256K1
    assert algorithm_of(ALGORITHM.EC_P256) is None
    device = HsmDevice(HsmConnection(lambda: SimulatorBackend(YubiHsmDevice()), 1, "x"))
    public = bytes(SigningKey.generate().verify_key)
    signer = YubiHsmSigner(device, 0x12, public, ED25519)
    assert isinstance(signer, Signer)
    assert (signer.key_type, signer.provider, signer.public_key) == ("ed25519", "yubihsm", public)
    assert repr(signer) == "YubiHsmSigner(ed25519, key_id=0x0012)"


async def test_secp256k1_signatures_are_always_low_s() -> None:
    device_sim = YubiHsmDevice()
    public = provision(device_sim)
    connection = HsmConnection(
        lambda: SimulatorBackend(device_sim), VALIDATOR_KEY, VALIDATOR_PASSWORD
    )
    compressed = account_public_key(ALGORITHM.EC_K256, public[K256_KEY], K256_KEY)
    signer = YubiHsmSigner(HsmDevice(connection), K256_KEY, compressed, SECP256K1)
    point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), compressed)
    high_from_device = 0
    for n in range(40):
        message = os.urandom(40) + bytes([n])
        raw = AsymmetricKey(connection.session(), K256_KEY).sign_ecdsa(message, hashes.SHA256())
        high_from_device += decode_dss_signature(raw)[1] > SECP256K1_ORDER // 2
        signature = await signer.sign(message)
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        assert 0 < s <= SECP256K1_ORDER // 2
        point.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    assert high_from_device > 0, "the device produced no high-S signature to normalise"


def test_low_s_signature_flips_high_s() -> None:
    high = SECP256K1_ORDER - 5
    der = encode_dss_signature(7, high)
    assert low_s_signature(der) == (7).to_bytes(32, "big") + (5).to_bytes(32, "big")
    assert low_s_signature(encode_dss_signature(7, 5)) == low_s_signature(der)
    with pytest.raises(ValueError):
        low_s_signature(encode_dss_signature(7, SECP256K1_ORDER))


def test_startup_registers_keys_and_logs_them(
    served_rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig = served_rig
    keys = [
        {"chain_ids": ["hsm-1"], "key": ED_KEY},
        {"chain_ids": ["hsm-1"], "key": K256_KEY, "type": "account"},
    ]
    config = config_from_dict(yubihsm_config(rig, keys), Path("tmkms.toml"), Path.cwd())
    assert config.yubihsm is not None
    with caplog.at_level(logging.INFO):
        registry = build_registry(config)
    consensus = registry.consensus("hsm-1")
    account = registry.account("hsm-1")
    assert consensus.provider == "yubihsm" and consensus.public_key == rig.public[ED_KEY]
    assert account is not None and account.key_type == "secp256k1"
    shown = format_public_key("ed25519", rig.public[ED_KEY], config.chain("hsm-1").key_format)
    assert f"[keyring:yubihsm] added consensus Ed25519 key: {shown}" in caplog.messages
    assert any(
        m.startswith("[keyring:yubihsm] added account secp256k1 key: cosmospub1")
        for m in caplog.messages
    )


async def test_startup_hands_its_counters_to_the_metrics_hook(served_rig: Rig) -> None:
    rig = served_rig
    doc = yubihsm_config(rig, [{"chain_ids": ["hsm-1"], "key": ED_KEY}])
    config = config_from_dict(doc, Path("tmkms.toml"), Path.cwd())
    assert config.yubihsm is not None
    metrics = KmsMetrics()
    registry = build_registry(config, metrics)
    signer = registry.consensus("hsm-1")
    await signer.sign(b"first")
    rig.clock.advance(31)
    await signer.sign(b"after expiry")
    hook = metrics.providers["yubihsm"]
    assert hook.session_reopens == 1 and hook.reachable
    rig.down()
    with pytest.raises(SignerError):
        await signer.sign(b"down")
    assert not hook.reachable and hook.last_error and "YubiHSM" in hook.last_error


def test_startup_refuses_a_key_of_the_wrong_type(served_rig: Rig) -> None:
    rig = served_rig
    for key_id, kind, expected in (
        (K256_KEY, "consensus", "0x0002 is not a valid Ed25519 signing key"),
        (P256_KEY, "account", "0x0003 is not a valid ECDSA signing key"),
    ):
        doc = yubihsm_config(rig, [{"chain_ids": ["hsm-1"], "key": key_id, "type": kind}])
        config = config_from_dict(doc, Path("tmkms.toml"), Path.cwd())
        assert config.yubihsm is not None
        with pytest.raises(KeyFileError, match=expected):
            build_registry(config)


def test_startup_fails_clearly_when_the_hsm_is_unreachable_or_the_password_wrong(
    served_rig: Rig,
) -> None:
    rig = served_rig
    keys = [{"chain_ids": ["hsm-1"], "key": ED_KEY}]
    wrong = yubihsm_config(rig, keys, key=VALIDATOR_KEY, password="not it")
    config = config_from_dict(wrong, Path("tmkms.toml"), Path.cwd())
    assert config.yubihsm is not None
    with pytest.raises(SignerError, match=r"error connecting to YubiHSM2: .*key 0x0004 failed"):
        build_registry(config)
    rig.down()
    config = config_from_dict(yubihsm_config(rig, keys), Path("tmkms.toml"), Path.cwd())
    assert config.yubihsm is not None
    with pytest.raises(SignerError, match="error connecting to YubiHSM2"):
        build_registry(config)


def test_configured_serial_number_must_match() -> None:
    device_sim = YubiHsmDevice(serial=4242)
    provision(device_sim)
    connection = HsmConnection(
        lambda: SimulatorBackend(device_sim), VALIDATOR_KEY, VALIDATOR_PASSWORD, serial=1111
    )
    with pytest.raises(SignerError, match="serial number 4242 does not match"):
        load_signers(connection, _config_with_key(ED_KEY))
    matching = HsmConnection(
        lambda: SimulatorBackend(device_sim), VALIDATOR_KEY, VALIDATOR_PASSWORD, serial=4242
    )
    ((signer, account),) = load_signers(matching, _config_with_key(ED_KEY))
    assert not account and signer.key_type == "ed25519"


def _config_with_key(key_id: int) -> YubihsmConfig:
    return YubihsmConfig(
        adapter=YubihsmAdapter(type="usb"),
        auth=YubihsmAuth(key=VALIDATOR_KEY, password=VALIDATOR_PASSWORD),
        keys=(YubihsmKeyConfig(chain_ids=("hsm-1",), key=key_id),),
    )


@pytest.mark.parametrize(
    ("content", "expected"), [("pw\n", "pw"), ("pw\r\n", "pw"), ("p w \n", "p w "), ("pw", "pw")]
)
def test_password_file_loses_only_its_trailing_newline(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "password"
    path.write_text(content)
    path.chmod(0o600)
    assert read_password(YubihsmAuth(key=1, password_file=path)) == expected


def test_password_file_problems_are_key_file_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(KeyFileError, match="empty"):
        read_password(YubihsmAuth(key=1, password_file=empty))
    with pytest.raises(KeyFileError, match="cannot read"):
        read_password(YubihsmAuth(key=1, password_file=tmp_path / "missing"))


def test_backend_urls_follow_the_adapter() -> None:
    from providers.yubihsm.transport import backend_url

    assert backend_url(YubihsmAdapter(type="http", addr="http://127.0.0.1:12345")) == (
        "http://127.0.0.1:12345"
    )
    assert backend_url(YubihsmAdapter(type="usb")) == "yhusb://"
    assert backend_url(YubihsmAdapter(type="usb"), "0012345678") == "yhusb://serial=12345678"


async def test_the_service_closes_its_hsm_session_when_it_stops(
    served_rig: Rig, tmp_path: Path
) -> None:
    """The HSM has 16 session slots: a stopped KMS gives its slot back, not after 30 s idle."""
    rig = served_rig
    doc = yubihsm_config(rig, [{"chain_ids": ["hsm-1"], "key": ED_KEY}])
    config = config_from_dict(doc, tmp_path / "tmkms.toml", tmp_path)
    service = await Service.open(config)
    assert len(rig.device.state.sessions) == 1
    assert len(service.registry.tasks()) == 1  # the session keepalive
    with trio.fail_after(5):
        await service.serve()  # no validators: done at once, the keepalive stopped too
    await service.aclose()
    assert len(rig.device.state.sessions) == 0
