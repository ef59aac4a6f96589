"""The client that ``[etcd]`` (:class:`kms.config.etcd.EtcdSettings`) describes.

:func:`open_client` reads the password file and the TLS files and builds the
:class:`kms.ha.client.EtcdClient`; a file that cannot be used is a ConfigError naming it.
Neither ever shows the password.
"""

from __future__ import annotations

from pathlib import Path

from kms.config.etcd import EtcdSettings
from kms.errors import ConfigError
from kms.ha.client import EtcdClient, Secret
from kms.ha.tls import client_context

__all__ = ["open_client", "read_password"]

_MAX_PASSWORD = 4096


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
