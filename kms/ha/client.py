"""An etcd v3 client for trio: failover across members, auth, one error type.

Theory of operation
-------------------
Calls go to the member that answered last (sticky), and move on to the next one when a
member cannot be reached, says it has no leader, or does not answer in its share of the
time left. The time left is the caller's: the client takes no timeout arguments, it reads
the deadline of the enclosing cancel scope (``trio.current_effective_deadline``) and gives
each member it still may try an equal share, so one SIGSTOPped member cannot eat a whole
call. Without a deadline a call waits on the first member as long as it takes.

Reads (range, status) are retried on the next member whatever happened (they change
nothing), but for a request etcd itself refused (credentials, permissions, an invalid
request: the cluster's answer, not a member's). A txn is not: once it may have reached
etcd (``EtcdError.sent``), the error goes back to the caller, who knows whether
re-sending the identical txn is right (the shared watermark's check-and-set does exactly
that to resolve an ambiguous outcome), and the next call starts at the next member.

Every request carries the gRPC metadata ``hasleader: true`` (the gateway forwards
``Grpc-Metadata-*`` headers): a member that lost its leader answers "no leader" at once
instead of holding the request until etcd's own 5+ s request timeout.

With a username, the client authenticates before its first call and again, once per call,
when etcd says the token is invalid (simple tokens expire after ``--auth-token-ttl`` of
disuse, and a restarted member forgets them). Neither the password nor the token appears
in any repr, message or log line.
"""

from __future__ import annotations

import json
import math
import ssl
from collections.abc import Sequence
from typing import Any

import trio

from kms.ha.errors import EtcdCause, EtcdError
from kms.ha.http import Endpoint
from kms.ha.wire import (
    RangeResult,
    Status,
    TxnResult,
    b64,
    classify_error,
    excerpt,
    parse_json,
    parse_range,
    parse_status,
    parse_txn,
)
from kms.transport.address import parse_endpoint

__all__ = ["EtcdClient", "Secret"]

_HASLEADER = (b"grpc-metadata-hasleader", b"true")
# when all members failed, the error reported is the most telling one
_PRIORITY = [EtcdCause.AUTH, EtcdCause.TLS, EtcdCause.PROTOCOL, EtcdCause.UNAVAILABLE]


class Secret:
    """A credential: ``reveal()`` gives it, ``repr``/``str`` never do."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__


def encode(doc: dict[str, Any]) -> bytes:
    """Compact JSON bytes of a request."""
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


class EtcdClient:
    """A client of one etcd cluster (see the module docstring)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        ssl_context: ssl.SSLContext | None = None,
        username: str | None = None,
        password: Secret | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if (username is None) != (password is None):
            raise ValueError("etcd username and password go together")
        self._endpoints = [Endpoint(parse_endpoint(e), ssl_context) for e in endpoints]
        self._current = 0
        self._username = username
        self._password = password
        self._token: Secret | None = None
        self._auth_lock = trio.Lock()

    def __repr__(self) -> str:
        user = f", user={self._username!r}" if self._username else ""
        return f"EtcdClient({[e.name for e in self._endpoints]!r}{user})"

    @property
    def endpoint(self) -> str:
        """The member the next call goes to first (the one that answered last)."""
        return self._endpoints[self._current].name

    @property
    def endpoints(self) -> list[str]:
        return [e.name for e in self._endpoints]

    async def range(self, key: bytes) -> RangeResult:
        """A linearizable read of ``key`` (never ``serializable``)."""
        doc = await self._call("/v3/kv/range", encode({"key": b64(key)}), idempotent=True)
        return self._parsed(parse_range, doc)

    async def txn(self, body: bytes) -> TxnResult:
        """Send one txn (``body``: its JSON); EtcdError with ``sent`` if it may have applied."""
        doc = await self._call("/v3/kv/txn", body, idempotent=False)
        return self._parsed(parse_txn, doc)

    async def status(self, endpoint: str | None = None) -> Status:
        """``/v3/maintenance/status`` of ``endpoint`` (exactly that member), else of any."""
        targets = self._endpoints
        if endpoint is not None:
            targets = [e for e in self._endpoints if e.name == endpoint]
            if not targets:
                raise ValueError(f"{endpoint} is not one of this client's endpoints")
        doc = await self._call("/v3/maintenance/status", b"{}", True, targets)
        return self._parsed(parse_status, doc)

    async def aclose(self) -> None:
        """Close every kept-alive connection."""
        for endpoint in self._endpoints:
            await endpoint.aclose()

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _parsed(self, parse: Any, doc: dict[str, Any]) -> Any:
        try:
            return parse(doc)
        except ValueError as exc:
            raise EtcdError(
                EtcdCause.PROTOCOL, f"malformed reply: {exc}", endpoint=self.endpoint, sent=True
            ) from exc

    async def _call(
        self,
        path: str,
        body: bytes,
        idempotent: bool,
        targets: list[Endpoint] | None = None,
    ) -> dict[str, Any]:
        members = targets if targets is not None else self._endpoints
        start = self._current if targets is None else 0
        errors: list[EtcdError] = []
        for attempt in range(len(members)):
            index = (start + attempt) % len(members)
            endpoint = members[index]
            left = len(members) - attempt - 1
            try:
                with trio.CancelScope(deadline=_share(left)) as scope:
                    doc = await self._call_endpoint(endpoint, path, body)
                if scope.cancelled_caught:
                    raise EtcdError(
                        EtcdCause.UNREACHABLE, "no reply in time", endpoint=endpoint.name, sent=True
                    )
            except EtcdError as exc:
                errors.append(exc)
                endpoint.drop_idle()
                if targets is None:
                    self._current = (index + 1) % len(members)
                if (exc.sent and not idempotent) or exc.final:
                    raise  # it may have been applied; or every member would refuse it
                continue
            if targets is None:
                self._current = index
            return doc
        raise _combined(errors)

    async def _call_endpoint(self, endpoint: Endpoint, path: str, body: bytes) -> dict[str, Any]:
        if self._username is not None and self._token is None:
            await self._authenticate(endpoint, None)
        for retry in (False, True):
            token = self._token
            headers = [_HASLEADER]
            if token is not None:
                headers.append((b"authorization", token.reveal().encode("ascii")))
            reply = await endpoint.post(path, body, headers)
            if reply.status == 200:
                return self._json(endpoint, reply.body, quote=True)
            error = classify_error(reply.status, reply.content_type, reply.body)
            if error.token_invalid and self._username is not None and not retry:
                await self._authenticate(endpoint, token)
                continue
            raise EtcdError(
                error.cause,
                error.message,
                endpoint=endpoint.name,
                sent=error.maybe_applied,
                final=error.rejected,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _authenticate(self, endpoint: Endpoint, stale: Secret | None) -> None:
        """Get a token from ``endpoint`` unless another task already replaced ``stale``."""
        assert self._username is not None and self._password is not None
        async with self._auth_lock:
            if self._token is not stale:
                return
            request = {"name": self._username, "password": self._password.reveal()}
            reply = await endpoint.post("/v3/auth/authenticate", encode(request), [_HASLEADER])
            if reply.status != 200:
                error = classify_error(reply.status, reply.content_type, reply.body, quote=False)
                message = error.message
                if "not enabled" in message:
                    message += ": a username is configured but etcd has auth disabled"
                raise EtcdError(
                    error.cause,
                    f"authentication as {self._username!r} failed: {message}",
                    endpoint=endpoint.name,
                    final=error.rejected,
                )
            token = self._json(endpoint, reply.body, quote=False).get("token")
            if not isinstance(token, str) or not token or not token.isascii():
                raise EtcdError(
                    EtcdCause.PROTOCOL, "authenticate reply without a token", endpoint=endpoint.name
                )
            self._token = Secret(token)

    @staticmethod
    def _json(endpoint: Endpoint, body: bytes, *, quote: bool) -> dict[str, Any]:
        try:
            return parse_json(body)
        except ValueError as exc:
            shown = excerpt(body) if quote else "(body not shown)"
            raise EtcdError(
                EtcdCause.PROTOCOL,
                f"not an etcd v3 JSON gateway: HTTP 200 with {shown}",
                endpoint=endpoint.name,
                sent=True,
            ) from exc


def _share(others: int) -> float:
    """The deadline of one member's attempt: an equal share of the caller's time left."""
    deadline = trio.current_effective_deadline()
    if others == 0 or math.isinf(deadline):
        return math.inf
    now = trio.current_time()
    return now + max(0.0, deadline - now) / (others + 1)


def _combined(errors: list[EtcdError]) -> EtcdError:
    """One error for a call every member failed: the most telling cause, every reason."""
    assert errors
    causes = [e.cause for e in errors]
    cause = next((c for c in _PRIORITY if c in causes), EtcdCause.UNREACHABLE)
    if len(errors) == 1:
        return errors[0]
    combined = EtcdError(cause, "; ".join(str(e) for e in errors), sent=any(e.sent for e in errors))
    combined.__cause__ = errors[-1]
    return combined
