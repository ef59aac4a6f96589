"""The TLS client context for etcd: server verification, and a client certificate if given.

Built once at startup from the ``[etcd]`` files. A file that is missing or does not hold
what it should raises :class:`kms.errors.ConfigError` naming the file (its contents, a
private key among them, are never quoted). An encrypted private key is refused instead of
prompting for a passphrase on the terminal of a service.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from kms.errors import ConfigError

__all__ = ["client_context"]


class _EncryptedKey(Exception):
    """Raised from the passphrase callback: the service has no one to ask."""


def _no_passphrase() -> str:
    raise _EncryptedKey


def client_context(
    ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A client context verifying the server (against ``ca_file``, else the system's CAs).

    With ``cert_file`` (and ``key_file``, or the key inside ``cert_file``) the client
    presents that certificate. Hostname checking stays on: the server's certificate must
    name the endpoint's host (an IP address needs an IP subjectAltName).
    """
    if key_file is not None and cert_file is None:
        raise ConfigError(f"key_file {key_file} is given without cert_file")
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the etcd CA file {ca_file}: {_why(exc)}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        try:
            context.load_cert_chain(
                str(cert_file), str(key_file) if key_file else None, password=_no_passphrase
            )
        except _EncryptedKey as exc:
            raise ConfigError(
                f"the etcd client key {key_file or cert_file} is encrypted; "
                "give an unencrypted key file readable only by the service"
            ) from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the etcd client certificate {cert_file} "
                f"(key {key_file or cert_file}): {_why(exc)}"
            ) from exc
    return context


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc) or type(exc).__name__
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__
