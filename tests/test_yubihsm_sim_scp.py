"""The simulator's secure channel against the spec vectors, driven by raw frames only."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kms.sim.yubihsm import ManualClock, YubiHsmDevice, scp
from tests.support.vectors import vector_checked

SPEC = "yubihsm.md"
# Vectors from the YubiHSM spec section "The secure session".
K_ENC = "090b47dbed595654901dee1cc655e420"
K_MAC = "592fd483f759e29909a04c4505d2ce0a"
HOST_CHALLENGE = bytes(8)
CARD_CHALLENGE = bytes.fromhex("054d5631c9186f80")
CARD_CRYPTOGRAM = "3225ed8a3224f2cf"
AUTH_FRAME = "040011001ce7552e0f7976dbcc2198fd155c335a"
S_ENC = "680543bd3d52b50971b84be23569c13f"
S_MAC = "46451cfa3fc80c1ca60c944787f857e2"
S_RMAC = "1f0be34c417e9ef61a59a01047c8925d"
CHAIN_AFTER_AUTH = "cc2198fd155c335a8d4a2ac31baf438c"
ECHO_COMMAND = "050019008ce60ffefdd6394e4a4f91e53d2d391611d44f4bd54cb5ec"
ECHO_REPLY = "850019009d782bf2feb4e04f9ed9da6353c21c507072b3ff279ed02e"


def scripted_random(*chunks: bytes) -> Callable[[int], bytes]:
    """A random source that first returns ``chunks`` (length-checked), then os.urandom."""
    queue = list(chunks)

    def random_bytes(n: int) -> bytes:
        if queue:
            chunk = queue.pop(0)
            assert len(chunk) == n
            return chunk
        return os.urandom(n)

    return random_bytes


def create_frame(key_id: int, host_challenge: bytes) -> bytes:
    return struct.pack(">BHH", 0x03, 10, key_id) + host_challenge


def test_static_keys_from_password() -> None:
    key_enc, key_mac = scp.password_keys("password")
    assert key_enc.hex() == K_ENC
    assert key_mac.hex() == K_MAC
    vector_checked(SPEC)


def test_session_key_derivation() -> None:
    context = HOST_CHALLENGE + CARD_CHALLENGE
    keys = scp.SessionKeys.derive(bytes.fromhex(K_ENC), bytes.fromhex(K_MAC), context)
    assert keys.s_enc.hex() == S_ENC
    assert keys.s_mac.hex() == S_MAC
    assert keys.s_rmac.hex() == S_RMAC
    assert keys.card_cryptogram(context).hex() == CARD_CRYPTOGRAM
    vector_checked(SPEC, 4)


def test_device_reproduces_the_whole_exchange() -> None:
    device = YubiHsmDevice(random_bytes=scripted_random(CARD_CHALLENGE))
    reply = device.transceive(create_frame(1, HOST_CHALLENGE))
    assert reply == bytes.fromhex("83001100") + CARD_CHALLENGE + bytes.fromhex(CARD_CRYPTOGRAM)
    vector_checked(SPEC)

    assert device.transceive(bytes.fromhex(AUTH_FRAME)) == bytes.fromhex("840000")
    session = device.state.sessions.slots[0]
    assert session.chain.hex() == CHAIN_AFTER_AUTH
    assert session.counter == 1
    vector_checked(SPEC, 2)

    assert device.transceive(bytes.fromhex(ECHO_COMMAND)).hex() == ECHO_REPLY
    assert session.counter == 2
    vector_checked(SPEC, 2)


def test_echo_frames_are_exactly_what_our_scp_functions_build() -> None:
    keys = scp.SessionKeys(bytes.fromhex(S_ENC), bytes.fromhex(S_MAC), bytes.fromhex(S_RMAC))
    iv = scp.counter_iv(keys.s_enc, 1)
    body = scp.cbc_encrypt(keys.s_enc, iv, scp.pad(b"\x01\x00\x05hello"))
    outer = bytes([0x05, 0, 25, 0]) + body
    chain, mac = scp.chain_mac(keys.s_mac, bytes.fromhex(CHAIN_AFTER_AUTH), outer)
    assert (outer + mac).hex() == ECHO_COMMAND
    reply = bytes.fromhex(ECHO_REPLY)
    assert scp.chain_mac(keys.s_rmac, chain, reply[:-8])[1] == reply[-8:]
    assert scp.unpad(scp.cbc_decrypt(keys.s_enc, iv, reply[4:-8])) == b"\x81\x00\x05hello"


class RawClient:
    """A minimal host side built from the scp primitives, for malformed-frame tests."""

    def __init__(self, device: YubiHsmDevice, password: str = "password") -> None:
        self.device = device
        self.static = scp.password_keys(password)
        self.sid = -1
        self.keys: scp.SessionKeys | None = None
        self.chain = bytes(16)
        self.counter = 1

    def open(self, key_id: int = 1) -> None:
        challenge = os.urandom(8)
        reply = self.device.transceive(create_frame(key_id, challenge))
        assert reply[0] == 0x83, reply.hex()
        self.sid = reply[3]
        context = challenge + reply[4:12]
        self.keys = scp.SessionKeys.derive(*self.static, context)
        assert reply[12:20] == self.keys.card_cryptogram(context)
        frame = bytes([0x04, 0, 17, self.sid]) + self.keys.host_cryptogram(context)
        self.chain, mac = scp.chain_mac(self.keys.s_mac, bytes(16), frame)
        assert self.device.transceive(frame + mac) == b"\x84\x00\x00"

    def frame(self, inner: bytes, *, corrupt_mac: bool = False) -> tuple[bytes, bytes]:
        assert self.keys is not None
        iv = scp.counter_iv(self.keys.s_enc, self.counter)
        body = scp.cbc_encrypt(self.keys.s_enc, iv, scp.pad(inner))
        outer = struct.pack(">BHB", 0x05, 1 + len(body) + 8, self.sid) + body
        chain, mac = scp.chain_mac(self.keys.s_mac, self.chain, outer)
        if corrupt_mac:
            mac = bytes([mac[0] ^ 1]) + mac[1:]
        return outer + mac, chain

    def send(self, inner: bytes) -> bytes:
        assert self.keys is not None
        frame, chain = self.frame(inner)
        reply = self.device.transceive(frame)
        assert reply[0] == 0x85, reply.hex()
        assert scp.chain_mac(self.keys.s_rmac, chain, reply[:-8])[1] == reply[-8:]
        iv = scp.counter_iv(self.keys.s_enc, self.counter)
        self.chain, self.counter = chain, self.counter + 1
        return scp.unpad(scp.cbc_decrypt(self.keys.s_enc, iv, reply[4:-8]))


def error(code: int) -> bytes:
    return bytes([0x7F, 0, 1, code])


def test_plain_frames_and_errors() -> None:
    device = YubiHsmDevice()
    assert device.transceive(b"\x01\x00\x03abc") == b"\x81\x00\x03abc"
    assert device.transceive(b"\x01\x00\x05abc") == error(0x08)  # WRONG_LENGTH
    assert device.transceive(b"\x01") == error(0x02)  # INVALID_DATA
    assert device.transceive(b"\x48\x00\x00") == error(0x01)  # not a plain command
    assert device.transceive(create_frame(7, bytes(8))) == error(0x0B)  # no such auth key
    assert device.transceive(b"\x05\x00\x19" + bytes(25)) == error(0x03)  # no session 0
    assert device.transceive(b"\x06\x00\x01\x01") == error(0x02)  # no DEVICE_INFO page 1
    assert device.transceive(b"\x01\x08\x00" + bytes(2048)) == error(0x02)  # too long


def test_device_info_layout() -> None:
    reply = YubiHsmDevice(serial=0x01020304).transceive(b"\x06\x00\x00")
    assert reply[0] == 0x86
    assert reply[3:10] == bytes([2, 3, 1, 1, 2, 3, 4])
    assert reply[10] == 62
    assert 46 in reply[12:] and 15 in reply[12:]


def test_wrong_host_cryptogram_fails_and_frees_the_slot() -> None:
    device = YubiHsmDevice()
    reply = device.transceive(create_frame(1, bytes(8)))
    sid = reply[3]
    bad = bytes([0x04, 0, 17, sid]) + bytes(16)
    assert device.transceive(bad) == error(0x04)
    assert device.session_count() == 0
    assert device.transceive(bad) == error(0x03)


def test_bad_session_mac_is_rejected_and_ends_the_session() -> None:
    device = YubiHsmDevice()
    client = RawClient(device)
    client.open()
    assert client.send(b"\x01\x00\x02hi") == b"\x81\x00\x02hi"
    frame, _ = client.frame(b"\x01\x00\x02hi", corrupt_mac=True)
    assert device.transceive(frame) == error(0x04)
    frame, _ = client.frame(b"\x01\x00\x02hi")
    assert device.transceive(frame) == error(0x03)


def test_replayed_frame_fails_the_mac_chain() -> None:
    device = YubiHsmDevice()
    client = RawClient(device)
    client.open()
    frame, _ = client.frame(b"\x01\x00\x01x")
    assert device.transceive(frame)[0] == 0x85
    assert device.transceive(frame) == error(0x04)


def test_inner_errors_are_encrypted_and_keep_the_session() -> None:
    device = YubiHsmDevice()
    client = RawClient(device)
    client.open()
    assert client.send(b"\x7e\x00\x00") == error(0x01)  # unknown command
    assert client.send(b"\x54\x00\x05\x00\x01") == error(0x08)  # length field lies
    assert client.send(b"\x54\x00\x02\x12\x34") == error(0x0B)  # no such key
    assert client.send(b"\x01\x00\x01z") == b"\x81\x00\x01z"


def test_half_open_and_idle_sessions_expire_after_30_seconds() -> None:
    clock = ManualClock()
    device = YubiHsmDevice(clock=clock)
    client = RawClient(device)
    client.open()
    half_open = device.transceive(create_frame(1, bytes(8)))[3]
    assert device.session_count() == 2
    clock.advance(29.5)
    assert client.send(b"\x01\x00\x01a") == b"\x81\x00\x01a"  # refreshes the idle timer
    clock.advance(1.0)
    assert device.session_count() == 1  # the half-open one went after 30.5 s idle
    assert device.transceive(bytes([0x04, 0, 17, half_open]) + bytes(16)) == error(0x03)
    clock.advance(30.01)
    frame, _ = client.frame(b"\x01\x00\x01a")
    assert device.transceive(frame) == error(0x03)


@pytest.mark.parametrize("bad", [b"\x80" + bytes(14), b"abc" + bytes(13), bytes(16)])
def test_unpad_rejects_malformed_padding(bad: bytes) -> None:
    with pytest.raises(scp.PaddingError):
        scp.unpad(bad)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 31])
def test_pad_round_trip(size: int) -> None:
    data = os.urandom(size)
    padded = scp.pad(data)
    assert len(padded) % 16 == 0 and len(padded) > size
    assert scp.unpad(padded) == data


def well_formed(reply: bytes) -> bool:
    """A reply frame: success (cmd | 0x80) with a consistent length, or ``7f 00 01 code``."""
    if len(reply) < 3 or int.from_bytes(reply[1:3], "big") != len(reply) - 3:
        return False
    return reply[0] & 0x80 != 0 or (reply[0] == 0x7F and len(reply) == 4)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80) | st.tuples(st.sampled_from([1, 3, 4, 5, 6]), st.binary(max_size=40)))
def test_any_plain_frame_gets_a_well_formed_reply(data: bytes | tuple[int, bytes]) -> None:
    if isinstance(data, tuple):
        command, payload = data
        data = bytes([command]) + len(payload).to_bytes(2, "big") + payload
    reply = YubiHsmDevice().transceive(data)
    assert well_formed(reply)


FUZZ_COMMANDS = [c for c in range(0x41, 0x6D)] + [0x01, 0x06, 0x7F]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(FUZZ_COMMANDS),
    st.binary(max_size=120),
    st.booleans(),
)
def test_any_inner_frame_gets_a_well_formed_reply_and_keeps_the_session(
    command: int, payload: bytes, lie_about_length: bool
) -> None:
    device = YubiHsmDevice()
    client = RawClient(device)
    client.open()
    length = len(payload) + (1 if lie_about_length else 0)
    reply = client.send(bytes([command]) + length.to_bytes(2, "big") + payload)
    assert well_formed(reply)
    if lie_about_length:
        assert reply == error(0x08)
    assert client.send(b"\x01\x00\x02ok") == b"\x81\x00\x02ok"
