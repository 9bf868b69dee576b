"""Prometheus metrics of the media layer, in the SBC process's registry.

The driver counts ng commands by result and times them; the SIP core counts the calls it
rejected for want of media and the calls torn down by a media timeout; gauges read at scrape
time show the messages parked on rtpengine, the calls remembered for media-timeout BYEs, and
each rtpengine instance's health (up, sessions, free ports, round trip).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # the SIP core imports this module; relays (asyncio) stays out of it
    from teams_sbc.media.relays import RelayHealth

#: ng round trips on loopback take tens of microseconds; a command that needs every
#: retransmission takes seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 2.0, 4.0)


def _zero() -> int:
    return 0


def _no_relays() -> Sequence[tuple[str, RelayHealth]]:
    return ()


class _MediaCollector(Collector):
    def __init__(self) -> None:
        self.parked: Callable[[], int] = _zero
        self.dialogs: Callable[[], int] = _zero
        self.relays: Callable[[], Sequence[tuple[str, RelayHealth]]] = _no_relays

    def collect(self) -> Iterator[Metric]:
        parked = GaugeMetricFamily(
            "sbc_media_parked",
            "ng commands the SIP core waits on: messages parked until rtpengine answers, and "
            "dialog audits.",
        )
        parked.add_metric([], self.parked())
        yield parked
        dialogs = GaugeMetricFamily(
            "sbc_media_dialogs",
            "Confirmed calls this process anchored and would BYE on a media timeout.",
        )
        dialogs.add_metric([], self.dialogs())
        yield dialogs
        relays = list(self.relays())
        up = GaugeMetricFamily(
            "sbc_media_relay_up", "1 when the rtpengine instance answers.", labels=["rtpengine"]
        )
        sessions = GaugeMetricFamily(
            "sbc_media_relay_sessions",
            "Sessions the rtpengine instance reported at the last health check.",
            labels=["rtpengine"],
        )
        ports = GaugeMetricFamily(
            "sbc_media_relay_ports_free",
            "Free media ports the rtpengine instance reported at the last health check.",
            labels=["rtpengine"],
        )
        rtt = GaugeMetricFamily(
            "sbc_media_relay_rtt_seconds",
            "Round trip of the last ng command answered at the first transmission.",
            labels=["rtpengine"],
        )
        for token, health in relays:
            up.add_metric([token], 1 if health.up else 0)
            if health.sessions is not None:
                sessions.add_metric([token], health.sessions)
            if health.ports_free is not None:
                ports.add_metric([token], health.ports_free)
            if health.rtt is not None:
                rtt.add_metric([token], health.rtt)
        yield up
        yield sessions
        yield ports
        yield rtt


class MediaMetrics:
    """The media layer's metrics; ``observe_*`` say where the scrape-time gauges read from."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.commands = Counter(
            "sbc_media_commands",
            "ng commands sent to rtpengine, by command and result (ok, unavailable: no "
            "instance up or no answer, refused: rtpengine answered an error, unknown-relay, "
            "error).",
            ["command", "result"],
            registry=registry,
        )
        self.latency = Histogram(
            "sbc_media_command_seconds",
            "Time from sending an ng command to its answer (retransmissions included).",
            ["command"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.calls_rejected = Counter(
            "sbc_media_calls_rejected",
            "New calls refused because their media could not be anchored, by the status sent "
            "(503: no rtpengine, 488: rtpengine refused the SDP, 500: other).",
            ["status"],
            registry=registry,
        )
        self.answer_failures = Counter(
            "sbc_media_answers_unanchored",
            "183/2xx (and ACKs) whose SDP rtpengine did not take: a 183 went on without SDP, "
            "a 2xx or an ACK with the far end's SDP, so the call survives without anchored "
            "media.",
            registry=registry,
        )
        self.timeout_teardowns = Counter(
            "sbc_media_timeout_teardowns",
            "Calls ended by the SBC (a BYE to each party) because rtpengine saw no media.",
            registry=registry,
        )
        self._collector = _MediaCollector()
        registry.register(self._collector)

    def observe_core(self, parked: Callable[[], int], dialogs: Callable[[], int]) -> None:
        self._collector.parked = parked
        self._collector.dialogs = dialogs

    def observe_relays(self, relays: Callable[[], Sequence[tuple[str, RelayHealth]]]) -> None:
        self._collector.relays = relays
