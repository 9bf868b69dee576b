"""Prometheus metrics of one SBC process: what an operator of the SBC watches.

Each running SBC owns a registry (tests run several in one process); `/metrics` serves it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: Returns current values by label, read at scrape time.
Reading = Callable[[], Mapping[str, int]]


class _TransactionCollector(Collector):
    """The transaction table's own counts, read when Prometheus scrapes.

    Nothing is updated per message: the table already keeps these numbers (live transactions by
    kind, its :class:`~teams_sbc.sip.transaction.Stats`), so the hot path pays nothing for them.
    """

    def __init__(self) -> None:
        self.counts: Reading = dict
        self.stats: Reading = dict

    def collect(self) -> Iterator[Metric]:
        live = GaugeMetricFamily(
            "sbc_sip_transactions", "Transactions in progress, by kind.", labels=["kind"]
        )
        for kind, count in sorted(self.counts().items()):
            live.add_metric([kind], count)
        yield live
        stats = self.stats()
        retransmissions = CounterMetricFamily(
            "sbc_sip_retransmissions",
            "Retransmissions sent by our transactions and absorbed from peers.",
            labels=["direction"],
        )
        retransmissions.add_metric(["sent"], stats.get("retransmissions_sent", 0))
        retransmissions.add_metric(["absorbed"], stats.get("retransmissions_absorbed", 0))
        yield retransmissions
        events = CounterMetricFamily(
            "sbc_sip_transaction_events",
            "Transactions created and ended, timeouts (timers B, F, H), transport failures, "
            "strays (responses and ACKs matching no transaction), ignored events.",
            labels=["event"],
        )
        for event in ("created", "terminated", "timeouts", "transport_failures", "strays",
                      "ignored"):  # fmt: skip
            events.add_metric([event], stats.get(event, 0))
        yield events


class _MessageCollector(Collector):
    """Requests by method and responses by class and direction, counted by the SIP core in
    plain integers (an increment per message costs a Counter several times more) and turned
    into Prometheus counters only when scraped."""

    def __init__(self) -> None:
        self.requests: Reading = dict
        self.responses: Callable[[], Mapping[tuple[str, str], int]] = dict

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "sbc_sip_requests", "SIP requests received, by method.", labels=["method"]
        )
        for method, count in sorted(self.requests().items()):
            if count:
                requests.add_metric([method], count)
        yield requests
        responses = CounterMetricFamily(
            "sbc_sip_responses",
            "SIP responses received or generated, by class (1xx..6xx) and direction.",
            labels=["status_class", "direction"],
        )
        for (status_class, direction), count in sorted(self.responses().items()):
            if count:
                responses.add_metric([status_class, direction], count)
        yield responses


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._messages = _MessageCollector()
        r.register(self._messages)
        self.parse_errors = Counter(
            "sbc_sip_parse_errors",
            "Messages that could not be parsed, by kind (request answered, response dropped).",
            ["kind"],
            registry=r,
        )
        self._transactions = _TransactionCollector()
        r.register(self._transactions)
        self.connections = Gauge(
            "sbc_transport_connections",
            "Open stream connections, by transport (tcp, tls).",
            ["transport"],
            registry=r,
        )
        self.send_errors = Counter(
            "sbc_transport_send_errors",
            "Messages that could not be sent, by transport.",
            ["transport"],
            registry=r,
        )
        self.large_over_udp = Counter(
            "sbc_sip_large_udp_requests",
            "Requests over 1,300 bytes sent over UDP all the same: the next hop takes no TCP "
            "(RFC 3261 18.1.1).",
            registry=r,
        )
        self.tls_handshake_failures = Counter(
            "sbc_tls_handshake_failures",
            "Inbound TLS handshakes that failed (no or untrusted client certificate, old "
            "protocol, timeout), by listener.",
            ["listener"],
            registry=r,
        )
        self.source_refused = Counter(
            "sbc_transport_source_refused",
            "Connections closed before TLS because their source is not in the listener's "
            "allow-list, by listener.",
            ["listener"],
            registry=r,
        )
        self.ready = Gauge("sbc_ready", "1 when the SBC takes new calls.", registry=r)

    def observe_messages(
        self, requests: Reading, responses: Callable[[], Mapping[tuple[str, str], int]]
    ) -> None:
        """Where ``sbc_sip_requests`` and ``sbc_sip_responses`` come from: the core's counts."""
        self._messages.requests = requests
        self._messages.responses = responses

    def observe_transactions(self, counts: Reading, stats: Reading) -> None:
        """Where ``sbc_sip_transactions``, ``sbc_sip_retransmissions`` and
        ``sbc_sip_transaction_events`` come from: the SIP core's transaction table."""
        self._transactions.counts = counts
        self._transactions.stats = stats
