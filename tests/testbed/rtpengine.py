"""rtpengine (Debian rtpengine-daemon 10.5, userspace forwarding) and a tiny ng-protocol client.

The ng protocol is one UDP datagram per command: ``<cookie> <bencoded dict>``; the reply carries
the same cookie. rtpengine answers a repeated cookie from its reply cache, so a retransmission
reuses the cookie and a new command gets a fresh one.
"""

from __future__ import annotations

import secrets
import signal
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import bencode

from tests.testbed.process import (
    ManagedProcess,
    free_port,
    free_port_range,
    require_binary,
    wait_until,
)


class NgError(RuntimeError):
    """rtpengine answered ``result: error`` (the message is its ``error-reason``)."""


class NgClient:
    """Sends ng commands over UDP and returns rtpengine's reply as a dict of str."""

    def __init__(self, host: str, port: int, timeout: float = 1.0, attempts: int = 3) -> None:
        self.address = (host, port)
        self.timeout = timeout
        self.attempts = attempts

    def request(self, command: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One command, retransmitted with the same cookie if no reply arrives in time."""
        cookie = secrets.token_hex(8).encode()
        body = bencode.bencode({**(params or {}), "command": command})
        datagram = cookie + b" " + body
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(self.timeout)
            for _ in range(self.attempts):
                sock.sendto(datagram, self.address)
                try:
                    reply = self._receive(sock, cookie)
                except TimeoutError:
                    continue
                if not isinstance(reply, dict):
                    raise ValueError(f"ng reply is not a dict: {reply!r}")
                return reply
        raise TimeoutError(f"no ng reply to {command!r} from {self.address} after {self.attempts}")

    @staticmethod
    def _receive(sock: socket.socket, cookie: bytes) -> Any:
        while True:
            data = sock.recv(65535)
            got, _, body = data.partition(b" ")
            if got == cookie:  # a late reply to an earlier command is skipped
                return bencode.bdecode(body)

    def command(self, command: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Like :meth:`request`, but an ``error`` result raises :class:`NgError`."""
        reply = self.request(command, params)
        if reply.get("result") == "error":
            raise NgError(f"{command}: {reply.get('error-reason', reply)}")
        return reply

    def ping(self) -> str:
        return str(self.request("ping").get("result"))

    def list_calls(self) -> list[str]:
        """Call-IDs rtpengine still holds."""
        return [str(c) for c in self.command("list").get("calls", [])]


class Rtpengine:
    """One rtpengine daemon on loopback with its own small RTP port range.

    ``--delete-delay=0`` makes ``delete`` drop a call at once, so tests can check nothing is left;
    ``--config-file=none`` keeps /etc/rtpengine/rtpengine.conf out of the picture.
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        name: str = "rtpengine",
        host: str = "127.0.0.1",
        port_count: int = 20,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.log_dir = log_dir
        self.name = name
        self.host = host
        self.port_count = port_count
        self.extra_args = list(extra_args)
        self.ng_port = 0
        self.port_min = 0
        self.port_max = 0
        self.proc: ManagedProcess | None = None

    @property
    def ng_address(self) -> str:
        return f"{self.host}:{self.ng_port}"

    def client(self, timeout: float = 1.0) -> NgClient:
        return NgClient(self.host, self.ng_port, timeout)

    def start(self, timeout: float = 20.0) -> Rtpengine:
        self.ng_port = free_port(socket.SOCK_DGRAM, self.host)
        self.port_min = free_port_range(self.port_count, self.host)
        self.port_max = self.port_min + self.port_count - 1
        return self._run(timeout)

    def restart(self, timeout: float = 20.0) -> Rtpengine:
        """Start again on the same control port and port range (after :meth:`kill` or
        :meth:`stop`), as a supervisor restarting a crashed daemon would."""
        if self.proc is not None and self.proc.alive():
            raise RuntimeError(f"{self.name} is still running")
        return self._run(timeout)

    def kill(self) -> None:
        """SIGKILL: the daemon dies at once with every session (a crash)."""
        if self.proc is not None:
            self.proc.signal(signal.SIGKILL)
            self.proc.popen.wait(10)

    def _run(self, timeout: float) -> Rtpengine:
        binary = require_binary("rtpengine")
        args = [
            binary,
            "--config-file=none",
            f"--interface={self.host}",
            f"--listen-ng={self.host}:{self.ng_port}",
            "--table=-1",
            "--foreground",
            "--log-stderr",
            "--log-level=6",
            f"--port-min={self.port_min}",
            f"--port-max={self.port_max}",
            "--delete-delay=0",
            *self.extra_args,
        ]
        self.proc = ManagedProcess(self.name, args, self.log_dir)
        client = NgClient(self.host, self.ng_port, timeout=0.3, attempts=1)
        wait_until(
            lambda: client.ping() == "pong",
            timeout,
            f"{self.name} to answer an ng ping on {self.ng_address}",
            self.proc,
        )
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return self.proc.stop()
