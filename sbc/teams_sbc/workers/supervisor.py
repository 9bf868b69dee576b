"""The supervisor of ``workers`` > 1: starts the workers, restarts them, drains them, answers
/healthz, /readyz, /metrics and /teams for all of them, and writes the Pod's annotation with
Microsoft's proxies as all workers see them (teams_sbc.podstatus).

It handles no SIP itself. Before starting the workers it checks that every listener's address is
free (so two SBCs on one port fail loudly instead of sharing it through SO_REUSEPORT), and binds
each worker's own UDP sockets (one per UDP listener), which it keeps for the worker's seat: a
restarted worker gets the same ports. Each worker is ``python -m teams_sbc.workers.worker`` with
its config and seat on standard input (:mod:`teams_sbc.workers.seat`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import Metric

from teams_sbc.config import Listener, SbcConfig
from teams_sbc.health import ExtraRoute, HealthServer
from teams_sbc.logs import setup_logging
from teams_sbc.media.driver import TIMEOUT_PATH, callback_sources
from teams_sbc.podstatus import PodStatusWriter
from teams_sbc.workers.aggregate import Aggregator
from teams_sbc.workers.seat import Seat, handshake
from teams_sbc.workers.teams import annotation_report, combine

log = logging.getLogger("teams_sbc.workers")

WORKER_MODULE = "teams_sbc.workers.worker"
#: How long every worker may take to become ready at start-up.
START_TIMEOUT = 60.0
#: A worker that ran this long before it ended is restarted at once; sooner, after a back-off.
STABLE_AFTER = 30.0
#: Back-off after repeated quick ends: 0.5 s, doubling, at most 30 s.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: The supervisor reads each worker's /metrics this often even unscraped, so that what a worker
#: counted is kept (within this interval) should it end.
REFRESH_SECONDS = 5.0
#: A worker must answer the supervisor's HTTP requests within this.
PROBE_TIMEOUT = 2.0
#: On drain, workers get ``drain_seconds`` plus this before they are killed.
DRAIN_MARGIN = 5.0
_BUFFER = 4 * 1024 * 1024
#: The largest media-timeout callback passed on (an XMLRPC call naming one dialog).
_CALLBACK_BYTES = 16384


class SupervisorError(Exception):
    """The workers cannot be started: says which listener or worker, and why."""


@dataclass
class _Slot:
    """One worker seat and the process in it now (a restart replaces the process)."""

    seat: Seat
    session: aiohttp.ClientSession | None = None
    proc: asyncio.subprocess.Process | None = None
    generation: int = 0
    started_at: float = 0.0
    quick_failures: int = 0
    exit_codes: list[int] = field(default_factory=list)

    @property
    def index(self) -> int:
        return self.seat.index

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class _Exposition:
    """What /metrics shows: the workers' merged families, then the supervisor's own."""

    def __init__(self, families: list[Metric], own: CollectorRegistry) -> None:
        self.families = families
        self.own = own

    def collect(self) -> Iterator[Metric]:
        yield from self.families
        yield from self.own.collect()


class _SupervisorHttp(HealthServer):
    def __init__(self, supervisor: Supervisor) -> None:
        http = supervisor.config.http
        routes: list[ExtraRoute] = []
        if supervisor.config.media is not None:
            routes.append(("POST", TIMEOUT_PATH, supervisor.media_timeout))
        if supervisor.config.teams is not None:
            routes.append(("GET", "/teams", supervisor.teams_endpoint))
        super().__init__(http.host, http.port, None, lambda: (False, ["starting"]), routes)
        self.supervisor = supervisor

    async def ready(self) -> tuple[bool, list[str]]:
        return await self.supervisor.readiness()

    async def exposition(self) -> bytes:
        return await self.supervisor.exposition()


class Supervisor:
    def __init__(self, config: SbcConfig, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.count = config.workers
        self.registry = CollectorRegistry()
        self.restarts = Counter(
            "sbc_worker_restarts",
            "Worker processes restarted after they ended unasked, by worker seat.",
            ["worker"],
            registry=self.registry,
        )
        self.up = Gauge(
            "sbc_worker_up", "1 while the worker seat has a running process.", ["worker"],
            registry=self.registry,
        )  # fmt: skip
        self.aggregator = Aggregator(self.count)
        self.http = _SupervisorHttp(self)
        self.draining = False
        self._starting = True
        self._stop = asyncio.Event()
        self._failed_start = asyncio.Event()
        self._dir = Path(tempfile.mkdtemp(prefix="teams-sbc-"))
        self._private: list[socket.socket] = []
        self._slots: list[_Slot] = []
        self._keepers: list[asyncio.Task[None]] = []  # one per seat: waits, restarts
        self._refresher: asyncio.Task[None] | None = None
        # In a pod, the Microsoft proxies' state as all workers see it goes into the Pod's
        # annotation (teams_sbc.podstatus); the workers write nothing.
        self.pod_status: PodStatusWriter | None = None
        if config.teams is not None:
            self.pod_status = PodStatusWriter.from_env(
                config.pod_status, self.teams_report, self.registry
            )

    # -- the whole life ----------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward_hup)
        try:
            try:
                self._check_listeners_free()
                self._slots = self._seats()
                await self._start_http()
            except SupervisorError as exc:
                log.error("cannot start the workers: %s", exc)
                return 1
            for slot in self._slots:
                slot.session = aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=slot.seat.health_path)
                )
                await self._spawn(slot)
                self._keepers.append(loop.create_task(self._keep(slot)))
            if not await self._wait_started():
                await self._drain()
                return 1
            self._starting = False
            self._refresher = loop.create_task(self._refresh_forever())
            if self.pod_status is not None:
                self.pod_status.start()
            log.info(
                "sbc started",
                extra={
                    "listeners": {li.name: f"{li.host}:{li.port}" for li in self.config.listeners},
                    "http_port": self.http.bound_port,
                    "workers": {s.index: s.proc.pid for s in self._slots if s.proc is not None},
                },
            )
            await self._stop.wait()
            return await self._drain()
        finally:
            await self._close()

    async def _start_http(self) -> None:
        http = self.config.http
        try:
            await self.http.start()
        except OSError as exc:
            raise SupervisorError(
                f"the HTTP endpoints cannot bind {http.host}:{http.port}: {exc.strerror or exc}"
            ) from exc

    async def _wait_started(self) -> bool:
        """Until every worker answers /readyz with 200; False if one ends or time runs out."""
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while asyncio.get_running_loop().time() < deadline:
            if self._failed_start.is_set():
                return False
            if self._stop.is_set():
                return True  # asked to stop while starting: drain what started
            answers = await asyncio.gather(*(self._get(s, "/readyz") for s in self._slots))
            if all(a is not None and a[0] == 200 for a in answers):
                return True
            await asyncio.sleep(0.05)
        log.error("workers not ready within %.0f s", START_TIMEOUT)
        return False

    async def _drain(self) -> int:
        """SIGTERM to every worker (each drains: no new calls, transactions finish), then wait;
        kill those still running after ``drain_seconds`` and a margin. 0 if all ended cleanly."""
        self.draining = True
        self._stop.set()  # wakes seats waiting to restart: they stop
        running = [s for s in self._slots if s.running()]
        log.info("draining workers", extra={"workers": [s.index for s in running]})
        for slot in running:
            assert slot.proc is not None
            with contextlib.suppress(ProcessLookupError):
                slot.proc.send_signal(signal.SIGTERM)
        keepers = [t for t in self._keepers if not t.done()]
        if keepers:
            await asyncio.wait(keepers, timeout=self.config.drain_seconds + DRAIN_MARGIN)
        clean = True
        for slot in self._slots:
            if slot.running():
                assert slot.proc is not None
                log.error("worker did not drain in time: killed", extra={"worker": slot.index})
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.kill()
                await slot.proc.wait()
                clean = False
            elif slot.exit_codes and slot.exit_codes[-1] != 0:
                clean = False
        log.info("drained" if clean else "drained with errors")
        return 0 if clean else 1

    async def _close(self) -> None:
        if self.pod_status is not None:
            self.pod_status.stop()
        for task in [*self._keepers, self._refresher]:
            if task is not None:
                task.cancel()
        for slot in self._slots:
            if slot.running():  # only after an error: kill rather than leave orphans
                assert slot.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.kill()
                await slot.proc.wait()
            if slot.session is not None:
                await slot.session.close()
        await self.http.stop()
        for sock in self._private:
            sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- seats and processes -------------------------------------------------------------------

    def _check_listeners_free(self) -> None:
        """Bind each listener's address once, without SO_REUSEPORT: fails if anyone has it,
        another SBC's workers included (which SO_REUSEPORT would otherwise let us join)."""
        for listener in self.config.listeners:
            kind = socket.SOCK_DGRAM if listener.transport == "udp" else socket.SOCK_STREAM
            with socket.socket(_family(listener), kind) as sock:
                if kind == socket.SOCK_STREAM:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((listener.host, listener.port))
                except OSError as exc:
                    raise SupervisorError(
                        f"listener {listener.name!r} cannot bind {listener.host}:{listener.port} "
                        f"({listener.transport}): {exc.strerror or exc}"
                    ) from exc

    def _forward_hup(self) -> None:
        """SIGHUP: every worker checks the config file now (each reloads itself)."""
        for slot in self._slots:
            if slot.running() and slot.proc is not None:
                slot.proc.send_signal(signal.SIGHUP)

    def _seats(self) -> list[_Slot]:
        """Bind every worker's own UDP sockets; the seats name them by file descriptor."""
        udp = [li for li in self.config.listeners if li.transport == "udp"]
        fds: list[dict[str, int]] = []
        ports: dict[str, list[int]] = {li.name: [] for li in udp}
        for _ in range(self.count):
            mine: dict[str, int] = {}
            for listener in udp:
                sock = socket.socket(_family(listener), socket.SOCK_DGRAM)
                self._private.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER)
                try:
                    sock.bind((listener.host, 0))
                except OSError as exc:
                    raise SupervisorError(
                        f"listener {listener.name!r}: no worker port on {listener.host}: {exc}"
                    ) from exc
                mine[listener.name] = sock.fileno()
                ports[listener.name].append(int(sock.getsockname()[1]))
            fds.append(mine)
        return [
            _Slot(Seat(i, str(self._dir / f"worker-{i}.sock"), fds[i], ports, self.config_path))
            for i in range(self.count)
        ]

    async def _spawn(self, slot: _Slot) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            WORKER_MODULE,
            stdin=asyncio.subprocess.PIPE,
            pass_fds=list(slot.seat.private_fds.values()),
            # A session of its own: where the kernel shares CPU time out by session (autogroup,
            # for processes outside any cgroup of their own), N workers in one session would get
            # the share of one process. Signals reach workers through the supervisor, and a
            # worker whose supervisor is gone drains on its own (its standard input closes).
            start_new_session=True,
        )
        assert proc.stdin is not None
        # The pipe stays open: its end tells the worker the supervisor is gone.
        proc.stdin.write(handshake(self.config, slot.seat))
        await proc.stdin.drain()
        slot.proc = proc
        slot.generation += 1
        slot.started_at = asyncio.get_running_loop().time()
        self.up.labels(worker=str(slot.index)).set(1)
        log.info(
            "worker started",
            extra={
                "worker": slot.index,
                "pid": proc.pid,
                "generation": slot.generation,
                "http_socket": slot.seat.health_path,
            },
        )

    async def _keep(self, slot: _Slot) -> None:
        """Wait for the seat's process to end; unless draining, restart it (with back-off)."""
        loop = asyncio.get_running_loop()
        while True:
            proc = slot.proc
            assert proc is not None
            code = await proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()
            slot.exit_codes.append(code)
            self.up.labels(worker=str(slot.index)).set(0)
            self.aggregator.retire(slot.index, slot.generation)
            how = {"worker": slot.index, "pid": proc.pid, "exit": _describe_exit(code)}
            if self.draining:
                log.info("worker ended", extra=how)
                return
            if self._starting:
                log.error("worker ended during start-up", extra=how)
                self._failed_start.set()
                return
            lived = loop.time() - slot.started_at
            if lived >= STABLE_AFTER:
                slot.quick_failures = 0
            delay = restart_delay(slot.quick_failures)
            slot.quick_failures += 1
            self.restarts.labels(worker=str(slot.index)).inc()
            log.error(
                "worker ended unasked: restarting",
                extra={**how, "ran_seconds": round(lived, 1), "restart_in_seconds": delay},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return
            await self._spawn(slot)

    # -- what the HTTP endpoints answer ----------------------------------------------------------

    async def _get(self, slot: _Slot, path: str) -> tuple[int, str] | None:
        """GET ``path`` from the seat's worker over its unix socket; None if none answers."""
        if not slot.running() or slot.session is None:
            return None
        try:
            async with slot.session.get(
                f"http://worker{path}", timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
            ) as reply:
                return reply.status, await reply.text()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def readiness(self) -> tuple[bool, list[str]]:
        """Ready when every seat has a worker and each says it is ready."""
        if self.draining:
            return False, ["draining"]
        answers = await asyncio.gather(*(self._get(s, "/readyz") for s in self._slots))
        reasons = []
        for slot, answer in zip(self._slots, answers, strict=True):
            if not slot.running():
                reasons.append(f"worker {slot.index}: not running")
            elif answer is None:
                reasons.append(f"worker {slot.index}: no answer")
            elif answer[0] != 200:
                reasons.append(f"worker {slot.index}: {_reasons(answer[1])}")
        if not self._slots:
            reasons.append("starting")
        return not reasons, reasons

    async def media_timeout(self, request: web.Request) -> web.Response:
        """rtpengine's media-timeout callback (docs/media.md) reaches the HTTP port, so the
        supervisor: it checks the source as a worker would, hands the call to every worker,
        and answers with the reply of the one that knew the call (else a worker's fault)."""
        media = self.config.media
        assert media is not None
        if request.remote not in callback_sources(media):
            log.warning("media-timeout callback refused from %s", request.remote)
            return web.Response(status=403, text="not an rtpengine of this SBC\n")
        body = await request.content.read(_CALLBACK_BYTES + 1)
        if len(body) > _CALLBACK_BYTES:
            return web.Response(status=413, text="request too large\n")
        kind = request.headers.get("Content-Type", "text/xml")
        answers = await asyncio.gather(
            *(self._post(s, request.path, body, kind) for s in self._slots)
        )
        replies = [a for a in answers if a is not None]
        if not replies:
            return web.Response(status=503, text="no worker answered\n")
        chosen = next((r for r in replies if r[0] == 200 and b"<fault>" not in r[2]), replies[0])
        return web.Response(status=chosen[0], body=chosen[2], content_type=chosen[1])

    async def _post(
        self, slot: _Slot, path: str, body: bytes, kind: str
    ) -> tuple[int, str, bytes] | None:
        if not slot.running() or slot.session is None:
            return None
        try:
            async with slot.session.post(
                f"http://worker{path}",
                data=body,
                headers={"Content-Type": kind},
                timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT),
            ) as reply:
                return reply.status, reply.content_type, await reply.read()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def teams_status(self) -> dict[str, Any]:
        """Every worker's /teams at once, and the combined view (teams_sbc.workers.teams)."""
        answers = await asyncio.gather(*(self._get(s, "/teams") for s in self._slots))
        views: dict[int, dict[str, Any] | None] = {}
        for slot, answer in zip(self._slots, answers, strict=True):
            views[slot.index] = None
            if answer is not None and answer[0] == 200:
                with contextlib.suppress(ValueError):
                    views[slot.index] = json.loads(answer[1])
        return combine(views)

    async def teams_endpoint(self, _request: web.Request) -> web.Response:
        """/teams: the trunk and each Microsoft proxy, combined over the workers and each
        worker's own view."""
        body = json.dumps(await self.teams_status(), indent=1) + "\n"
        return web.Response(text=body, content_type="application/json")

    async def teams_report(self) -> dict[str, str] | None:
        """What the Pod's annotation carries: the combined view's states."""
        return annotation_report(await self.teams_status())

    async def exposition(self) -> bytes:
        await self._refresh()
        if self.config.teams is not None:
            # Microsoft's proxies as all workers see them, not a sum of their gauges.
            combined = (await self.teams_status())["proxies"]
            states = {"up": 1.0, "down": 0.0}
            self.aggregator.override(
                "sbc_teams_proxy_up",
                {("proxy", p["name"]): states.get(p["state"], -1.0) for p in combined},
            )
            self.aggregator.override(
                "sbc_teams_proxy_rtt_seconds",
                {
                    ("proxy", p["name"]): p["rtt_ms"] / 1000
                    for p in combined
                    if p["rtt_ms"] is not None
                },
            )
        return generate_latest(_Exposition(self.aggregator.families(), self.registry))

    async def _refresh(self) -> None:
        await asyncio.gather(*(self._read_metrics(s) for s in self._slots))

    async def _read_metrics(self, slot: _Slot) -> None:
        generation = slot.generation
        answer = await self._get(slot, "/metrics")
        if answer is not None and answer[0] == 200:
            self.aggregator.update(slot.index, generation, answer[1])

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            await self._refresh()


def restart_delay(quick_failures: int) -> float:
    """How long to wait before restarting a worker that ended after ``quick_failures`` earlier
    ends in a row, each within STABLE_AFTER of its start: at once, then 0.5 s doubling to 30 s."""
    if quick_failures == 0:
        return 0.0
    return float(min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(quick_failures - 1, 16)))


def _family(listener: Listener) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in listener.host else socket.AF_INET


def _reasons(body: str) -> str:
    """The reasons in a worker's /readyz answer."""
    try:
        return ", ".join(str(r) for r in json.loads(body)["reasons"]) or "not ready"
    except (ValueError, KeyError, TypeError):
        return "not ready"


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class _RoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = "supervisor"
        return True


def run_supervisor(config: SbcConfig, config_path: str | None = None) -> int:
    """``teams-sbc run`` with ``workers`` > 1 (Linux: SO_REUSEPORT spreads flows evenly)."""
    setup_logging(config.logging.level, config.logging.format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_RoleFilter())
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        log.error("workers > 1 needs Linux (SO_REUSEPORT); set workers: 1")
        return 2

    async def main() -> int:
        return await Supervisor(config, config_path).run()

    with contextlib.suppress(KeyboardInterrupt):
        return uvloop.run(main())
    return 0
