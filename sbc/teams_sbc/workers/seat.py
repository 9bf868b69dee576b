"""What a worker process is told by its supervisor, and how it hears that the supervisor is gone.

The supervisor starts each worker with a pipe on its standard input and writes one JSON line:
the resolved config and the worker's :class:`Seat`. It keeps the pipe open; when the supervisor
ends, however it ends, the pipe closes and the worker drains and exits like on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from teams_sbc.config import SbcConfig


@dataclass(frozen=True)
class Seat:
    """One worker's place among its siblings; a restarted worker takes the same seat."""

    #: 0 .. workers-1: in every log line, and the ``worker`` label of per-worker metrics.
    index: int
    #: Unix socket where this worker serves /healthz, /readyz and /metrics for the supervisor.
    health_path: str
    #: By UDP listener: the file descriptor (inherited) of this worker's own socket. The
    #: supervisor binds these and keeps them, so a seat keeps its port across restarts.
    private_fds: dict[str, int] = field(default_factory=dict)
    #: By UDP listener: every worker's own port, so any worker recognises any sibling's Via.
    sibling_ports: dict[str, list[int]] = field(default_factory=dict)
    #: The config file, which each worker watches and reloads itself (teams_sbc.reload).
    config_path: str | None = None

    def private_sockets(self) -> dict[str, socket.socket]:
        """The inherited sockets as socket objects (call once: they own the descriptors)."""
        return {name: socket.socket(fileno=fd) for name, fd in self.private_fds.items()}


def handshake(config: SbcConfig, seat: Seat) -> bytes:
    """The line the supervisor writes to a new worker's standard input."""
    line = {"config": config.model_dump(mode="json"), "seat": asdict(seat)}
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


def read_handshake(fd: int = 0) -> tuple[SbcConfig, Seat]:
    """Read the supervisor's line from ``fd``, byte by byte so nothing after it is consumed."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            raise SystemExit("teams-sbc worker: no configuration from the supervisor")
        data += chunk
    raw: dict[str, Any] = json.loads(data)
    seat = raw["seat"]
    return SbcConfig.model_validate(raw["config"]), Seat(
        index=int(seat["index"]),
        health_path=str(seat["health_path"]),
        private_fds={str(k): int(v) for k, v in seat["private_fds"].items()},
        sibling_ports={str(k): [int(p) for p in v] for k, v in seat["sibling_ports"].items()},
        config_path=seat.get("config_path"),
    )


def on_supervisor_gone(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Call ``callback`` once standard input (the supervisor's pipe) reaches end of file."""

    def readable() -> None:
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            logging.getLogger("teams_sbc").warning("supervisor gone: draining")
            callback()

    os.set_blocking(0, False)
    loop.add_reader(0, readable)


class SeatFilter(logging.Filter):
    """Puts the worker's index in every log record (the JSON formatter prints extra fields)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True
