"""etcd v3's JSON gateway, sans-IO: request bodies out, typed results and classified errors in.

The gateway (grpc-gateway in front of etcd's gRPC API, served on the client port) maps each
call to ``POST /v3/<service>/<method>`` with the protobuf message as JSON. What the code
below relies on, checked against etcd 3.4.23:

* ``bytes`` fields (keys, values) are base64; ``int64`` fields arrive as JSON *strings*;
* fields at their default value are omitted: a failed txn has no ``succeeded``, a range that
  found nothing has no ``kvs`` and no ``count``, a nested txn's header is ``{}``; so every
  field is read with its protobuf default;
* a failed call answers an HTTP error status with ``{"error", "message", "code"}`` where
  ``code`` is the gRPC status code (14 unavailable, 16 unauthenticated, 3 invalid argument...);
* a txn's ``success``/``failure`` ops may be nested txns (``request_txn``), each with its own
  compares; their results come back as ``response_txn`` with their own ``succeeded``. A txn
  may name a key at most once, and holds at most ``--max-txn-ops`` (128) ops counting the
  nested ones.

Nothing here does I/O; :mod:`kms.ha.client` sends what this builds and hands back what it
receives.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import attrs

from kms.ha.errors import EtcdCause

__all__ = [
    "ErrorReply",
    "KeyValue",
    "RangeResult",
    "Status",
    "TxnResult",
    "b64",
    "classify_error",
    "parse_json",
    "parse_range",
    "parse_status",
    "parse_txn",
    "unb64",
]

# gRPC status codes etcd uses in its error replies
_INVALID_ARGUMENT = 3
_DEADLINE_EXCEEDED = 4
_PERMISSION_DENIED = 7
_RESOURCE_EXHAUSTED = 8
_FAILED_PRECONDITION = 9
_UNAVAILABLE = 14
_UNAUTHENTICATED = 16


def b64(data: bytes) -> str:
    """Base64 text of ``data``, as the gateway wants bytes fields."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, what: str) -> bytes:
    """Decode a base64 bytes field; ValueError naming ``what`` if it is not base64."""
    if not isinstance(text, str):
        raise ValueError(f"{what} is not a base64 string: {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"{what} is not valid base64") from exc


def _int(doc: dict[str, Any], key: str) -> int:
    """An int64 field: a decimal string (or a number), 0 when omitted."""
    value = doc.get(key, 0)
    if isinstance(value, bool):
        raise ValueError(f"{key} is not an integer: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"{key} is not an integer: {value!r}")


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"{key} is not a JSON array")
    return value


@attrs.frozen
class KeyValue:
    """One stored key (etcd's ``mvccpb.KeyValue``)."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


@attrs.frozen
class RangeResult:
    """A range's result: the store revision it saw and the keys found (maybe none)."""

    revision: int
    kvs: tuple[KeyValue, ...]


@attrs.frozen
class TxnResult:
    """A txn's result: whether its compares held, and one result per op of the branch taken.

    ``revision`` is the store revision after the txn (a write's new ``mod_revision``); a
    nested txn's own header is empty, so its ``revision`` is 0.
    """

    succeeded: bool
    revision: int
    responses: tuple[RangeResult | TxnResult | int, ...]  # int: a put's revision


@attrs.frozen
class Status:
    """A member's ``/v3/maintenance/status``: who it is and whom it follows (0: no leader)."""

    member_id: int
    leader: int
    raft_term: int
    version: str
    errors: tuple[str, ...]


def parse_json(body: bytes) -> dict[str, Any]:
    """An etcd reply body as a JSON object carrying a ``header``; ValueError otherwise."""
    doc = json.loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("header"), dict):
        raise ValueError("the reply is not an etcd response (no header object)")
    return doc


def _kv(doc: object) -> KeyValue:
    kv = _object(doc, "kvs[]")
    return KeyValue(
        key=unb64(kv.get("key", ""), "kv.key"),
        value=unb64(kv.get("value", ""), "kv.value"),
        create_revision=_int(kv, "create_revision"),
        mod_revision=_int(kv, "mod_revision"),
        version=_int(kv, "version"),
    )


def parse_range(doc: dict[str, Any]) -> RangeResult:
    """A ``RangeResponse`` (top level or inside a txn); ValueError if malformed."""
    header = _object(doc.get("header", {}), "header")
    return RangeResult(_int(header, "revision"), tuple(_kv(kv) for kv in _list(doc, "kvs")))


def parse_txn(doc: dict[str, Any]) -> TxnResult:
    """A ``TxnResponse``, nested txns included; ValueError if malformed."""
    header = _object(doc.get("header", {}), "header")
    succeeded = doc.get("succeeded", False)
    if not isinstance(succeeded, bool):
        raise ValueError(f"succeeded is not a boolean: {succeeded!r}")
    results: list[RangeResult | TxnResult | int] = []
    for item in _list(doc, "responses"):
        op = _object(item, "responses[]")
        if "response_range" in op:
            results.append(parse_range(_object(op["response_range"], "response_range")))
        elif "response_put" in op:
            put = _object(op["response_put"], "response_put")
            results.append(_int(_object(put.get("header", {}), "header"), "revision"))
        elif "response_txn" in op:
            results.append(parse_txn(_object(op["response_txn"], "response_txn")))
        else:
            raise ValueError(f"unexpected txn response op {sorted(op)}")
    return TxnResult(succeeded, _int(header, "revision"), tuple(results))


def parse_status(doc: dict[str, Any]) -> Status:
    """A ``StatusResponse``; ValueError if malformed."""
    header = _object(doc.get("header", {}), "header")
    errors = _list(doc, "errors")
    version = doc.get("version", "")
    return Status(
        member_id=_int(header, "member_id"),
        leader=_int(doc, "leader"),
        raft_term=_int(doc, "raftTerm") or _int(header, "raft_term"),
        version=version if isinstance(version, str) else "",
        errors=tuple(str(error) for error in errors),
    )


@attrs.frozen
class ErrorReply:
    """An HTTP error reply, classified.

    ``maybe_applied``: a txn that got this reply may still be applied (etcd timed out
    waiting for raft, the leader changed under it); a refusal before proposing (no leader,
    auth, an invalid request) is not. ``token_invalid``: authenticate again and retry once.
    ``too_many_ops``: the txn exceeds the cluster's ``--max-txn-ops``.
    """

    cause: EtcdCause
    message: str
    maybe_applied: bool = False
    token_invalid: bool = False
    too_many_ops: bool = False
    rejected: bool = False  # etcd refused the request itself: another member would too


def classify_error(
    status: int, content_type: str, body: bytes, *, quote: bool = True
) -> ErrorReply:
    """Classify a non-200 reply.

    A foreign server's body is quoted (a short, printable excerpt) only when ``quote``: never
    for a reply to a request that carried the password, which such a server could echo.
    """
    if content_type.startswith("application/json"):
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("code"), int):
            message = str(doc.get("message") or doc.get("error") or "")
            return _classify_grpc(doc["code"], message)
    if status == 400 and b"HTTP request to an HTTPS server" in body:
        return ErrorReply(EtcdCause.TLS, "the endpoint speaks TLS: use an https:// endpoint")
    if status == 400 and b"CommonName of client sending a request against gateway" in body:
        # etcd's JSON gateway, with auth enabled, refuses any client certificate with a CN
        return ErrorReply(
            EtcdCause.TLS,
            "etcd's JSON gateway refuses a client certificate with a CommonName while auth "
            "is enabled: issue the KMS's certificate without a CN (name it in subjectAltName)",
            rejected=True,
        )
    return ErrorReply(
        EtcdCause.PROTOCOL,
        f"not an etcd v3 JSON gateway: HTTP {status} {content_type or 'without content type'}"
        f" {excerpt(body) if quote else '(body not shown)'}",
    )


def _classify_grpc(code: int, message: str) -> ErrorReply:
    text = f"{message} (gRPC code {code})"
    if code == _UNAUTHENTICATED or "invalid auth token" in message:
        return ErrorReply(EtcdCause.AUTH, text, token_invalid=True, rejected=True)
    if "too many operations" in message:
        return ErrorReply(EtcdCause.PROTOCOL, text, too_many_ops=True, rejected=True)
    if "revision of auth store is old" in message:  # the auth store changed: retry
        return ErrorReply(EtcdCause.UNAVAILABLE, text)
    if code == _UNAVAILABLE:
        return ErrorReply(EtcdCause.UNAVAILABLE, text, maybe_applied="no leader" not in message)
    if code in (_DEADLINE_EXCEEDED, _RESOURCE_EXHAUSTED):
        return ErrorReply(EtcdCause.UNAVAILABLE, text, maybe_applied=True)
    if code in (_PERMISSION_DENIED, _FAILED_PRECONDITION) or (
        code == _INVALID_ARGUMENT and ("authentication" in message or "user name" in message)
    ):
        return ErrorReply(EtcdCause.AUTH, text, rejected=True)
    if code == _INVALID_ARGUMENT:
        return ErrorReply(EtcdCause.PROTOCOL, f"etcd rejected the request: {text}", rejected=True)
    return ErrorReply(EtcdCause.PROTOCOL, f"etcd error: {text}", maybe_applied=True)


def excerpt(body: bytes, limit: int = 60) -> str:
    """The start of ``body`` as printable text, for error messages about foreign servers."""
    text = body[:limit].decode("utf-8", "replace")
    shown = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return repr(shown + ("..." if len(body) > limit else ""))
