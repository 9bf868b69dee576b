"""The emulator's asyncio side: TLS listeners (one per proxy), outbound TLS connections to the
SBC, one loop timer for the core, SRTP media endpoints; and :class:`EmulatorThread`, the same on
a background thread with blocking methods, for tests and the demo.

Everything SIP is decided in :class:`~teams_sbc.emulator.core.EmulatorCore`; this module only
moves bytes and feeds it ``loop.time()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from teams_sbc.emulator.config import EmulatorConfig, FailureMode
from teams_sbc.emulator.core import (
    CallOptions,
    EmulatorCore,
    MediaPlan,
    MediaStop,
    Out,
    Target,
)
from teams_sbc.emulator.media import MediaEndpoint, bind_udp
from teams_sbc.emulator.records import (
    CallRecord,
    CallState,
    MediaStats,
    OptionsResult,
    ProxyStats,
    as_dict,
)
from teams_sbc.emulator.tls import TlsStream, client_context, server_context

log = logging.getLogger("teams_sbc.emulator")

T = TypeVar("T")

#: Call states after which nothing more happens.
FINAL_STATES: frozenset[CallState] = frozenset({"ended", "rejected", "cancelled", "failed"})


class TeamsEmulator:
    """Microsoft's SIP proxies (sip, sip2, sip3) on loopback or any address, on the running
    event loop. ``await start()``, act (:meth:`place_call`, :meth:`hold`...), read results
    (:meth:`call`, :meth:`summary`), ``await stop()``."""

    def __init__(self, config: EmulatorConfig, *, handshake_timeout: float = 5.0) -> None:
        self.config = config
        self.handshake_timeout = handshake_timeout
        self.core = EmulatorCore(config, allocate_media=self._allocate_media)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server_ctx = server_context(config)
        self._client_ctx = client_context(config)
        self._servers: dict[str, asyncio.AbstractServer] = {}
        self._bound: dict[str, tuple[str, int]] = {}
        self._ids = itertools.count(1)
        self._streams: dict[int, TlsStream] = {}
        self._outbound: dict[tuple[str, str, str, int], TlsStream] = {}
        self._connecting: dict[tuple[str, str, str, int], asyncio.Task[TlsStream]] = {}
        self._media_socks: dict[int, socket.socket] = {}
        self._media: dict[str, MediaEndpoint] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.internal_errors = 0

    # ---- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        for proxy in self.config.proxies:
            port = proxy.port
            if proxy.failure == "refuse":
                port = port or _free_tcp_port(proxy.host)
                self._bound[proxy.name] = (proxy.host, port)
            else:
                await self._listen(proxy.name, proxy.host, port)
            self.core.set_port(proxy.name, self._bound[proxy.name][1])
        log.info(
            "Teams emulator listening",
            extra={"proxies": {name: f"{h}:{p}" for name, (h, p) in self._bound.items()}},
        )

    async def _listen(self, name: str, host: str, port: int) -> None:
        assert self._loop is not None
        server = await self._loop.create_server(
            lambda: self._new_stream(name, server_side=True, server_hostname=None),
            host, port, reuse_address=True,
        )
        self._servers[name] = server
        sockname = server.sockets[0].getsockname()
        self._bound[name] = (str(sockname[0]), int(sockname[1]))

    async def stop(self) -> None:
        self._stopping = True
        for server in self._servers.values():
            server.close()
        for task in list(self._connecting.values()):
            task.cancel()
        for stream in list(self._streams.values()):
            stream.close()
        for endpoint in self._media.values():
            endpoint.close()
        for sock in self._media_socks.values():
            sock.close()
        self._media_socks.clear()
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for server in self._servers.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        await asyncio.sleep(0)

    def address(self, proxy: str) -> tuple[str, int]:
        """Where a proxy listens (host, port)."""
        return self._bound[proxy]

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        return dict(self._bound)

    # ---- streams -------------------------------------------------------------------------------

    def _new_stream(self, proxy: str, *, server_side: bool, server_hostname: str | None
                    ) -> TlsStream:
        stream = TlsStream(
            self._server_ctx if server_side else self._client_ctx,
            server_side=server_side, server_hostname=server_hostname,
            on_ready=self._on_ready, on_message=self._on_message,
            on_failed=self._on_failed, on_closed=self._on_closed,
            handshake_timeout=self.handshake_timeout,
        )
        stream.proxy = proxy
        stream.conn_id = next(self._ids)
        return stream

    def _on_ready(self, stream: TlsStream) -> None:
        self._streams[stream.conn_id] = stream
        self.core.connection_opened(
            stream.conn_id, stream.proxy, stream.identity, stream.peer,
            outbound=not stream.server_side,
        )
        if stream.server_side and self.core.failure[stream.proxy] == "refuse":
            stream.close()
        log.debug("TLS up", extra={"proxy": stream.proxy, "peer": stream.peer,
                                   "tls": stream.version, "cipher": stream.cipher})

    def _on_failed(self, stream: TlsStream, reason: str) -> None:
        if stream.server_side:
            stats = self.core.stats[stream.proxy]
            stats.handshake_failures += 1
            stats.last_handshake_error = reason
        log.warning("TLS refused" if stream.server_side else "TLS to the SBC failed",
                    extra={"proxy": stream.proxy, "peer": stream.peer, "reason": reason})

    def _on_closed(self, stream: TlsStream) -> None:
        if self._streams.pop(stream.conn_id, None) is not None:
            self.core.connection_closed(stream.conn_id)
        for key, value in list(self._outbound.items()):
            if value is stream:
                del self._outbound[key]

    def _on_message(self, stream: TlsStream, data: bytes) -> None:
        try:
            self.core.receive(stream.conn_id, data, self._now())
        except Exception:  # a bug must not take the emulator down: log it, keep serving
            self.internal_errors += 1
            log.exception("emulator error on a message from %s", stream.peer,
                          extra={"proxy": stream.proxy})
        self._pump()

    # ---- the core's output -------------------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _pump(self) -> None:
        """Send what the core produced, apply media plans, re-arm the timer, wake waiters."""
        core = self.core
        while core.outbox or core.media_events:
            outbox, core.outbox = core.outbox, []
            for out in outbox:
                self._send(out)
            events, core.media_events = core.media_events, []
            for event in events:
                self._media_event(event)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = core.next_deadline()
        if deadline is not None and self._loop is not None and not self._stopping:
            self._timer = self._loop.call_at(deadline, self._on_timer)
        self._changed.set()
        self._changed = asyncio.Event()

    def _on_timer(self) -> None:
        self._timer = None
        self.core.advance(self._now())
        self._pump()

    def _send(self, out: Out) -> None:
        if out.conn is not None:
            stream = self._streams.get(out.conn)
            if stream is None or not stream.is_open:
                log.info("connection gone, %s not sent", out.what,
                         extra={"call_id": out.call_id})
                return
            stream.write(out.data)
            return
        assert out.target is not None
        target = out.target
        key = (target.proxy, target.host, target.address or "", target.port)
        stream = self._outbound.get(key)
        if stream is not None and stream.is_open:
            stream.write(out.data)
            return
        self._spawn(self._connect_and_send(key, target, out))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_and_send(self, key: tuple[str, str, str, int], target: Target,
                                out: Out) -> None:
        task = self._connecting.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._connect(target))
            self._connecting[key] = task
            task.add_done_callback(lambda _t: self._connecting.pop(key, None))
        try:
            stream = await asyncio.shield(task)
        except (OSError, ConnectionError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            log.warning("cannot reach the SBC", extra={
                "call_id": out.call_id, "proxy": target.proxy, "target": target.host,
                "reason": reason})
            self.core.send_failed(out, reason, self._now())
            self._pump()
            return
        self._outbound[key] = stream
        try:
            stream.write(out.data)
        except ConnectionError as exc:
            self.core.send_failed(out, str(exc), self._now())
            self._pump()

    async def _connect(self, target: Target) -> TlsStream:
        loop = asyncio.get_running_loop()
        address = target.address
        if address is None:
            infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
            address = str(infos[0][4][0])
        proxy = self.config.proxy(target.proxy)
        _, stream = await asyncio.wait_for(
            loop.create_connection(
                lambda: self._new_stream(target.proxy, server_side=False,
                                         server_hostname=target.host),
                address, target.port, local_addr=(proxy.host, 0),
            ),
            self.handshake_timeout,
        )
        await asyncio.wait_for(asyncio.shield(stream.done), self.handshake_timeout)
        return stream

    # ---- media ----------------------------------------------------------------------------------

    def _allocate_media(self, host: str) -> int:
        sock = bind_udp(host)
        port = int(sock.getsockname()[1])
        self._media_socks[port] = sock
        return port

    def _media_event(self, event: MediaPlan | MediaStop) -> None:
        if isinstance(event, MediaStop):
            endpoint = self._media.get(event.call_id)
            if endpoint is not None:
                endpoint.stop_sending()
                assert self._loop is not None
                self._loop.call_later(2.0, endpoint.close)  # late packets still counted
            return
        endpoint = self._media.get(event.call_id)
        if endpoint is None:
            sock = self._media_socks.pop(event.port, None)
            if sock is None:
                return
            endpoint = MediaEndpoint(sock, self.config.media.ptime_ms, self.config.media.packets)
            self._media[event.call_id] = endpoint
            self._spawn(endpoint.open())
        endpoint.apply(event)

    # ---- actions ------------------------------------------------------------------------------

    async def place_call(self, number: str, options: CallOptions | None = None,
                         **kwargs: Any) -> str:
        """Teams calls ``number`` through the SBC; returns the Call-ID. ``kwargs`` are
        :class:`CallOptions` fields."""
        opts = dataclasses.replace(options or CallOptions(), **kwargs)
        record = self.core.place_call(number, opts, self._now())
        self._pump()
        return record.call_id

    def hangup(self, call_id: str) -> None:
        self.core.hangup(call_id, self._now())
        self._pump()

    def cancel(self, call_id: str) -> None:
        self.core.cancel(call_id, self._now())
        self._pump()

    def hold(self, call_id: str, direction: str = "sendonly") -> None:
        self.core.hold(call_id, self._now(), direction)
        self._pump()

    def resume(self, call_id: str) -> None:
        self.core.resume(call_id, self._now())
        self._pump()

    def refresh(self, call_id: str) -> None:
        self.core.refresh(call_id, self._now())
        self._pump()

    def send_options(self, proxy: str, fqdn: str, port: int | None = None) -> OptionsResult:
        result = self.core.send_options(proxy, fqdn, self._now(), port=port)
        self._pump()
        return result

    async def set_failure(self, proxy: str, mode: FailureMode) -> None:
        """Make one proxy fail (or recover): ``refuse`` closes its listener and connections,
        ``503`` answers everything 503, ``silent`` answers nothing, ``none`` is normal."""
        self.core.set_failure(proxy, mode)
        server = self._servers.pop(proxy, None)
        if mode == "refuse":
            if server is not None:
                server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 0.5)
            for stream in list(self._streams.values()):
                if stream.proxy == proxy:
                    stream.close()
        elif server is not None:
            self._servers[proxy] = server
        elif proxy in self._bound:
            host, port = self._bound[proxy]
            await self._listen(proxy, host, port)
        log.info("proxy failure mode", extra={"proxy": proxy, "mode": mode})

    # ---- results ------------------------------------------------------------------------------

    def call(self, call_id: str) -> CallRecord:
        """A snapshot of one call, with its media counts."""
        record = self.core.record(call_id)
        endpoint = self._media.get(call_id)
        media = dataclasses.replace(endpoint.stats, from_addresses=list(
            endpoint.stats.from_addresses)) if endpoint is not None else None
        return dataclasses.replace(
            record, ladder=list(record.ladder), violations=list(record.violations),
            provisional_tags=list(record.provisional_tags), media=media,
        )

    def calls(self) -> list[CallRecord]:
        return [self.call(record.call_id) for record in self.core.records()]

    def options_results(self) -> list[OptionsResult]:
        return [dataclasses.replace(r) for r in self.core.options]

    def proxy_stats(self) -> dict[str, ProxyStats]:
        return {name: dataclasses.replace(s, rejections=dict(s.rejections))
                for name, s in self.core.stats.items()}

    def summary(self) -> dict[str, Any]:
        """One JSON-ready object: what the demo and ``emulate-teams`` print last."""
        calls = self.calls()
        media = [c.media for c in calls if c.media is not None]
        stats = self.proxy_stats()
        options = self.core.options
        return {
            "calls_ok": sum(1 for c in calls if c.ok),
            "calls_failed": sum(
                1 for c in calls
                if not c.ok and (c.state in FINAL_STATES or c.violations or c.failure)
            ),
            "calls": len(calls),
            "calls_to_teams": sum(1 for c in calls if c.direction == "to-teams"),
            "calls_from_teams": sum(1 for c in calls if c.direction == "from-teams"),
            "violations": sum(len(c.violations) for c in calls),
            "acks_ignored": sum(c.acks_ignored for c in calls),
            "options_received": sum(s.options_received for s in stats.values()),
            "options_answered_ok": sum(s.options_answered_ok for s in stats.values()),
            "options_sent": len(options),
            "options_ok": sum(1 for r in options if r.ok),
            "handshake_failures": sum(s.handshake_failures for s in stats.values()),
            "internal_errors": self.internal_errors,
            "rejections": _merge([s.rejections for s in stats.values()]),
            "media_packets_sent": sum(m.sent for m in media),
            "media_packets_received": sum(m.received for m in media),
            "media_packets_decrypted": sum(m.decrypted for m in media),
            "media_payload_ok": sum(m.payload_ok for m in media),
            "media_auth_failures": sum(m.auth_failures for m in media),
            "proxies": {name: as_dict(s) for name, s in stats.items()},
        }

    # ---- waiting ---------------------------------------------------------------------------

    async def wait_until(self, check: Callable[[], bool], within: float, what: str) -> None:
        """Until ``check()`` holds: woken by every SIP event, and every 50 ms (media counts)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not check():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {within:g}s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))

    async def wait_call(self, call_id: str, *states: CallState, within: float = 10.0
                        ) -> CallRecord:
        """Until the call reaches one of ``states`` (default: any final state)."""
        wanted = set(states) or set(FINAL_STATES)
        await self.wait_until(lambda: self.core.record(call_id).state in wanted, within,
                              f"call {call_id} to reach {sorted(wanted)}")
        return self.call(call_id)

    async def wait_media(self, call_id: str, *, sent: int = 1, decrypted: int = 1,
                         within: float = 10.0) -> MediaStats:
        """Until the call's endpoint sent and decrypted at least that many packets."""
        def check() -> bool:
            endpoint = self._media.get(call_id)
            return endpoint is not None and endpoint.stats.sent >= sent \
                and endpoint.stats.decrypted >= decrypted
        await self.wait_until(check, within, f"media of call {call_id}")
        media = self.call(call_id).media
        assert media is not None
        return media


def _merge(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for key, value in d.items():
            out[key] = out.get(key, 0) + value
    return out


def _free_tcp_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmulatorThread:
    """A :class:`TeamsEmulator` on its own thread and event loop (uvloop), with
    blocking methods: what synchronous tests and the demo use.

    >>> emu = EmulatorThread(config).start()
    >>> call_id = emu.place_call("+14255550123", trunk="sbc.example.com")
    >>> record = emu.wait_call(call_id, "confirmed")
    >>> emu.stop()
    """

    def __init__(self, config: EmulatorConfig, *, handshake_timeout: float = 5.0) -> None:
        self.config = config
        self.handshake_timeout = handshake_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._emulator: TeamsEmulator | None = None

    def start(self, timeout: float = 10.0) -> EmulatorThread:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        self._loop = loop
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)

            async def boot() -> None:
                emulator = TeamsEmulator(self.config, handshake_timeout=self.handshake_timeout)
                await emulator.start()
                self._emulator = emulator

            try:
                loop.run_until_complete(boot())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="teams-emulator", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise TimeoutError("the Teams emulator did not start")
        if failure:
            raise failure[0]
        return self

    @property
    def emulator(self) -> TeamsEmulator:
        if self._emulator is None:
            raise RuntimeError("the emulator is not running")
        return self._emulator

    def run(self, fn: Callable[[TeamsEmulator], Awaitable[T]], timeout: float = 30.0) -> T:
        """Run a coroutine on the emulator's loop and wait for its result."""
        assert self._loop is not None

        async def call() -> T:
            return await fn(self.emulator)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout)

    def do(self, fn: Callable[[TeamsEmulator], T], timeout: float = 10.0) -> T:
        """Run a plain function on the emulator's loop (thread-safe access to its state)."""

        async def call(emulator: TeamsEmulator) -> T:
            return fn(emulator)

        return self.run(call, timeout)

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._emulator is not None:
            with contextlib.suppress(Exception):
                self.run(lambda e: e.stop(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    # Blocking forms of the emulator's methods.

    def address(self, proxy: str) -> tuple[str, int]:
        return self.do(lambda e: e.address(proxy))

    def place_call(self, number: str, options: CallOptions | None = None, **kwargs: Any) -> str:
        return self.run(lambda e: e.place_call(number, options, **kwargs))

    def wait_call(self, call_id: str, *states: CallState, timeout: float = 10.0) -> CallRecord:
        return self.run(lambda e: e.wait_call(call_id, *states, within=timeout),
                        timeout + 5)

    def wait_media(self, call_id: str, *, sent: int = 1, decrypted: int = 1,
                   timeout: float = 10.0) -> MediaStats:
        return self.run(lambda e: e.wait_media(call_id, sent=sent, decrypted=decrypted,
                                               within=timeout), timeout + 5)

    def wait_until(self, check: Callable[[TeamsEmulator], bool], timeout: float = 10.0,
                   what: str = "a condition") -> None:
        self.run(lambda e: e.wait_until(lambda: check(e), timeout, what), timeout + 5)

    def hangup(self, call_id: str) -> None:
        self.do(lambda e: e.hangup(call_id))

    def cancel(self, call_id: str) -> None:
        self.do(lambda e: e.cancel(call_id))

    def hold(self, call_id: str, direction: str = "sendonly") -> None:
        self.do(lambda e: e.hold(call_id, direction))

    def resume(self, call_id: str) -> None:
        self.do(lambda e: e.resume(call_id))

    def refresh(self, call_id: str) -> None:
        self.do(lambda e: e.refresh(call_id))

    def send_options(self, proxy: str, fqdn: str, port: int | None = None) -> OptionsResult:
        return self.do(lambda e: e.send_options(proxy, fqdn, port))

    def set_failure(self, proxy: str, mode: FailureMode) -> None:
        self.run(lambda e: e.set_failure(proxy, mode))

    def call(self, call_id: str) -> CallRecord:
        return self.do(lambda e: e.call(call_id))

    def calls(self) -> list[CallRecord]:
        return self.do(lambda e: e.calls())

    def options_results(self) -> list[OptionsResult]:
        return self.do(lambda e: e.options_results())

    def proxy_stats(self) -> dict[str, ProxyStats]:
        return self.do(lambda e: e.proxy_stats())

    def summary(self) -> dict[str, Any]:
        return self.do(lambda e: e.summary())
