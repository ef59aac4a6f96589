"""Validator addresses: tcp://[id@]host:port and unix:///path."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.transport.address import Address, parse_address

ID = "117c95c4fd7e636c38d303493302d2c271a39669"


def test_tcp_address() -> None:
    addr = parse_address("tcp://127.0.0.1:26659")
    assert addr == Address(scheme="tcp", host="127.0.0.1", port=26659)
    assert addr.peer_id is None
    assert str(addr) == "tcp://127.0.0.1:26659"


def test_tcp_address_with_peer_id_is_normalised_to_lower_case() -> None:
    addr = parse_address(f"tcp://{ID.upper()}@node.example:26659")
    assert addr.peer_id == ID
    assert addr.host == "node.example"
    assert str(addr) == f"tcp://{ID}@node.example:26659"


def test_ipv6_address() -> None:
    addr = parse_address("tcp://[::1]:26659")
    assert addr.host == "::1" and addr.port == 26659
    assert str(addr) == "tcp://[::1]:26659"


def test_unix_address() -> None:
    addr = parse_address("unix:///var/run/privval.sock")
    assert addr == Address(scheme="unix", path="/var/run/privval.sock")
    assert str(addr) == "unix:///var/run/privval.sock"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1:26659", "expected tcp://host:port"),
        ("unix://relative.sock", "must be absolute"),
        (f"noise://{ID}@127.0.0.1:26659", "noise:// is not supported yet"),
        ("http://127.0.0.1:80", "scheme must be tcp or unix"),
        ("tcp://abc@127.0.0.1:26659", "40 hex characters"),
        (f"tcp://{ID[:-1]}g@127.0.0.1:26659", "40 hex characters"),
        ("tcp://127.0.0.1", "missing :port"),
        ("tcp://:26659", "missing host"),
        ("tcp://127.0.0.1:0", "port must be 1-65535"),
        ("tcp://127.0.0.1:65536", "port must be 1-65535"),
        ("tcp://127.0.0.1:http", "port must be 1-65535"),
        ("tcp://[::1]26659", "malformed"),
        ("tcp://[::1", "malformed"),
    ],
)
def test_invalid_addresses_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_address(text)


@given(
    host=st.from_regex(r"[a-z][a-z0-9.-]{0,30}", fullmatch=True),
    port=st.integers(min_value=1, max_value=65535),
    peer_id=st.one_of(st.none(), st.from_regex(r"[0-9a-f]{40}", fullmatch=True)),
)
def test_str_round_trips(host: str, port: int, peer_id: str | None) -> None:
    addr = Address(scheme="tcp", host=host, port=port, peer_id=peer_id)
    assert parse_address(str(addr)) == addr
