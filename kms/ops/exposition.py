"""The KMS's counters in the Prometheus text format, rendered by ``prometheus-client``.

A custom collector reads :class:`~kms.ops.stats.KmsMetrics` at scrape time and hands
metric families to the library, which does the text encoding (escaping, ``_total``,
``_bucket``/``le`` and so on). Together with the library's process collector (CPU, memory,
open files, start time) that is everything ``/metrics`` shows.

Series (every one carries ``chain_id`` and ``validator`` unless noted):

==========================================  =================================================
``tmkms_signatures_total{type}``            proposal, prevote, precommit, vote_extension,
                                            raw_bytes
``tmkms_refusals_total{reason}``            double_sign, height/round/step_regression,
                                            max_height, chain_id_mismatch, ...
``tmkms_request_errors_total{kind}``        signer, state_write, other
``tmkms_sign_duration_seconds{phase}``      histogram: queue (chain lock), state_write, signer
``tmkms_last_signed_{height,round,step}``   what this validator connection last signed
``tmkms_validator_connected``               1 while connected
``tmkms_validator_connections_total``       successful handshakes
``tmkms_validator_reconnects_total``        dials after a connection ended or failed
``tmkms_validator_connect_failures_total``  attempts that never connected
``tmkms_validator_handshake_failures_total``
``tmkms_chain_state_{height,round,step}``   ``{chain_id}``: the chain's double-sign state
``tmkms_provider_signer_errors_total``      ``{provider}``
``tmkms_provider_session_reopens_total``    ``{provider}``
``tmkms_provider_reachable``                ``{provider}``
``tmkms_ready``                             1 when ``/readyz`` says ready
``tmkms_build_info{version}``               always 1
==========================================  =================================================
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from kms import __version__
from kms.ops.health import is_ready
from kms.ops.stats import PHASES, KmsMetrics

__all__ = ["CONTENT_TYPE", "KmsCollector", "build_registry", "render"]

#: What ``generate_latest`` writes: the classic text format, whichever library version.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_V = ("chain_id", "validator")


class KmsCollector:
    """A prometheus-client collector over one :class:`KmsMetrics`."""

    def __init__(self, metrics: KmsMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        """Nothing up front: the series depend on the configuration."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every KMS metric family, read from the counters as they are now."""
        yield from self._signing()
        yield from self._connections()
        yield from self._chains()
        yield from self._providers()
        yield from self._ha()
        ready = GaugeMetricFamily("tmkms_ready", "1 when every validator and signer is ready")
        ready.add_metric([], 1.0 if is_ready(self._metrics) else 0.0)
        yield ready
        build = GaugeMetricFamily("tmkms_build_info", "tmkms-py version", labels=["version"])
        build.add_metric([__version__], 1.0)
        yield build

    def _signing(self) -> Iterator[Metric]:
        signatures = CounterMetricFamily(
            "tmkms_signatures", "Signatures sent to the validator", labels=[*_V, "type"]
        )
        refusals = CounterMetricFamily(
            "tmkms_refusals", "Sign requests refused", labels=[*_V, "reason"]
        )
        errors = CounterMetricFamily(
            "tmkms_request_errors", "Sign requests that failed", labels=[*_V, "kind"]
        )
        latency = HistogramMetricFamily(
            "tmkms_sign_duration_seconds",
            "Time to sign, by phase: waiting for the chain lock, writing state, signing",
            labels=[*_V, "phase"],
        )
        last = {
            field: GaugeMetricFamily(
                f"tmkms_last_signed_{field}",
                f"The {field} of the last signature over this connection",
                labels=list(_V),
            )
            for field in ("height", "round", "step")
        }
        for v in self._metrics.validators:
            labels = [v.chain_id, v.validator]
            for kind, count in v.signatures.items():
                signatures.add_metric([*labels, kind], count)
            for reason, count in v.refusals.items():
                refusals.add_metric([*labels, reason], count)
            for kind, count in v.errors.items():
                errors.add_metric([*labels, kind], count)
            for phase, histogram in zip(PHASES, v.latency, strict=True):
                buckets = [(floatToGoString(b), c) for b, c in histogram.cumulative()]
                latency.add_metric([*labels, phase], buckets, histogram.sum)
            if v.last_signed is not None:
                for gauge, value in zip(last.values(), v.last_signed, strict=True):
                    gauge.add_metric(labels, value)
        yield from (signatures, refusals, errors, latency, *last.values())

    def _connections(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily(
            "tmkms_validator_connected", "1 while connected to the validator", labels=list(_V)
        )
        counters = {
            "connections": "Successful connections (handshakes) to the validator",
            "reconnects": "Dials after a connection ended or failed",
            "connect_failures": "Connection attempts that failed before connecting",
            "handshake_failures": "Secret Connection handshakes that failed",
        }
        families = {
            name: CounterMetricFamily(f"tmkms_validator_{name}", text, labels=list(_V))
            for name, text in counters.items()
        }
        for v in self._metrics.validators:
            labels = [v.chain_id, v.validator]
            connected.add_metric(labels, 1.0 if v.connected else 0.0)
            for name, family in families.items():
                family.add_metric(labels, getattr(v, name))
        yield connected
        yield from families.values()

    def _chains(self) -> Iterator[Metric]:
        gauges = [
            GaugeMetricFamily(
                f"tmkms_chain_state_{field}",
                f"The {field} of the chain's double-sign state (last signed or raised)",
                labels=["chain_id"],
            )
            for field in ("height", "round", "step")
        ]
        for chain_id, chain in self._metrics.chains.items():
            for gauge, value in zip(gauges, chain.hrs, strict=True):
                gauge.add_metric([chain_id], value)
        yield from gauges

    def _providers(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "tmkms_provider_signer_errors", "Failed signatures", labels=["provider"]
        )
        reopens = CounterMetricFamily(
            "tmkms_provider_session_reopens", "HSM sessions opened again", labels=["provider"]
        )
        reachable = GaugeMetricFamily(
            "tmkms_provider_reachable", "1 while the signer answers", labels=["provider"]
        )
        for p in self._metrics.providers.values():
            errors.add_metric([p.name], p.signer_errors)
            reopens.add_metric([p.name], p.session_reopens)
            reachable.add_metric([p.name], 1.0 if p.reachable else 0.0)
        yield from (errors, reopens, reachable)

    def _ha(self) -> Iterator[Metric]:
        ha = self._metrics.ha
        if ha is None:
            return
        outcomes = CounterMetricFamily(
            "tmkms_ha_cas",
            "Check-and-sets of the shared watermark: won, lost to another host, refused (cause)",
            labels=["chain_id", "outcome", "cause"],
        )
        for (chain_id, outcome, cause), count in sorted(ha.outcomes.items()):
            outcomes.add_metric([chain_id, outcome, cause], count)
        latency = HistogramMetricFamily(
            "tmkms_ha_cas_duration_seconds", "Time of a won check-and-set, retries included"
        )
        buckets = [(floatToGoString(b), c) for b, c in ha.latency.cumulative()]
        latency.add_metric([], buckets, ha.latency.sum)
        reachable = GaugeMetricFamily(
            "tmkms_etcd_reachable", "1 while an etcd member with a leader answers", labels=[]
        )
        reachable.add_metric([], 1.0 if ha.reachable else 0.0)
        yield from (outcomes, latency, reachable)


def build_registry(metrics: KmsMetrics, *, process: bool = True) -> CollectorRegistry:
    """A registry with the KMS collector (and the process collector unless ``process=False``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KmsCollector(metrics))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format (version 0.0.4)."""
    return generate_latest(registry)
