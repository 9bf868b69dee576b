"""The SBC process: the sans-IO proxy core driven by uvloop, its sockets and its HTTP endpoints.

The core never sees a socket or a clock. This module feeds it each message with ``loop.time()``,
sends what it queued, and keeps one loop timer armed at the core's next deadline (the aioquic
pattern). SIGTERM drains: no new calls, open transactions finish, then the process exits.

With ``workers`` > 1 this runs in each worker process, given its :class:`Seat` by the
supervisor (``teams_sbc.workers``): listeners shared with SO_REUSEPORT, a UDP port of its own
for its Via, the HTTP endpoints on a unix socket for the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
from typing import TYPE_CHECKING

import uvloop
from aiohttp import web

from teams_sbc.config import SbcConfig
from teams_sbc.health import ExtraRoute, HealthServer
from teams_sbc.logs import setup_logging
from teams_sbc.media.commands import MediaResult
from teams_sbc.media.driver import MediaDriver
from teams_sbc.media.metrics import MediaMetrics
from teams_sbc.metrics import Metrics
from teams_sbc.podstatus import PodStatusWriter, pool_report
from teams_sbc.reload import Reloader
from teams_sbc.sip.peer import Outgoing, Peer
from teams_sbc.sip.proxy import Proxy
from teams_sbc.teams.edge import TeamsProxy
from teams_sbc.teams.wiring import allow_lists, sni_certificates
from teams_sbc.transport import TransportLayer

if TYPE_CHECKING:
    from teams_sbc.workers.seat import Seat

log = logging.getLogger("teams_sbc")


class Sbc:
    def __init__(
        self, config: SbcConfig, seat: Seat | None = None, config_path: str | None = None
    ) -> None:
        self.config = config
        self.seat = seat
        self.metrics = Metrics()
        # The config file, watched for tenants and routes changed without a restart.
        self.reloader = (
            Reloader(config_path, config, self.metrics.registry) if config_path else None
        )
        # Media (docs/media.md): the core parks messages on rtpengine; the driver runs the
        # commands and feeds the results back (_media_done).
        self.media: MediaDriver | None = None
        media_metrics = MediaMetrics(self.metrics.registry) if config.media else None
        # The Teams edge (docs/policies.md) is the core with the Teams rules on top.
        core = TeamsProxy if config.teams else Proxy
        self.core = core(config, self.metrics, media_metrics=media_metrics)
        if config.media is not None and media_metrics is not None:
            self.media = MediaDriver(
                config.media, media_metrics, self._media_done, self._media_timeout
            )
        self.transports = TransportLayer(
            config.listeners,
            self._on_message,
            self._on_send_failed,
            self.metrics,
            config.max_message_size,
            reuse_port=seat is not None,
            private_udp=seat.private_sockets() if seat is not None else None,
            sni=sni_certificates(config),
            allow=allow_lists(config),
        )
        routes: list[ExtraRoute] = list(self.media.routes()) if self.media is not None else []
        if isinstance(self.core, TeamsProxy):
            routes.append(("GET", "/teams", self._teams_status))
        if self.reloader is not None:
            routes.append(("GET", "/config", self._config_status))
        self.health = HealthServer(
            config.http.host,
            config.http.port,
            self.metrics,
            self.readiness,
            routes=routes,
            unix_path=seat.health_path if seat is not None else None,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._drained = asyncio.Event()
        self._reloader: asyncio.Task[None] | None = None
        self._config_watch: asyncio.Task[None] | None = None
        # In a pod, the Microsoft proxies' state goes into the Pod's annotation for the
        # operator (teams_sbc.podstatus). With workers, the supervisor writes it from all
        # workers' views; each worker keeps its OPTIONS in a slot of its own (teams.proxies).
        self.pod_status: PodStatusWriter | None = None
        if isinstance(self.core, TeamsProxy):
            if seat is None:
                pool = self.core.pool
                self.pod_status = PodStatusWriter.from_env(
                    config.pod_status, lambda: pool_report(pool), self.metrics.registry
                )
            else:
                self.core.pool.stagger(seat.index, config.workers)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.media is not None:
            await self.media.start()
        await self.transports.start()
        self.core.set_bound_addresses(
            self.transports.bound,
            self.transports.via_ports,
            self.seat.sibling_ports if self.seat is not None else None,
        )
        await self.health.start()
        if self.transports.tls:
            self._reloader = asyncio.get_running_loop().create_task(self._reload_tls())
        if self.reloader is not None and self.config.config_reload_seconds > 0:
            self._config_watch = self._loop.create_task(self._watch_config())
        # Read at scrape time: 0 while draining, or while no rtpengine can anchor a call.
        self.metrics.ready.set_function(lambda: float(self.readiness()[0]))
        self._flush()  # arm the core's first timer (the Teams edge's OPTIONS are due at once)
        if self.pod_status is not None:
            self.pod_status.start()
        log.info(
            "sbc started",
            extra={
                "listeners": {n: f"{h}:{p}" for n, (h, p) in self.transports.bound.items()},
                **(
                    {"http_port": self.health.bound_port}
                    if self.seat is None
                    else {"via_ports": self.transports.via_ports}
                ),
            },
        )

    async def _reload_tls(self) -> None:
        """Pick up renewed certificates: new connections get them, calls go on."""
        while True:
            await asyncio.sleep(self.config.tls_reload_seconds)
            for contexts in self.transports.tls.values():
                contexts.reload_if_changed()

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(self.config.config_reload_seconds)
            self.check_config()

    def check_config(self) -> None:
        """Look at the config file now (every few seconds, and on SIGHUP); apply a change
        the running core can take (teams_sbc.reload). Never raises: a bad file is logged."""
        if self.reloader is None or self._loop is None:
            return
        try:
            new = self.reloader.check()
        except Exception:  # a reload must never take the SBC down
            log.exception("config check failed, the running config stays")
            return
        if new is not None:
            self.config = new
            self.core.reconfigure(new)
            self._flush()

    async def _teams_status(self, _request: web.Request) -> web.Response:
        """/teams: the trunk and each Microsoft proxy's health, for the operator."""
        assert isinstance(self.core, TeamsProxy) and self._loop is not None
        status = self.core.teams_status(self._loop.time())
        if self.reloader is not None:
            status["config"] = self.reloader.state.status()
        body = json.dumps(status, indent=1) + "\n"
        return web.Response(text=body, content_type="application/json")

    async def _config_status(self, _request: web.Request) -> web.Response:
        """/config: the running config's generation and what the last reload check decided
        (informational: readiness does not depend on it)."""
        assert self.reloader is not None
        body = json.dumps(self.reloader.state.status(), indent=1) + "\n"
        return web.Response(text=body, content_type="application/json")

    def readiness(self) -> tuple[bool, list[str]]:
        reasons = self.core.not_ready_reasons()
        if self.media is not None:
            reasons += self.media.readiness_reasons()
        return (not reasons, reasons)

    async def drain(self, grace: float) -> None:
        """Stop taking calls and wait, at most ``grace`` seconds, for open transactions to end."""
        log.info("draining", extra={"transactions": self.core.transaction_count()})
        self.core.draining = True
        self.metrics.ready.set(0)
        self.transports.stop_listening()
        self._check_drained()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), grace)
        left = self.core.transaction_count()
        log.info("drained" if not left else "drain timed out", extra={"transactions": left})

    def _check_drained(self) -> None:
        if self.core.draining and not self.core.transaction_count():
            self._drained.set()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._reloader is not None:
            self._reloader.cancel()
        if self._config_watch is not None:
            self._config_watch.cancel()
        if self.pod_status is not None:
            self.pod_status.stop()
        await self.transports.close()
        await self.health.stop()
        if self.media is not None:
            await self.media.close()

    # -- the core's driver --------------------------------------------------------------------

    def _on_message(self, data: bytes, peer: Peer, listener: str) -> None:
        assert self._loop is not None
        self.core.receive(data, peer, listener, self._loop.time())
        self._flush()

    def _on_send_failed(self, out: Outgoing) -> None:
        assert self._loop is not None
        self.core.send_failed(out, self._loop.time())
        self._flush()

    def _media_done(self, command_id: int, result: MediaResult) -> None:
        assert self._loop is not None
        self.core.media_done(command_id, result, self._loop.time())
        self._flush()

    def _media_timeout(self, call_id: str, from_tag: str | None, to_tag: str | None) -> int:
        assert self._loop is not None
        count = self.core.media_timeout(call_id, from_tag, to_tag, self._loop.time())
        self._flush()
        return count

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._timer = None
        self._timer_at = None
        self.core.advance(self._loop.time())
        self._flush()

    def _flush(self) -> None:
        outbox = self.core.outbox
        if outbox:
            # The core may queue more while we send (a send that fails at once): swap first.
            self.core.outbox = []
            send = self.transports.send
            for out in outbox:
                send(out)
        if self.core.media_commands and self.media is not None:
            commands, self.core.media_commands = self.core.media_commands, []
            self.media.submit(commands)
        # The loop timer is only moved EARLIER. Most messages push the core's next deadline
        # later (a timer stopped by a response), and re-arming for each would cost a loop
        # timer per message; a timer that fires early instead finds nothing due, and
        # _on_timer arms the next one. None (no timers left) likewise leaves it to fire once.
        deadline = self.core.next_deadline()
        if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self._loop_call_at(deadline)
        if self.core.draining:
            self._check_drained()

    def _loop_call_at(self, when: float) -> asyncio.TimerHandle:
        assert self._loop is not None
        return self._loop.call_at(when, self._on_timer)


def tune_gc() -> None:
    """The core frees what it makes by reference counting (no cycles on the message path), so
    the cyclic collector only costs time: move everything alive at start-up out of its sight
    and let it run rarely. Measured: about 17% of the core's CPU at default thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


async def serve(config: SbcConfig, seat: Seat | None = None, config_path: str | None = None) -> int:
    sbc = Sbc(config, seat, config_path)
    await sbc.start()
    tune_gc()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, sbc.check_config)
    if seat is not None:
        from teams_sbc.workers.seat import on_supervisor_gone

        on_supervisor_gone(loop, stop.set)
    await stop.wait()
    if seat is not None:
        # A worker may hear SIGTERM twice (from a sender that signals it directly, and forwarded
        # by the supervisor): the second must not kill it once its loop has closed and the
        # default action is back. It is draining already.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    await sbc.drain(config.drain_seconds)
    await sbc.stop()
    return 0


def run_forever(config: SbcConfig, config_path: str | None = None) -> int:
    setup_logging(config.logging.level, config.logging.format)
    with contextlib.suppress(KeyboardInterrupt):
        return uvloop.run(serve(config, config_path=config_path))
    return 0
