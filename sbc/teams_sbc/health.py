"""HTTP endpoints for probes and Prometheus: /healthz (alive), /readyz (takes calls), /metrics."""

from __future__ import annotations

import json
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
        metrics: Metrics,
        readiness: ReadinessCheck,
        routes: Sequence[ExtraRoute] = (),
    ) -> None:
        self.host = host
        self.port = port
        self.metrics = metrics
        self.readiness = readiness
        self.routes = list(routes)
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
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.bound_port = int(sockets[0].getsockname()[1]) if sockets else self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready, reasons = self.readiness()
        body = json.dumps({"ready": ready, "reasons": reasons}) + "\n"
        return web.Response(
            status=200 if ready else 503, text=body, content_type="application/json"
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        payload = generate_latest(self.metrics.registry)
        return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})
