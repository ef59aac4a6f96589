"""Device rules the simulator enforces: domains, capabilities, delegation, ids, log, options."""

from __future__ import annotations

import itertools
import os
import struct
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from nacl.signing import SigningKey
from yubihsm import YubiHsm
from yubihsm.core import AuthSession
from yubihsm.defs import ALGORITHM, AUDIT, CAPABILITY, COMMAND, ERROR, OBJECT, ORIGIN
from yubihsm.exceptions import YubiHsmDeviceError
from yubihsm.objects import AsymmetricKey, AuthenticationKey, Opaque, WrapKey

from kms.sim.yubihsm import SimulatorBackend, YubiHsmDevice

SIGN = CAPABILITY.SIGN_EDDSA
ED = ALGORITHM.EC_ED25519
WRAP_CAPS = CAPABILITY.EXPORT_WRAPPED | CAPABILITY.IMPORT_WRAPPED
ALL = CAPABILITY.ALL


@pytest.fixture
def device() -> YubiHsmDevice:
    return YubiHsmDevice()


def login(device: YubiHsmDevice, key_id: int = 1, password: str = "password") -> AuthSession:
    return YubiHsm(SimulatorBackend(device)).create_session_derived(key_id, password)


@pytest.fixture
def admin(device: YubiHsmDevice) -> AuthSession:
    return login(device)


def device_error(code: ERROR) -> pytest.RaisesExc[YubiHsmDeviceError]:
    return pytest.raises(YubiHsmDeviceError, check=lambda e: e.code == code)


def test_object_info_is_66_bytes_with_every_field(admin: AuthSession) -> None:
    caps = SIGN | CAPABILITY.EXPORTABLE_UNDER_WRAP
    AsymmetricKey.generate(admin, 0x0102, "lbl", 0x0304, caps, ED)
    raw = admin.send_secure_cmd(COMMAND.GET_OBJECT_INFO, struct.pack(">HB", 0x0102, 3))
    assert len(raw) == 66
    fields = struct.unpack(">QHHHBBBB40sQ", raw)
    assert fields == (int(caps), 0x0102, 32, 0x0304, 3, 46, 0, 1, b"lbl".ljust(40, b"\0"), 0)


def test_device_picks_ids_and_rejects_duplicates(admin: AuthSession) -> None:
    picked = {AsymmetricKey.generate(admin, 0, "", 1, SIGN, ED).id for _ in range(5)}
    assert len(picked) == 5 and 0 not in picked
    AsymmetricKey.generate(admin, 9, "", 1, SIGN, ED)
    with device_error(ERROR.OBJECT_EXISTS):
        AsymmetricKey.generate(admin, 9, "", 1, SIGN, ED)
    # Same id, different type is a different object.
    Opaque.put(admin, 9, "", 1, CAPABILITY.NONE, ALGORITHM.OPAQUE_DATA, b"x")


def test_sequence_counts_earlier_incarnations(admin: AuthSession) -> None:
    for expected in range(3):
        key = AsymmetricKey.generate(admin, 77, "", 1, SIGN, ED)
        assert key.get_info().sequence == expected
        (listed,) = admin.list_objects(object_id=77)
        assert listed._seq == expected
        key.delete()


def test_domains_hide_objects(device: YubiHsmDevice, admin: AuthSession) -> None:
    key = AsymmetricKey.generate(admin, 5, "d1", 0x0001, SIGN, ED)
    AsymmetricKey.generate(admin, 6, "d2", 0x0002, SIGN, ED)
    AuthenticationKey.put_derived(admin, 2, "d2 only", 0x0002, CAPABILITY.ALL, CAPABILITY.ALL, "p")
    other = login(device, 2, "p")
    assert {o.id for o in other.list_objects(object_type=OBJECT.ASYMMETRIC_KEY)} == {6}
    with device_error(ERROR.OBJECT_NOT_FOUND):
        key.with_session(other).get_public_key()
    with device_error(ERROR.INSUFFICIENT_PERMISSIONS):
        AsymmetricKey.generate(other, 8, "", 0x0003, SIGN, ED)  # domain 1 is not its own
    with device_error(ERROR.INVALID_DATA):
        AsymmetricKey.generate(other, 8, "", 0, SIGN, ED)


def test_target_key_needs_the_capability_too(admin: AuthSession) -> None:
    key = AsymmetricKey.generate(admin, 5, "", 1, CAPABILITY.SIGN_ECDSA, ED)
    with device_error(ERROR.INSUFFICIENT_PERMISSIONS):
        key.sign_eddsa(b"x")


def test_new_objects_must_fit_delegated_capabilities(
    device: YubiHsmDevice, admin: AuthSession
) -> None:
    caps = CAPABILITY.GENERATE_ASYMMETRIC_KEY | CAPABILITY.PUT_AUTHENTICATION_KEY
    AuthenticationKey.put_derived(admin, 3, "operator", 1, caps, SIGN, "op")
    operator = login(device, 3, "op")
    AsymmetricKey.generate(operator, 10, "", 1, SIGN, ED)
    with device_error(ERROR.INSUFFICIENT_PERMISSIONS):
        AsymmetricKey.generate(operator, 11, "", 1, SIGN | CAPABILITY.EXPORTABLE_UNDER_WRAP, ED)
    with device_error(ERROR.INSUFFICIENT_PERMISSIONS):  # delegated must fit too
        AuthenticationKey.put_derived(operator, 4, "", 1, SIGN, CAPABILITY.SIGN_ECDSA, "x")
    with device_error(ERROR.INSUFFICIENT_PERMISSIONS):  # no PUT_ASYMMETRIC on the session
        AsymmetricKey.put(operator, 12, "", 1, SIGN, ed25519.Ed25519PrivateKey.generate())


def test_delete_needs_the_type_specific_capability(
    device: YubiHsmDevice, admin: AuthSession
) -> None:
    key = AsymmetricKey.generate(admin, 5, "", 1, SIGN, ED)
    no_delete = CAPABILITY.ALL & ~CAPABILITY.DELETE_ASYMMETRIC_KEY
    AuthenticationKey.put_derived(admin, 2, "", 1, no_delete, CAPABILITY.ALL, "p")
    with device_error(ERROR.INSUFFICIENT_PERMISSIONS):
        key.with_session(login(device, 2, "p")).delete()
    key.delete()
    with device_error(ERROR.OBJECT_NOT_FOUND):
        key.delete()


def test_invalid_key_material_is_rejected(admin: AuthSession) -> None:
    header = struct.pack(">H40sHQB", 0, b"", 1, SIGN, ED)
    with device_error(ERROR.INVALID_DATA):
        admin.send_secure_cmd(COMMAND.PUT_ASYMMETRIC_KEY, header + bytes(31))
    k256 = struct.pack(">H40sHQB", 0, b"", 1, CAPABILITY.SIGN_ECDSA, ALGORITHM.EC_K256)
    with device_error(ERROR.INVALID_DATA):  # zero is not a valid scalar
        admin.send_secure_cmd(COMMAND.PUT_ASYMMETRIC_KEY, k256 + bytes(32))
    with device_error(ERROR.INVALID_DATA):  # RSA is not simulated
        AsymmetricKey.generate(admin, 0, "", 1, SIGN, ALGORITHM.RSA_2048)
    with device_error(ERROR.WRONG_LENGTH):
        admin.send_secure_cmd(COMMAND.GENERATE_ASYMMETRIC_KEY, header[:-1])


def test_opaque_objects(admin: AuthSession) -> None:
    blob = os.urandom(300)
    obj = Opaque.put(admin, 0, "cert", 1, CAPABILITY.NONE, ALGORITHM.OPAQUE_DATA, blob)
    assert obj.get() == blob
    assert obj.get_info().size == 300


def test_change_own_authentication_key(device: YubiHsmDevice, admin: AuthSession) -> None:
    AuthenticationKey(admin, 1).change_password("new password")
    login(device, 1, "new password")
    AuthenticationKey.put_derived(admin, 2, "", 1, SIGN, SIGN, "x")
    with device_error(ERROR.INVALID_ID):  # only the session's own key can be changed
        AuthenticationKey(admin, 2).change_password("steal")
    login(device, 2, "x")


def test_ecdsa_signatures_are_der_over_the_prehash(admin: AuthSession) -> None:
    private = ec.generate_private_key(ec.SECP256K1())
    key = AsymmetricKey.put(admin, 3, "", 1, CAPABILITY.SIGN_ECDSA, private)
    digest = os.urandom(32)
    der = admin.send_secure_cmd(COMMAND.SIGN_ECDSA, struct.pack(">H", 3) + digest)
    private.public_key().verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    with device_error(ERROR.INVALID_DATA):
        admin.send_secure_cmd(COMMAND.SIGN_ECDSA, struct.pack(">H", 3) + bytes(31))
    with device_error(ERROR.INSUFFICIENT_PERMISSIONS):
        key.sign_eddsa(b"ed25519 op on an ECDSA-only key")


def test_wrap_key_delegation_limits_import_and_export(admin: AuthSession) -> None:
    narrow = WrapKey.put(
        admin, 1, "narrow", 1, WRAP_CAPS, ALGORITHM.AES128_CCM_WRAP, SIGN, bytes(16)
    )
    key = AsymmetricKey.generate(admin, 5, "", 1, SIGN | CAPABILITY.EXPORTABLE_UNDER_WRAP, ED)
    with device_error(ERROR.INSUFFICIENT_PERMISSIONS):
        narrow.export_wrapped(key)
    no_export = WrapKey.put(
        admin,
        2,
        "",
        1,
        CAPABILITY.IMPORT_WRAPPED,
        ALGORITHM.AES128_CCM_WRAP,
        CAPABILITY.ALL,
        b"k" * 16,
    )
    with device_error(ERROR.INSUFFICIENT_PERMISSIONS):
        no_export.export_wrapped(key)
    with device_error(ERROR.INVALID_DATA):  # tampered blob fails the CCM tag
        no_export.import_wrapped(bytes(13) + os.urandom(80))


def yhwrap_blob(key: bytes, algorithm: int, header: tuple[object, ...], body: bytes) -> bytes:
    """Build a wrapped object offline the way Yubico's yubihsm-wrap tool lays it out."""
    plaintext = struct.pack(">BQHHHBBBB40s", algorithm, *header) + body
    nonce = os.urandom(13)
    return nonce + AESCCM(key, tag_length=16).encrypt(nonce, plaintext, None)


def test_import_of_an_offline_wrapped_ed25519_key(admin: AuthSession) -> None:
    secret = os.urandom(24)
    wrap = WrapKey.put(
        admin, 3, "", 1, WRAP_CAPS, ALGORITHM.AES192_CCM_WRAP, CAPABILITY.ALL, secret
    )
    seed = os.urandom(32)
    header = (int(SIGN), 0x0A0B, 32, 1, 3, ED, 0, 2, b"offline")
    imported = wrap.import_wrapped(yhwrap_blob(secret, ALGORITHM.AES192_CCM_WRAP, header, seed))
    assert (imported.id, imported.object_type) == (0x0A0B, OBJECT.ASYMMETRIC_KEY)
    assert isinstance(imported, AsymmetricKey)
    assert imported.sign_eddsa(b"z") == SigningKey(seed).sign(b"z").signature
    assert imported.get_info().origin == ORIGIN.IMPORTED | ORIGIN.IMPORTED_WRAPPED
    bad_length = (int(SIGN), 0x0A0C, 31, 1, 3, ED, 0, 2, b"")
    with device_error(ERROR.INVALID_DATA):
        wrap.import_wrapped(yhwrap_blob(secret, ALGORITHM.AES192_CCM_WRAP, bad_length, seed))


def test_ec_and_auth_keys_round_trip_under_wrap(device: YubiHsmDevice, admin: AuthSession) -> None:
    secret = os.urandom(32)
    wrap = WrapKey.put(
        admin, 4, "", 1, WRAP_CAPS, ALGORITHM.AES256_CCM_WRAP, CAPABILITY.ALL, secret
    )
    caps = CAPABILITY.SIGN_ECDSA | CAPABILITY.EXPORTABLE_UNDER_WRAP
    private = ec.generate_private_key(ec.SECP256K1())
    key = AsymmetricKey.put(admin, 5, "", 1, caps, private)
    blob = wrap.export_wrapped(key)
    body = AESCCM(secret, tag_length=16).decrypt(blob[:13], blob[13:], None)[59:]
    numbers = private.private_numbers()
    assert body == b"".join(
        n.to_bytes(32, "big")
        for n in (numbers.private_value, numbers.public_numbers.x, numbers.public_numbers.y)
    )
    key.delete()
    assert wrap.import_wrapped(blob).get_public_key().public_numbers() == numbers.public_numbers

    auth_caps = CAPABILITY.GET_PSEUDO_RANDOM | CAPABILITY.EXPORTABLE_UNDER_WRAP
    auth = AuthenticationKey.put_derived(admin, 6, "", 1, auth_caps, SIGN, "pw6")
    blob = wrap.export_wrapped(auth)
    auth.delete()
    wrap.import_wrapped(blob)
    assert login(device, 6, "pw6").get_pseudo_random(8)


def test_storage_info_tracks_objects(admin: AuthSession) -> None:
    def info() -> tuple[int, ...]:
        return struct.unpack(">HHHHH", admin.send_secure_cmd(COMMAND.GET_STORAGE_INFO))

    total, free, pages, free_pages, page_size = info()
    assert (total, free, pages, page_size) == (256, 255, 1024, 126)
    Opaque.put(admin, 1, "", 1, CAPABILITY.NONE, ALGORITHM.OPAQUE_DATA, bytes(300))
    assert info()[1] == 254 and info()[3] == free_pages - 3


def test_pseudo_random_echo_and_blink(device: YubiHsmDevice, admin: AuthSession) -> None:
    assert len(admin.get_pseudo_random(2028)) == 2028
    with device_error(ERROR.INVALID_DATA):
        admin.get_pseudo_random(2029)
    assert admin.send_secure_cmd(COMMAND.ECHO, b"ping") == b"ping"
    assert admin.send_secure_cmd(COMMAND.BLINK_DEVICE, b"\x05") == b""
    assert device.state.blink_until > device.state.clock()


def test_log_entries_chain_and_record_commands(admin: AuthSession) -> None:
    key = AsymmetricKey.generate(admin, 5, "", 1, SIGN, ED)
    key.sign_eddsa(b"logged")
    logs = admin.get_log_entries()
    assert (logs.n_boot, logs.n_auth) == (0, 0)
    entries = logs.entries
    assert [e.number for e in entries] == list(range(1, len(entries) + 1))
    assert all(b.validate(a) for a, b in itertools.pairwise(entries))
    sign = [e for e in entries if e.command == COMMAND.SIGN_EDDSA][-1]
    assert (sign.session_key, sign.target_key, sign.result) == (1, 5, 0x80 | COMMAND.SIGN_EDDSA)
    admin.set_log_index(entries[-1].number)
    again = admin.get_log_entries(previous_entry=entries[-1])  # the library checks the chain
    assert [e.command for e in again.entries] == [COMMAND.GET_LOG_ENTRIES, COMMAND.SET_LOG_INDEX]
    assert again.entries[0].number == entries[-1].number + 1


def test_forced_audit_fills_the_log_until_released(admin: AuthSession) -> None:
    admin.set_force_audit(AUDIT.ON)
    assert admin.get_force_audit() == AUDIT.ON
    with device_error(ERROR.LOG_FULL):
        for _ in range(70):
            admin.get_pseudo_random(1)
    entries = admin.get_log_entries().entries
    assert len(entries) == 62
    assert entries[0].number == 1  # nothing was overwritten, not even by the refusals
    assert admin.get_log_entries().entries == entries
    admin.set_log_index(entries[-1].number)
    assert len(admin.get_pseudo_random(1)) == 1


def test_command_audit_option(admin: AuthSession) -> None:
    admin.set_command_audit({COMMAND.ECHO: AUDIT.OFF})
    assert admin.get_command_audit()[COMMAND.ECHO] == AUDIT.OFF
    before = admin.get_log_entries().entries[-1].number
    admin.send_secure_cmd(COMMAND.ECHO, b"unlogged")
    after = admin.get_log_entries().entries
    assert all(e.command != COMMAND.ECHO for e in after if e.number > before)
    with device_error(ERROR.INVALID_DATA):
        admin.put_option(0x77, b"\x00")  # type: ignore[arg-type]
    assert admin.get_enabled_algorithms()[ALGORITHM.EC_ED25519] is True


def test_device_serialises_concurrent_sessions(device: YubiHsmDevice, admin: AuthSession) -> None:
    seed = os.urandom(32)
    AsymmetricKey.put(admin, 9, "", 1, SIGN, ed25519.Ed25519PrivateKey.from_private_bytes(seed))
    expected = SigningKey(seed)
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            session = login(device)
            key = AsymmetricKey(session, 9)
            for n in range(20):
                message = f"{index}:{n}".encode()
                assert key.sign_eddsa(message) == expected.sign(message).signature
            session.close()
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures
    assert device.session_count() == 1


def test_state_file_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "hsm.json"
    first = YubiHsmDevice(serial=99, state_path=path)
    session = login(first)
    seed = os.urandom(32)
    AsymmetricKey.put(
        session, 3, "kept", 1, SIGN, ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    )
    AsymmetricKey.generate(session, 4, "gone", 1, SIGN, ED).delete()
    session.set_force_audit(AUDIT.ON)

    second = YubiHsmDevice(state_path=path)
    assert second.serial == 99
    again = login(second)
    assert AsymmetricKey(again, 3).sign_eddsa(b"m") == SigningKey(seed).sign(b"m").signature
    assert again.get_force_audit() == AUDIT.ON
    assert AsymmetricKey.generate(again, 4, "", 1, SIGN, ED).get_info().sequence == 1
    assert {o.id for o in again.list_objects()} == {1, 3, 4}
    path.write_text("{}")
    with pytest.raises(ValueError, match="not a YubiHSM simulator state"):
        YubiHsmDevice(state_path=path)
    path.write_text('{"format": "kms-yubihsm-simulator", "version": 1, "serial": 5}')
    with pytest.raises(ValueError, match="unusable simulator state"):
        YubiHsmDevice(state_path=path)


def test_sign_delay_is_spent_holding_the_device_lock(device: YubiHsmDevice) -> None:
    slow = YubiHsmDevice(sign_delay=0.05)
    sessions = [login(slow) for _ in range(2)]
    AsymmetricKey.generate(sessions[0], 3, "", 1, SIGN, ED)
    started = time.monotonic()
    threads = [
        threading.Thread(target=AsymmetricKey(s, 3).sign_eddsa, args=(b"m",)) for s in sessions
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert time.monotonic() - started >= 0.1  # one device, one signature at a time


def test_firmware_from_2_4_is_refused() -> None:
    with pytest.raises(ValueError, match="not simulated"):
        YubiHsmDevice(firmware=(2, 4, 0))
