"""HTTP endpoints for probes and Prometheus: /healthz (alive), /readyz (takes calls), /metrics.

One SBC process serves them on the configured address. As one of several worker processes it
serves them on a unix socket of its own instead, and the supervisor answers on the configured
address for all workers (``teams_sbc.workers``: a subclass that aggregates).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from teams_sbc.metrics import Metrics

#: Returns (ready, reasons-not-ready).
ReadinessCheck = Callable[[], tuple[bool, list[str]]]
#: (method, path, handler) served beside the probes, e.g. rtpengine's media-timeout callback.
ExtraRoute = tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]


class HealthServer:
    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics | None,
        readiness: ReadinessCheck,
        routes: Sequence[ExtraRoute] = (),
        *,
        unix_path: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.metrics = metrics
        self.readiness = readiness
        self.routes = list(routes)
        #: Serve on this unix socket instead of host:port (a worker, for its supervisor).
        self.unix_path = unix_path
        self._runner: web.AppRunner | None = None
        self.bound_port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        for method, path, handler in self.routes:
            app.router.add_route(method, path, handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        if self.unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.unix_path)  # left by a worker that died in this seat before
            await web.UnixSite(self._runner, self.unix_path).start()
            return
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.bound_port = int(sockets[0].getsockname()[1]) if sockets else self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self.unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)

    # -- what each endpoint answers (the supervisor overrides these) ---------------------------

    async def ready(self) -> tuple[bool, list[str]]:
        return self.readiness()

    async def exposition(self) -> bytes:
        """The Prometheus text for /metrics."""
        assert self.metrics is not None
        return generate_latest(self.metrics.registry)

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready, reasons = await self.ready()
        body = json.dumps({"ready": ready, "reasons": reasons}) + "\n"
        return web.Response(
            status=200 if ready else 503, text=body, content_type="application/json"
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        payload = await self.exposition()
        return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})
