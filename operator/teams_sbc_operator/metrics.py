"""The operator's Prometheus metrics: what a person running it watches.

Served on ``--metrics`` (``/metrics``) by prometheus_client's own HTTP server thread.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

RECONCILIATIONS = Counter(
    "teams_sbc_operator_reconciliations",
    "Passes over a TeamsTrunk (its certificate, DNS, config, pods and its tenants' status), "
    "by result (ok: everything applied; degraded: some condition False; error: a step failed).",
    ["result"],
)
ERRORS = Counter(
    "teams_sbc_operator_errors",
    "Failures by step (certificate, dns, config, workload, status) and reason.",
    ["step", "reason"],
)
DURATION = Histogram(
    "teams_sbc_operator_reconcile_duration_seconds",
    "How long one pass over a TeamsTrunk took.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CERTIFICATE_DAYS_LEFT = Gauge(
    "teams_sbc_operator_certificate_days_left",
    "Days until the SBC certificate of a TeamsTrunk expires.",
    ["namespace", "trunk"],
)
CONDITION = Gauge(
    "teams_sbc_operator_trunk_condition",
    "1 when the TeamsTrunk condition holds, else 0.",
    ["namespace", "trunk", "type"],
)
TENANTS = Gauge(
    "teams_sbc_operator_tenants",
    "TeamsTenants served by a TeamsTrunk.",
    ["namespace", "trunk"],
)
DNS_UPDATES = Counter(
    "teams_sbc_operator_dns_updates",
    "RFC 2136 updates sent, by operation (ensure, remove) and result (done, refused, error).",
    ["operation", "result"],
)
API_REQUESTS = Counter(
    "teams_sbc_operator_api_requests",
    "Requests the operator's own client sent to the Kubernetes API, by verb, kind and HTTP "
    "status (kopf's watches and its own patches are not counted).",
    ["verb", "kind", "code"],
)
API_LATENCY = Histogram(
    "teams_sbc_operator_api_request_seconds",
    "Latency of the operator's Kubernetes API requests.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
WRITES = Counter(
    "teams_sbc_operator_object_writes",
    "Objects the operator changed (resourceVersion moved), by kind; an idle operator adds none.",
    ["kind"],
)


def forget_trunk(namespace: str, trunk: str) -> None:
    """Drop a deleted trunk's series."""
    for gauge in (CERTIFICATE_DAYS_LEFT, TENANTS):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, trunk)
    for kind in ("CertificateReady", "DNSReady", "ConfigApplied", "SBCAvailable", "Ready"):
        with contextlib.suppress(KeyError):
            CONDITION.remove(namespace, trunk, kind)
