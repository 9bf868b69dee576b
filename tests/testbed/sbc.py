"""teams-sbc itself as a test-bed part: the real ``teams-sbc run --config FILE`` in a subprocess.

Each :class:`SbcProcess` gets a config file generated from the test's wishes, with free loopback
ports for its listeners and its HTTP endpoints, and is ready when ``GET /readyz`` answers 200.
Tests reach it as any user would: SIP on the listeners' ports, HTTP on ``/healthz``,
``/readyz`` and ``/metrics`` (parsed by :meth:`SbcProcess.metrics`), its JSON log lines
(:meth:`SbcProcess.log_records`) and its exit code after SIGTERM.

With ``workers: N`` in its config it is a supervisor and N worker processes, each worker in a
session of its own: :meth:`SbcProcess.worker_pids` reads which process holds each worker seat
from the supervisor's log, and :meth:`SbcProcess.signal_main` signals the ``teams-sbc run``
process alone (as Kubernetes does: only the container's main process gets SIGTERM).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.testbed.process import (
    ManagedProcess,
    PartFailed,
    free_port,
    wait_until,
)

#: Timers for tests (T1 = 10 ms, the smallest the config takes): every transaction of a call is
#: over 64*T1 = 0.64 s after its last message, so a test can wait for the transaction gauge to
#: return to 0 without a long wait. Loopback agents answer well within timers B and F (also
#: 64*T1). (Timer D stays "at least 32 s" over UDP whatever T1 is; see
#: :meth:`SbcProcess.wait_idle`.)
TEST_TIMERS = {"t1_ms": 10, "t2_ms": 80, "t4_ms": 100}

#: urllib honours http_proxy and friends; probes of loopback must never go through a proxy.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

#: A listener and a route in the config's own words (docs/config.md), as plain dicts.
Spec = dict[str, Any]


def teams_sbc_command() -> list[str]:
    """The installed ``teams-sbc`` entry point, the one a user runs: this venv's first."""
    found = shutil.which("teams-sbc", path=str(Path(sys.executable).parent)) or shutil.which(
        "teams-sbc"
    )
    if found is None:
        raise PartFailed("the teams-sbc command is not installed: run `uv sync` first")
    return [found]


def _free_listener_port(transport: str, host: str) -> int:
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    return free_port(kind, host)


@dataclass(frozen=True)
class Sample:
    """One Prometheus sample: its name (``_total`` included for counters), labels and value."""

    name: str
    labels: Mapping[str, str]
    value: float


class Scrape:
    """One ``/metrics`` answer, parsed; :meth:`value` sums the samples matching some labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [
            Sample(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """Sum of ``name``'s samples whose labels include ``labels`` (0 when there is none)."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def names(self) -> set[str]:
        return {s.name for s in self.samples}


class SbcProcess:
    """One ``teams-sbc run`` on loopback, from a config this class writes.

    ``listeners`` are dicts in the config's own words; a missing ``port`` gets a free one.
    ``config`` holds any other top-level keys (``routes``, ``record_route``...).
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        name: str = "teams-sbc",
        listeners: Sequence[Spec] | None = None,
        http_host: str = "127.0.0.1",
        timers: Mapping[str, int] | None = None,
        config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.env = dict(env or {})
        self.name = name
        self.http_host = http_host
        self.http_port = free_port(socket.SOCK_STREAM, http_host)
        specs = listeners or [
            {"name": "udp", "transport": "udp", "host": "127.0.0.1"},
            {"name": "tcp", "transport": "tcp", "host": "127.0.0.1"},
        ]
        self.listeners: dict[str, Spec] = {}
        for spec in specs:
            full = dict(spec)
            full.setdefault("port", _free_listener_port(full["transport"], full["host"]))
            self.listeners[full["name"]] = full
        self.config: dict[str, Any] = {
            "listeners": list(self.listeners.values()),
            "http": {"host": http_host, "port": self.http_port},
            "timers": dict(timers or TEST_TIMERS),
            "logging": {"level": "INFO", "format": "json"},
            # Stopping at the end of a test is a drain too (a UDP INVITE client transaction
            # would hold it for timer D's 32 s); a test of draining sets its own.
            "drain_seconds": 0.25,
            **(config or {}),
        }
        self.config_path = work_dir / f"{name}.yaml"
        self.proc: ManagedProcess | None = None

    # -- where it listens -------------------------------------------------------------------

    def port(self, listener: str) -> int:
        return int(self.listeners[listener]["port"])

    def host(self, listener: str) -> str:
        return str(self.listeners[listener]["host"])

    def address(self, listener: str) -> str:
        """``host:port`` of a listener, the form sipp takes as its remote target."""
        host = self.host(listener)
        return f"[{host}]:{self.port(listener)}" if ":" in host else f"{host}:{self.port(listener)}"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 20.0, *, ready: bool = True) -> SbcProcess:
        """Run it; wait for ``/readyz`` to say ready, or with ``ready=False`` (an SBC meant
        to start unready, e.g. with no rtpengine up) only for ``/healthz``."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        args = [*teams_sbc_command(), "run", "--config", str(self.config_path)]
        self.proc = ManagedProcess(
            self.name,
            args,
            self.work_dir,
            env={"PYTHONUNBUFFERED": "1", **self.env},
            cwd=self.work_dir,
        )
        if ready:
            wait_until(
                self._ready, timeout, f"{self.name} to answer GET /readyz with 200", self.proc
            )
        else:
            wait_until(
                self._alive, timeout, f"{self.name} to answer GET /healthz with 200", self.proc
            )
        return self

    def _ready(self) -> bool:
        return self.http("/readyz")[0] == 200

    def _alive(self) -> bool:
        return self.http("/healthz")[0] == 200

    def readiness(self) -> tuple[bool, list[str]]:
        """``GET /readyz``: (ready, the reasons it gives when not)."""
        status, body = self.http("/readyz")
        reasons = json.loads(body).get("reasons", []) if body.startswith("{") else [body]
        return status == 200, [str(r) for r in reasons]

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM (a drain), then wait for the exit; returns the exit code."""
        assert self.proc is not None
        self.proc.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise PartFailed(
                f"{self.name} did not exit within {timeout:.0f}s of SIGTERM\n"
                + self.proc.log_tail()
            ) from None

    def signal_main(self, sig: int) -> None:
        """``sig`` to the ``teams-sbc run`` process only, not to what it started."""
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def worker_pids(self) -> dict[int, int]:
        """With ``workers`` > 1: each worker seat's current process, as the supervisor logged
        it (``worker started``, ``worker``, ``pid``); a restarted seat shows its new process."""
        pids: dict[int, int] = {}
        for record in self.log_records():
            if record.get("msg") == "worker started" and record.get("role") == "supervisor":
                pids[int(record["worker"])] = int(record["pid"])
        return pids

    def stop(self) -> int | None:
        """SIGTERM (a drain of at most ``drain_seconds``), SIGKILL if it takes longer."""
        if self.proc is None:
            return None
        return self.proc.stop(timeout=float(self.config["drain_seconds"]) + 10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    # -- what a user sees ---------------------------------------------------------------------

    def http(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        """``GET path`` on the HTTP endpoints: (status, body); raises OSError if nothing answers."""
        url = f"http://{self.http_host}:{self.http_port}{path}"
        try:
            with _DIRECT.open(url, timeout=timeout) as reply:
                return int(reply.status), reply.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    def metrics(self) -> Scrape:
        status, body = self.http("/metrics")
        if status != 200:
            raise PartFailed(f"{self.name} answered GET /metrics with {status}: {body[:200]}")
        return Scrape(body)

    def transactions(self) -> dict[str, float]:
        """The ``sbc_sip_transactions`` gauge by kind."""
        return {
            s.labels.get("kind", ""): s.value
            for s in self.metrics().samples
            if s.name == "sbc_sip_transactions"
        }

    def wait_idle(self, timeout: float = 5.0, *, allow_invite_clients: int = 0) -> None:
        """Wait until the proxy holds no transaction: nothing leaked once the timers ran.

        ``allow_invite_clients`` tolerates INVITE client transactions still in Completed after a
        non-2xx over UDP: RFC 3261 fixes their timer D at "at least 32 s" (17.1.1.2), which no
        test waits for; the unit tests prove on a virtual clock that D ends them.
        """
        last: dict[str, float] = {}

        def idle() -> bool:
            nonlocal last
            last = self.transactions()
            others = sum(v for k, v in last.items() if k != "invite_client")
            return others == 0 and last.get("invite_client", 0) <= allow_invite_clients

        try:
            wait_until(idle, timeout, f"{self.name}'s transactions to end", self.proc)
        except PartFailed as exc:
            raise PartFailed(f"{exc}\nlast sbc_sip_transactions: {last}") from None

    def log_records(self) -> list[dict[str, Any]]:
        """The process's JSON log lines (anything else, like our command line, skipped)."""
        assert self.proc is not None
        records = []
        for line in self.proc.log_text().splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records

    def log_tail(self, lines: int = 60) -> str:
        return self.proc.log_tail(lines) if self.proc is not None else ""


class SbcFactory:
    """Starts SBC processes for one test; :meth:`stop_all` ends those still running."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._started: list[SbcProcess] = []

    def __call__(
        self,
        *,
        listeners: Sequence[Spec] | None = None,
        routes: Sequence[Spec] = (),
        timers: Mapping[str, int] | None = None,
        start: bool = True,
        env: Mapping[str, str] | None = None,
        **config: Any,
    ) -> SbcProcess:
        """A started SBC; ``routes`` and any other keyword become top-level config keys;
        ``env`` is added to the process's environment."""
        name = f"teams-sbc-{len(self._started) + 1}"
        full = {"routes": list(routes), **config} if routes else dict(config)
        sbc = SbcProcess(
            self.log_dir / name,
            name=name,
            listeners=listeners,
            timers=timers,
            config=full,
            env=env,
        )
        self._started.append(sbc)
        return sbc.start() if start else sbc

    def stop_all(self) -> None:
        for sbc in reversed(self._started):
            sbc.stop()
        self._started.clear()
