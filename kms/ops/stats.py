"""What the KMS counts while it runs: plain Python numbers, cheap to bump on the sign path.

Recording is a handful of integer increments and one ``bisect`` per latency phase, so the
sign path does not notice it (tests/test_metrics_overhead.py holds it to a budget; figures
in benchmarks/README.md). Nothing here needs
``prometheus-client``: :mod:`kms.ops.exposition` reads these objects only when ``/metrics``
is scraped, so a KMS without ``[metrics]`` pays nothing for the library.

Objects, one per thing labelled in the exposition:

* :class:`ValidatorMetrics` -- one per ``[[validator]]`` connection (labels ``chain_id``,
  ``validator``): signatures by type, refusals by reason, sign latency by phase, the last
  signed height/round/step, connection state, connections, reconnects, failures;
* :class:`ProviderMetrics` -- one per signing provider (``softsign``, ``yubihsm``): signer
  errors, HSM session re-opens, whether the signer is reachable;
* :class:`KmsMetrics` -- the registry of both, plus each chain's tracker state.

A provider is handed its :class:`ProviderMetrics` (as a :class:`providers.ProviderHealth`)
when :func:`kms.keyring.build_registry` opens it, and either calls ``session_reopened()``
whenever it has to open a new HSM session, or hands over a counter it already keeps with
``count_session_reopens_from(lambda: stats.session_reopens)`` (read at scrape time, from a
worker thread); and ``set_reachable(False, "why")`` / ``set_reachable(True)`` when it finds the
device gone or back. Failed signatures are counted by the request handler (do not count them
again in the provider); a failed signature also marks the provider unreachable until the
next one succeeds.

This module imports nothing of the sign path: refusals are sorted by the ``reason`` every
:class:`kms.errors.SigningRefused` carries, and a chain's state is read through whatever
``add_chain`` was given (an object with ``chain_id`` and ``state.hrs``).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Protocol

from kms.errors import KmsError, SignerError, SigningRefused, StateError

__all__ = [
    "CAS_OUTCOMES",
    "LATENCY_BUCKETS",
    "PHASES",
    "REFUSAL_REASONS",
    "SIGNATURE_TYPES",
    "HaMetrics",
    "Histogram",
    "KmsMetrics",
    "ProviderMetrics",
    "ValidatorMetrics",
]

#: Upper bounds (seconds) of the sign-latency histogram buckets; +Inf is implied.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
#: Where a signature's time goes: waiting for the chain's lock, writing the state, the key.
PHASES = ("queue", "state_write", "signer")
#: Signature kinds, as labelled (steps 0-2 first, so a step indexes this tuple).
SIGNATURE_TYPES = ("proposal", "prevote", "precommit", "vote_extension", "raw_bytes")
#: Why a request was refused, as labelled.
REFUSAL_REASONS = (
    "double_sign",
    "height_regression",
    "round_regression",
    "step_regression",
    "max_height",
    "chain_id_mismatch",
    "consensus_shaped_raw_bytes",
    # the shared watermark (etcd): lost to another host, or no definitive answer, or...
    "ha_lost",
    "ha_unreachable",
    "ha_unavailable",
    "ha_ambiguous",
    "ha_rule",
    "ha_malformed",
    "ha_missing",
    "ha_auth",
    "ha_tls",
    "ha_protocol",
    "other",
)
#: Outcomes of the shared watermark's check-and-sets, as labelled.
CAS_OUTCOMES = ("won", "lost", "refused")
_ERROR_KINDS = ("signer", "state_write", "other")


class Histogram:
    """A Prometheus-style histogram: per-bucket counts, a sum and a count."""

    __slots__ = ("bounds", "buckets", "count", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose upper bound is >= it."""
        self.buckets[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` pairs, ending with ``(inf, count)``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.buckets, strict=True):
            running += count
            out.append((bound, running))
        return out


class ProviderMetrics:
    """Counters of one signing provider; see the module docstring for the provider hook."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.signer_errors = 0
        self.reachable = True
        self.last_error: str | None = None
        self._reopens = 0
        self._reopen_sources: list[Callable[[], int]] = []

    @property
    def session_reopens(self) -> int:
        """Sessions re-opened: those reported plus those counted by the provider's sources."""
        return self._reopens + sum(source() for source in self._reopen_sources)

    def signer_error(self, description: str) -> None:
        """A signature failed in this provider; it is unreachable until one succeeds."""
        self.signer_errors += 1
        self.reachable = False
        self.last_error = description

    def session_reopened(self) -> None:
        """The provider had to open a new session (YubiHSM: after a lost or expired one)."""
        self._reopens += 1

    def count_session_reopens_from(self, source: Callable[[], int]) -> None:
        """Add ``source()``, a counter the provider keeps itself, to ``session_reopens``."""
        self._reopen_sources.append(source)

    def set_reachable(self, reachable: bool, reason: str | None = None) -> None:
        """Report whether the device answers; ``reason`` explains an unreachable one."""
        self.reachable = reachable
        if not reachable:
            self.last_error = reason


class ValidatorMetrics:
    """Everything counted for one validator connection."""

    __slots__ = (
        "chain_id",
        "connect_failures",
        "connected",
        "connected_since",
        "connections",
        "errors",
        "handshake_failures",
        "last_error",
        "last_signed",
        "latency",
        "provider",
        "reconnects",
        "refusals",
        "signatures",
        "validator",
    )

    def __init__(
        self, chain_id: str = "", validator: str = "", provider: ProviderMetrics | None = None
    ) -> None:
        self.chain_id = chain_id
        self.validator = validator
        self.provider = provider if provider is not None else ProviderMetrics("unknown")
        self.signatures = dict.fromkeys(SIGNATURE_TYPES, 0)
        self.refusals = dict.fromkeys(REFUSAL_REASONS, 0)
        self.errors = dict.fromkeys(_ERROR_KINDS, 0)
        self.latency = tuple(Histogram() for _ in PHASES)
        self.last_signed: tuple[int, int, int] | None = None
        self.connected = False
        self.connected_since: float | None = None
        self.last_error: str | None = None
        self.connections = 0
        self.reconnects = 0
        self.connect_failures = 0
        self.handshake_failures = 0

    # -- the sign path ---------------------------------------------------------------

    def observe_sign(self, queue: float, state_write: float, signer: float) -> None:
        """Seconds spent waiting for the chain lock, writing the state, and in the signer."""
        queue_h, write_h, signer_h = self.latency
        queue_h.observe(queue)
        write_h.observe(state_write)
        signer_h.observe(signer)

    def signed(self, step: int, height: int, round_: int) -> None:
        """A proposal (step 0) or vote (1, 2) was signed at ``height``/``round_``."""
        self.signatures[SIGNATURE_TYPES[step]] += 1
        self.last_signed = (height, round_, step)
        self.provider.reachable = True

    def signed_other(self, kind: str) -> None:
        """A vote extension or raw bytes were signed."""
        self.signatures[kind] += 1
        self.provider.reachable = True

    def refused(self, reason: str) -> None:
        """A request was answered with a refusal (see REFUSAL_REASONS)."""
        self.refusals[reason] += 1

    def failed(self, exc: KmsError) -> None:
        """Classify and count a sign request that ended in ``exc``."""
        if isinstance(exc, SigningRefused):
            reason = exc.reason if exc.reason in self.refusals else "other"
            self.refusals[reason] += 1
        elif isinstance(exc, SignerError):
            self.errors["signer"] += 1
            self.provider.signer_error(str(exc))
        elif isinstance(exc, StateError):
            self.errors["state_write"] += 1
        else:
            self.errors["other"] += 1

    # -- the connection ----------------------------------------------------------------

    def on_connected(self) -> None:
        """The handshake succeeded; the validator is connected."""
        self.connected = True
        self.connected_since = time.time()
        self.connections += 1
        self.last_error = None

    def on_handshake_failure(self) -> None:
        """The Secret Connection handshake failed (or timed out)."""
        self.handshake_failures += 1

    def on_session_ended(self, error: str | None) -> None:
        """The connection (or the attempt to make one) ended, because of ``error``."""
        if not self.connected:
            self.connect_failures += 1
        self.connected = False
        self.connected_since = None
        self.last_error = error

    def on_reconnect(self) -> None:
        """The supervisor is dialling again after a connection ended or failed."""
        self.reconnects += 1


class HaMetrics:
    """The shared watermark (etcd): check-and-set outcomes per chain, latency, reachability.

    A :class:`kms.ha.outcome.CasObserver`: the stores call it once per check-and-set.
    """

    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, str, str], int] = {}  # (chain, outcome, cause)
        self.latency = Histogram()
        self.reachable = False
        self.endpoint: str | None = None
        self.last_error: str | None = None
        # chains whose first contact with etcd is not done: why (they cannot sign yet)
        self.unreconciled: dict[str, str] = {}

    def cas_won(self, chain_id: str, seconds: float) -> None:
        """A check-and-set moved the chain's watermark for this host."""
        self._count(chain_id, "won", "")
        self.latency.observe(seconds)
        self.reachable = True

    def cas_lost(self, chain_id: str) -> None:
        """Another host's watermark forbids the request."""
        self._count(chain_id, "lost", "")
        self.reachable = True

    def cas_refused(self, chain_id: str, cause: str) -> None:
        """No definitive answer (or a refusal) with ``cause``."""
        self._count(chain_id, "refused", cause)

    def set_reachable(self, reachable: bool, endpoint: str | None, error: str | None) -> None:
        """What the last ping of the cluster found."""
        self.reachable, self.endpoint, self.last_error = reachable, endpoint, error

    def set_unreconciled(self, chains: dict[str, str]) -> None:
        """The chains whose first contact is not done yet, each with why."""
        self.unreconciled = dict(chains)

    def _count(self, chain_id: str, outcome: str, cause: str) -> None:
        key = (chain_id, outcome, cause)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1


class ChainStateView(Protocol):
    """What the exposition reads of one chain: its ID and its last signed h/r/s."""

    @property
    def chain_id(self) -> str:
        """The chain's ID."""
        ...

    @property
    def hrs(self) -> tuple[int, int, int]:
        """Height, round and step of the chain's double-sign state."""
        ...


class KmsMetrics:
    """All metrics of one running KMS."""

    def __init__(self) -> None:
        self.started = time.time()
        self.validators: list[ValidatorMetrics] = []
        self.providers: dict[str, ProviderMetrics] = {}
        self.chains: dict[str, ChainStateView] = {}
        self.ha: HaMetrics | None = None  # with [etcd]

    def provider(self, name: str) -> ProviderMetrics:
        """The metrics of provider ``name``, created on first use."""
        found = self.providers.get(name)
        if found is None:
            found = self.providers[name] = ProviderMetrics(name)
        return found

    def validator(self, chain_id: str, validator: str, provider: str) -> ValidatorMetrics:
        """New metrics for one validator connection signing with ``provider``."""
        metrics = ValidatorMetrics(chain_id, validator, self.provider(provider))
        self.validators.append(metrics)
        return metrics

    def remove_validator(self, metrics: ValidatorMetrics) -> None:
        """Stop reporting a validator connection (removed by a reload)."""
        self.validators = [v for v in self.validators if v is not metrics]

    def add_chain(self, chain: ChainStateView) -> None:
        """Report the state of ``chain`` (a tracker; read at scrape time)."""
        self.chains[chain.chain_id] = chain
