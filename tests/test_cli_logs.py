"""Log lines in tmkms's shape (text and JSON), level handling, and secret redaction."""

from __future__ import annotations

import base64
import datetime
import io
import json
import logging
import re
import sys
from pathlib import Path

import pytest

from kms.keys import load_ed25519_key
from kms.logs import (
    JsonFormatter,
    TextFormatter,
    level_name,
    redact,
    register_secret,
    resolve_level,
    setup_logging,
    target_for,
)

# Lines from the seed guide (tmkms 0.11 on an Osmosis validator), with their shape.
GUIDE_LINES = [
    "2022-03-08T23:42:37.926816Z  INFO tmkms::commands::start: tmkms 0.11.0 starting up...",
    "2022-03-08T23:42:37.929454Z ERROR tmkms::client: [osmosis-1@tcp://xxx:26659] I/O error: "
    "Connection refused (os error 111)",
    "2022-03-08T23:46:06.210604Z  WARN tmkms::session: [osmosis-1@tcp://xxx:26659]: unverified "
    "validator peer ID! (xxx)",
]
LINE_SHAPE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (TRACE|DEBUG| INFO| WARN|ERROR) [a-z_]+(::[a-z_]+)*: "
)


pytestmark = pytest.mark.usefixtures("restore_root_logger")


def record(
    name: str, level: int, message: str, created: float = 0.0, **extra: object
) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, __file__, 1, message, None, None)
    rec.created = created
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_guide_lines_have_the_shape_we_check() -> None:
    for line in GUIDE_LINES:
        assert LINE_SHAPE.match(line), line


@pytest.mark.parametrize(
    ("logger", "level", "message", "expected"),
    [
        (
            "kms.commands.start",
            logging.INFO,
            "tmkms 0.11.0 starting up...",
            GUIDE_LINES[0],
        ),
        (
            "kms.service",
            logging.ERROR,
            "[osmosis-1@tcp://xxx:26659] I/O error: Connection refused (os error 111)",
            GUIDE_LINES[1],
        ),
        (
            "kms.session",
            logging.WARNING,
            "[osmosis-1@tcp://xxx:26659]: unverified validator peer ID! (xxx)",
            GUIDE_LINES[2],
        ),
    ],
)
def test_text_lines_reproduce_the_guide(
    logger: str, level: int, message: str, expected: str
) -> None:
    timestamp = expected.split(" ", 1)[0]
    created = _epoch(timestamp)
    assert TextFormatter().format(record(logger, level, message, created)) == expected


def _epoch(timestamp: str) -> float:
    moment = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.replace(tzinfo=datetime.UTC).timestamp()


@pytest.mark.parametrize(
    ("logger", "target"),
    [
        ("kms.commands.start", "tmkms::commands::start"),
        ("kms.service", "tmkms::client"),
        ("kms.connection", "tmkms::connection::tcp"),
        ("kms.keyring", "tmkms::keyring"),
        ("kms.session", "tmkms::session"),
        ("kms.chain.tracker", "tmkms::chain::tracker"),
        ("kms", "tmkms"),
        ("providers.softsign", "tmkms::keyring::providers::softsign"),
        ("kmsx.other", "kmsx::other"),
        ("trio", "trio"),
    ],
)
def test_targets(logger: str, target: str) -> None:
    assert target_for(logger) == target


@pytest.mark.parametrize(
    ("level", "name"),
    [(5, "TRACE"), (10, "DEBUG"), (20, "INFO"), (30, "WARN"), (40, "ERROR"), (50, "ERROR")],
)
def test_level_names(level: int, name: str) -> None:
    assert level_name(level) == name
    line = TextFormatter().format(record("kms.x", level, "m"))
    assert line.split(" tmkms::x: ")[0].endswith(f"{name:>5}")


def test_text_fields_and_exceptions() -> None:
    rec = record("kms.session", logging.INFO, "signed", chain_id="osmosis-1", height=5)
    assert TextFormatter().format(rec).endswith(' signed chain_id="osmosis-1" height=5')
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec = logging.LogRecord(
            "kms.service", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    lines = TextFormatter().format(rec).splitlines()
    assert LINE_SHAPE.match(lines[0]) and lines[0].endswith("tmkms::client: failed")
    assert lines[-1] == "RuntimeError: boom"


def test_json_lines() -> None:
    rec = record("kms.session", logging.WARNING, "hello %s", 1646782957.5, chain_id="osmosis-1")
    rec.args = ("world",)
    body = json.loads(JsonFormatter().format(rec))
    assert body == {
        "timestamp": "2022-03-08T23:42:37.500000Z",
        "level": "WARN",
        "target": "tmkms::session",
        "message": "hello world",
        "chain_id": "osmosis-1",
    }
    assert "\n" not in JsonFormatter().format(rec)


def test_setup_logging_writes_to_the_stream_and_replaces_itself() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging(stream=first)
    setup_logging(stream=second, fmt="json")
    logging.getLogger("kms.commands.start").info("tmkms %s starting up...", "0.1.0")
    logging.getLogger("kms.session").debug("hidden at INFO")
    assert first.getvalue() == ""
    (line,) = second.getvalue().splitlines()
    assert json.loads(line)["message"] == "tmkms 0.1.0 starting up..."
    ours = [h for h in logging.getLogger().handlers if type(h).__name__ == "_KmsHandler"]
    assert len(ours) == 1


def test_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUST_LOG", raising=False)
    assert resolve_level() == logging.INFO
    assert resolve_level(verbose=True) == logging.DEBUG
    assert resolve_level(level="warn") == logging.WARNING
    assert resolve_level(level="TRACE") == 5
    assert resolve_level(level=logging.ERROR) == logging.ERROR
    monkeypatch.setenv("RUST_LOG", "warn")
    assert resolve_level() == logging.WARNING
    assert resolve_level(verbose=True) == logging.DEBUG  # -v wins, as in tmkms
    monkeypatch.setenv("RUST_LOG", "tmkms=debug,hyper=info")  # directives: not ours to parse
    assert resolve_level() == logging.INFO
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        resolve_level(level="loud")


def test_registered_secrets_are_redacted() -> None:
    seed = bytes(range(7, 39))
    public = bytes(range(40, 72))
    register_secret(seed)
    for leak in (
        base64.b64encode(seed).decode(),
        base64.b64encode(seed).decode().rstrip("="),
        base64.b64encode(seed + public).decode(),
        seed.hex(),
        seed.hex().upper(),
    ):
        out = TextFormatter().format(record("kms.x", logging.INFO, f"oops {leak} end"))
        assert "[REDACTED]" in out
        assert leak[:40] not in out
    register_secret("hunter2")  # too short to redact safely: ignored
    assert redact("hunter2") == "hunter2"


def test_loading_a_key_registers_it(tmp_path: Path) -> None:
    seed = bytes(range(200, 232))
    path = tmp_path / "key"
    path.write_text(base64.b64encode(seed).decode())
    load_ed25519_key(path)
    stream = io.StringIO()
    setup_logging(stream=stream, fmt="json")
    logging.getLogger("kms.keyring").info("loaded %s", base64.b64encode(seed).decode())
    assert base64.b64encode(seed).decode() not in stream.getvalue()
    assert json.loads(stream.getvalue())["message"] == "loaded [REDACTED]"
