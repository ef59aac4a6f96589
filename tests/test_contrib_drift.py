"""The alert rules and the dashboard cannot drift from the code: every series they query (metric
names, the labels they match or group by, the label values they name, the labels their legends
and annotations print) exists in a real scrape of `tmkms start` while a node signs.

The scrape is Prometheus's own: the real server scrapes the real KMS every second and loads
contrib/prometheus/tmkms-rules.yml, so the rules are read by Prometheus's parser and
evaluated on real data (no evaluation errors, nothing firing in a healthy run, and the
double-sign alert firing once the node asks for a conflicting vote). `up`, `job` and
`instance` come from Prometheus, as they do in production.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import trio
from nacl.signing import SigningKey

from kms.protocol.messages import SignedMsgType
from kms.sim.consensus import make_proposal, make_vote, random_block_id
from kms.sim.node import SignerClient, simulated_node
from kms.transport.address import Address
from tests.support.grafana import dashboard_queries, substitute
from tests.support.kmsproc import chain_toml, free_tcp_port, tmkms_start, validator_toml, write_key
from tests.support.metrics import metrics_base
from tests.support.promtool import literal_values, prometheus_server, references

RULES = Path(__file__).resolve().parent.parent / "contrib" / "prometheus" / "tmkms-rules.yml"
JOB = "tmkms"  # the job name tmkms-rules.yml expects (TmkmsDown)
# What the dashboard's variables are when "All" is chosen
GRAFANA_VARIABLES = {"$job": JOB, "$instance": ".*", "$chain": ".*"}

#: metric name -> label name -> values seen
Index = dict[str, dict[str, set[str]]]


@attrs.frozen
class Use:
    """A PromQL expression of the rules or the dashboard, and labels it prints."""

    where: str
    expr: str
    printed: frozenset[str] = frozenset()


def index_series(series: Iterable[dict[str, str]]) -> Index:
    """Label sets (with ``__name__``) -> metric -> label -> values."""
    index: Index = {}
    for labels in series:
        metric = index.setdefault(labels["__name__"], {})
        for name, value in labels.items():
            if name != "__name__":
                metric.setdefault(name, set()).add(value)
    return index


def drift_problems(uses: Iterable[Use], index: Index) -> list[str]:
    """Everything the expressions refer to that the scrape does not have, one line each."""
    problems = []
    for use in uses:
        refs = references(substitute(use.expr))
        seen_labels: set[str] = set()
        for selector in refs.selectors:
            if selector.metric is None:
                problems.append(f"{use.where}: a selector without a metric name")
                continue
            labels = index.get(selector.metric)
            if labels is None:
                problems.append(f"{use.where}: metric {selector.metric} is not in the scrape")
                continue
            seen_labels |= labels.keys()
            for matcher in selector.matchers:
                if matcher.label not in labels:
                    problems.append(
                        f"{use.where}: {selector.metric} has no label {matcher.label!r}"
                    )
                    continue
                for value in literal_values(matcher) or ():
                    if value not in labels[matcher.label]:
                        problems.append(
                            f"{use.where}: {selector.metric} has no {matcher.label}={value!r} "
                            f"(seen: {', '.join(sorted(labels[matcher.label]))})"
                        )
        for label in sorted(refs.grouping | use.printed):
            if refs.metrics <= index.keys() and label not in seen_labels:
                problems.append(f"{use.where}: label {label!r} is on none of its series")
    return problems


def rule_uses(groups: list[dict[str, Any]]) -> list[Use]:
    """The rules as Prometheus loaded them: the query and the labels its annotations print."""
    uses = []
    for group in groups:
        for rule in group["rules"]:
            printed = set()
            for text in rule.get("annotations", {}).values():
                printed |= set(re.findall(r"\$labels\.(\w+)", text))
            uses.append(Use(f"rule {rule['name']}", rule["query"], frozenset(printed)))
    return uses


def dashboard_uses() -> list[Use]:
    return [Use(q.where, q.expr, frozenset(q.legend_labels)) for q in dashboard_queries()]


# --- the checker on its own ----------------------------------------------------------------------

_INDEX = index_series(
    [
        {"__name__": "tmkms_refusals_total", "chain_id": "a-1", "reason": "double_sign"},
        {"__name__": "tmkms_refusals_total", "chain_id": "a-1", "reason": "max_height"},
        {"__name__": "up", "job": "tmkms", "instance": "k:1"},
    ]
)


def test_checker_passes_what_is_there() -> None:
    uses = [
        Use("r1", 'sum by (chain_id) (increase(tmkms_refusals_total{reason="double_sign"}[5m]))'),
        Use("r2", 'tmkms_refusals_total{reason=~"double_sign|max_height"}', frozenset({"reason"})),
        Use("r3", 'up{job=~"$job"} == 0', frozenset({"instance"})),
    ]
    assert drift_problems(uses, _INDEX) == []


def test_checker_names_every_kind_of_drift() -> None:
    uses = [
        Use("renamed metric", "rate(tmkms_refusal_total[5m])"),
        Use("renamed label", 'tmkms_refusals_total{cause="double_sign"}'),
        Use("renamed value", 'tmkms_refusals_total{reason=~"double_sign|conflict"}'),
        Use("grouping", "sum by (chain) (tmkms_refusals_total)"),
        Use("printed", "tmkms_refusals_total", frozenset({"validator"})),
    ]
    assert drift_problems(uses, _INDEX) == [
        "renamed metric: metric tmkms_refusal_total is not in the scrape",
        "renamed label: tmkms_refusals_total has no label 'cause'",
        "renamed value: tmkms_refusals_total has no reason='conflict' "
        "(seen: double_sign, max_height)",
        "grouping: label 'chain' is on none of its series",
        "printed: label 'validator' is on none of its series",
    ]


# --- against the real process ------------------------------------------------------------------


@attrs.define
class Signer:
    """Signs height after height until told to stop; remembers the last height signed."""

    client: SignerClient
    rng: random.Random = attrs.field(factory=lambda: random.Random(14))
    height: int = 0
    stop: trio.Event = attrs.field(factory=trio.Event)
    stopped: trio.Event = attrs.field(factory=trio.Event)

    async def run(self) -> None:
        try:
            while not self.stop.is_set():
                height = self.height + 1
                block = random_block_id(self.rng)
                reply = await self.client.sign_proposal(make_proposal(height, 0, block))
                assert reply.error is None
                for step in (SignedMsgType.PREVOTE, SignedMsgType.PRECOMMIT):
                    vote = await self.client.sign_vote(make_vote(step, height, 0, block, b"x"))
                    assert vote.error is None
                self.height = height
                await trio.sleep(0.02)
        finally:
            self.stopped.set()


def write_home(tmp_path: Path, chain: str, node_port: int) -> Path:
    write_key(tmp_path / "secrets" / f"{chain}.key", SigningKey.generate())
    write_key(tmp_path / "secrets" / "kms-identity.key", SigningKey.generate())
    (tmp_path / "state").mkdir()
    config = tmp_path / "tmkms.toml"
    config.write_text(
        chain_toml(chain, tmp_path)
        + validator_toml(chain, f"tcp://127.0.0.1:{node_port}", tmp_path, "v0.38")
        + '\n[metrics]\nbind_address = "127.0.0.1:0"\n'
    )
    return config


def grafana_query(expr: str) -> str:
    """A dashboard query as Grafana sends it with "All" chosen in every variable."""
    expr = substitute(expr)
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


async def test_rules_and_dashboard_query_only_series_a_signing_kms_exports(
    tmp_path: Path,
) -> None:
    chain = "drift-1"
    node_port = free_tcp_port()
    config = write_home(tmp_path, chain, node_port)
    with trio.fail_after(120):
        async with (
            tmkms_start(config) as kms,
            simulated_node(chain, Address(scheme="tcp", host="127.0.0.1", port=node_port)) as node,
            trio.open_nursery() as nursery,
        ):
            target = (await metrics_base(kms)).removeprefix("http://")
            client = await node.accept()
            signer = Signer(client)
            nursery.start_soon(signer.run)
            async with prometheus_server(tmp_path / "prometheus", {JOB: target}, [RULES]) as prom:
                # three scrapes while signing, and every rule evaluated since
                await prom.wait_for(
                    f'count_over_time(tmkms_signatures_total{{job="{JOB}"}}[1m]) >= 3'
                )
                await prom.wait_for(f'sum(tmkms_signatures_total{{job="{JOB}"}}) > 0')
                groups = (await prom.api("rules"))["groups"]
                while any(
                    r["lastEvaluation"].startswith("0001-") for g in groups for r in g["rules"]
                ):
                    await trio.sleep(0.2)
                    groups = (await prom.api("rules"))["groups"]
                series = await prom.api("series", ("match[]", f'{{job="{JOB}"}}'))
                index = index_series(series)

                uses = rule_uses(groups) + dashboard_uses()
                assert len(rule_uses(groups)) >= 8
                checked = {m for u in uses for m in references(substitute(u.expr)).metrics}
                assert len(checked) >= 15, checked
                problems = drift_problems(uses, index)
                assert not problems, "drift from the scrape:\n" + "\n".join(problems)

                # Prometheus evaluated every rule on this data without an error, and a
                # healthy run fires nothing.
                for group in groups:
                    for rule in group["rules"]:
                        assert rule["health"] == "ok", rule
                        assert rule["state"] != "firing", rule
                # Every dashboard query runs; those without a "> 0" filter show data.
                for query in dashboard_queries():
                    result = await prom.query(grafana_query(query.expr))
                    if not re.search(r"[<>=]=?\s*[0-9.]+\s*$", query.expr):
                        assert result, f"{query.where} shows nothing: {query.expr}"

                # The node asks for a conflicting precommit: the alert fires, on real data.
                signer.stop.set()
                await signer.stopped.wait()
                conflicting = make_vote(
                    SignedMsgType.PRECOMMIT, signer.height, 0, random_block_id(signer.rng)
                )
                assert (await client.sign_vote(conflicting)).error is not None
                (alert,) = await prom.wait_for(
                    'ALERTS{alertname="TmkmsDoubleSignRefused", alertstate="firing"}'
                )
                labels = alert["metric"]
                assert labels["chain_id"] == chain and labels["reason"] == "double_sign"
                assert labels["validator"] == f"tcp://127.0.0.1:{node_port}"
                assert labels["severity"] == "critical"
            await client.aclose()
