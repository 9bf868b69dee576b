"""Kamailio 5.6 running the shared benchmark proxy config, on free ports.

The config (/work/shared/bench/kamailio-proxy.cfg, or ``$TEAMS_SBC_KAMAILIO_CFG``) hard-codes
UDP 127.0.0.1:5060 relaying to a UAS on 127.0.0.1:5080. It is read at run time and rendered with
our ports, so the benchmark and the tests exercise the very same routing logic.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from tests.testbed.process import (
    ManagedProcess,
    PartFailed,
    free_port,
    require_binary,
    wait_until,
)
from tests.testbed.sipp import sip_options

DEFAULT_CFG = Path("/work/shared/bench/kamailio-proxy.cfg")


def proxy_cfg_path() -> Path:
    return Path(os.environ.get("TEAMS_SBC_KAMAILIO_CFG", str(DEFAULT_CFG)))


def render_proxy_cfg(text: str, host: str, port: int, uas_host: str, uas_port: int) -> str:
    """Move the proxy's listen address/alias and its UAS target to our ports.

    Each substitution must hit at least once: if the shared file changes shape, fail loudly
    rather than run a proxy still pointing at 5060/5080.
    """
    rules = [
        (r"listen=udp:127\.0\.0\.1:5060\b", f"listen=udp:{host}:{port}"),
        (r'alias="127\.0\.0\.1:5060"', f'alias="{host}:{port}"'),
        (
            r't_relay_to_udp\("127\.0\.0\.1",\s*"5080"\)',
            f't_relay_to_udp("{uas_host}", "{uas_port}")',
        ),
    ]
    for pattern, replacement in rules:
        text, count = re.subn(pattern, replacement, text)
        if count == 0:
            raise PartFailed(f"kamailio config no longer contains {pattern!r}; update kamailio.py")
    return text


class Kamailio:
    """The record-routing proxy: UDP ``host:port`` -> UAS ``uas_host:uas_port``."""

    def __init__(
        self,
        workdir: Path,
        uas_port: int,
        *,
        uas_host: str = "127.0.0.1",
        name: str = "kamailio",
        host: str = "127.0.0.1",
        workers: int = 1,
        shm_mb: int = 256,
        pkg_mb: int = 8,
        cfg_source: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.uas_host = uas_host
        self.uas_port = uas_port
        self.name = name
        self.host = host
        self.workers = workers
        self.shm_mb = shm_mb
        self.pkg_mb = pkg_mb
        self.cfg_source = cfg_source or proxy_cfg_path()
        self.port = 0
        self.proc: ManagedProcess | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> Kamailio:
        binary = require_binary("kamailio")
        if not self.cfg_source.is_file():
            raise PartFailed(f"kamailio proxy config {self.cfg_source} is missing")
        self.port = free_port(socket.SOCK_DGRAM, self.host)
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / f"{self.name}.cfg"
        cfg.write_text(
            render_proxy_cfg(
                self.cfg_source.read_text(), self.host, self.port, self.uas_host, self.uas_port
            )
        )
        runtime = self.workdir / f"{self.name}-run"
        runtime.mkdir(exist_ok=True)
        # -DD: no fork to background; -E: log to stderr; -x fm: the fast allocator (Debian's
        # default costs ~4x CPU per call); -Y: runtime files in our dir, not /run/kamailio.
        args = [
            binary,
            "-f", str(cfg),
            "-DD", "-E",
            "-n", str(self.workers),
            "-x", "fm",
            "-m", str(self.shm_mb),
            "-M", str(self.pkg_mb),
            "-Y", str(runtime),
        ]  # fmt: skip
        self.proc = ManagedProcess(self.name, args, self.workdir)
        wait_until(
            self._answers_options,
            timeout,
            f"{self.name} to answer SIP OPTIONS on UDP {self.address}",
            self.proc,
        )
        return self

    def _answers_options(self) -> bool:
        """Max-Forwards: 0 makes the cfg answer 483 itself: readiness must not need the UAS."""
        return sip_options(self.host, self.port, max_forwards=0, timeout=0.5).startswith("SIP/2.0")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return self.proc.stop()
