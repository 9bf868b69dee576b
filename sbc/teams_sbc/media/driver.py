"""The media driver: runs the SIP core's rtpengine commands for the SBC process, and takes
rtpengine's media-timeout callback.

The sans-IO core queues :class:`~teams_sbc.media.commands.MediaCommand` objects; the process
(``teams_sbc.app``) hands them to :meth:`MediaDriver.submit` after each call into the core.
Each runs as a task on the :class:`~teams_sbc.media.relays.RelayPool` (a new call's offer picks
an instance that is up; everything else goes to the instance the dialog names), and its
outcome goes back to the core as a :class:`~teams_sbc.media.commands.MediaResult`, errors
mapped to what the core acts on. The driver also counts and times every command, publishes each
instance's health to Prometheus, and says why the SBC is not ready when no rtpengine is up.

Media timeout: rtpengine, started with ``--b2b-url=http://<sbc>:<http port>/rtpengine/timeout``
(``%%`` in place of the host sends it to the SBC that created the call) and
``--xmlrpc-format=2``, calls ``dlg.terminate_dlg(call-id, from-tag, to-tag)`` over XMLRPC when
a call had no media for its ``--timeout``; format 1 (``teardown(call-id)``) is accepted too.
:meth:`MediaDriver.timeout_callback` hands it to the core, which sends both parties a BYE.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import xmlrpc.client
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from teams_sbc.media.commands import Failure, MediaCommand, MediaResult, Op
from teams_sbc.media.config import MediaConfig
from teams_sbc.media.errors import (
    MediaError,
    NgError,
    NgTimeout,
    NoRelayAvailable,
    UnknownRelay,
)
from teams_sbc.media.legs import Leg, MediaPolicy
from teams_sbc.media.metrics import MediaMetrics
from teams_sbc.media.relays import MediaRelay, RelayPool

log = logging.getLogger("teams_sbc.media")

#: Where rtpengine's ``--b2b-url`` points (on the SBC's HTTP port).
TIMEOUT_PATH = "/rtpengine/timeout"
#: rtpengine's XMLRPC client treats a fault containing this text as "nothing to do".
NOT_FOUND_FAULT = "dialog not found"
_MAX_CALLBACK_BYTES = 16384

#: (command id, result): the core's ``media_done`` with the clock the driver owns.
Done = Callable[[int, MediaResult], None]
#: (call-id, from-tag, to-tag) -> how many dialogs the core tore down.
TimedOut = Callable[[str, str | None, str | None], int]
Route = tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]


class MediaDriver:
    def __init__(
        self, config: MediaConfig, metrics: MediaMetrics, done: Done, timed_out: TimedOut
    ) -> None:
        self.pool = RelayPool.from_config(config)
        self.policy = MediaPolicy.from_config(config)
        self.metrics = metrics
        self._done = done
        self._timed_out = timed_out
        self._tasks: set[asyncio.Task[None]] = set()
        #: Who may report a media timeout: the configured rtpengine hosts (and loopback, for
        #: a sidecar): the callback ends calls, so it is not open to anyone on the HTTP port.
        self._callback_sources = callback_sources(config)
        metrics.observe_relays(self._relay_health)

    def _relay_health(self) -> list[tuple[str, Any]]:
        return [(relay.token, relay.health) for relay in self.pool.relays]

    async def start(self) -> None:
        """Open the ng sockets and learn each instance's state (down is not an error: new
        calls get 503 until one answers, and readiness says why)."""
        await self.pool.start()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pool.close()

    def routes(self) -> Sequence[Route]:
        """HTTP routes to serve beside /healthz: rtpengine's media-timeout callback."""
        return [("POST", TIMEOUT_PATH, self.timeout_callback)]

    def readiness_reasons(self) -> list[str]:
        if self.pool.ready:
            return []
        states = "; ".join(
            f"{relay.token} ({relay.address}): {relay.health.last_error or 'not checked yet'}"
            for relay in self.pool.relays
        )
        return [f"no rtpengine up: {states}"]

    # -- commands -------------------------------------------------------------------------------

    def submit(self, commands: Sequence[MediaCommand]) -> None:
        loop = asyncio.get_running_loop()
        for command in commands:
            task = loop.create_task(self._run(command))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, command: MediaCommand) -> None:
        result = await self.execute(command)
        try:
            self._done(command.id, result)
        except Exception:  # the core never raises here; a bug must not kill the task silently
            log.exception("media result not taken", extra={"call_id": command.call_id})

    async def execute(self, command: MediaCommand) -> MediaResult:
        """Run one command; every outcome becomes a result, none an exception."""
        started = time.monotonic()
        token = command.relay
        try:
            relay = (
                self.pool.pick()
                if command.relay is None
                else self.pool.instance_for_token(command.relay)
            )
            token = relay.token
            result = MediaResult(sdp=await self._call(relay, command), relay=relay.token)
        except (NoRelayAvailable, NgTimeout) as exc:
            result = MediaResult(relay=token, failure=Failure.UNAVAILABLE, reason=str(exc))
        except NgError as exc:
            result = MediaResult(relay=token, failure=Failure.REFUSED, reason=exc.reason)
        except UnknownRelay as exc:
            result = MediaResult(relay=token, failure=Failure.UNKNOWN_RELAY, reason=str(exc))
        except MediaError as exc:
            result = MediaResult(relay=token, failure=Failure.ERROR, reason=str(exc))
        except Exception as exc:
            log.exception("media command failed", extra={"call_id": command.call_id})
            result = MediaResult(relay=token, failure=Failure.ERROR, reason=repr(exc))
        op = command.op.value
        self.metrics.commands.labels(command=op, result=result.failure or "ok").inc()
        self.metrics.latency.labels(command=op).observe(time.monotonic() - started)
        if not result.ok:
            self._log_failure(command, result)
        return result

    async def _call(self, relay: MediaRelay, command: MediaCommand) -> str | None:
        op = command.op
        if op is Op.OFFER or op is Op.ANSWER:
            if command.sdp is None or command.towards is None:
                raise MediaError(f"{op.value} without SDP or leg")
            if op is Op.OFFER:
                return await relay.offer(
                    call_id=command.call_id,
                    from_tag=command.from_tag,
                    to_tag=command.to_tag,
                    sdp=command.sdp,
                    towards=Leg(command.towards),
                    policy=self.policy,
                )
            if command.to_tag is None:
                raise MediaError("answer without a to-tag")
            return await relay.answer(
                call_id=command.call_id,
                from_tag=command.from_tag,
                to_tag=command.to_tag,
                sdp=command.sdp,
                towards=Leg(command.towards),
                policy=self.policy,
            )
        if op is Op.DELETE:
            await relay.delete(call_id=command.call_id, from_tag=command.from_tag)
            return None
        if op is Op.PICK:
            return None  # the instance is the answer (a delayed offer: no session yet)
        await relay.command("query", {"call-id": command.call_id, "from-tag": command.from_tag})
        return None

    @staticmethod
    def _log_failure(command: MediaCommand, result: MediaResult) -> None:
        extra = {
            "call_id": command.call_id,
            "command": command.op.value,
            "failure": result.failure,
            "rtpengine": result.relay,
        }
        routine = command.op in (Op.DELETE, Op.QUERY) and "unknown call" in result.reason.lower()
        if routine:  # a call rtpengine already dropped (timeout, restart): nothing to free
            log.info("rtpengine %s: %s", command.op.value, result.reason, extra=extra)
        else:
            log.warning("rtpengine %s failed: %s", command.op.value, result.reason, extra=extra)

    # -- rtpengine's media-timeout callback ---------------------------------------------------

    async def timeout_callback(self, request: web.Request) -> web.Response:
        """rtpengine's XMLRPC teardown (``--b2b-url``): the call had no media for too long."""
        # As a worker (config ``workers``), the callback comes from the supervisor over the
        # worker's unix socket, which only it can reach; the supervisor checked the source.
        if request.remote not in self._callback_sources and not _over_unix_socket(request):
            log.warning("media-timeout callback refused from %s", request.remote)
            return web.Response(status=403, text="not an rtpengine of this SBC\n")
        if request.content_length is not None and request.content_length > _MAX_CALLBACK_BYTES:
            return _fault(2, "request too large")
        body = await request.content.read(_MAX_CALLBACK_BYTES + 1)
        try:
            params, method = xmlrpc.client.loads(body)
        except Exception as exc:  # expat and xmlrpc raise several types for bad input
            log.info("bad rtpengine callback: %s", exc)
            return _fault(2, "not an XMLRPC call")
        call_id, from_tag, to_tag = _timeout_params(method, params)
        if call_id is None:
            log.info("rtpengine callback not understood", extra={"method": method})
            return _fault(3, f"unsupported call {method!r}")
        log.info(
            "rtpengine reports a media timeout",
            extra={"call_id": call_id, "from_tag": from_tag, "to_tag": to_tag},
        )
        if self._timed_out(call_id, from_tag, to_tag):
            return _xml(xmlrpc.client.dumps((1,), methodresponse=True))
        return _fault(1, NOT_FOUND_FAULT)


def _timeout_params(
    method: str | None, params: tuple[Any, ...]
) -> tuple[str | None, str | None, str | None]:
    """(call-id, from-tag, to-tag) from ``dlg.terminate_dlg`` (format 2) or ``teardown``
    (format 1, the Call-ID alone)."""
    texts = [p for p in params if isinstance(p, str)]
    if len(texts) != len(params) or not texts:
        return None, None, None
    if method == "dlg.terminate_dlg":
        return texts[0], texts[1] if len(texts) > 1 else None, texts[2] if len(texts) > 2 else None
    if method == "teardown":
        return texts[0], None, None
    return None, None, None


def _xml(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/xml")


def callback_sources(config: MediaConfig) -> set[str]:
    """Addresses a media-timeout callback is taken from: the rtpengines, and loopback."""
    return {i.host_port[0] for i in config.rtpengines} | {"127.0.0.1", "::1"}


def _over_unix_socket(request: web.Request) -> bool:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    return getattr(sock, "family", None) == socket.AF_UNIX


def _fault(code: int, text: str) -> web.Response:
    return _xml(xmlrpc.client.dumps(xmlrpc.client.Fault(code, text), methodresponse=True))


__all__ = ["NOT_FOUND_FAULT", "TIMEOUT_PATH", "MediaDriver"]
