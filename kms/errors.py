"""The project's error hierarchy: one root, one subclass per kind of failure.

Lower layers raise these; the CLI maps them to exit codes and the session maps signing
refusals to RemoteSignerError replies. Errors caused by another exception are always raised
``from`` it so the original cause stays visible.
"""

from __future__ import annotations


class KmsError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(KmsError):
    """tmkms.toml (or a file it names) is malformed; the message names file, section, key."""


class KeyFileError(KmsError):
    """A key file is missing, unreadable or does not hold a valid key."""


class ProtocolError(KmsError):
    """Bytes from a peer do not form a valid privval message or frame."""


class HandshakeError(ProtocolError):
    """The Secret Connection handshake failed (bad message, bad signature, pinned ID mismatch)."""


class StateError(KmsError):
    """A double-sign state file cannot be read, parsed or written."""


class SigningRefused(KmsError):
    """A request that must not be signed; answered with a RemoteSignerError reply.

    ``code`` is the RemoteSignerError code sent to the node; ``reason`` labels the refusal
    in the metrics (``tmkms_refusals_total{reason=...}``).
    """

    code: int = 1
    reason: str = "other"


class DoubleSignError(SigningRefused):
    """The double-sign rule refused the request (regression or conflicting block)."""

    code = 2


class SignerError(KmsError):
    """A signing provider (softsign, YubiHSM) failed to produce a signature."""
