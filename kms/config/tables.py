"""Typed, strict access to parsed TOML tables, producing one-line ConfigErrors.

Every error reads ``<file>: <section>: key "<key>": <problem>``, e.g.
``/etc/tmkms.toml: [[validator]] #2 (chain_id = "osmosis-1"): key "timeout": expected a
number of seconds, got string "10"``. Nested keys are dotted (``key_format.type``) and array
items indexed from 0 (``keys[1].type``); sections are numbered from 1 (``#2``).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from kms.errors import ConfigError

# Values of these keys are never echoed back in error messages.
SECRET_KEYS = frozenset({"password", "api_key"})
_MISSING: Any = object()


def quote(text: str) -> str:
    """A string in double quotes with JSON-style escapes (so messages stay on one line)."""
    return json.dumps(text, ensure_ascii=False)


def describe(value: object, *, secret: bool = False) -> str:
    """A short description of a TOML value for error messages, e.g. ``string "abc"``."""
    if isinstance(value, bool):
        kind, shown = "boolean", "true" if value else "false"
    elif isinstance(value, int):
        kind, shown = "integer", str(value)
    elif isinstance(value, float):
        kind, shown = "float", repr(value)
    elif isinstance(value, str):
        kind, shown = "string", quote(value if len(value) <= 60 else value[:57] + "...")
    elif isinstance(value, list):
        return "an array"
    elif isinstance(value, dict):
        return "a table"
    elif isinstance(value, datetime.date | datetime.time):
        kind, shown = "date/time", value.isoformat()
    else:  # pragma: no cover - tomllib produces nothing else
        kind, shown = type(value).__name__, repr(value)
    return kind if secret else f"{kind} {shown}"


@attrs.frozen
class Section:
    """Where a table sits: the file and a human label such as ``[[chain]] #1 (id = "x")``."""

    file: Path
    label: str

    def error(self, key: str, problem: str) -> ConfigError:
        """A ConfigError naming file, section and key."""
        return ConfigError(f'{self.file}: {self.label}: key "{key}": {problem}')


class Table:
    """A TOML table read strictly: typed getters, and ``finish()`` rejects unknown keys."""

    def __init__(self, data: Mapping[str, Any], section: Section, prefix: str = "") -> None:
        self.data = data
        self.section = section
        self.prefix = prefix

    def name(self, key: str) -> str:
        """The full dotted name of ``key`` within the section."""
        return self.prefix + key

    def error(self, key: str, problem: str) -> ConfigError:
        """A ConfigError about ``key`` of this table."""
        return self.section.error(self.name(key), problem)

    def allow(self, keys: Iterable[str], unsupported: Mapping[str, str] | None = None) -> None:
        """Reject keys not in ``keys``; ``unsupported`` maps known-but-unsupported keys to why."""
        allowed = list(keys)
        for key in self.data:
            if unsupported and key in unsupported:
                raise self.error(key, unsupported[key])
            if key not in allowed:
                expected = ", ".join(allowed) if allowed else "no keys"
                raise self.error(key, f"unknown key (expected one of: {expected})")

    def has(self, key: str) -> bool:
        """Whether ``key`` is present."""
        return key in self.data

    def _get(self, key: str, default: Any) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise self.error(key, "missing required key")
        return default

    def _wrong(self, key: str, expected: str, value: object) -> ConfigError:
        secret = key in SECRET_KEYS
        return self.error(key, f"expected {expected}, got {describe(value, secret=secret)}")

    def string(self, key: str, default: Any = _MISSING, *, nonempty: bool = True) -> Any:
        """A string value (``default`` when absent, error when absent without a default)."""
        value = self._get(key, default)
        if value is default and key not in self.data:
            return value
        if not isinstance(value, str):
            raise self._wrong(key, "a string", value)
        if nonempty and not value:
            raise self.error(key, "must not be empty")
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        """A boolean value."""
        value = self._get(key, default)
        if key in self.data and not isinstance(value, bool):
            raise self._wrong(key, "true or false", value)
        return value

    def integer(self, key: str, default: Any = _MISSING, *, low: int, high: int) -> Any:
        """An integer in [low, high]."""
        value = self._get(key, default)
        if key not in self.data:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, f"an integer from {low} to {high}", value)
        if not low <= value <= high:
            raise self.error(key, f"{value} is out of range (expected {low} to {high})")
        return value

    def seconds(self, key: str, default: float, *, high: float) -> float:
        """A positive number of seconds (integer or float), at most ``high``."""
        value = self._get(key, default)
        if key not in self.data:
            return float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._wrong(key, "a number of seconds", value)
        if not 0 < value <= high:
            raise self.error(key, f"{value} is out of range (expected more than 0, at most {high})")
        return float(value)

    def string_list(self, key: str) -> tuple[str, ...]:
        """A non-empty array of non-empty strings."""
        value = self._get(key, _MISSING)
        if not isinstance(value, list) or not value:
            raise self._wrong(key, "a non-empty array of strings", value)
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.section.error(
                    f"{self.name(key)}[{index}]",
                    f"expected a non-empty string, got {describe(item)}",
                )
        return tuple(value)

    def table(self, key: str, default: Any = _MISSING) -> Any:
        """A nested (inline) table as a :class:`Table`."""
        value = self._get(key, default)
        if key not in self.data:
            return value
        if not isinstance(value, dict):
            raise self._wrong(key, "a table", value)
        return Table(value, self.section, f"{self.name(key)}.")

    def table_list(self, key: str) -> list[Table]:
        """An array of inline tables, each as a :class:`Table` (absent -> empty)."""
        value = self._get(key, [])
        if not isinstance(value, list):
            raise self._wrong(key, "an array of tables", value)
        tables = []
        for index, item in enumerate(value):
            name = f"{self.name(key)}[{index}]"
            if not isinstance(item, dict):
                raise self.section.error(name, f"expected a table, got {describe(item)}")
            tables.append(Table(item, self.section, f"{name}."))
        return tables

    def path(self, key: str, base: Path, default: Any = _MISSING) -> Any:
        """A filesystem path; relative paths are taken relative to ``base``."""
        value = self.string(key, default)
        if key not in self.data:
            return value
        if "\x00" in value:
            raise self.error(key, "path contains a NUL character")
        return base / Path(value)
