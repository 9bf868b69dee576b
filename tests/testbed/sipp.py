"""sipp (Debian sip-tester 3.6.1) as the test bed's SIP user agents.

A UAS runs in the background until the test ends; a UAC runs a fixed number of calls to completion
and hands back sipp's own final statistics, so a test asserts what sipp counted, not what we think
happened. Also holds :func:`sip_options`, the one-message SIP probe other parts use for readiness.
"""

from __future__ import annotations

import csv
import itertools
import secrets
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypedDict, Unpack

from tests.testbed.process import (
    ManagedProcess,
    PartFailed,
    free_port,
    free_port_both,
    require_binary,
    wait_until,
)

#: sipp transport modes we support: one UDP socket, one TCP connection; or (a UAC) one UDP
#: socket or TCP connection per call, so each call comes from a source port of its own.
Transport = Literal["u1", "t1", "un", "tn"]

_PROBE_TRANSPORT: dict[Transport, Literal["udp", "tcp"]] = {
    "u1": "udp", "t1": "tcp", "un": "udp", "tn": "tcp"
}  # fmt: skip

#: sipp's documented exit codes (seen by Python as unsigned bytes for -1 and -2).
EXIT_ALL_OK = 0
EXIT_SOME_FAILED = 1
_FATAL_EXITS = {255: "fatal error", 254: "fatal error binding a socket"}


def sip_options(
    host: str,
    port: int,
    *,
    transport: Literal["udp", "tcp"] = "udp",
    max_forwards: int = 70,
    timeout: float = 1.0,
) -> str:
    """Send one SIP OPTIONS and return the status line of the first response.

    Raises ``OSError`` (a timeout included) when nothing answers, which is what
    :func:`~tests.testbed.process.wait_until` expects from a probe that is not ready yet.
    ``max_forwards=0`` makes a proxy answer 483 itself instead of relaying the probe.
    """
    proto = transport.upper()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as sock:
        sock.settimeout(timeout)
        # A connected UDP socket reports ICMP port-unreachable as ConnectionRefusedError at once,
        # so a probe of a part that is not listening yet fails fast instead of timing out.
        sock.connect((host, port))
        local_port = sock.getsockname()[1]
        branch = "z9hG4bK" + secrets.token_hex(8)
        request = (
            f"OPTIONS sip:probe@{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/{proto} {host}:{local_port};branch={branch};rport\r\n"
            f"Max-Forwards: {max_forwards}\r\n"
            f"From: <sip:probe@{host}>;tag={secrets.token_hex(4)}\r\n"
            f"To: <sip:probe@{host}:{port}>\r\n"
            f"Call-ID: {secrets.token_hex(8)}@testbed\r\n"
            "CSeq: 1 OPTIONS\r\n"
            f"Contact: <sip:probe@{host}:{local_port};transport={transport}>\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        if transport == "udp":
            sock.send(request)
            data = sock.recv(65535)
        else:
            sock.sendall(request)
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(65535)
                if not chunk:
                    raise ConnectionError("connection closed before a SIP response")
                data += chunk
    status = data.split(b"\r\n", 1)[0].decode(errors="replace")
    if not status.startswith("SIP/2.0 "):
        raise ConnectionError(f"not a SIP response: {status!r}")
    return status


@dataclass(frozen=True)
class SippStats:
    """sipp's cumulative counters (from its ``-trace_stat`` CSV) and its exit code.

    ``exit_code`` is None while sipp still runs (a UAS read mid-test).
    """

    exit_code: int | None
    successful: int
    failed: int
    created: int
    columns: dict[str, str] = field(repr=False)

    @property
    def all_ok(self) -> bool:
        """sipp exits 0 only when every call succeeded."""
        return self.exit_code == EXIT_ALL_OK


def read_stat_csv(path: Path) -> dict[str, str]:
    """The last row of sipp's ``-stf`` CSV (';'-separated, header first) as column -> value."""
    with path.open(newline="", errors="replace") as fh:
        rows = [row for row in csv.reader(fh, delimiter=";") if row]
    if len(rows) < 2:
        raise PartFailed(f"sipp statistics file {path} has no data row")
    header, last = rows[0], rows[-1]
    return {name: value for name, value in zip(header, last, strict=False) if name}


def _counter(columns: dict[str, str], name: str) -> int:
    try:
        return int(columns[name])
    except (KeyError, ValueError) as exc:
        raise PartFailed(f"sipp statistics lack a usable {name!r} column") from exc


def stats_from_csv(path: Path, exit_code: int | None) -> SippStats:
    columns = read_stat_csv(path)
    return SippStats(
        exit_code=exit_code,
        successful=_counter(columns, "SuccessfulCall(C)"),
        failed=_counter(columns, "FailedCall(C)"),
        created=_counter(columns, "TotalCallCreated"),
        columns=columns,
    )


def _scenario_args(scenario: str | Path) -> list[str]:
    """Built-in scenario names (``uas``, ``uac``...) use ``-sn``; anything else is an XML file."""
    if isinstance(scenario, Path):
        if not scenario.is_file():
            raise PartFailed(f"sipp scenario {scenario} does not exist")
        return ["-sf", str(scenario)]
    return ["-sn", scenario]


class SippUas:
    """A sipp UAS listening on a free port until stopped.

    It runs with ``-aa`` so it answers OPTIONS (in or out of a call) with 200: that is both our
    readiness probe and what an SBC's OPTIONS keep-alive towards it expects. sipp opens a call
    for each such OPTIONS that never ends, so the UAS's ``created`` counter (not ``successful``)
    includes the probes.
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        name: str = "sipp-uas",
        transport: Transport = "u1",
        scenario: str | Path = "uas",
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.log_dir = log_dir
        self.name = name
        self.transport: Transport = transport
        self.scenario = scenario
        self.host = host
        self.port = port if port is not None else free_port_both(host)
        self.extra_args = list(extra_args)
        self.stat_path = log_dir / f"{name}.stat.csv"
        self.error_path = log_dir / f"{name}.errors.log"
        self.proc: ManagedProcess | None = None

    @property
    def address(self) -> str:
        """``host:port``, the form sipp's UAC takes as its remote target."""
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> SippUas:
        sipp = require_binary("sipp")
        args = [
            sipp,
            *_scenario_args(self.scenario),
            "-i", self.host,
            "-p", str(self.port),
            "-t", self.transport,
            "-aa",
            "-nostdin",
            "-trace_stat", "-stf", str(self.stat_path), "-fd", "1",
            "-trace_err", "-error_file", str(self.error_path),
            *self.extra_args,
        ]  # fmt: skip
        self.proc = ManagedProcess(self.name, args, self.log_dir, cwd=self.log_dir)
        wait_until(
            self._answers_options,
            timeout,
            f"{self.name} to answer SIP OPTIONS over {self.transport} on {self.address}",
            self.proc,
        )
        return self

    def _answers_options(self) -> bool:
        probe = _PROBE_TRANSPORT[self.transport]
        status = sip_options(self.host, self.port, transport=probe, timeout=0.5)
        return status.startswith("SIP/2.0 200")

    def stats(self) -> SippStats:
        """The UAS's counters as of its last statistics dump (written every second)."""
        code = self.proc.popen.returncode if self.proc is not None else None
        return stats_from_csv(self.stat_path, code)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return self.proc.stop()


@dataclass(frozen=True)
class UacRun:
    """One finished UAC run: its statistics and where its logs are."""

    stats: SippStats
    log_path: Path
    error_path: Path
    message_path: Path | None


class SippUac:
    """A sipp UAC running in the background (see :meth:`SippFactory.start_uac`): the test
    talks to it meanwhile (its SIP ``port`` is known) and collects it with :meth:`finish`."""

    def __init__(
        self,
        proc: ManagedProcess,
        name: str,
        port: int,
        calls: int,
        stat_path: Path,
        error_path: Path,
        message_path: Path | None,
    ) -> None:
        self.proc = proc
        self.name = name
        self.port = port
        self.calls = calls
        self.stat_path = stat_path
        self.error_path = error_path
        self.message_path = message_path

    def alive(self) -> bool:
        return self.proc.alive()

    def finish(self, timeout: float = 60.0) -> UacRun:
        """Wait for the run to end; its statistics, as :func:`run_uac` returns them."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.stop()
            raise PartFailed(
                f"{self.name} did not finish {self.calls} calls within {timeout:.0f}s\n"
                + self.proc.log_tail()
            ) from None
        tail = self.proc.log_tail()
        self.proc.stop()
        if code in _FATAL_EXITS or not self.stat_path.exists():
            reason = _FATAL_EXITS.get(code, "no statistics written")
            raise PartFailed(f"{self.name} failed to run ({reason}, exit {code})\n{tail}")
        return UacRun(
            stats_from_csv(self.stat_path, code),
            self.proc.log_path,
            self.error_path,
            self.message_path,
        )


def start_uac(
    target: str,
    log_dir: Path,
    *,
    name: str = "sipp-uac",
    calls: int = 5,
    rate: float = 10.0,
    transport: Transport = "u1",
    scenario: str | Path = "uac",
    host: str = "127.0.0.1",
    recv_timeout: str = "10s",
    trace_messages: bool = False,
    extra_args: Sequence[str] = (),
    local_port: int | None = None,
) -> SippUac:
    """Start sipp's UAC against ``target`` (``host:port``) in the background."""
    sipp = require_binary("sipp")
    stat_path = log_dir / f"{name}.stat.csv"
    error_path = log_dir / f"{name}.errors.log"
    message_path = log_dir / f"{name}.messages.log" if trace_messages else None
    if local_port is None:
        local_port = (
            free_port_both(host) if transport[0] == "t" else free_port(socket.SOCK_DGRAM, host)
        )
    args = [
        sipp,
        *_scenario_args(scenario),
        target,
        "-i", host,
        "-p", str(local_port),
        "-t", transport,
        "-m", str(calls),
        "-r", f"{rate:g}",
        "-recv_timeout", recv_timeout,
        "-nostdin",
        "-trace_stat", "-stf", str(stat_path),
        "-trace_err", "-error_file", str(error_path),
        *(["-trace_msg", "-message_file", str(message_path)] if message_path else []),
        *extra_args,
    ]  # fmt: skip
    proc = ManagedProcess(name, args, log_dir, cwd=log_dir)
    return SippUac(proc, name, local_port, calls, stat_path, error_path, message_path)


class UacOptions(TypedDict, total=False):
    """How :func:`start_uac` runs sipp's UAC; each has its default there."""

    calls: int
    rate: float
    transport: Transport
    scenario: str | Path
    host: str
    recv_timeout: str
    trace_messages: bool
    extra_args: Sequence[str]
    local_port: int | None


def run_uac(
    target: str,
    log_dir: Path,
    *,
    name: str = "sipp-uac",
    timeout: float = 120.0,
    **options: Unpack[UacOptions],
) -> UacRun:
    """Run sipp's UAC against ``target`` (``host:port``) until ``calls`` calls are done.

    Failed calls are reported in the returned statistics, not raised: the test decides. Only a
    sipp that cannot run at all (fatal exit, no statistics, hung) raises :class:`PartFailed`.
    ``recv_timeout`` makes a stuck call fail instead of hanging the run.
    """
    return start_uac(target, log_dir, name=name, **options).finish(timeout)


class SippFactory:
    """Starts UASes and runs UACs for one test, giving each a unique name and log file."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._ids = itertools.count(1)
        self._uases: list[SippUas] = []
        self._uacs: list[SippUac] = []

    def uas(
        self,
        *,
        transport: Transport = "u1",
        scenario: str | Path = "uas",
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> SippUas:
        """A started UAS; stopped by :meth:`stop_all` at the end of the test."""
        uas = SippUas(
            self.log_dir,
            name=f"sipp-uas-{next(self._ids)}",
            transport=transport,
            scenario=scenario,
            port=port,
            extra_args=extra_args,
        )
        self._uases.append(uas)
        return uas.start()

    def uac(
        self, target: str, *, timeout: float = 120.0, **options: Unpack[UacOptions]
    ) -> UacRun:
        """Run a UAC to completion; see :func:`run_uac`."""
        name = f"sipp-uac-{next(self._ids)}"
        return run_uac(target, self.log_dir, name=name, timeout=timeout, **options)

    def start_uac(self, target: str, **options: Unpack[UacOptions]) -> SippUac:
        """A UAC in the background (by default one call, its messages traced, 20 s to wait
        for each message); :meth:`SippUac.finish` collects it (:meth:`stop_all` stops it if
        the test ends first)."""
        defaults: UacOptions = {"calls": 1, "trace_messages": True, "recv_timeout": "20s"}
        name = f"sipp-uac-{next(self._ids)}"
        uac = start_uac(target, self.log_dir, name=name, **{**defaults, **options})
        self._uacs.append(uac)
        return uac

    def stop_all(self) -> None:
        for uac in reversed(self._uacs):
            uac.proc.stop()
        self._uacs.clear()
        for uas in reversed(self._uases):
            uas.stop()
        self._uases.clear()
