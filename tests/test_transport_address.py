"""Every address the KMS parses: validators' tcp://[id@]host:port and unix:///path, and
listen addresses (host:port, tcp://host:port)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms.transport.address import (
    Address,
    format_host_port,
    parse_address,
    parse_listen_address,
    parse_listen_url,
    split_host_port,
)

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


# -- listen addresses: host:port (the metrics listener) and tcp://host:port (the simulator) --


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9181", ("127.0.0.1", 9181)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:80", ("localhost", 80)),
        ("::1:80", ("::1", 80)),  # unbracketed IPv6: the last colon is the port's
    ],
)
def test_listen_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize(
    "text",
    ["9181", "host:", ":9181", "host:99999", "host:port", "host:-1", "host:\u00b9", "[::1]0"],
)
def test_invalid_listen_address(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected host:port such as 127\.0\.0\.1:9181, got "):
        parse_listen_address(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp://127.0.0.1:12345", ("127.0.0.1", 12345)),
        ("http://localhost:0", ("localhost", 0)),
        ("http://localhost:8/", ("localhost", 8)),
        ("tcp://[::1]:9", ("::1", 9)),
    ],
)
def test_listen_url(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_url(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1:1", "unix:///x", "tcp://host", "tcp://h:99999"])
def test_invalid_listen_url(text: str) -> None:
    with pytest.raises(ValueError, match="expected tcp://host:port, got "):
        parse_listen_url(text)


def test_split_host_port_reasons_and_format_round_trip() -> None:
    assert split_host_port("h:0") == ("h", 0)
    with pytest.raises(ValueError, match=r"^port must be 1-65535$"):
        split_host_port("h:0", lowest_port=1)
    for host, port in [("127.0.0.1", 1), ("::1", 65535), ("node.example", 0)]:
        assert split_host_port(format_host_port(host, port)) == (host, port)
    assert format_host_port("::1", 5) == "[::1]:5"
