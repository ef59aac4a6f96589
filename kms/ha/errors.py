"""The errors of the shared watermark: one for etcd itself, one for a refused signature.

:class:`EtcdError` is what every failure of the etcd client becomes at the I/O edge, whatever
raised it underneath (an OSError, an ssl.SSLError, a reply that is not HTTP, an etcd error
reply): its ``cause`` is one :class:`EtcdCause`, its ``sent`` says whether the request may
have reached etcd (a txn that may have been applied is *ambiguous*), and the original
exception stays chained (``raise ... from exc``). Messages name the endpoint and the cause,
never a credential: neither the password nor the auth token is ever formatted into one.

:class:`HaRefused` is the sign path's refusal: a :class:`kms.errors.SigningRefused`, so the
session answers it with a RemoteSignerError and the connection stays up. ``reason`` is a
short stable label for metrics and tests (``ha_unreachable``, ``ha_ambiguous``, ...).
"""

from __future__ import annotations

import enum

from kms.errors import DoubleSignError, KmsError, SigningRefused

__all__ = ["EtcdCause", "EtcdError", "HaDoubleSignRefused", "HaRefused", "RefusalCause"]


class EtcdCause(enum.Enum):
    """What kind of failure an :class:`EtcdError` is."""

    UNREACHABLE = "unreachable"  # no connection, or it broke: refused, reset, closed, timed out
    UNAVAILABLE = "unavailable"  # etcd answered that it cannot serve: no leader, no quorum
    AUTH = "auth"  # credentials refused, token invalid after re-authenticating, no permission
    TLS = "tls"  # certificate verification, client certificate refused, not a TLS server
    PROTOCOL = "protocol"  # not etcd's JSON gateway, or etcd rejected the request as invalid


class EtcdError(KmsError):
    """An etcd call failed; see the module docstring."""

    def __init__(
        self,
        cause: EtcdCause,
        message: str,
        *,
        endpoint: str | None = None,
        sent: bool = False,
        final: bool = False,
    ) -> None:
        where = f"etcd {endpoint}: " if endpoint else "etcd: "
        super().__init__(f"{where}{message}")
        self.cause = cause
        self.endpoint = endpoint
        self.sent = sent  # the request may have reached etcd (and a txn been applied)
        self.final = final  # etcd itself refused the request: every member would


class RefusalCause(enum.Enum):
    """Why the shared watermark refused a signature (the metric label)."""

    UNREACHABLE = "unreachable"
    UNAVAILABLE = "unavailable"
    AMBIGUOUS = "ambiguous"
    RULE = "rule"
    MALFORMED = "malformed"
    MISSING = "missing"  # no watermark under the key: created by `tmkms state init` only
    AUTH = "auth"
    TLS = "tls"
    PROTOCOL = "protocol"

    @classmethod
    def from_etcd(cls, cause: EtcdCause) -> RefusalCause:
        """The refusal cause of an etcd failure of kind ``cause``."""
        return cls(cause.value)


class HaRefused(SigningRefused):
    """The shared watermark refused (or could not allow) a signature; nothing was signed."""

    def __init__(self, cause: RefusalCause, message: str) -> None:
        super().__init__(message)
        self.cause = cause
        self.reason = f"ha_{cause.value}"


class HaDoubleSignRefused(HaRefused, DoubleSignError):
    """The shared watermark (written by another host) forbids the request: code 2, as tmkms."""

    code = 2

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(RefusalCause.RULE, message)
        self.reason = "ha_lost"  # another writer's watermark: lost to another host
        self.detail = detail
