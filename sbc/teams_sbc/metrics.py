"""Prometheus metrics of one SBC process: what an operator of the SBC watches.

Each running SBC owns a registry (tests run several in one process); `/metrics` serves it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sbc_sip_requests", "SIP requests received, by method.", ["method"], registry=r
        )
        self.responses = Counter(
            "sbc_sip_responses",
            "SIP responses received or generated, by class (1xx..6xx) and direction.",
            ["status_class", "direction"],
            registry=r,
        )
        self.parse_errors = Counter(
            "sbc_sip_parse_errors",
            "Messages that could not be parsed, by kind (request answered, response dropped).",
            ["kind"],
            registry=r,
        )
        self.transactions = Gauge(
            "sbc_sip_transactions", "Transactions in progress, by kind.", ["kind"], registry=r
        )
        self.retransmissions = Counter(
            "sbc_sip_retransmissions",
            "Retransmissions sent by our transactions and absorbed from peers.",
            ["direction"],
            registry=r,
        )
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
        self.ready = Gauge("sbc_ready", "1 when the SBC takes new calls.", registry=r)
