"""Several rtpengine instances: which one anchors a new call, which one a dialog is stuck to,
and which ones are up.

A new call picks an instance that is up (:meth:`RelayPool.pick`). The instance's ``token`` then
travels with the dialog in a Record-Route parameter (the SIP layer carries it), so whichever SBC
replica receives the re-INVITE, BYE or CANCEL finds the same instance with
:meth:`RelayPool.instance_for_token` and sends its ``offer``/``delete`` there. Instances are
pinged periodically; an unanswered ping or command marks one down (new calls avoid it, calls in
progress still send to it), an answered ping brings it back. :class:`RelayHealth` holds plain
attributes the SBC's metrics and readiness read.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from teams_sbc.media.config import MediaConfig, RtpengineInstance
from teams_sbc.media.errors import (
    MediaError,
    NgError,
    NgProtocolError,
    NgTimeout,
    NoRelayAvailable,
    UnknownRelay,
)
from teams_sbc.media.legs import (
    Leg,
    MediaPolicy,
    answer_params,
    delete_params,
    finish_sdp,
    offer_params,
)
from teams_sbc.media.ng import Expired, NgClient, Reply, RetrySchedule

log = logging.getLogger("teams_sbc.media")

Selection = Literal["least-loaded", "round-robin"]


@dataclass
class RelayHealth:
    """What the SBC knows about one instance; read by metrics, readiness and logs."""

    up: bool = False
    checked: bool = False  # at least one health ping has finished
    last_error: str | None = None
    rtt: float | None = None  # seconds: the last single-transmission answer (ping or command)
    sessions: int | None = None  # rtpengine's own sessions at the last `statistics`
    ports_free: int | None = None
    changed_at: float | None = None  # time.monotonic() of the last up/down change
    answered: int = 0
    timeouts: int = 0
    refused: int = 0  # `result: error` answers (rtpengine alive, command rejected)
    transport_errors: int = 0


class MediaRelay:
    """One configured rtpengine: its token, its ng client and its health."""

    def __init__(self, token: str, host: str, port: int, schedule: RetrySchedule) -> None:
        self.token = token
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.health = RelayHealth()
        self.picked_since_stats = 0
        self.client = NgClient(host, port, schedule=schedule, name=self.address, observer=self)

    def __repr__(self) -> str:
        state = "up" if self.health.up else "down"
        return f"MediaRelay({self.token}, {self.address}, {state})"

    @property
    def load(self) -> int:
        """Sessions last reported plus calls sent here since, so picks between two
        `statistics` polls do not all land on the same instance."""
        return (self.health.sessions or 0) + self.picked_since_stats

    async def command(
        self, command: str, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """An ng command to this instance; errors are typed, and counted in its health."""
        try:
            return await self.client.command(command, params)
        except NgError:
            self.health.refused += 1
            raise

    async def offer(
        self,
        *,
        call_id: str,
        from_tag: str,
        sdp: str,
        towards: Leg,
        policy: MediaPolicy,
        to_tag: str | None = None,
        via_branch: str | None = None,
    ) -> str:
        """``offer`` for an (re-)INVITE's SDP; returns the SDP to send on to ``towards``."""
        params = offer_params(
            call_id=call_id,
            from_tag=from_tag,
            to_tag=to_tag,
            sdp=sdp,
            towards=towards,
            policy=policy,
            via_branch=via_branch,
        )
        return finish_sdp(_sdp_of("offer", await self.command("offer", params)), towards)

    async def answer(
        self,
        *,
        call_id: str,
        from_tag: str,
        to_tag: str,
        sdp: str,
        towards: Leg,
        policy: MediaPolicy,
        via_branch: str | None = None,
    ) -> str:
        """``answer`` for a 183/200's SDP; returns the SDP to send on to ``towards``. With the
        offer's ``via_branch``, an answer under a To tag rtpengine has not seen (another fork)
        goes to the leg that offer made, which takes the new tag."""
        params = answer_params(
            call_id=call_id,
            from_tag=from_tag,
            to_tag=to_tag,
            sdp=sdp,
            towards=towards,
            policy=policy,
            via_branch=via_branch,
        )
        return finish_sdp(_sdp_of("answer", await self.command("answer", params)), towards)

    async def delete(
        self, *, call_id: str, from_tag: str, to_tag: str | None = None
    ) -> dict[str, Any]:
        """Free the call's ports; rtpengine's reply carries the call's final statistics.

        Without ``to_tag`` the whole call goes (BYE, CANCEL, failed INVITE); with it, only
        that dialog of a forked call."""
        reply = await self.command(
            "delete", delete_params(call_id=call_id, from_tag=from_tag, to_tag=to_tag)
        )
        if "warning" in reply:  # e.g. a second delete for the same call: harmless, but say so
            log.info(
                "rtpengine delete: %s",
                reply["warning"],
                extra={"rtpengine": self.token, "call_id": call_id},
            )
        return reply

    def mark_down(self, reason: str, now: float) -> None:
        self.health.last_error = reason
        if self.health.up or not self.health.checked:
            log.warning(
                "rtpengine down: %s",
                reason,
                extra={"rtpengine": self.token, "address": self.address},
            )
            self.health.changed_at = now
        self.health.up = False
        self.health.checked = True

    def mark_up(self, now: float) -> None:
        if not self.health.up:
            log.info(
                "rtpengine up",
                extra={"rtpengine": self.token, "address": self.address},
            )
            self.health.changed_at = now
        self.health.up = True
        self.health.checked = True

    # NgObserver: every answer or timeout on this instance's socket lands here.

    def answered(self, reply: Reply) -> None:
        self.health.answered += 1
        if reply.attempts == 1:
            self.health.rtt = reply.elapsed

    def expired(self, expired: Expired) -> None:
        self.health.timeouts += 1
        reason = (
            f"no answer to {expired.command!r} after {expired.attempts} transmissions "
            f"in {expired.waited:.2f}s"
        )
        if self.client.last_transport_error:
            reason += f" (last socket error: {self.client.last_transport_error})"
        self.mark_down(reason, self.client.clock())

    def transport_error(self, exc: Exception) -> None:
        self.health.transport_errors += 1


def _sdp_of(command: str, reply: Mapping[str, Any]) -> str:
    sdp = reply.get("sdp")
    if not isinstance(sdp, str):
        raise NgProtocolError(f"rtpengine's {command} reply has no SDP: {sorted(reply)}")
    return sdp


class RelayPool:
    """The configured rtpengine instances, the selector, and the periodic health check."""

    def __init__(
        self,
        instances: Sequence[RtpengineInstance],
        *,
        selection: Selection = "least-loaded",
        schedule: RetrySchedule | None = None,
        ping_interval: float = 5.0,
        ping_timeout: float = 1.0,
    ) -> None:
        if not instances:
            raise ValueError("at least one rtpengine instance is needed")
        sched = schedule or RetrySchedule()
        self.relays = tuple(
            MediaRelay(inst.identity, *inst.host_port, schedule=sched) for inst in instances
        )
        self._by_token = {relay.token: relay for relay in self.relays}
        if len(self._by_token) != len(self.relays):
            raise ValueError("rtpengine tokens must be unique")
        self.selection: Selection = selection
        self.ping_interval = ping_interval
        self.ping_schedule = RetrySchedule((ping_timeout,))
        self._turn = itertools.count()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: MediaConfig) -> RelayPool:
        return cls(
            config.rtpengines,
            selection=config.selection,
            schedule=RetrySchedule(tuple(config.retransmit_intervals)),
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
        )

    @property
    def ready(self) -> bool:
        """At least one instance can anchor a new call (the SBC's readiness)."""
        return any(relay.health.up for relay in self.relays)

    async def start(self, *, background: bool = True) -> None:
        """Open the sockets, learn every instance's state once, then keep checking."""
        for relay in self.relays:
            await relay.client.connect()
        await self.check_all()
        if background:
            self._task = asyncio.create_task(self._check_forever(), name="rtpengine-health")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for relay in self.relays:
            relay.client.close()

    def pick(self) -> MediaRelay:
        """An instance for a new call; :class:`NoRelayAvailable` when all are down."""
        up = [relay for relay in self.relays if relay.health.up]
        if not up:
            reasons = "; ".join(f"{r.token}: {r.health.last_error}" for r in self.relays)
            raise NoRelayAvailable(f"no rtpengine is up ({reasons})")
        if self.selection == "round-robin":
            relay = up[next(self._turn) % len(up)]
        else:
            relay = min(up, key=lambda r: r.load)  # ties: configuration order
        relay.picked_since_stats += 1
        return relay

    def instance_for_token(self, token: str) -> MediaRelay:
        """The instance a dialog is stuck to, up or not (a call in progress is not moved)."""
        try:
            return self._by_token[token]
        except KeyError:
            raise UnknownRelay(
                f"rtpengine token {token!r} is not configured here "
                f"(known: {', '.join(self._by_token)})"
            ) from None

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(relay) for relay in self.relays))

    async def check(self, relay: MediaRelay) -> None:
        """One health probe: a ping (one transmission), and `statistics` for the selector."""
        now = relay.client.clock
        try:
            await relay.client.ping(self.ping_schedule)
        except NgTimeout:
            return  # the observer marked it down, with the reason
        except MediaError as exc:
            relay.mark_down(str(exc), now())
            return
        relay.mark_up(now())
        if self.selection == "least-loaded":
            await self._read_load(relay)

    async def _read_load(self, relay: MediaRelay) -> None:
        try:
            stats = await relay.client.statistics()
        except MediaError as exc:
            log.info("rtpengine statistics failed: %s", exc, extra={"rtpengine": relay.token})
            return
        current = stats.get("currentstatistics", {})
        sessions = current.get("sessionsown") if isinstance(current, dict) else None
        if isinstance(sessions, int):
            relay.health.sessions = sessions
            relay.picked_since_stats = 0
        free = 0
        for interface in stats.get("interfaces", []):
            ports = interface.get("ports", {}) if isinstance(interface, dict) else {}
            if isinstance(ports.get("free"), int):
                free += ports["free"]
        relay.health.ports_free = free

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            try:
                await self.check_all()
            except Exception:  # a bug here must not end health checking for good
                log.exception("rtpengine health check failed")
