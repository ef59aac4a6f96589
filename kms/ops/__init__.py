"""Operations: metrics, health and readiness of a running KMS.

* :mod:`kms.ops.stats` -- the counters the sign path and the connections bump (no
  dependencies, nothing of the sign path; cheap);
* :mod:`kms.ops.exposition` -- those counters in the Prometheus text format, through
  ``prometheus-client`` (the ``metrics`` extra);
* :mod:`kms.ops.health` -- the JSON bodies of ``/healthz`` and ``/readyz``;
* :mod:`kms.ops.server` -- a small trio HTTP/1.1 server for the three endpoints;
* :mod:`kms.ops.runtime` -- what `tmkms start` runs beside the validators: that server and
  the systemd watchdog.

Importing this package loads only :mod:`kms.ops.stats`.
"""

from __future__ import annotations

from kms.ops.stats import KmsMetrics, ProviderMetrics, ValidatorMetrics

__all__ = ["KmsMetrics", "ProviderMetrics", "ValidatorMetrics"]
