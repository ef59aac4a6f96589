"""contrib/prometheus/tmkms-rules.yml: valid for Prometheus's own `promtool check rules`, every
rule unit-tested by `promtool test rules` (firing and not), and those tests bite a broken rule.
Also the small PromQL reader the drift test uses (tests/support/promtool.py)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.support.promtool import Matcher, Selector, literal_values, promtool, references, tokenize

CONTRIB = Path(__file__).resolve().parent.parent / "contrib" / "prometheus"
RULES = CONTRIB / "tmkms-rules.yml"
RULE_TESTS = CONTRIB / "tmkms-rules.test.yml"

# What the issue asks for, by the alert that covers it.
REQUIRED_ALERTS = {
    "TmkmsNoSignatures": "no signature on a chain for N minutes while its validator is connected",
    "TmkmsValidatorDisconnected": "validator disconnected",
    "TmkmsDoubleSignRefused": "any double-sign refusal",
    "TmkmsSignerErrors": "signer errors rising",
    "TmkmsStateWriteFailing": "state writes failing",
    "TmkmsProviderUnreachable": "HSM unreachable",
    "TmkmsSignLatencyHigh": "p99 sign latency above a threshold",
    "TmkmsDown": "process down",
    # high availability ([etcd])
    "TmkmsEtcdUnreachable": "etcd unreachable for some time: this host refuses every signature",
    "TmkmsHaCheckAndSetsRefused": "check-and-sets refused, by cause, at a steady rate",
    "TmkmsHaCheckAndSetsLost": "a sustained high share of check-and-sets lost to other hosts",
    "TmkmsHaCheckAndSetLatencyHigh": "check-and-set p99 high relative to block times",
}


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)\s*$", RULES.read_text(), re.M)


def test_promtool_check_rules() -> None:
    done = promtool("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in done.stdout


def test_promtool_test_rules() -> None:
    done = promtool("test", "rules", RULE_TESTS, cwd=CONTRIB)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_required_alert_exists_and_is_tested_firing_and_not() -> None:
    names = alert_names()
    assert len(names) == len(set(names))
    assert set(REQUIRED_ALERTS) <= set(names)
    lines = RULE_TESTS.read_text().splitlines()
    cases: dict[str, set[str]] = {name: set() for name in names}
    for number, line in enumerate(lines):
        found = re.fullmatch(r"\s*alertname: (\w+)\s*", line)
        if found is None:
            continue
        assert found.group(1) in cases, f"test of an unknown alert {found.group(1)}"
        following = lines[number + 1].strip()
        assert following.startswith("exp_alerts:"), following
        cases[found.group(1)].add("silent" if following == "exp_alerts: []" else "firing")
    missing = {name: {"firing", "silent"} - seen for name, seen in cases.items()}
    assert not {name: m for name, m in missing.items() if m}, missing


# Each edit breaks one rule the way a careless change would; the unit tests must notice.
MUTATIONS = [
    ('up{job="tmkms"} == 0', "up == 0"),
    (
        "tmkms_validator_connected == 0\n        for: 2m",
        "tmkms_validator_connected == 0\n        for: 0m",
    ),
    ('type=~"proposal|prevote|precommit"', 'type=~".+"'),
    (
        "max by (chain_id) (min_over_time(tmkms_validator_connected[5m])) == 1",
        "max by (chain_id) (min_over_time(tmkms_validator_connected[5m])) >= 0",
    ),
    ("|height_regression|round_regression|step_regression", ""),
    ('kind="signer"}[5m]) > 0', 'kind="signer"}[5m]) > 2'),
    ('kind="state_write"', 'kind="other"'),
    ("tmkms_provider_reachable == 0", "tmkms_provider_reachable < 0"),
    (") > 0.25", ") > 0.5"),
    ("sum by (chain_id, phase, le)", "sum by (chain_id, le)"),
    ("tmkms_validator_connections_total[15m]) > 3", "tmkms_validator_connections_total[15m]) > 5"),
    ("tmkms_validator_connections_total[15m]) > 3", "tmkms_validator_connections_total[15m]) > 1"),
    (
        "tmkms_validator_handshake_failures_total[10m]",
        "tmkms_validator_handshake_failures_total[1m]",
    ),
    # high availability
    ("tmkms_etcd_reachable == 0\n        for: 1m", "tmkms_etcd_reachable == 0\n        for: 0m"),
    ("tmkms_etcd_reachable == 0", "tmkms_etcd_reachable == 1"),
    ('tmkms_ha_cas_total{outcome="refused"}[5m]', 'tmkms_ha_cas_total{outcome=~".+"}[5m]'),
    ("sum by (instance, chain_id, cause) (", "sum by (instance, chain_id) ("),
    ("> 0.05\n        for: 5m", "> 0.5\n        for: 5m"),
    ("> 0.05\n        for: 5m", "> 0.05\n        for: 3m"),
    ('{outcome=~"won|lost"}[10m]', "[10m]"),
    ("> 0.5\n        for: 10m", "> 0.8\n        for: 10m"),
    ("0.1 / max by (instance)", "1 / max by (instance)"),
    ("max by (instance) (clamp_min(", "min by (instance) (clamp_min("),
    ("0.25\n          )", "2.5\n          )"),
    ("sum by (instance, le)", "sum by (le)"),
]


@pytest.mark.parametrize(
    ("old", "new"), MUTATIONS, ids=[f"{o[:30]}->{n[:30]}" for o, n in MUTATIONS]
)
def test_the_unit_tests_notice_a_broken_rule(tmp_path: Path, old: str, new: str) -> None:
    text = RULES.read_text()
    assert text.count(old) == 1, old
    (tmp_path / RULES.name).write_text(text.replace(old, new))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    assert promtool("check", "rules", tmp_path / RULES.name).returncode == 0  # still valid
    done = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert done.returncode != 0, f"the rule tests still pass with {old!r} -> {new!r}"
    assert "FAILED" in done.stdout + done.stderr


# --- the PromQL reader -------------------------------------------------------------------------


def test_reader_finds_metrics_matchers_and_grouping() -> None:
    refs = references(
        'sum by (chain_id) (increase(tmkms_signatures_total{type=~"prevote|precommit"}[5m])) == 0'
        " and on (chain_id) max by (chain_id, validator) (min_over_time(tmkms_validator_connected[5m]))"
    )
    assert refs.selectors == (
        Selector("tmkms_signatures_total", (Matcher("type", "=~", "prevote|precommit"),)),
        Selector("tmkms_validator_connected"),
    )
    assert refs.grouping == {"chain_id", "validator"}
    assert refs.metrics == {"tmkms_signatures_total", "tmkms_validator_connected"}
    assert refs.labels == {"chain_id", "validator", "type"}


@pytest.mark.parametrize(
    ("expr", "metrics", "labels"),
    [
        ("up == 0", {"up"}, set()),
        ('up{job="tmkms"}', {"up"}, {"job"}),
        ("tmkms_ready", {"tmkms_ready"}, set()),
        # aggregation with the grouping after its argument; a function named like a metric
        ("sum(rate(a_total[1m])) without (instance)", {"a_total"}, {"instance"}),
        ("histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))", {"h_bucket"}, {"le"}),
        # binary operator modifiers and keywords are not metrics
        ("a / ignoring (x) group_left (y) b offset 5m", {"a", "b"}, {"x", "y"}),
        ("a > bool 2 or c unless d", {"a", "c", "d"}, set()),
        # the {__name__=...} form, a subquery, Grafana variables in ranges and values
        ('{__name__="m", chain_id!="x"}', {"m"}, {"chain_id"}),
        ("max_over_time(rate(m_total[$__rate_interval])[1h:5m])", {"m_total"}, set()),
        ('m{chain_id=~"$chain", instance=~"${instance}"}', {"m"}, {"chain_id", "instance"}),
        # strings with escapes and braces do not derail it
        ('label_replace(m, "dst", "$1", "src", "(.*)}")', {"m"}, set()),
        ('m{a="say \\"hi\\" {b}"}', {"m"}, {"a"}),
        ("count(m) by (c) > 1e3", {"m"}, {"c"}),
        ("-m + Inf", {"m"}, set()),
    ],
)
def test_reader_cases(expr: str, metrics: set[str], labels: set[str]) -> None:
    refs = references(expr)
    assert refs.metrics == metrics
    assert refs.labels == labels


def test_reader_keeps_escaped_values() -> None:
    (selector,) = references('m{a="say \\"hi\\" {b}"}').selectors
    assert selector.matchers == (Matcher("a", "=", 'say "hi" {b}'),)


def test_reader_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="cannot read PromQL"):
        tokenize("m ? 1")
    with pytest.raises(ValueError, match="not matched against a string"):
        references("m{a=1}")


@pytest.mark.parametrize(
    ("matcher", "values"),
    [
        (Matcher("reason", "=", "double_sign"), ["double_sign"]),
        (Matcher("le", "=", "+Inf"), ["+Inf"]),
        (Matcher("type", "=~", "prevote|precommit"), ["prevote", "precommit"]),
        (Matcher("kind", "!=", "other"), ["other"]),
        (Matcher("type", "=~", ".+"), None),
        (Matcher("type", "=~", "pre.*"), None),
        (Matcher("chain_id", "=~", "$chain"), None),
    ],
)
def test_literal_values(matcher: Matcher, values: list[str] | None) -> None:
    assert literal_values(matcher) == values
