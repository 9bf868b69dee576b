"""rtpengine's ng control protocol: a sans-IO core and a thin asyncio client over UDP.

One datagram per command, ``<cookie> <bencoded dict>``; the reply carries the same cookie
(rtpengine's docs/ng_control_protocol.md). rtpengine answers a repeated cookie from its reply
cache, so a retransmission must reuse the cookie (an ``offer`` sent twice under two cookies would
be processed twice) and every new command needs a fresh one. UDP loses datagrams, so a command
is retransmitted on a schedule and fails with :class:`NgTimeout` when the schedule runs out.

:class:`NgCore` holds that logic with no socket and no clock (``now`` is passed in), as the SIP
core does; :class:`NgClient` feeds it from an asyncio datagram endpoint (works on uvloop) and
keeps one loop timer at the core's next deadline. The client's clock is ``time.monotonic``, not
``loop.time()``: uvloop's loop clock ticks in whole milliseconds, too coarse for the round trips
the health figures report (rtpengine answers in tens of microseconds on loopback).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import bencode

from teams_sbc.media.errors import NgError, NgProtocolError, NgTimeout

#: The ng commands rtpengine 10.5 answers that the SBC uses (all checked against 10.5.3.5).
COMMANDS = ("ping", "offer", "answer", "delete", "query", "list", "statistics")


def random_cookie() -> bytes:
    """A fresh cookie: 12 hex digits, no space (the separator), unique enough per instance."""
    return secrets.token_hex(6).encode()


def encode_request(cookie: bytes, command: str, params: Mapping[str, Any]) -> bytes:
    """``<cookie> <bencoded dict>``; keys whose value is None are left out."""
    if not cookie or b" " in cookie:
        raise ValueError(f"an ng cookie is non-empty and has no space: {cookie!r}")
    body = {k: v for k, v in params.items() if v is not None}
    body["command"] = command
    encoded: bytes = bencode.bencode(body)
    return cookie + b" " + encoded


def _plain(value: Any) -> Any:
    """bencode.py returns OrderedDicts (rtpengine's keys come unsorted); hand out plain dicts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def decode_reply(datagram: bytes) -> tuple[bytes, dict[str, Any]]:
    """Split a reply into its cookie and dictionary; :class:`NgProtocolError` if it is neither."""
    cookie, sep, body = datagram.partition(b" ")
    if not sep or not cookie:
        raise NgProtocolError(f"no cookie in ng datagram {datagram[:40]!r}")
    try:
        value = bencode.bdecode(body)
    except Exception as exc:  # bencode.py raises its own BencodeDecodeError and kin
        raise NgProtocolError(f"ng reply is not bencode: {exc}") from exc
    if not isinstance(value, dict):
        raise NgProtocolError(f"ng reply is not a dictionary: {value!r:.60}")
    return cookie, _plain(value)


def raise_for_result(command: str, reply: Mapping[str, Any], relay: str = "") -> None:
    """``result: error`` becomes :class:`NgError` carrying rtpengine's ``error-reason``."""
    if reply.get("result") == "error":
        reason = reply.get("error-reason", "no error-reason given")
        raise NgError(command, str(reason), relay)


@dataclass(frozen=True)
class RetrySchedule:
    """Seconds to wait after each transmission; after the last wait the command has failed.

    The default sends at 0, 0.5 and 1.5 s and gives up at 3.5 s: rtpengine answers in well
    under a millisecond on loopback, so a lost datagram, not a slow daemon, is what a
    retransmission covers, and a SIP transaction (Timer B, 32 s) outlives the whole schedule.
    """

    intervals: tuple[float, ...] = (0.5, 1.0, 2.0)

    def __post_init__(self) -> None:
        if not self.intervals or any(i <= 0 for i in self.intervals):
            raise ValueError(f"retry intervals must be positive and non-empty: {self.intervals}")

    @property
    def total(self) -> float:
        """How long a command may wait in all before it fails."""
        return sum(self.intervals)


@dataclass(frozen=True)
class Reply:
    """rtpengine answered ``cookie``; ``elapsed`` is since the first transmission."""

    cookie: bytes
    command: str
    body: dict[str, Any]
    elapsed: float
    attempts: int


@dataclass(frozen=True)
class Expired:
    """``cookie`` got no answer after ``attempts`` transmissions over ``waited`` seconds."""

    cookie: bytes
    command: str
    waited: float
    attempts: int


@dataclass
class _Pending:
    cookie: bytes
    command: str
    datagram: bytes
    schedule: RetrySchedule
    started: float
    deadline: float
    attempts: int = 1


@dataclass
class NgCounters:
    """Plain counters the metrics layer reads."""

    sent: int = 0
    retransmitted: int = 0
    answered: int = 0
    expired: int = 0
    stray: int = 0  # late or duplicate answers, or cookies we never sent
    malformed: int = 0


class NgCore:
    """Commands in flight to one rtpengine: cookies, retransmissions, answers matched by cookie.

    Feed it ``receive(datagram, now)`` and ``handle_timer(now)`` at ``next_deadline()``; send
    what ``datagrams_to_send()`` returns. It never reads a clock or touches a socket.
    """

    def __init__(
        self,
        schedule: RetrySchedule | None = None,
        new_cookie: Callable[[], bytes] = random_cookie,
    ) -> None:
        self.schedule = schedule or RetrySchedule()
        self._new_cookie = new_cookie
        self._pending: dict[bytes, _Pending] = {}
        self._timers: list[tuple[float, int, bytes]] = []
        self._seq = itertools.count()
        self._outbox: list[bytes] = []
        self.counters = NgCounters()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def request(
        self,
        command: str,
        params: Mapping[str, Any],
        now: float,
        schedule: RetrySchedule | None = None,
    ) -> bytes:
        """Queue a new command under a fresh cookie; returns the cookie."""
        cookie = self._new_cookie()
        while cookie in self._pending:  # a repeated cookie would be answered from the cache
            cookie = self._new_cookie()
        sched = schedule or self.schedule
        pending = _Pending(
            cookie=cookie,
            command=command,
            datagram=encode_request(cookie, command, params),
            schedule=sched,
            started=now,
            deadline=now + sched.intervals[0],
        )
        self._pending[cookie] = pending
        self._push(pending)
        self._outbox.append(pending.datagram)
        self.counters.sent += 1
        return cookie

    def datagrams_to_send(self) -> list[bytes]:
        out, self._outbox = self._outbox, []
        return out

    def receive(self, datagram: bytes, now: float) -> Reply | None:
        """The answer a datagram completes, or None (malformed, late, duplicate: dropped)."""
        try:
            cookie, body = decode_reply(datagram)
        except NgProtocolError:
            self.counters.malformed += 1
            return None
        pending = self._pending.pop(cookie, None)
        if pending is None:
            self.counters.stray += 1
            return None
        self.counters.answered += 1
        return Reply(cookie, pending.command, body, now - pending.started, pending.attempts)

    def handle_timer(self, now: float) -> list[Expired]:
        """Retransmit what is due (same cookie) and report commands whose schedule ran out."""
        expired: list[Expired] = []
        while self._timers and self._timers[0][0] <= now:
            deadline, _, cookie = heapq.heappop(self._timers)
            pending = self._pending.get(cookie)
            if pending is None or pending.deadline != deadline:
                continue  # answered or cancelled since
            if pending.attempts >= len(pending.schedule.intervals):
                del self._pending[cookie]
                self.counters.expired += 1
                expired.append(
                    Expired(cookie, pending.command, deadline - pending.started, pending.attempts)
                )
                continue
            # Schedule from the due time, not from `now`, so a late wake-up does not stretch it.
            pending.deadline = deadline + pending.schedule.intervals[pending.attempts]
            pending.attempts += 1
            self._push(pending)
            self._outbox.append(pending.datagram)
            self.counters.retransmitted += 1
        return expired

    def next_deadline(self) -> float | None:
        while self._timers:
            deadline, _, cookie = self._timers[0]
            pending = self._pending.get(cookie)
            if pending is not None and pending.deadline == deadline:
                return deadline
            heapq.heappop(self._timers)  # stale entry
        return None

    def cancel(self, cookie: bytes) -> None:
        """Forget a command (its caller went away); a later answer counts as stray."""
        self._pending.pop(cookie, None)

    def _push(self, pending: _Pending) -> None:
        heapq.heappush(self._timers, (pending.deadline, next(self._seq), pending.cookie))


class NgObserver(Protocol):
    """Told about every outcome, so a health tracker needs no wrapper around each call."""

    def answered(self, reply: Reply) -> None: ...

    def expired(self, expired: Expired) -> None: ...

    def transport_error(self, exc: Exception) -> None: ...


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, client: NgClient) -> None:
        self._client = client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._client._on_datagram(data)

    def error_received(self, exc: Exception) -> None:
        self._client._on_transport_error(exc)


@dataclass
class _Timer:
    handle: asyncio.TimerHandle | None = None
    when: float | None = None


class NgClient:
    """ng commands to one rtpengine over a connected UDP socket, many in flight at once.

    A connected socket takes datagrams from rtpengine's address only, and turns an ICMP port
    unreachable (rtpengine not running) into ``error_received``: it is reported to the observer
    and the command keeps its schedule, since a restarting rtpengine may answer in time.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        schedule: RetrySchedule | None = None,
        name: str = "",
        observer: NgObserver | None = None,
        new_cookie: Callable[[], bytes] = random_cookie,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = (host, port)
        self.clock = clock
        self.name = name or f"{host}:{port}"
        self.core = NgCore(schedule, new_cookie)
        self.observer = observer
        self.last_transport_error: str | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._waiters: dict[bytes, asyncio.Future[Reply]] = {}
        self._timer = _Timer()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def connect(self) -> None:
        self._loop = asyncio.get_running_loop()
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _Datagrams(self), remote_addr=self.address
        )
        self._transport = transport

    def close(self) -> None:
        if self._timer.handle is not None:
            self._timer.handle.cancel()
        self._timer = _Timer()
        for cookie, waiter in list(self._waiters.items()):
            self.core.cancel(cookie)
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def request(
        self,
        command: str,
        params: Mapping[str, Any] | None = None,
        *,
        schedule: RetrySchedule | None = None,
    ) -> dict[str, Any]:
        """rtpengine's raw reply (``result: error`` included); :class:`NgTimeout` if none."""
        if self._transport is None or self._loop is None:
            raise RuntimeError(f"ng client for {self.name} is not connected")
        cookie = self.core.request(command, params or {}, self.clock(), schedule)
        waiter: asyncio.Future[Reply] = self._loop.create_future()
        self._waiters[cookie] = waiter
        self._flush()
        try:
            reply = await waiter
        finally:
            self._waiters.pop(cookie, None)
            self.core.cancel(cookie)
        return reply.body

    async def command(
        self,
        command: str,
        params: Mapping[str, Any] | None = None,
        *,
        schedule: RetrySchedule | None = None,
    ) -> dict[str, Any]:
        """Like :meth:`request`, but ``result: error`` raises :class:`NgError`."""
        reply = await self.request(command, params, schedule=schedule)
        raise_for_result(command, reply, self.name)
        return reply

    async def ping(self, schedule: RetrySchedule | None = None) -> float:
        """Seconds until ``pong``; rtpengine alive and reading its control socket."""
        started = self.clock()
        reply = await self.command("ping", schedule=schedule)
        if reply.get("result") != "pong":
            raise NgError("ping", f"unexpected result {reply.get('result')!r}", self.name)
        return self.clock() - started

    async def offer(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return await self.command("offer", params)

    async def answer(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return await self.command("answer", params)

    async def delete(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return await self.command("delete", params)

    async def query(self, call_id: str) -> dict[str, Any]:
        return await self.command("query", {"call-id": call_id})

    async def list_calls(self, limit: int = 32) -> list[str]:
        """Call-IDs rtpengine holds (its ``list`` command; at most ``limit``)."""
        reply = await self.command("list", {"limit": limit})
        return [str(c) for c in reply.get("calls", [])]

    async def statistics(self) -> dict[str, Any]:
        reply = await self.command("statistics")
        stats = reply.get("statistics", {})
        return stats if isinstance(stats, dict) else {}

    # -- the loop side ---------------------------------------------------------------------

    def _flush(self) -> None:
        assert self._transport is not None
        for datagram in self.core.datagrams_to_send():
            self._transport.sendto(datagram)
        self._rearm()

    def _rearm(self) -> None:
        assert self._loop is not None
        deadline = self.core.next_deadline()
        if deadline == self._timer.when:
            return
        if self._timer.handle is not None:
            self._timer.handle.cancel()
        self._timer.when = deadline
        self._timer.handle = (
            None
            if deadline is None
            else self._loop.call_later(max(0.0, deadline - self.clock()), self._on_timer)
        )

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._timer = _Timer()
        for expired in self.core.handle_timer(self.clock()):
            if self.observer is not None:
                self.observer.expired(expired)
            waiter = self._waiters.get(expired.cookie)
            if waiter is not None and not waiter.done():
                waiter.set_exception(
                    NgTimeout(expired.command, expired.waited, expired.attempts, self.name)
                )
        if self._transport is not None:
            self._flush()

    def _on_datagram(self, data: bytes) -> None:
        assert self._loop is not None
        reply = self.core.receive(data, self.clock())
        if reply is None:
            return
        if self.observer is not None:
            self.observer.answered(reply)
        waiter = self._waiters.get(reply.cookie)
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)
        self._rearm()

    def _on_transport_error(self, exc: Exception) -> None:
        self.last_transport_error = f"{type(exc).__name__}: {exc}"
        if self.observer is not None:
            self.observer.transport_error(exc)


__all__ = [
    "COMMANDS",
    "Expired",
    "NgClient",
    "NgCore",
    "NgCounters",
    "NgObserver",
    "Reply",
    "RetrySchedule",
    "decode_reply",
    "encode_request",
    "raise_for_result",
    "random_cookie",
]
