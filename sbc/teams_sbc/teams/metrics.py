"""Prometheus metrics of the Teams edge: what Microsoft's health dashboard would show, earlier.

Per Microsoft proxy (read from the proxy pool at scrape time): up, OPTIONS round trip, OPTIONS
sent and failed, failovers away from it. Counters: calls per tenant and direction, tenant
rejections, ACK repairs, ``;lr=on`` rewrites, messages trimmed for UDP; the transport counts
connections refused by the source allow-list.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from teams_sbc.teams.proxies import Health, ProxyPool


class _ProxyCollector(Collector):
    def __init__(self, pool: ProxyPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "sbc_teams_proxy_up",
            "1 when the Microsoft proxy answers our OPTIONS (or calls), 0 when down, -1 before "
            "its first answer.",
            labels=["proxy"],
        )
        rtt = GaugeMetricFamily(
            "sbc_teams_proxy_rtt_seconds",
            "Round trip of the last answered OPTIONS to the Microsoft proxy.",
            labels=["proxy"],
        )
        sent = CounterMetricFamily(
            "sbc_teams_options_sent", "OPTIONS keepalives sent, by proxy.", labels=["proxy"]
        )
        failed = CounterMetricFamily(
            "sbc_teams_options_failed",
            "OPTIONS keepalives unanswered, refused or not sent, by proxy.",
            labels=["proxy"],
        )
        for state in self.pool.states:
            value = {Health.UP: 1, Health.DOWN: 0, Health.UNKNOWN: -1}[state.health]
            up.add_metric([state.name], value)
            if state.rtt is not None:
                rtt.add_metric([state.name], state.rtt)
            sent.add_metric([state.name], state.probes_sent)
            failed.add_metric([state.name], state.probes_failed)
        yield up
        yield rtt
        yield sent
        yield failed


class TeamsMetrics:
    def __init__(self, registry: CollectorRegistry, pool: ProxyPool) -> None:
        r = registry
        r.register(_ProxyCollector(pool))
        self.calls = Counter(
            "sbc_teams_calls",
            "New calls across the Teams edge, by tenant (`base` without one) and direction.",
            ["tenant", "direction"],
            registry=r,
        )
        self.rejections = Counter(
            "sbc_teams_rejections",
            "Requests refused at the Teams edge, by reason (unknown_tenant).",
            ["reason"],
            registry=r,
        )
        self.failovers = Counter(
            "sbc_teams_failovers",
            "New calls moved on from a Microsoft proxy (timeout, TLS or connection failure, "
            "408, 503), by the proxy left.",
            ["proxy"],
            registry=r,
        )
        self.ack_repairs = Counter(
            "sbc_teams_ack_repairs",
            "ACKs from the carrier whose To-tag was not the 2xx's, repaired before Teams.",
            registry=r,
        )
        self.acks_passed = Counter(
            "sbc_teams_acks_passed",
            "ACKs from the carrier that reached another worker than the one that forwarded the "
            "call's INVITE, passed to that one (it holds the To-tags for the ACK repair).",
            registry=r,
        )
        self.lr_rewrites = Counter(
            "sbc_teams_lr_rewrites",
            "Messages towards Teams whose `;lr=on` route entries were rewritten to `;lr`.",
            registry=r,
        )
        self.trimmed = Counter(
            "sbc_teams_sdp_trimmed",
            "Messages from Teams trimmed (ICE, codecs) to fit a UDP-only carrier.",
            registry=r,
        )
