"""The real ``yubihsm`` library against the simulator, over all three transports."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from nacl.signing import SigningKey, VerifyKey
from yubihsm import YubiHsm
from yubihsm.backends.http import HttpBackend
from yubihsm.core import AuthSession
from yubihsm.defs import ALGORITHM, CAPABILITY, ERROR, OBJECT, ORIGIN
from yubihsm.exceptions import YubiHsmAuthenticationError, YubiHsmDeviceError
from yubihsm.objects import AsymmetricKey, AuthenticationKey, WrapKey

from kms.sim.yubihsm import (
    ConnectorServer,
    ManualClock,
    SimulatorBackend,
    YubiHsmDevice,
    fake_usb_devices,
)

Connect = Callable[[YubiHsmDevice], YubiHsm]
SIGN_ONLY = CAPABILITY.SIGN_EDDSA
EXPORTABLE = CAPABILITY.SIGN_EDDSA | CAPABILITY.EXPORTABLE_UNDER_WRAP
WRAP_CAPS = CAPABILITY.EXPORT_WRAPPED | CAPABILITY.IMPORT_WRAPPED


@pytest.fixture(params=["backend", "http", "usb"])
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    """Open a YubiHsm on a device through the parametrised transport."""
    with ExitStack() as stack:

        def open_hsm(device: YubiHsmDevice) -> YubiHsm:
            if request.param == "backend":
                hsm = YubiHsm(SimulatorBackend(device))
            elif request.param == "http":
                server = stack.enter_context(ConnectorServer(device))
                # Same backend YubiHsm.connect() builds, with test-sized timeouts.
                hsm = YubiHsm(HttpBackend(server.url, (5, 20)))
            else:
                stack.enter_context(fake_usb_devices([device]))
                hsm = YubiHsm.connect(f"yhusb://serial={device.serial}")
            stack.callback(hsm.close)
            return hsm

        yield open_hsm


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def device(clock: ManualClock) -> YubiHsmDevice:
    return YubiHsmDevice(serial=4242, clock=clock)


@pytest.fixture
def session(connect: Connect, device: YubiHsmDevice) -> AuthSession:
    return connect(device).create_session_derived(1, "password")


def test_connect_reports_device_info(connect: Connect, device: YubiHsmDevice) -> None:
    info = connect(device).get_device_info()
    assert info.version == (2, 3, 1)
    assert info.serial == 4242
    assert ALGORITHM.EC_ED25519 in info.supported_algorithms
    assert ALGORITHM.EC_K256 in info.supported_algorithms


def test_default_auth_key_is_factory_state(session: AuthSession) -> None:
    (key,) = session.list_objects()
    info = key.get_info()
    assert (info.id, info.object_type) == (1, OBJECT.AUTHENTICATION_KEY)
    assert info.label == "DEFAULT AUTHKEY CHANGE THIS ASAP"
    assert info.domains == 0xFFFF
    assert info.algorithm == ALGORITHM.AES128_YUBICO_AUTHENTICATION
    for capability in (CAPABILITY.SIGN_EDDSA, CAPABILITY.RESET_DEVICE, CAPABILITY.EXPORT_WRAPPED):
        assert info.capabilities & capability
        assert info.delegated_capabilities & capability


def test_generate_ed25519_and_sign(session: AuthSession) -> None:
    key = AsymmetricKey.generate(session, 0, "consensus", 1, SIGN_ONLY, ALGORITHM.EC_ED25519)
    assert key.id != 0
    public = key.get_public_key()
    assert isinstance(public, ed25519.Ed25519PublicKey)
    message = os.urandom(100)
    signature = key.sign_eddsa(message)
    raw = public.public_bytes_raw()
    VerifyKey(raw).verify(message, signature)
    info = key.get_info()
    assert info.origin == ORIGIN.GENERATED
    assert (info.size, info.sequence, info.label) == (32, 0, "consensus")


def test_imported_ed25519_signs_like_software(session: AuthSession) -> None:
    seed = os.urandom(32)
    private = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    key = AsymmetricKey.put(session, 7, "imported", 1, SIGN_ONLY, private)
    assert key.id == 7
    assert key.get_info().origin == ORIGIN.IMPORTED
    software = SigningKey(seed)
    assert key.get_public_key().public_bytes_raw() == bytes(software.verify_key)
    for message in (b"", b"vote", os.urandom(1000)):
        assert key.sign_eddsa(message) == software.sign(message).signature


def test_secp256k1_import_generate_and_sign(session: AuthSession) -> None:
    private = ec.generate_private_key(ec.SECP256K1())
    caps = CAPABILITY.SIGN_ECDSA
    imported = AsymmetricKey.put(session, 20, "account", 1, caps, private)
    generated = AsymmetricKey.generate(session, 21, "account2", 1, caps, ALGORITHM.EC_K256)
    expected = private.public_key().public_numbers()
    assert imported.get_public_key().public_numbers() == expected
    for key in (imported, generated):
        public = key.get_public_key()
        assert isinstance(public.curve, ec.SECP256K1)
        message = os.urandom(64)
        der = key.sign_ecdsa(message, hashes.SHA256())
        public.verify(der, message, ec.ECDSA(hashes.SHA256()))
        assert der[0] == 0x30  # DER SEQUENCE, like the device


def test_list_objects_with_library_filters(session: AuthSession) -> None:
    a = AsymmetricKey.generate(session, 100, "alpha", 1, SIGN_ONLY, ALGORITHM.EC_ED25519)
    b = AsymmetricKey.generate(session, 101, "beta", 2, SIGN_ONLY, ALGORITHM.EC_ED25519)
    c = AsymmetricKey.generate(session, 102, "gamma", 2, CAPABILITY.SIGN_ECDSA, ALGORITHM.EC_K256)

    def ids(**filters: object) -> set[int]:
        return {o.id for o in session.list_objects(**filters)}  # type: ignore[arg-type]

    assert ids() == {1, a.id, b.id, c.id}
    assert ids(object_type=OBJECT.ASYMMETRIC_KEY) == {a.id, b.id, c.id}
    assert ids(object_id=101) == {b.id}
    assert ids(domains=2) == {1, b.id, c.id}
    assert ids(capabilities=CAPABILITY.SIGN_ECDSA) == {1, c.id}
    assert ids(algorithm=ALGORITHM.EC_ED25519) == {a.id, b.id}
    assert ids(label="beta") == {b.id}
    assert ids(label="beta", domains=1) == set()
    assert all(isinstance(o, AsymmetricKey) for o in session.list_objects(object_type=3))


def test_wrap_export_delete_import_round_trip(session: AuthSession) -> None:
    wrap_secret = os.urandom(32)
    wrap = WrapKey.put(
        session, 30, "wrap", 1, WRAP_CAPS, ALGORITHM.AES256_CCM_WRAP, CAPABILITY.ALL, wrap_secret
    )
    seed = os.urandom(32)
    private = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    key = AsymmetricKey.put(session, 31, "backup me", 1, EXPORTABLE, private)
    public = key.get_public_key().public_bytes_raw()

    blob = wrap.export_wrapped(key)
    # nonce (13) || AES-CCM ciphertext || tag (16), readable with the wrap key.
    plaintext = AESCCM(wrap_secret, tag_length=16).decrypt(blob[:13], blob[13:], None)
    assert plaintext[0] == ALGORITHM.AES256_CCM_WRAP
    assert plaintext[-32:] == seed
    assert len(plaintext) == 59 + 32

    key.delete()
    with pytest.raises(YubiHsmDeviceError) as missing:
        key.get_public_key()
    assert missing.value.code == ERROR.OBJECT_NOT_FOUND

    restored = wrap.import_wrapped(blob)
    assert isinstance(restored, AsymmetricKey)
    assert restored.id == 31
    assert restored.get_public_key().public_bytes_raw() == public
    info = restored.get_info()
    assert info.origin == ORIGIN.IMPORTED | ORIGIN.IMPORTED_WRAPPED
    assert (info.label, info.sequence, info.capabilities) == ("backup me", 1, EXPORTABLE)
    assert restored.sign_eddsa(b"m") == SigningKey(seed).sign(b"m").signature

    with pytest.raises(YubiHsmDeviceError) as exists:
        wrap.import_wrapped(blob)
    assert exists.value.code == ERROR.OBJECT_EXISTS


def test_wrong_password_is_detected_client_side(connect: Connect, device: YubiHsmDevice) -> None:
    hsm = connect(device)
    with pytest.raises(YubiHsmAuthenticationError):
        hsm.create_session_derived(1, "not the password")


def test_missing_key_is_object_not_found(session: AuthSession) -> None:
    with pytest.raises(YubiHsmDeviceError) as err:
        AsymmetricKey(session, 0x1234).sign_eddsa(b"x")
    assert err.value.code == ERROR.OBJECT_NOT_FOUND


def test_seventeenth_session_is_sessions_full(connect: Connect, device: YubiHsmDevice) -> None:
    hsm = connect(device)
    sessions = [hsm.create_session_derived(1, "password") for _ in range(16)]
    assert sorted(s.sid for s in sessions) == list(range(16))
    with pytest.raises(YubiHsmDeviceError) as err:
        hsm.create_session_derived(1, "password")
    assert err.value.code == ERROR.SESSIONS_FULL
    sessions[5].close()
    again = hsm.create_session_derived(1, "password")
    assert again.sid == 5


def test_idle_session_expires(session: AuthSession, clock: ManualClock) -> None:
    clock.advance(29)
    assert session.get_pseudo_random(4) != b""
    clock.advance(31)
    with pytest.raises(YubiHsmDeviceError) as err:
        session.get_pseudo_random(4)
    assert err.value.code == ERROR.INVALID_SESSION


def test_signing_needs_sign_eddsa_on_the_session_key(
    connect: Connect, device: YubiHsmDevice, session: AuthSession
) -> None:
    key = AsymmetricKey.generate(session, 40, "k", 1, SIGN_ONLY, ALGORITHM.EC_ED25519)
    no_sign = CAPABILITY.ALL & ~CAPABILITY.SIGN_EDDSA
    AuthenticationKey.put_derived(session, 2, "weak", 1, no_sign, CAPABILITY.ALL, "pw2")
    weak = connect(device).create_session_derived(2, "pw2")
    with pytest.raises(YubiHsmDeviceError) as err:
        key.with_session(weak).sign_eddsa(b"x")
    assert err.value.code == ERROR.INSUFFICIENT_PERMISSIONS
    assert key.sign_eddsa(b"x")  # the admin session still can


def test_exporting_a_non_exportable_key_is_refused(session: AuthSession) -> None:
    wrap = WrapKey.put(
        session, 50, "w", 1, WRAP_CAPS, ALGORITHM.AES128_CCM_WRAP, CAPABILITY.ALL, bytes(16)
    )
    key = AsymmetricKey.generate(session, 51, "k", 1, SIGN_ONLY, ALGORITHM.EC_ED25519)
    with pytest.raises(YubiHsmDeviceError) as err:
        wrap.export_wrapped(key)
    assert err.value.code == ERROR.INSUFFICIENT_PERMISSIONS


def test_close_session_then_reuse_is_invalid(session: AuthSession, device: YubiHsmDevice) -> None:
    assert device.session_count() == 1
    sid = session.sid
    session.close()  # the library verifies the R-MAC of the CLOSE_SESSION reply
    assert device.session_count() == 0
    assert sid not in device.state.sessions.slots


def test_reset_device_restores_factory_state(connect: Connect, device: YubiHsmDevice) -> None:
    session = connect(device).create_session_derived(1, "password")
    AsymmetricKey.generate(session, 60, "gone", 1, SIGN_ONLY, ALGORITHM.EC_ED25519)
    AuthenticationKey.put_derived(session, 2, "gone", 1, SIGN_ONLY, SIGN_ONLY, "x")
    session.reset_device()
    fresh = connect(device).create_session_derived(1, "password")
    assert [(o.id, o.object_type) for o in fresh.list_objects()] == [(1, OBJECT.AUTHENTICATION_KEY)]
    assert device.session_count() == 1
