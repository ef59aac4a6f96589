"""Prometheus's own tools for the tests: `promtool`, a Prometheus server, and what a PromQL
expression refers to.

* :func:`promtool` runs the real binary (Debian's ``prometheus`` package ships it at
  /usr/bin/promtool; ``run-tests`` installs it when it can). Without it a test is skipped,
  except under ``CI=true``, where a missing promtool is a failure: a CI run must not pass
  by checking nothing.
* :func:`prometheus_server` runs the real Prometheus (same package, same rule) on a
  throw-away data folder, scraping given targets and loading given rule files, and
  :class:`PrometheusServer` asks its HTTP API (``/api/v1/...``) for what it loaded and saw.
* :func:`references` is a small PromQL reader, enough to list the metric names, label
  matchers and grouping labels an expression uses, so the rules and the dashboard can be
  compared with a real scrape. It tokenises (strings, numbers and durations, identifiers,
  Grafana ``$variables``) and walks the tokens: an identifier followed by ``(`` is a function
  or aggregation, ``by``/``without``/``on``/``ignoring``/``group_left``/``group_right``
  take a label list, a ``{...}`` holds matchers, ``[...]`` a range (skipped), and any other
  identifier that is not a keyword is a metric name. It does not validate PromQL:
  ``promtool check rules`` does that.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from kms.sim.process import terminate


def _tool(name: str, what: str) -> str:
    """Where ``name`` is; skip (or, under CI=true, fail) the test when it is not installed."""
    found = shutil.which(name)
    if found is not None:
        return found
    reason = (
        f"{name} ({what}) is not installed: "
        "apt-get install prometheus, or run ./run-tests as root, which installs it"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def promtool_path() -> str:
    """Where promtool is (see :func:`_tool`)."""
    return _tool("promtool", "Prometheus's rule checker")


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool ARGS...`` to completion (stdout and stderr captured)."""
    return subprocess.run(
        [promtool_path(), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


# --- a Prometheus server ----------------------------------------------------------------------


@attrs.define
class PrometheusServer:
    """A running Prometheus and its HTTP API (blocking calls are made in a worker thread)."""

    base: str
    process: trio.Process
    log: Path

    def _get(self, path: str, params: Sequence[tuple[str, str]]) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(list(params))}"
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                doc = json.load(reply)
        except urllib.error.HTTPError as exc:
            with exc:
                doc = json.load(exc)
        if doc.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params}: {doc}")
        return doc["data"]

    def ready(self) -> bool:
        """Whether ``/-/ready`` answers 200 (the server is up and its rules are loaded)."""
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:  # refused while starting; HTTPError 503 until ready
            return False

    async def api(self, path: str, *params: tuple[str, str]) -> Any:
        """``GET /api/v1/<path>`` and return its ``data`` (AssertionError on an API error)."""
        return await trio.to_thread.run_sync(self._get, f"/api/v1/{path}", params)

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the result vector (a scalar comes back as one unlabelled sample)."""
        data = await self.api("query", ("query", expr))
        if data["resultType"] == "vector":
            result: list[dict[str, Any]] = data["result"]
            return result
        return [{"metric": {}, "value": data["result"]}]

    async def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns something; TooSlowError shows Prometheus's log."""
        try:
            with trio.fail_after(timeout):
                while True:
                    result = await self.query(expr)
                    if result:
                        break
                    await trio.sleep(0.2)
        except trio.TooSlowError as exc:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"Prometheus never returned {expr!r}; log:\n{tail}") from exc
        return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _write_config(workdir: Path, targets: dict[str, str], rule_files: Sequence[Path]) -> Path:
    """prometheus.yml in ``workdir``: each target its own job, scraped every second."""
    workdir.mkdir(parents=True, exist_ok=True)
    lines = ["global:", "  scrape_interval: 1s", "  evaluation_interval: 1s", "rule_files:"]
    lines += [f"  - {json.dumps(str(path))}" for path in rule_files] or ["  []"]
    lines.append("scrape_configs:")
    for job, target in targets.items():
        lines += [
            f"  - job_name: {json.dumps(job)}",
            "    static_configs:",
            f"      - targets: [{json.dumps(target)}]",
        ]
    config = workdir / "prometheus.yml"
    config.write_text("\n".join(lines) + "\n")
    return config


@asynccontextmanager
async def prometheus_server(
    workdir: Path, targets: dict[str, str], rule_files: Sequence[Path] = ()
) -> AsyncIterator[PrometheusServer]:
    """Run Prometheus scraping ``targets`` (job name -> host:port) every second."""
    binary = _tool("prometheus", "the Prometheus server")
    config = _write_config(workdir, targets, rule_files)
    port = _free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = await trio.lowlevel.open_process(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", process, log)
    try:
        with trio.fail_after(30):
            while True:
                if process.returncode is not None:
                    raise AssertionError(f"prometheus exited: {log.read_text()[-3000:]}")
                if await trio.to_thread.run_sync(server.ready):
                    break
                await trio.sleep(0.1)
        yield server
    finally:
        await terminate(process)


# --- reading PromQL ----------------------------------------------------------------------------

#: Aggregations, binary-operator keywords and modifiers: never metric names.
KEYWORDS = frozenset(
    {
        "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
        "bool", "offset", "atan2", "inf", "nan",
    }
)  # fmt: skip
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
#: Aggregation operators, which may be followed by ``by (...)`` before their arguments.
AGGREGATIONS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>(?:0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)(?:[a-zA-Z]+[0-9]*)*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],:@])
    """,
    re.VERBOSE,
)


@attrs.frozen
class Matcher:
    """One label matcher: ``label op "value"`` (op is =, !=, =~ or !~)."""

    label: str
    op: str
    value: str


@attrs.frozen
class Selector:
    """A vector selector: a metric name (None for ``{__name__=...}`` forms) and its matchers."""

    metric: str | None
    matchers: tuple[Matcher, ...] = ()


@attrs.frozen
class References:
    """What an expression refers to."""

    selectors: tuple[Selector, ...]
    grouping: frozenset[str]

    @property
    def metrics(self) -> frozenset[str]:
        """Every metric name the expression selects."""
        return frozenset(s.metric for s in self.selectors if s.metric is not None)

    @property
    def labels(self) -> frozenset[str]:
        """Every label the expression matches on or groups by."""
        matched = {m.label for s in self.selectors for m in s.matchers}
        return frozenset(matched | self.grouping)


def tokenize(expr: str) -> list[tuple[str, str]]:
    """``(kind, text)`` tokens of ``expr``; ValueError at a character no token starts with."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[pos : pos + 20]!r}")
        pos = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append((kind, match.group()))
    return tokens


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    body = text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def references(expr: str) -> References:
    """The selectors and grouping labels of a PromQL expression (see the module docstring)."""
    tokens = tokenize(expr)
    selectors: list[Selector] = []
    grouping: set[str] = set()
    i = 0

    def read_matchers(start: int) -> tuple[tuple[Matcher, ...], int]:
        """Matchers from just after ``{`` at ``start``; returns them and the index after ``}``."""
        found: list[Matcher] = []
        j = start
        while tokens[j] != ("op", "}"):
            if tokens[j] == ("op", ","):
                j += 1
                continue
            (kind, label), (_, op), (value_kind, value) = tokens[j : j + 3]
            if kind not in ("ident", "string") or op not in ("=", "!=", "=~", "!~"):
                raise ValueError(f"bad label matcher near {label!r} in {expr!r}")
            if value_kind != "string":
                raise ValueError(f"label {label!r} is not matched against a string in {expr!r}")
            found.append(Matcher(label.strip("\"'`"), op, _unquote(value)))
            j += 3
        return tuple(found), j + 1

    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ("end", "")
        if kind == "ident" and text.lower() in _GROUPING:
            i += 1
            if following == ("op", "("):
                i += 1
                while tokens[i] != ("op", ")"):
                    if tokens[i][0] == "ident":
                        grouping.add(tokens[i][1])
                    i += 1
                i += 1
            continue
        if kind == "ident" and following == ("op", "("):
            i += 2  # a function or an aggregation: its arguments follow
            continue
        if kind == "ident" and text in AGGREGATIONS and following[1].lower() in _GROUPING:
            i += 1  # `sum by (x) (...)`: the grouping comes first
            continue
        if kind == "ident" and text.lower() not in KEYWORDS:
            matchers: tuple[Matcher, ...] = ()
            i += 1
            if following == ("op", "{"):
                matchers, i = read_matchers(i + 1)
            selectors.append(Selector(text, matchers))
            continue
        if (kind, text) == ("op", "{"):
            matchers, i = read_matchers(i + 1)
            names = [m.value for m in matchers if m.label == "__name__" and m.op == "="]
            rest = tuple(m for m in matchers if m.label != "__name__")
            selectors.append(Selector(names[0] if names else None, rest))
            continue
        if (kind, text) == ("op", "["):
            while tokens[i] != ("op", "]"):  # a range or subquery: durations and variables
                i += 1
        i += 1
    return References(tuple(selectors), frozenset(grouping))


def literal_values(matcher: Matcher) -> list[str] | None:
    """The label values a matcher names literally, or None when it is a real pattern.

    ``type="prevote"`` -> ``["prevote"]``; ``reason=~"a|b"`` -> ``["a", "b"]``; a regex with
    other operators, or a value holding a Grafana variable, -> None.
    """
    if "$" in matcher.value:
        return None
    if matcher.op in ("=", "!="):
        return [matcher.value]
    if re.fullmatch(r"[A-Za-z0-9_]+(?:\|[A-Za-z0-9_]+)*", matcher.value):
        return matcher.value.split("|")
    return None
