"""The ``[etcd]`` section of tmkms.toml as a value (see ``high-availability.md``).

:class:`EtcdSettings` checks what can be checked without touching the files; a ValueError
starts with the name of the offending key, for the config loader to prefix with the file
and section. :mod:`kms.ha.settings` builds the client from it. Nothing here imports trio:
every command loads the configuration.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path

import attrs

from kms.transport.address import parse_endpoint

__all__ = ["DEFAULT_PREFIX", "DEFAULT_TIMEOUT", "EtcdSettings"]

DEFAULT_PREFIX = "/tmkms/"
DEFAULT_TIMEOUT = 1.0
MAX_TIMEOUT = 60.0


def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


def _endpoints(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):  # one URL, not its characters
        return (value,)
    return tuple(value)


@attrs.frozen
class EtcdSettings:
    """The ``[etcd]`` keys. ``host`` defaults to this machine's host name."""

    endpoints: tuple[str, ...] = attrs.field(converter=_endpoints)
    prefix: str = DEFAULT_PREFIX
    host: str = attrs.field(factory=socket.gethostname)
    timeout: float = DEFAULT_TIMEOUT
    ca_file: Path | None = attrs.field(default=None, converter=_path)
    cert_file: Path | None = attrs.field(default=None, converter=_path)
    key_file: Path | None = attrs.field(default=None, converter=_path)
    username: str | None = None
    password_file: Path | None = attrs.field(default=None, converter=_path)

    def __attrs_post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("endpoints: give at least one etcd client URL")
        schemes = set()
        for endpoint in self.endpoints:
            try:
                schemes.add(parse_endpoint(endpoint).scheme)
            except ValueError as exc:
                raise ValueError(f"endpoints: {exc}") from exc
        if len(set(self.endpoints)) != len(self.endpoints):
            raise ValueError("endpoints: an endpoint is listed twice")
        tls_files = self.ca_file or self.cert_file or self.key_file
        if tls_files and schemes != {"https"}:
            raise ValueError("endpoints: TLS files are given, so every endpoint must be https://")
        if not self.prefix or not self.prefix.isprintable():
            raise ValueError("prefix: must be a non-empty printable string")
        if not self.host or len(self.host) > 255 or not self.host.isprintable():
            raise ValueError("host: must be a printable name of 1-255 characters")
        if isinstance(self.timeout, bool) or not 0 < self.timeout <= MAX_TIMEOUT:
            raise ValueError(f"timeout: must be a number of seconds in (0, {MAX_TIMEOUT:g}]")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file: given without cert_file")
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username: username and password_file go together")
        if self.username is not None and not self.username:
            raise ValueError("username: must not be empty")

    @property
    def tls(self) -> bool:
        """Whether the endpoints use TLS."""
        return self.endpoints[0].startswith("https:")
