"""The etcd client's sans-IO parts: gateway JSON, error classification, endpoints, settings.

The reply bodies below are verbatim what etcd 3.4.23's JSON gateway answered on this
machine (captured with curl), so the parsing is checked against the real shapes: omitted
defaults, int64 as strings, nested txns.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kms.config.etcd import EtcdSettings
from kms.errors import ConfigError
from kms.ha.client import EtcdClient, Secret, encode
from kms.ha.errors import EtcdCause, EtcdError, HaDoubleSignRefused, HaRefused, RefusalCause
from kms.ha.settings import open_client, read_password
from kms.ha.wire import (
    KeyValue,
    RangeResult,
    TxnResult,
    b64,
    classify_error,
    parse_json,
    parse_range,
    parse_status,
    parse_txn,
    unb64,
)
from kms.transport.address import parse_endpoint

HEADER = '"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"3","raft_term":"2"}'
RANGE_EMPTY = "{" + HEADER + "}"
RANGE_ONE = (
    "{" + HEADER + ',"kvs":[{"key":"L3Rta21zL3g=","create_revision":"2","mod_revision":"2",'
    '"version":"1","value":"aGVsbG8="}],"count":"1"}'
)
TXN_WON = (
    "{" + HEADER + ',"succeeded":true,"responses":[{"response_put":{"header":{"revision":"3"}}}]}'
)
TXN_LOST = (
    "{" + HEADER + ',"responses":[{"response_range":{"header":{"revision":"2"},"kvs":[{"key":'
    '"L3Rta21zL3g=","create_revision":"2","mod_revision":"2","version":"1","value":"aGVsbG8="}],'
    '"count":"1"}}]}'
)
TXN_NESTED = (
    "{" + HEADER + ',"succeeded":true,"responses":[{"response_txn":{"header":{},"responses":'
    '[{"response_range":{"header":{"revision":"2"},"kvs":[{"key":"L3Rta21zL3g=",'
    '"create_revision":"2","mod_revision":"2","version":"1","value":"aGVsbG8="}],"count":"1"}}]}},'
    '{"response_txn":{"header":{},"succeeded":true,"responses":[{"response_put":{"header":'
    '{"revision":"3"}}}]}}]}'
)
STATUS_NO_LEADER = (
    "{" + HEADER + ',"version":"3.4.23","dbSize":"20480","raftIndex":"11","raftTerm":"3",'
    '"raftAppliedIndex":"11","errors":["etcdserver: no leader"],"dbSizeInUse":"16384"}'
)


def test_base64_round_trip_and_refusal() -> None:
    assert unb64(b64(b"/tmkms/\x00\xff"), "key") == b"/tmkms/\x00\xff"
    with pytest.raises(ValueError, match="key is not valid base64"):
        unb64("not base64!", "key")
    with pytest.raises(ValueError, match="not a base64 string"):
        unb64(12, "key")


def test_range_defaults_when_nothing_found() -> None:
    result = parse_range(parse_json(RANGE_EMPTY.encode()))
    assert result == RangeResult(revision=3, kvs=())


def test_range_with_a_key() -> None:
    result = parse_range(parse_json(RANGE_ONE.encode()))
    assert result.kvs == (KeyValue(b"/tmkms/x", b"hello", 2, 2, 1),)


def test_txn_succeeded_and_failed_shapes() -> None:
    won = parse_txn(parse_json(TXN_WON.encode()))
    assert won == TxnResult(True, 3, (3,))
    lost = parse_txn(parse_json(TXN_LOST.encode()))
    assert lost.succeeded is False  # omitted by the gateway
    assert isinstance(lost.responses[0], RangeResult)
    assert lost.responses[0].kvs[0].mod_revision == 2


def test_nested_txn_results_are_per_op() -> None:
    outer = parse_txn(parse_json(TXN_NESTED.encode()))
    assert outer.succeeded
    first, second = outer.responses
    assert isinstance(first, TxnResult) and isinstance(second, TxnResult)
    assert first.succeeded is False and first.revision == 0  # nested header is {}
    assert second.succeeded is True and second.responses == (3,)


def test_status_without_leader() -> None:
    status = parse_status(parse_json(STATUS_NO_LEADER.encode()))
    assert status.leader == 0
    assert status.raft_term == 3
    assert status.errors == ("etcdserver: no leader",)


@pytest.mark.parametrize(
    "body",
    [
        b"<html>hi</html>",
        b"[]",
        b'{"no":"header"}',
        b'{"header":[]}',
    ],
)
def test_a_reply_that_is_not_etcd_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_json(body)


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"header": {}, "succeeded": "yes"}, "succeeded"),
        ({"header": {}, "responses": [{"response_delete_range": {}}]}, "unexpected"),
        ({"header": {"revision": "x"}}, "revision"),
        ({"header": {}, "responses": {}}, "responses"),
    ],
)
def test_malformed_txn_replies(doc: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_txn(doc)


def _error(code: int, message: str) -> bytes:
    return json.dumps({"error": message, "message": message, "code": code}).encode()


@pytest.mark.parametrize(
    ("status", "code", "message", "cause", "applied", "token"),
    [
        (503, 14, "etcdserver: no leader", EtcdCause.UNAVAILABLE, False, False),
        (503, 14, "etcdserver: request timed out", EtcdCause.UNAVAILABLE, True, False),
        (401, 16, "etcdserver: invalid auth token", EtcdCause.AUTH, False, True),
        (
            400,
            3,
            "etcdserver: authentication failed, invalid user ID or password",
            EtcdCause.AUTH,
            False,
            False,
        ),
        (400, 3, "etcdserver: user name is empty", EtcdCause.AUTH, False, False),
        (403, 7, "etcdserver: permission denied", EtcdCause.AUTH, False, False),
        (412, 9, "etcdserver: authentication is not enabled", EtcdCause.AUTH, False, False),
        (
            400,
            3,
            "etcdserver: duplicate key given in txn request",
            EtcdCause.PROTOCOL,
            False,
            False,
        ),
        (
            400,
            3,
            "invalid character 'g' looking for beginning of value",
            EtcdCause.PROTOCOL,
            False,
            False,
        ),
    ],
)
def test_grpc_error_replies_are_classified(  # noqa: PLR0917
    status: int, code: int, message: str, cause: EtcdCause, applied: bool, token: bool
) -> None:
    reply = classify_error(status, "application/json", _error(code, message))
    assert reply.cause is cause
    assert reply.maybe_applied is applied
    assert reply.token_invalid is token
    assert message in reply.message


def test_too_many_operations_is_flagged() -> None:
    body = _error(3, "etcdserver: too many operations in txn request")
    assert classify_error(400, "application/json", body).too_many_ops


def test_foreign_servers_are_named_and_quoted_briefly() -> None:
    reply = classify_error(404, "text/plain; charset=utf-8", b"Not Found\n")
    assert reply.cause is EtcdCause.PROTOCOL
    assert "not an etcd v3 JSON gateway: HTTP 404" in reply.message
    assert "'Not Found'" in reply.message
    html = classify_error(200, "text/html", b"<html>" + b"x" * 500)
    assert len(html.message) < 150


def test_a_foreign_reply_to_the_password_is_never_quoted() -> None:
    reply = classify_error(500, "text/plain", b"echo: hunter2", quote=False)
    assert "hunter2" not in reply.message


def test_plain_http_to_a_tls_port_says_so() -> None:
    reply = classify_error(400, "text/plain", b"Client sent an HTTP request to an HTTPS server.\n")
    assert reply.cause is EtcdCause.TLS
    assert "https://" in reply.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://127.0.0.1:2379", "http://127.0.0.1:2379"),
        ("https://etcd-1.example:443", "https://etcd-1.example:443"),
        ("http://[::1]:2379/", "http://[::1]:2379"),
        ("http://etcd", "http://etcd:2379"),
    ],
)
def test_endpoints_parse(text: str, expected: str) -> None:
    assert str(parse_endpoint(text)) == expected


@pytest.mark.parametrize(
    "text",
    ["127.0.0.1:2379", "tcp://127.0.0.1:2379", "http://:2379", "http://h:99999", "http://h/v3"],
)
def test_bad_endpoints_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid etcd endpoint"):
        parse_endpoint(text)


def test_encode_is_compact_and_stable() -> None:
    doc = {"key": b64(b"/k"), "b": [1, {"c": "d"}]}
    assert encode(doc) == b'{"key":"L2s=","b":[1,{"c":"d"}]}'
    assert encode(doc) == encode(json.loads(encode(doc)))


def test_secrets_never_show() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"
    client = EtcdClient(["http://127.0.0.1:1"], username="kms", password=secret)
    assert "hunter2" not in repr(client)
    assert "hunter2" not in repr(vars(client))


def test_settings_defaults_and_checks(tmp_path: Path) -> None:
    settings = EtcdSettings(["http://127.0.0.1:2379"])
    assert settings.prefix == "/tmkms/"
    assert settings.timeout == 1.0
    assert settings.host
    for kwargs, key in [
        ({"endpoints": []}, "endpoints"),
        ({"endpoints": ["ftp://x:1"]}, "endpoints"),
        ({"endpoints": ["http://a:1", "http://a:1"]}, "endpoints"),
        ({"endpoints": ["http://a:1"], "ca_file": tmp_path / "ca.pem"}, "endpoints"),
        ({"endpoints": ["http://a:1"], "timeout": 0}, "timeout"),
        ({"endpoints": ["http://a:1"], "timeout": 600}, "timeout"),
        ({"endpoints": ["http://a:1"], "host": ""}, "host"),
        ({"endpoints": ["http://a:1"], "prefix": ""}, "prefix"),
        ({"endpoints": ["http://a:1"], "username": "kms"}, "username"),
        ({"endpoints": ["https://a:1"], "key_file": tmp_path / "k"}, "key_file"),
    ]:
        with pytest.raises(ValueError, match=f"^{key}: "):
            EtcdSettings(**kwargs)  # type: ignore[arg-type]


def test_password_file(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text("hunter2\n")
    assert read_password(path).reveal() == "hunter2"
    path.write_text("\n")
    with pytest.raises(ConfigError, match="one non-empty line") as info:
        read_password(path)
    with pytest.raises(ConfigError, match="cannot read the etcd password file"):
        read_password(tmp_path / "missing")
    path.write_text("hunter2\nsecond line\n")
    with pytest.raises(ConfigError) as info:
        read_password(path)
    assert "hunter2" not in str(info.value)


def test_open_client_reads_the_password_and_hides_it(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text("hunter2\n")
    settings = EtcdSettings(["http://127.0.0.1:1"], username="kms", password_file=path)
    client = open_client(settings)
    assert "hunter2" not in repr(client)
    assert client.endpoints == ["http://127.0.0.1:1"]


def test_refusals_carry_a_reason_and_the_right_code() -> None:
    refused = HaRefused(RefusalCause.AMBIGUOUS, "shared watermark ambiguous: ...")
    assert refused.reason == "ha_ambiguous"
    assert refused.code == 1
    rule = HaDoubleSignRefused("double signing requested at height: 5", "detail")
    assert rule.reason == "ha_lost" and rule.code == 2
    assert RefusalCause.from_etcd(EtcdCause.UNAVAILABLE) is RefusalCause.UNAVAILABLE
    error = EtcdError(EtcdCause.TLS, "x", endpoint="https://a:1", sent=False)
    assert str(error) == "etcd https://a:1: x"


def test_settings_take_one_endpoint_as_a_string() -> None:
    assert EtcdSettings("http://127.0.0.1:2379").endpoints == ("http://127.0.0.1:2379",)


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_a_missing_etcd_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    from tests.support import etcd as support

    monkeypatch.delenv("ETCD_BINARY", raising=False)
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(support.shutil, "which", lambda name: None)
    monkeypatch.setattr(support.os, "access", lambda path, mode: False)
    with pytest.raises(outcome, match="etcd binary not found"):
        support.etcd_binary()
