"""contrib/grafana/tmkms.json: an importable Grafana dashboard (a DS_PROMETHEUS input, every
query on it), every query valid PromQL for Prometheus's own parser (promtool), and the panels
the issue asks for. That its series exist in a real scrape is tests/test_contrib_drift.py's."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

import pytest

from tests.support.grafana import (
    DATASOURCE,
    Query,
    dashboard_queries,
    load_dashboard,
    panels,
    substitute,
)
from tests.support.promtool import promtool, references


def test_dashboard_is_an_importable_grafana_export() -> None:
    doc = load_dashboard()
    (source,) = doc["__inputs"]
    assert source["name"] == "DS_PROMETHEUS"
    assert (source["type"], source["pluginId"]) == ("datasource", "prometheus")
    assert doc["uid"] and doc["title"] and isinstance(doc["schemaVersion"], int)
    required = {(r["type"], r["id"]) for r in doc["__requires"]}
    assert ("datasource", "prometheus") in required
    every = [*doc["panels"], *(q for p in doc["panels"] for q in p.get("panels", []))]
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(doc):
        assert ("panel", panel["type"]) in required, panel["type"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        assert panel.get("description"), f"panel {panel['title']!r} explains itself"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE
    for variable in doc["templating"]["list"]:
        assert variable["datasource"] == DATASOURCE


def test_panels_fit_the_grid_without_overlapping() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[x, y]!r}"
                cells[x, y] = panel["title"]


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """Each query as a recording rule in a (JSON, hence YAML) rule file: promtool parses it."""
    queries = dashboard_queries()
    rules = [
        {"record": f"dashboard:query_{n}", "expr": substitute(q.expr)}
        for n, q in enumerate(queries)
    ]
    path = tmp_path / "dashboard-queries.json"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=1))
    done = promtool("check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def test_legends_name_labels_the_query_keeps() -> None:
    """A ``{{label}}`` in a legend must survive the query's aggregation (else it shows empty)."""
    for query in dashboard_queries():
        refs = references(substitute(query.expr))
        if refs.grouping and " by (" in query.expr:
            assert query.legend_labels <= refs.grouping, query


def _uses(query: Query, metric: str, by: Collection[str]) -> bool:
    refs = references(substitute(query.expr))
    return metric in refs.metrics and set(by) <= refs.grouping


@pytest.mark.parametrize(
    ("what", "metric", "by", "text"),
    [
        ("signatures per chain", "tmkms_signatures_total", {"chain_id"}, ""),
        ("refusals by reason", "tmkms_refusals_total", {"reason"}, ""),
        ("p50 sign latency by phase", "tmkms_sign_duration_seconds_bucket", {"phase", "le"},
         "histogram_quantile(0.5,"),
        ("p99 sign latency by phase", "tmkms_sign_duration_seconds_bucket", {"phase", "le"},
         "histogram_quantile(0.99,"),
        ("connection state", "tmkms_validator_connected", set(), ""),
        ("reconnects", "tmkms_validator_reconnects_total", set(), ""),
        ("provider health", "tmkms_provider_reachable", {"provider"}, ""),
        ("signer errors", "tmkms_provider_signer_errors_total", {"provider"}, ""),
        # high availability ([etcd]), per KMS host
        ("etcd reachability", "tmkms_etcd_reachable", {"instance"}, ""),
        ("check-and-sets by outcome", "tmkms_ha_cas_total", {"instance", "outcome", "cause"}, ""),
        ("lost share", "tmkms_ha_cas_total", {"instance", "chain_id"}, 'outcome="lost"'),
        ("refused share", "tmkms_ha_cas_total", {"instance", "chain_id"}, 'outcome="refused"'),
        ("p99 check-and-set latency", "tmkms_ha_cas_duration_seconds_bucket", {"instance", "le"},
         "histogram_quantile(0.99,"),
    ],
)  # fmt: skip
def test_the_dashboard_shows(what: str, metric: str, by: set[str], text: str) -> None:
    found = [q for q in dashboard_queries() if _uses(q, metric, by) and text in q.expr]
    assert found, f"no query shows {what}"
