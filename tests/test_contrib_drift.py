"""The alert rules and the dashboard cannot drift from the code: every series they query (metric
names, the labels they match or group by, the label values they name, the labels their legends
and annotations print) exists in a real scrape of `tmkms start` while a node signs.

The scrape is Prometheus's own: the real server scrapes the real KMS every second and loads
contrib/prometheus/tmkms-rules.yml, so the rules are read by Prometheus's parser and
evaluated on real data (no evaluation errors, nothing firing in a healthy run, and the
double-sign alert firing once the node asks for a conflicting vote). `up`, `job` and
`instance` come from Prometheus, as they do in production.

High availability has its own run: a KMS with `[etcd]` on a real 3-member etcd cluster
exports the `tmkms_ha_*` and `tmkms_etcd_*` series, and every rule and query is checked
against its scrape once it has won, lost and had refused check-and-sets (another host
raising the watermark ahead of it, then etcd losing its quorum); the HA alerts go pending on
that data, and a healthy HA run leaves them inactive. Without etcd installed that run is
skipped, and every rule and query is still checked against what `kms.ops.exposition` emits
(with every check-and-set outcome and cause), with no process running.
"""

from __future__ import annotations

import contextlib
import functools
import random
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import trio
from nacl.signing import SigningKey
from prometheus_client.parser import text_string_to_metric_families

from kms.chain.state import BlockRef, SignState
from kms.ha.admin import RaiseOutcome, raise_watermark
from kms.ha.client import EtcdClient
from kms.ha.errors import RefusalCause
from kms.ha.watermark import parse_watermark, watermark_key
from kms.ops.exposition import build_registry, render
from kms.ops.stats import CAS_OUTCOMES, HaMetrics, KmsMetrics
from kms.protocol.messages import SignedMsgType
from kms.sim.consensus import make_proposal, make_vote, random_block_id
from kms.sim.node import SignerClient, simulated_node
from kms.transport.address import Address
from tests.support.etcd import EtcdCluster
from tests.support.grafana import dashboard_queries, substitute
from tests.support.kmsproc import (
    chain_toml,
    free_tcp_port,
    run_tmkms,
    tmkms_start,
    validator_toml,
    write_key,
)
from tests.support.metrics import metrics_base
from tests.support.promtool import PrometheusServer, literal_values, prometheus_server, references

RULES = Path(__file__).resolve().parent.parent / "contrib" / "prometheus" / "tmkms-rules.yml"
JOB = "tmkms"  # the job name tmkms-rules.yml expects (TmkmsDown)
# What the dashboard's variables are when "All" is chosen
GRAFANA_VARIABLES = {"$job": JOB, "$instance": ".*", "$chain": ".*"}

#: The metric families only a KMS with [etcd] exports (kms.ops.exposition's ``_ha``; pinned by
#: test_only_a_kms_with_etcd_exports_the_ha_series).
HA_PREFIXES = ("tmkms_ha_", "tmkms_etcd_")
#: The alerts on them, evaluated on real data by the [etcd] run.
HA_ALERTS = (
    "TmkmsEtcdUnreachable",
    "TmkmsHaCheckAndSetsRefused",
    "TmkmsHaCheckAndSetsLost",
    "TmkmsHaCheckAndSetLatencyHigh",
)

#: metric name -> label name -> values seen
Index = dict[str, dict[str, set[str]]]


@attrs.frozen
class Use:
    """A PromQL expression of the rules or the dashboard, and labels it prints."""

    where: str
    expr: str
    printed: frozenset[str] = frozenset()

    @property
    def needs_etcd(self) -> bool:
        """Whether it queries a series only a KMS with [etcd] exports."""
        return any(m.startswith(HA_PREFIXES) for m in references(substitute(self.expr)).metrics)


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


async def evaluated_rules(prom: PrometheusServer) -> list[dict[str, Any]]:
    """The rule groups as Prometheus loaded them, once it evaluated every rule."""
    groups: list[dict[str, Any]] = (await prom.api("rules"))["groups"]
    while not groups or any(
        r["lastEvaluation"].startswith("0001-") for g in groups for r in g["rules"]
    ):
        await trio.sleep(0.2)
        groups = (await prom.api("rules"))["groups"]
    return groups


def rule_states(groups: list[dict[str, Any]]) -> dict[str, str]:
    """Alert name -> inactive, pending or firing."""
    return {r["name"]: r["state"] for g in groups for r in g["rules"] if r["type"] == "alerting"}


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


# --- against what the exposition code emits -----------------------------------------------------


@attrs.frozen
class _Chain:
    chain_id: str
    hrs: tuple[int, int, int] = (5, 0, 2)


def exposition_index(*, ha: bool) -> Index:
    """The series of one chain, validator and provider as kms.ops.exposition renders them
    (with ``ha``: [etcd], every check-and-set outcome and refusal cause counted), labelled
    as Prometheus stores them (plus ``job``, ``instance``, and ``up``)."""
    metrics = KmsMetrics()
    validator = metrics.validator("expo-1", "tcp://127.0.0.1:26658", "softsign")
    validator.signed(1, 5, 0)
    metrics.add_chain(_Chain("expo-1"))
    if ha:
        metrics.ha = HaMetrics()
        metrics.ha.cas_won("expo-1", 0.002)
        metrics.ha.cas_lost("expo-1")
        for cause in RefusalCause:
            metrics.ha.cas_refused("expo-1", cause.value)
    target = {"job": JOB, "instance": "127.0.0.1:9181"}
    series = [{"__name__": "up", **target}]
    for family in text_string_to_metric_families(render(build_registry(metrics)).decode()):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if v}  # "" is no label
            series.append({"__name__": sample.name, **labels, **target})
    return index_series(series)


def test_only_a_kms_with_etcd_exports_the_ha_series() -> None:
    with_etcd, without = exposition_index(ha=True), exposition_index(ha=False)
    added = with_etcd.keys() - without.keys()
    assert added == {m for m in with_etcd if m.startswith(HA_PREFIXES)}
    assert {"tmkms_etcd_reachable", "tmkms_ha_cas_total"} <= added
    assert "tmkms_ha_cas_duration_seconds_bucket" in added
    outcomes = with_etcd["tmkms_ha_cas_total"]["outcome"]
    assert outcomes == set(CAS_OUTCOMES)
    # the refusal counter's ha_* reasons exist without [etcd] too (at zero)
    assert "ha_lost" in without["tmkms_refusals_total"]["reason"]


async def test_rules_and_dashboard_query_only_series_the_exposition_emits(
    tmp_path: Path,
) -> None:
    """Every rule (read by Prometheus) and dashboard query against kms.ops.exposition's
    series: runs where etcd is not installed, and checks the HA rules there too."""
    with trio.fail_after(60):
        async with prometheus_server(tmp_path / "prometheus", {}, [RULES]) as prom:
            groups = await evaluated_rules(prom)
    uses = rule_uses(groups) + dashboard_uses()
    assert {u.where for u in uses if u.needs_etcd} >= {f"rule {n}" for n in HA_ALERTS}
    assert sum(u.needs_etcd for u in dashboard_uses()) >= 4
    problems = drift_problems(uses, exposition_index(ha=True))
    assert not problems, "drift from kms.ops.exposition:\n" + "\n".join(problems)


# --- against the real process ------------------------------------------------------------------


@attrs.define
class Signer:
    """Signs height after height until told to stop; remembers the last height signed."""

    client: SignerClient
    rng: random.Random = attrs.field(factory=lambda: random.Random(14))
    height: int = 0
    pause: float = 0.02  # seconds between heights
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
                await trio.sleep(self.pause)
        finally:
            self.stopped.set()


def write_home(tmp_path: Path, chain: str, node_port: int, extra: str = "") -> Path:
    write_key(tmp_path / "secrets" / f"{chain}.key", SigningKey.generate())
    write_key(tmp_path / "secrets" / "kms-identity.key", SigningKey.generate())
    (tmp_path / "state").mkdir()
    config = tmp_path / "tmkms.toml"
    config.write_text(
        chain_toml(chain, tmp_path)
        + validator_toml(chain, f"tcp://127.0.0.1:{node_port}", tmp_path, "v0.38")
        + '\n[metrics]\nbind_address = "127.0.0.1:0"\n'
        + extra
    )
    return config


#: A query that ends in a comparison ("> 0"): it may rightly show nothing.
FILTERED = re.compile(r"[<>=]=?\s*[0-9.]+\s*$")


def grafana_query(expr: str) -> str:
    """A dashboard query as Grafana sends it with "All" chosen in every variable."""
    expr = substitute(expr)
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


@contextlib.asynccontextmanager
async def scraped_signing_kms(
    config: Path,
    chain: str,
    node_port: int,
    tmp_path: Path,
    make_signer: Callable[[SignerClient], Signer],
) -> AsyncIterator[tuple[PrometheusServer, Signer, SignerClient]]:
    """`tmkms start` with ``config`` dialled by a simulated node of ``chain`` (on
    ``node_port``) whose :class:`Signer` keeps asking, and a real Prometheus scraping it
    with the rules: the server, the signer and the node's end of the connection."""
    address = Address(scheme="tcp", host="127.0.0.1", port=node_port)
    async with (
        tmkms_start(config) as kms,
        simulated_node(chain, address) as node,
        trio.open_nursery() as nursery,
    ):
        target = (await metrics_base(kms)).removeprefix("http://")
        client = await node.accept()
        signer = make_signer(client)
        nursery.start_soon(signer.run)
        async with prometheus_server(tmp_path / "prometheus", {JOB: target}, [RULES]) as prom:
            yield prom, signer, client


async def test_rules_and_dashboard_query_only_series_a_signing_kms_exports(
    tmp_path: Path,
) -> None:
    chain = "drift-1"
    node_port = free_tcp_port()
    config = write_home(tmp_path, chain, node_port)
    with trio.fail_after(120):
        async with scraped_signing_kms(config, chain, node_port, tmp_path, Signer) as (
            prom,
            signer,
            client,
        ):
            # three scrapes while signing, and every rule evaluated since
            await prom.wait_for(f'count_over_time(tmkms_signatures_total{{job="{JOB}"}}[1m]) >= 3')
            await prom.wait_for(f'sum(tmkms_signatures_total{{job="{JOB}"}}) > 0')
            groups = await evaluated_rules(prom)
            series = await prom.api("series", ("match[]", f'{{job="{JOB}"}}'))
            index = index_series(series)

            # Without [etcd] the HA series do not exist: those rules and panels are the
            # [etcd] run's (below).
            uses = [u for u in rule_uses(groups) + dashboard_uses() if not u.needs_etcd]
            ha_rules = {u.where for u in rule_uses(groups) if u.needs_etcd}
            assert ha_rules == {f"rule {n}" for n in HA_ALERTS}
            assert len(rule_uses(groups)) - len(ha_rules) >= 8
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
                shown = Use(query.where, query.expr)
                if not shown.needs_etcd and not FILTERED.search(query.expr):
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


# --- against a real KMS with [etcd] --------------------------------------------------------------


def etcd_toml(endpoints: list[str], prefix: str, host: str) -> str:
    quoted = ", ".join(f'"{e}"' for e in endpoints)
    return (
        f'\n[etcd]\nendpoints = [{quoted}]\nprefix = "{prefix}"\nhost = "{host}"\ntimeout = 1.0\n'
    )


async def repeat_until(
    prom: PrometheusServer, expr: str, action: Callable[[], Awaitable[None]], timeout: float
) -> list[dict[str, Any]]:
    """Run ``action`` again and again until Prometheus returns something for ``expr``."""
    with trio.fail_after(timeout):
        while True:
            await action()
            result = await prom.query(expr)
            if result:
                return result


def pending(alert: str) -> str:
    return f'ALERTS{{alertname="{alert}", alertstate="pending"}}'


async def test_ha_rules_and_dashboard_on_a_kms_with_etcd(
    etcd: EtcdCluster, client: EtcdClient, tmp_path: Path
) -> None:
    chain = "drift-ha-1"
    prefix = f"/drift-{uuid.uuid4().hex[:8]}/"
    key = watermark_key(prefix, chain)
    node_port = free_tcp_port()
    config = write_home(tmp_path, chain, node_port, etcd_toml(etcd.endpoints, prefix, "kms-drift"))
    # A new etcd: the operator creates the watermark (tmkms start never does), from the
    # local state (none yet: height 0).
    done = await trio.to_thread.run_sync(
        functools.partial(run_tmkms, "state", "init", "-c", config)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    stored = await trio.to_thread.run_sync(etcd.get_value, key.decode())
    assert stored is not None and parse_watermark(stored).state.hrs == (0, 0, 0)
    rng = random.Random(15)

    with trio.fail_after(180):
        async with scraped_signing_kms(
            config, chain, node_port, tmp_path, lambda c: Signer(c, rng, pause=0.5)
        ) as (prom, signer, node_client):
            # A healthy HA run: won check-and-sets over three scrapes, every rule
            # evaluated since; nothing fires, and the HA alerts are not even pending
            # (the latency alert may be: its threshold follows this test's fast blocks).
            await prom.wait_for(
                f'count_over_time(tmkms_ha_cas_total{{job="{JOB}", outcome="won"}}[1m]) >= 3'
            )
            await prom.wait_for(f'tmkms_etcd_reachable{{job="{JOB}"}} == 1')
            groups = await evaluated_rules(prom)
            states = rule_states(groups)
            for alert in HA_ALERTS[:3]:
                assert states[alert] == "inactive", (alert, states)
            assert "firing" not in states.values(), states
            signer.stop.set()
            await signer.stopped.wait()

            # Another host signs far ahead: every request of this node is lost to it,
            # until most of this host's check-and-sets are lost.
            ahead = signer.height + 10_000
            raised = await raise_watermark(
                client, key, SignState(ahead, 0, 0, BlockRef.NIL), "kms-other"
            )
            assert raised.outcome is RaiseOutcome.RAISED
            height = signer.height

            async def lose() -> None:
                nonlocal height
                for _ in range(10):
                    height += 1
                    vote = make_vote(SignedMsgType.PREVOTE, height, 0, random_block_id(rng))
                    reply = await node_client.sign_vote(vote)
                    assert reply.error is not None and reply.error.code == 2, reply
                await trio.sleep(0.2)

            await repeat_until(prom, pending("TmkmsHaCheckAndSetsLost"), lose, 40)
            lost = await prom.wait_for(f'tmkms_refusals_total{{job="{JOB}", reason="ha_lost"}} > 0')
            assert lost[0]["metric"]["chain_id"] == chain

            # etcd loses its quorum: refused, then unreachable.
            height = ahead
            await trio.to_thread.run_sync(etcd.lose_quorum)
            try:

                async def refused() -> None:
                    nonlocal height
                    height += 1
                    vote = make_vote(SignedMsgType.PREVOTE, height, 0, random_block_id(rng))
                    reply = await node_client.sign_vote(vote)
                    assert reply.error is not None and reply.error.code == 1, reply

                await repeat_until(prom, pending("TmkmsHaCheckAndSetsRefused"), refused, 60)
                await prom.wait_for(pending("TmkmsEtcdUnreachable"))
            finally:
                await trio.to_thread.run_sync(etcd.regain_quorum)

            # Back: reachable, and this host signs again (above whatever a txn abandoned
            # during the outage may have left).
            await prom.wait_for(f'tmkms_etcd_reachable{{job="{JOB}"}} == 1', timeout=30)
            height += 100

            async def sign() -> None:
                nonlocal height
                height += 1
                block = random_block_id(rng)
                reply = await node_client.sign_proposal(make_proposal(height, 0, block))
                if reply.error is not None:
                    await trio.sleep(0.2)

            await repeat_until(
                prom,
                f'increase(tmkms_ha_cas_total{{job="{JOB}", outcome="won"}}[20s]) > 0',
                sign,
                30,
            )

            # Every series, label and value the rules and the dashboard name now exists.
            groups = await evaluated_rules(prom)
            series = await prom.api("series", ("match[]", f'{{job="{JOB}"}}'))
            index = index_series(series)
            uses = rule_uses(groups) + dashboard_uses()
            assert {u.where for u in uses if u.needs_etcd} >= {f"rule {n}" for n in HA_ALERTS}
            problems = drift_problems(uses, index)
            assert not problems, "drift from the [etcd] scrape:\n" + "\n".join(problems)
            for group in groups:
                for rule in group["rules"]:
                    assert rule["health"] == "ok", rule
            # Losing to another host is no double-sign attempt of this validator's nodes.
            assert rule_states(groups)["TmkmsDoubleSignRefused"] == "inactive"
            # Every dashboard query shows data now, the HA panels included.
            for query in dashboard_queries():
                result = await prom.query(grafana_query(query.expr))
                if not FILTERED.search(query.expr):
                    assert result, f"{query.where} shows nothing: {query.expr}"
            await node_client.aclose()
