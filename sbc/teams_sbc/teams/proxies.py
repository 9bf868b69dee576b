"""Microsoft's SIP proxies: OPTIONS keepalive, health per proxy, and the failover order.

Microsoft ("Direct Routing - SIP protocol", OPTIONS; "Monitor and troubleshoot"): the SBC
sends OPTIONS to each of sip, sip2 and sip3 (one FQDN for GCC High and for DoD) about every 60
s, with the SBC's FQDN in Contact (an IP address there gets 403); Microsoft answers 200.
"Plan Direct Routing" (failover): new calls go to sip, then sip2, then sip3; Teams itself fails
over on 408, 503 and 504. Here a proxy is skipped for new calls while OPTIONS (or a call) says
it is down, or while a 503's Retry-After lasts; down proxies are still tried last, so a call is
not lost while one proxy answers.

With ``workers: N`` every worker process keeps its own pool (its first-hand state is what its
failover order needs) and probes every proxy each ``interval`` as one process does, but in a
slot of its own: worker ``k`` sends on the grid ``k * interval / N + m * interval`` of the
host's monotonic clock (shared by all processes), so the SBC's OPTIONS to each proxy are evenly
spaced ``interval / N`` apart instead of N at once (:meth:`ProxyPool.stagger`). A worker's first
OPTIONS after it starts goes at once, then it keeps to its slot. Why: docs/architecture.md,
"OPTIONS with workers".

Per proxy a small state machine (:data:`TRANSITIONS`): ``unknown`` until the first answer,
then ``up`` or ``down``. Sans-IO: ``now`` comes in; the proxy core sends the OPTIONS this
module builds and reports what came back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from teams_sbc.sip.message import DEFAULT_MAX_FORWARDS, Request
from teams_sbc.teams.config import MicrosoftProxy


class Health(Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


class Outcome(Enum):
    OK = "ok"  # a 2xx to OPTIONS, or any response from the proxy to a call
    FAILED = "failed"  # timeout, TLS or connection failure, a non-2xx to OPTIONS, 408, 503


#: (health, outcome) -> health. The whole state machine.
TRANSITIONS: dict[tuple[Health, Outcome], Health] = {
    (Health.UNKNOWN, Outcome.OK): Health.UP,
    (Health.UNKNOWN, Outcome.FAILED): Health.DOWN,
    (Health.UP, Outcome.OK): Health.UP,
    (Health.UP, Outcome.FAILED): Health.DOWN,
    (Health.DOWN, Outcome.OK): Health.UP,
    (Health.DOWN, Outcome.FAILED): Health.DOWN,
}


@dataclass(slots=True)
class ProxyState:
    """One Microsoft proxy as the SBC sees it."""

    proxy: MicrosoftProxy
    health: Health = Health.UNKNOWN
    rtt: float | None = None  # seconds, of the last answered OPTIONS
    last_error: str | None = None
    changed_at: float | None = None
    last_ok_at: float | None = None
    last_result_at: float | None = None  # the latest outcome, good or bad (combining views)
    retry_after_until: float = 0.0
    next_probe_at: float = 0.0
    probe_sent_at: float | None = None  # an OPTIONS is out, unanswered
    probes_sent: int = 0
    probes_failed: int = 0
    failovers: int = field(default=0)

    @property
    def name(self) -> str:
        return self.proxy.name

    def status(self, now: float) -> dict[str, object]:
        """For the /teams endpoint: JSON-ready, times as seconds ago."""

        def ago(t: float | None) -> float | None:
            return None if t is None else round(now - t, 3)

        return {
            "name": self.name,
            "address": self.proxy.address,
            "port": self.proxy.port,
            "state": self.health.value,
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 1),
            "last_error": self.last_error,
            "changed_seconds_ago": ago(self.changed_at),
            "last_ok_seconds_ago": ago(self.last_ok_at),
            "last_result_seconds_ago": ago(self.last_result_at),
            "retry_after_seconds": max(0.0, round(self.retry_after_until - now, 3)),
            "options_sent": self.probes_sent,
            "options_failed": self.probes_failed,
            "failovers": self.failovers,
        }


class ProxyPool:
    """The cloud's proxies in failover order, their health and their OPTIONS schedule."""

    def __init__(
        self,
        proxies: tuple[MicrosoftProxy, ...],
        interval: float,
        timeout: float,
        retry_after_max: float,
    ) -> None:
        self.states = [ProxyState(p) for p in proxies]
        self.interval = interval
        self.timeout = timeout
        self.retry_after_max = retry_after_max
        self._by_name = {s.name: s for s in self.states}
        #: Where on the clock this pool's OPTIONS go (None: ``interval`` after the last one).
        self.phase: float | None = None

    def stagger(self, index: int, count: int) -> None:
        """One of ``count`` workers, number ``index``: after its first OPTIONS (at once), each
        proxy's next ones go at ``index * interval / count`` past a multiple of ``interval``
        on the monotonic clock, so the workers' OPTIONS interleave evenly."""
        self.phase = (index % count) * self.interval / count if count > 1 else None

    def __getitem__(self, name: str) -> ProxyState:
        return self._by_name[name]

    def get(self, name: str) -> ProxyState | None:
        return self._by_name.get(name.lower())

    # -- health ---------------------------------------------------------------------------

    def record(self, state: ProxyState, outcome: Outcome, now: float, error: str | None) -> bool:
        """Apply one outcome; returns whether the health changed."""
        new = TRANSITIONS[(state.health, outcome)]
        changed = new is not state.health
        state.health = new
        if changed:
            state.changed_at = now
        state.last_result_at = now
        if outcome is Outcome.OK:
            state.last_ok_at = now
        else:
            state.last_error = error
        return changed

    def retry_after(self, state: ProxyState, seconds: float, now: float) -> None:
        """A 503 with Retry-After: keep new calls away for that long (bounded)."""
        state.retry_after_until = now + min(max(seconds, 0.0), self.retry_after_max)

    def order(self, now: float) -> list[ProxyState]:
        """The failover order for a new call: the proxies not known to be down, in the
        configured order, then the down ones; those inside a Retry-After never."""
        usable = [s for s in self.states if s.retry_after_until <= now]
        return [s for s in usable if s.health is not Health.DOWN] + [
            s for s in usable if s.health is Health.DOWN
        ]

    # -- OPTIONS schedule --------------------------------------------------------------------

    def due_probes(self, now: float) -> list[ProxyState]:
        """Proxies whose OPTIONS is due (and none is out): marked sent at ``now``."""
        due = []
        for state in self.states:
            if state.probe_sent_at is None and state.next_probe_at <= now:
                state.probe_sent_at = now
                state.next_probe_at = self.next_slot(now)
                state.probes_sent += 1
                due.append(state)
        return due

    def next_slot(self, now: float) -> float:
        """When the OPTIONS after one sent at ``now`` is due: ``interval`` later, or with a
        phase the first slot at least half an interval away (so a late or first probe is
        followed neither by a burst nor by a gap of more than 1.5 intervals)."""
        if self.phase is None:
            return now + self.interval
        slots = math.ceil((now + self.interval / 2 - self.phase) / self.interval)
        return self.phase + slots * self.interval

    def probe_answered(self, state: ProxyState, status: int, reason: str, now: float) -> bool:
        """A final response to our OPTIONS; returns whether the health changed."""
        sent = state.probe_sent_at
        state.probe_sent_at = None
        if 200 <= status < 300:
            if sent is not None:
                state.rtt = now - sent
            return self.record(state, Outcome.OK, now, None)
        state.probes_failed += 1
        return self.record(state, Outcome.FAILED, now, f"OPTIONS answered {status} {reason}")

    def probe_failed(self, state: ProxyState, why: str, now: float) -> bool:
        """Our OPTIONS timed out or could not be sent; returns whether the health changed."""
        if state.probe_sent_at is None:
            return False  # already counted (our own timeout came first)
        state.probe_sent_at = None
        state.probes_failed += 1
        return self.record(state, Outcome.FAILED, now, why)

    def overdue_probes(self, now: float) -> list[ProxyState]:
        """Proxies whose OPTIONS has waited longer than the timeout."""
        return [
            s
            for s in self.states
            if s.probe_sent_at is not None and now - s.probe_sent_at >= self.timeout
        ]

    def next_deadline(self) -> float | None:
        deadlines = [
            s.probe_sent_at + self.timeout if s.probe_sent_at is not None else s.next_probe_at
            for s in self.states
        ]
        return min(deadlines) if deadlines else None


def build_options(
    proxy: MicrosoftProxy,
    fqdn: str,
    port: int,
    via: str,
    call_id: str,
    tag: str,
    extra: list[tuple[str, str]],
) -> Request:
    """Our OPTIONS keepalive to one Microsoft proxy (Microsoft, OPTIONS: Request-URI with the
    proxy's FQDN, From/To with the FQDNs, ``Contact: <sip:FQDN:5061;transport=tls>`` required).
    ``via`` is the whole Via value (our listener, our branch)."""
    headers = [
        ("Via", via),
        ("Max-Forwards", str(DEFAULT_MAX_FORWARDS)),
        ("From", f"<sip:{fqdn}:{port}>;tag={tag}"),
        ("To", f"<sip:{proxy.name}>"),
        ("Call-ID", call_id),
        ("CSeq", "1 OPTIONS"),
        ("Contact", f"<sip:{fqdn}:{port};transport=tls>"),
        *extra,
        ("Content-Length", "0"),
    ]
    return Request("OPTIONS", f"sip:{proxy.name}:5061;transport=tls", headers)
