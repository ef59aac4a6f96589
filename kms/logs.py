"""Logging shaped like tmkms's, so operators' greps and dashboards keep working.

tmkms logs through tracing-subscriber's default formatter to **stdout**, one event a line::

    2022-03-08T23:42:37.926816Z  INFO tmkms::commands::start: tmkms 0.11.0 starting up...

i.e. an RFC 3339 UTC timestamp with microseconds, the level right-aligned in 5 columns
(TRACE DEBUG INFO WARN ERROR), the target (a Rust module path), then the message and any
structured fields as ``key=value``. Python logger names map onto tmkms's targets (see
:data:`TARGETS`); ``--log-format json`` prints one JSON object per line instead.

Defence in depth against leaking keys: every secret loaded through :mod:`kms.keys` is
registered with :func:`register_secret`, and both formatters replace any occurrence of a
registered secret's encodings with ``[REDACTED]``.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import sys
import threading
import time
from typing import Any, Literal, TextIO

# Python logger name (or prefix) -> tmkms tracing target (or prefix).
TARGETS: dict[str, str] = {
    "kms.service": "tmkms::client",
    "kms.connection": "tmkms::connection::tcp",
    "kms.keyring": "tmkms::keyring",
    "providers": "tmkms::keyring::providers",
    "kms": "tmkms",
}
_LEVELS = {"TRACE": 5, "DEBUG": 10, "INFO": 20, "WARN": 30, "WARNING": 30, "ERROR": 40}
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
REDACTED = "[REDACTED]"
_MIN_SECRET_TEXT = 8

_secrets_lock = threading.Lock()
_secret_texts: set[str] = set()
# the same, longest first, rebuilt when one is registered: every log line is redacted (one
# per signature), and sorting a few hundred texts (a key per chain, in several forms) for
# each line was a third of its redaction (figures in benchmarks/README.md)
_redact_order: list[tuple[str, ...]] = [()]


def target_for(logger_name: str) -> str:
    """The tmkms-style target for a Python logger name, e.g. kms.session -> tmkms::session."""
    for prefix in sorted(TARGETS, key=len, reverse=True):
        if logger_name == prefix or logger_name.startswith(prefix + "."):
            rest = logger_name[len(prefix) :].replace(".", "::")
            return TARGETS[prefix] + rest
    return logger_name.replace(".", "::")


def level_name(levelno: int) -> str:
    """tracing's level names: TRACE below DEBUG, WARN for WARNING, ERROR for CRITICAL."""
    if levelno >= logging.ERROR:
        return "ERROR"
    if levelno >= logging.WARNING:
        return "WARN"
    if levelno >= logging.INFO:
        return "INFO"
    if levelno >= logging.DEBUG:
        return "DEBUG"
    return "TRACE"


def register_secret(secret: bytes | str) -> None:
    """Never let ``secret`` (or its base64 / hex forms) appear in log output."""
    forms: set[str] = set()
    if isinstance(secret, str):
        forms.add(secret)
    else:
        encoded = base64.b64encode(secret).decode()
        forms.update({encoded, encoded.rstrip("="), secret.hex(), secret.hex().upper()})
        if len(secret) >= 30:
            # The first 40 characters depend only on the first 30 bytes, so this also
            # catches the seed inside base64(seed || public key).
            forms.add(encoded[:40])
    with _secrets_lock:
        _secret_texts.update(f for f in forms if len(f) >= _MIN_SECRET_TEXT)
        _redact_order[0] = tuple(sorted(_secret_texts, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by [REDACTED]."""
    for secret in _redact_order[0]:  # one read of the tuple: a registration replaces it
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


_second_cache: list[tuple[int, str]] = [(-1, "")]


def _timestamp(created: float) -> str:
    """RFC 3339 UTC with microseconds; the date-and-seconds part is formatted once a second."""
    fraction, whole = math.modf(created)
    second, micros = int(whole), round(fraction * 1_000_000)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    cached_second, prefix = _second_cache[0]
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_cache[0] = (second, prefix)
    return f"{prefix}.{micros:06d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


class TextFormatter(logging.Formatter):
    """``<timestamp> <LEVEL> <target>: <message> key=value...`` as tmkms prints it."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record (plus its traceback, if any, on the following lines)."""
        line = (
            f"{_timestamp(record.created)} {level_name(record.levelno):>5} "
            f"{target_for(record.name)}: {record.getMessage()}"
        )
        for key, value in _fields(record).items():
            shown = json.dumps(value) if isinstance(value, str) else str(value)
            line += f" {key}={shown}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, target, message, then extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a single line of JSON."""
        body: dict[str, Any] = {
            "timestamp": _timestamp(record.created),
            "level": level_name(record.levelno),
            "target": target_for(record.name),
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            body.setdefault(key, value)
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(body, default=str, ensure_ascii=False, separators=(",", ":")))


def resolve_level(verbose: bool = False, level: int | str | None = None) -> int:
    """The threshold: ``level`` if given, else a bare level in $RUST_LOG, else DEBUG/INFO."""
    if level is None:
        env = os.environ.get("RUST_LOG", "").strip().upper()
        level = env if env in _LEVELS and not verbose else None
    if level is None:
        return logging.DEBUG if verbose else logging.INFO
    if isinstance(level, int):
        return level
    try:
        return _LEVELS[level.upper()]
    except KeyError as exc:
        raise ValueError(
            f"unknown log level {level!r} (expected one of {', '.join(_LEVELS)})"
        ) from exc


def setup_logging(
    verbose: bool = False,
    fmt: Literal["text", "json"] = "text",
    level: int | str | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send all logging to ``stream`` (default stdout, as tmkms) in the chosen format.

    Calling it again replaces the handler installed by the previous call.
    """
    handler = _KmsHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _KmsHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(resolve_level(verbose, level))
    return handler


class _KmsHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`setup_logging` installs (so a second call can replace it)."""
