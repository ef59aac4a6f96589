"""The ``[etcd]`` section as a value, and the client it describes.

:class:`EtcdSettings` holds the keys of ``[etcd]`` (see ``high-availability.md``) and
checks what can be checked without touching the files; a ValueError starts with the name
of the offending key, for the config loader to prefix with the file and section.
:func:`open_client` reads the password file and the TLS files and builds the
:class:`kms.ha.client.EtcdClient`; a file that cannot be used is a ConfigError naming it.
Neither ever shows the password.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path

import attrs

from kms.errors import ConfigError
from kms.ha.client import EtcdClient, Secret
from kms.ha.http import parse_endpoint
from kms.ha.tls import client_context

__all__ = ["DEFAULT_PREFIX", "DEFAULT_TIMEOUT", "EtcdSettings", "open_client"]

DEFAULT_PREFIX = "/tmkms/"
DEFAULT_TIMEOUT = 1.0
MAX_TIMEOUT = 60.0
_MAX_PASSWORD = 4096


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


def read_password(path: Path) -> Secret:
    """The password in ``path`` (one trailing newline dropped); ConfigError naming the file."""
    try:
        raw = path.read_bytes()[: _MAX_PASSWORD + 2]
    except OSError as exc:
        raise ConfigError(f"cannot read the etcd password file {path}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the etcd password file {path} is not UTF-8 text") from exc
    text = text.removesuffix("\n").removesuffix("\r")
    if not text or len(text) > _MAX_PASSWORD or "\n" in text:
        raise ConfigError(f"the etcd password file {path} must hold one non-empty line")
    return Secret(text)


def open_client(settings: EtcdSettings) -> EtcdClient:
    """The client of ``settings``' cluster (no connection is opened yet)."""
    context = None
    if settings.tls:
        context = client_context(settings.ca_file, settings.cert_file, settings.key_file)
    password = None
    if settings.password_file is not None:
        password = read_password(settings.password_file)
    return EtcdClient(
        settings.endpoints, ssl_context=context, username=settings.username, password=password
    )
