"""Reading the Grafana dashboard (contrib/grafana/tmkms.json): its panels and PromQL queries."""

from __future__ import annotations

import json
import re
from typing import Any

import attrs

from tests.support import REPO

DASHBOARD = REPO / "contrib" / "grafana" / "tmkms.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# Grafana's interval variables, as an operator's Grafana would fill them in
INTERVALS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "6h"}
_LABEL_VALUES = re.compile(r"label_values\((?P<selector>.+),\s*(?P<label>\w+)\)\Z")


@attrs.frozen
class Query:
    """One PromQL query of the dashboard: where it is, the expression, its legend."""

    where: str
    expr: str
    legend: str = ""

    @property
    def legend_labels(self) -> set[str]:
        """The labels its legend shows (``{{label}}``)."""
        return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", self.legend))


def load_dashboard() -> dict[str, Any]:
    """The dashboard's JSON."""
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows included; rows themselves left out."""
    found = []
    for panel in doc["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def substitute(expr: str) -> str:
    """``expr`` with Grafana's interval variables filled in (other variables are in strings)."""
    for name, value in INTERVALS.items():
        expr = expr.replace(name, value)
    return expr


def dashboard_queries(doc: dict[str, Any] | None = None) -> list[Query]:
    """Every panel target's and every template variable's PromQL (label_values: its selector)."""
    doc = doc if doc is not None else load_dashboard()
    queries = [
        Query(f"panel {p['title']!r} target {t['refId']}", t["expr"], t.get("legendFormat", ""))
        for p in panels(doc)
        for t in p["targets"]
    ]
    for variable in doc["templating"]["list"]:
        match = _LABEL_VALUES.match(variable["query"]["query"])
        assert match is not None, variable
        queries.append(
            Query(
                f"variable ${variable['name']}",
                match.group("selector"),
                "{{" + match.group("label") + "}}",
            )
        )
    return queries
