"""Scraping the real KMS's /metrics and /readyz over HTTP."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from email.message import Message
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.support.kmsproc import KmsProcess

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def http_request(url: str, method: str = "GET") -> tuple[int, Message, bytes]:
    """``method`` ``url`` with urllib (blocking): (status, headers, body), HTTP errors included."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read()


def _get(url: str) -> tuple[int, str, bytes]:
    status, headers, body = http_request(url)
    return status, headers.get("Content-Type", ""), body


async def http_get(url: str) -> tuple[int, str, bytes]:
    """GET ``url`` with urllib in a worker thread: (status, content type, body)."""
    return await trio.to_thread.run_sync(_get, url)


async def scrape(base: str) -> Samples:
    """Every sample of /metrics, parsed by prometheus-client's own parser."""
    status, content_type, body = await http_get(f"{base}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample called ``name`` whose labels include ``labels``."""
    found = [
        v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= dict(ls).items()
    ]
    assert len(found) == 1, f"{len(found)} samples {name}{labels}"
    return found[0]


async def metrics_base(kms: KmsProcess) -> str:
    """The http://host:port the KMS says it serves metrics on."""
    line = (await kms.wait_for(r"serving metrics on http://\S+/metrics"))[0]
    match = re.search(r"http://(\S+)/metrics", line)
    assert match is not None
    return f"http://{match.group(1)}"


async def wait_ready(base: str, ready: bool, timeout: float = 15.0) -> dict[str, Any]:
    """Poll /readyz until it says ``ready`` (200) or not (503); return the body."""
    with trio.fail_after(timeout):
        while True:
            status, content_type, body = await http_get(f"{base}/readyz")
            assert content_type == "application/json"
            doc = json.loads(body)
            assert status == (200 if doc["ready"] else 503)
            if doc["ready"] is ready:
                return doc
            await trio.sleep(0.05)
