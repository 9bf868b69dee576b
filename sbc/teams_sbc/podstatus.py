"""The SBC's Microsoft proxies' state, written into an annotation on its own Pod.

The operator (``teams_sbc_operator.render.reachability``) reads :data:`ANNOTATION` on every SBC
pod for the trunk's TeamsReachable condition and Teams-Up column. Its value is compact JSON::

    {"proxies": {"sip.pstnhub.microsoft.com": "up", "sip2.pstnhub.microsoft.com": "down"},
     "at": "2026-01-01T00:00:00Z"}

Active when the SBC has a Teams edge, ``pod_status.enabled`` holds and the env ``POD_NAME`` and
``POD_NAMESPACE`` name the pod (the downward API; the operator's Deployment sets them). It
writes when a proxy's state changes (at most once in ``min_interval_seconds``, carrying the
latest state) and again every ``refresh_seconds`` so that ``at`` tells a live report from a
stale one. Nothing is written while a proxy has not been probed yet (``unknown``): the first
write waits for each proxy's first OPTIONS answer or timeout.

The kubernetes client blocks: it runs in the loop's thread executor, one write at a time, off
the SIP path. In-cluster credentials by default; with ``KUBECONFIG`` set, that file (tests, or
running outside the cluster). An API error (refused: 403, 404, 5xx; unreachable: connection
refused, timeout, TLS) is logged with the attempt number and the delay before the next, counted in
``sbc_pod_status_writes_total{result="error"}`` and ``sbc_pod_status_failing`` (consecutive
failures, 0 after a success), and retried with back-off: ``max(min_interval_seconds, 1)``
seconds after the first failure, doubling, at most :data:`BACKOFF_MAX`. Nothing it raises
stops the SBC: a write runs in the executor and every error ends in the log.

Where the state comes from: a single process reports its own proxy pool (:func:`pool_report`).
With ``workers: N`` each worker has its own pool; the supervisor writes the annotation from
all of them, combined as its /teams shows them (``teams_sbc.workers.teams``: per proxy, the
worker with the freshest answer decides). No worker writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from teams_sbc.config import PodStatus
from teams_sbc.teams.proxies import Health, ProxyPool

log = logging.getLogger("teams_sbc.podstatus")

#: Must equal ``teams_sbc_operator.render.reachability.ANNOTATION`` (a test checks it).
ANNOTATION = "sbc.teams-sbc.io/teams-proxies"
#: How often the pool's state is compared with the last one written (a dict comparison).
CHECK_SECONDS = 1.0
#: The longest wait between two attempts while the API server keeps refusing.
BACKOFF_MAX = 60.0

Patch = Callable[[str, str, dict[str, Any]], None]
#: What to write now: each proxy's "up" or "down", or None while one is not known yet.
Report = dict[str, str] | None
Source = Callable[[], Report | Awaitable[Report]]


def pool_report(pool: ProxyPool) -> dict[str, str] | None:
    """Each proxy's state as the annotation carries it; None while one is still unknown."""
    if any(s.health is Health.UNKNOWN for s in pool.states):
        return None
    return {s.name: "up" if s.health is Health.UP else "down" for s in pool.states}


def annotation_value(proxies: Mapping[str, str], at: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    return json.dumps({"proxies": dict(proxies), "at": stamp}, separators=(",", ":"))


def kubernetes_patch() -> Patch:
    """A blocking pod patcher: credentials from ``KUBECONFIG`` when set, else in-cluster.
    Loads lazily, in the executor, on the first write."""
    api: Any = None

    def patch(namespace: str, name: str, body: dict[str, Any]) -> None:
        nonlocal api
        if api is None:
            from kubernetes import client, config

            configuration = client.Configuration()
            if os.environ.get("KUBECONFIG"):
                config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            else:
                config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
            # No retries inside the client: the writer's own back-off retries (and logs once).
            configuration.retries = 0
            api = client.CoreV1Api(client.ApiClient(configuration))
        api.patch_namespaced_pod(name, namespace, body, _request_timeout=10)

    return patch


def describe_error(exc: BaseException) -> str:
    """An API error in one line: the HTTP status and the API server's message when it
    answered, else the network error under the client's wrapper (``Connection refused``)."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status:
        message = ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = str(json.loads(getattr(exc, "body", "") or "{}").get("message", ""))
        text = f"HTTP {status} {getattr(exc, 'reason', '')}: {message}"
    else:
        reason = getattr(exc, "reason", None)
        while isinstance(getattr(reason, "reason", None), BaseException):
            reason = reason.reason  # type: ignore[union-attr]
        cause = reason if isinstance(reason, BaseException) else exc
        text = f"{type(exc).__name__}: {cause}"
    return text[:300]


class PodStatusWriter:
    """Keeps the Pod's annotation in step with the proxies' state (see the module docstring)."""

    def __init__(
        self,
        config: PodStatus,
        source: Source,
        namespace: str,
        name: str,
        registry: CollectorRegistry,
        patch: Patch | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.namespace = namespace
        self.name = name
        self.patch = patch or kubernetes_patch()
        self.writes = Counter(
            "sbc_pod_status_writes",
            "Writes of the Microsoft proxies' state into the Pod's annotation, by result "
            "(ok, error).",
            ["result"],
            registry=registry,
        )
        self.failing_gauge = Gauge(
            "sbc_pod_status_failing",
            "Consecutive failed writes of the Pod's annotation (0 after a success); while above "
            "0 the operator sees an ever older report.",
            registry=registry,
        )
        self.written: dict[str, str] | None = None
        self.last_attempt: float | None = None  # monotonic
        self.last_ok: float | None = None  # monotonic
        self.failures = 0  # consecutive
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_env(
        cls,
        config: PodStatus,
        source: Source,
        registry: CollectorRegistry,
        env: Mapping[str, str] = os.environ,
    ) -> PodStatusWriter | None:
        """The writer when the SBC runs in a pod and the feature is on, else None."""
        name, namespace = env.get("POD_NAME"), env.get("POD_NAMESPACE")
        if not config.enabled or not name or not namespace:
            return None
        return cls(config, source, namespace, name, registry)

    def retry_delay(self) -> float:
        """The wait after ``failures`` consecutive failed writes (0: the normal minimum)."""
        base = self.config.min_interval_seconds
        if not self.failures:
            return base
        first = max(base, 1.0)
        return float(min(BACKOFF_MAX, first * 2 ** min(self.failures - 1, 16)))

    def due(self, current: Report, now: float) -> dict[str, str] | None:
        """What to write at ``now`` (monotonic) given the ``current`` state, or None."""
        if current is None:
            return None
        since = None if self.last_attempt is None else now - self.last_attempt
        if since is not None and since < self.retry_delay():
            return None
        if current != self.written or self.failures:
            return current
        if self.last_ok is None or now - self.last_ok >= self.config.refresh_seconds:
            return current
        return None

    async def current(self) -> Report:
        value = self.source()
        if inspect.isawaitable(value):
            return await value
        return value

    async def write(self, proxies: dict[str, str]) -> bool:
        """One patch, in the executor; never raises."""
        now = time.monotonic()
        self.last_attempt = now
        body = {"metadata": {"annotations": {ANNOTATION: annotation_value(proxies, time.time())}}}
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.patch, self.namespace, self.name, body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the API server's trouble is never the SBC's end
            self.failures += 1
            self.failing_gauge.set(self.failures)
            self.writes.labels("error").inc()
            log.warning(
                "pod status write failed",
                extra={
                    "pod": f"{self.namespace}/{self.name}",
                    "error": describe_error(exc),
                    "attempt": self.failures,
                    "retry_in_seconds": self.retry_delay(),
                },
            )
            return False
        if self.failures:
            log.info(
                "pod status write succeeded again",
                extra={"pod": f"{self.namespace}/{self.name}", "failed_before": self.failures},
            )
        self.failures = 0
        self.failing_gauge.set(0)
        self.writes.labels("ok").inc()
        if proxies != self.written:
            log.info(
                "pod status written",
                extra={"pod": f"{self.namespace}/{self.name}", "proxies": proxies},
            )
        self.written = proxies
        self.last_ok = now
        return True

    async def step(self) -> None:
        """Compare, and write if due; never raises (a broken source is logged)."""
        try:
            proxies = self.due(await self.current(), time.monotonic())
            if proxies is not None:
                await self.write(proxies)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod status check failed", extra={"pod": f"{self.namespace}/{self.name}"})

    async def run(self) -> None:
        while True:
            await self.step()
            await asyncio.sleep(CHECK_SECONDS)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
