"""End-to-end SIP benchmark: sipp -> proxy -> sipp, teams-sbc beside Kamailio, in one run.

    uv run python bench/sip_proxy.py --seconds 5
    uv run python bench/sip_proxy.py --only memory    # the memory trial alone, ~1 min
    uv run python bench/sip_proxy.py --only cpu       # CPU per call, K S K S, ~1 min

Measures, alternating the peers trial by trial (this machine's speed swings 2-3x within
minutes, so only figures taken side by side compare):

1. ``ceiling``: sipp uac -> sipp uas directly, what the load generator itself sustains;
2. ``kamailio``: Kamailio 5.6 with the shared benchmark config (one worker, fast allocator);
3. ``sbc``: ``teams-sbc run`` with one UDP listener and one static route to the UAS;

each at the highest call rate with under 0.5% failed calls (ramp by doubling, then bisect, every
trial ``--seconds`` long, on fresh processes and fresh ports). Then, at fixed rates, each proxy's
CPU time per call (from /proc/PID/stat), the INVITE->200 response time at 50% of the SBC's
maximum (p50/p99 from sipp's message trace, which has microsecond timestamps), and the SBC's
memory per 1,000 concurrent calls (held 10 s) once its resident size levels off. Every trial's
SBC runs from a copy of ``sbc/teams_sbc`` taken at the start, so one run measures one version.

Each proxy (all its processes) runs on the same CPU set (``--proxy-cpus``, default core 1) and
the sipp pair on another (``--sipp-cpus``, default core 0); see docs/benchmarks.md for why.
The last output line is one JSON object with every figure and the table of trials.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the test bed's helpers live in tests/testbed
    sys.path.insert(0, str(REPO))

from tests.testbed.kamailio import Kamailio  # noqa: E402
from tests.testbed.process import (  # noqa: E402
    ManagedProcess,
    PartFailed,
    free_port,
    require_binary,
)
from tests.testbed.sbc import SbcProcess  # noqa: E402
from tests.testbed.sipp import SippUas, stats_from_csv  # noqa: E402
from tools import native_build  # noqa: E402

PEERS = ("ceiling", "kamailio", "sbc")
#: A rate is sustained when fewer than this share of its calls failed.
FAIL_LIMIT = 0.005
#: ... and when sipp actually created calls at (nearly) the rate asked for.
RATE_TOLERANCE = 0.95
#: RFC 3261 timer values, the SBC's defaults (the test bed's SbcProcess uses short test timers).
RFC_TIMERS = {"t1_ms": 500, "t2_ms": 4000, "t4_ms": 5000}
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, flush=True)


# -- processes and CPUs ---------------------------------------------------------------------


def cpu_set(spec: str) -> set[int]:
    """``"0"``, ``"0,1"`` or ``"0-1"`` as a set of CPU numbers."""
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


@contextlib.contextmanager
def affinity(cpus: set[int]) -> Iterator[None]:
    """Run the enclosed process starts on ``cpus``: children inherit the affinity when forked.

    This pins every process a part forks (Kamailio's workers and timers too) without wrapping
    the test bed's command lines in ``taskset``.
    """
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass(frozen=True)
class ProcSample:
    """CPU seconds (user + system) and resident bytes summed over one process group."""

    cpu_s: float
    rss_bytes: int
    pids: tuple[int, ...]
    #: The system (kernel) part of ``cpu_s``: mostly the sockets' system calls.
    sys_s: float = 0.0


def group_sample(pgid: int) -> ProcSample:
    """Sum /proc/PID/stat over every process of group ``pgid`` (a part and what it forked) and
    their descendants in other groups (the SBC's workers run in sessions of their own)."""
    stats: dict[int, tuple[int, int, list[bytes]]] = {}  # pid -> (ppid, pgid, fields)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:  # gone meanwhile
            continue
        fields = raw[raw.rindex(b")") + 2 :].split()
        stats[int(entry)] = (int(fields[1]), int(fields[2]), fields)
    members = {pid for pid, (_, group, _) in stats.items() if group == pgid}
    grown = True
    while grown:
        more = {pid for pid, (ppid, _, _) in stats.items() if ppid in members} - members
        members |= more
        grown = bool(more)
    cpu = system = rss = 0
    for pid in members:
        fields = stats[pid][2]
        cpu += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
        system += int(fields[12])
        rss += int(fields[21]) * PAGE
    return ProcSample(cpu / TICK, rss, tuple(sorted(members)), system / TICK)


def allowed_cpus(pids: tuple[int, ...]) -> set[str]:
    """Each process's ``Cpus_allowed_list``: proof of the pinning, printed once per peer."""
    found = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    found.add(line.split(":", 1)[1].strip())
    return found


# -- the peers --------------------------------------------------------------------------------


@dataclass
class Proxy:
    """A started peer: where the UAC sends, the process group to measure, how to stop it."""

    target: str
    pgid: int | None
    stop: Callable[[], object]
    transactions: Callable[[], dict[str, float]] | None = None
    #: The UAC's source ports: one sipp UAC each, sharing the load (see run_from_sources).
    sources: list[int] = field(default_factory=list)


def start_peer(peer: str, workdir: Path, uas_port: int, workers: int, sources: int = 1) -> Proxy:
    """``ceiling`` is no proxy at all: the UAC calls the UAS directly."""
    free = [free_port(socket.SOCK_DGRAM) for _ in range(sources)]
    if peer == "ceiling":
        return Proxy(f"127.0.0.1:{uas_port}", None, lambda: None, sources=free)
    if peer == "kamailio":
        kam = Kamailio(workdir, uas_port, workers=workers, shm_mb=1024, pkg_mb=8).start()
        assert kam.proc is not None
        return Proxy(kam.address, kam.proc.pid, kam.stop, sources=free)
    config: dict[str, Any] = {
        "logging": {"level": "WARNING", "format": "json"},
        "drain_seconds": 0,  # stopping a trial's SBC must not wait for its timers
        "routes": [{"name": "uas", "next_hop": f"sip:127.0.0.1:{uas_port}"}],
    }
    if workers > 1:
        config["workers"] = workers
    sbc = SbcProcess(
        workdir,
        listeners=[{"name": "a", "transport": "udp", "host": "127.0.0.1"}],
        timers=RFC_TIMERS,
        config=config,
    ).start()
    assert sbc.proc is not None
    if workers > 1:
        free = balanced_sources(sbc, workers, sources)
    return Proxy(sbc.address("a"), sbc.proc.pid, sbc.stop, sbc.transactions, sources=free)


# -- sipp's UAC under watch -------------------------------------------------------------------


def stat_rows(path: Path) -> list[dict[str, str]]:
    """Every complete row of sipp's ``-trace_stat`` CSV (it appends one a second with -fd 1)."""
    if not path.exists():
        return []
    with path.open(newline="", errors="replace") as fh:
        rows = [row for row in csv.reader(fh, delimiter=";") if row]
    if len(rows) < 2:
        return []
    header = rows[0]
    return [dict(zip(header, row, strict=False)) for row in rows[1:] if len(row) >= len(header)]


def epoch(cell: str) -> float:
    """sipp's time cells are ``date<TAB>time<TAB>epoch.micro``."""
    return float(cell.rsplit("\t", maxsplit=1)[-1])


def creation_rate(rows: list[dict[str, str]], planned: int) -> float | None:
    """Calls per second sipp created while it was still creating them (None before 1 s).

    The figure ``CallRate(C)`` would also count the time the last calls took to end.
    """
    best: float | None = None
    for row in rows:
        created = int(row["TotalCallCreated"])
        elapsed = epoch(row["CurrentTime"]) - epoch(row["StartTime"])
        if created < planned and elapsed >= 0.9:
            best = created / elapsed
    return best


@dataclass
class LoadResult:
    planned: int
    created: int
    successful: int
    failed: int
    achieved_cps: float | None
    max_concurrent: int
    stopped: str  # why we ended sipp before it finished, or ""


def run_load(
    target: str,
    workdir: Path,
    *,
    name: str,
    rate: float,
    calls: int,
    hold_ms: int = 0,
    trace: Path | None = None,
    on_tick: Callable[[], None] | None = None,
    stop_when: Callable[[], bool] | None = None,
    port: int | None = None,
) -> LoadResult:
    """sipp's built-in uac at ``rate`` until ``calls`` calls are done, watched every 0.2 s.

    A run whose failures already reach the limit is ended at once (its verdict cannot change),
    as is one for which ``stop_when`` says it has shown what it was for (the memory plateau).
    """
    stat = workdir / f"{name}.stat.csv"
    args = [
        require_binary("sipp"), "-sn", "uac", target,
        "-i", "127.0.0.1", "-p", str(port or free_port(socket.SOCK_DGRAM)), "-t", "u1",
        "-m", str(calls), "-r", f"{rate:g}", "-d", str(hold_ms),
        "-recv_timeout", "10s", "-pause_msg_ign", "-nostdin",
        "-trace_stat", "-stf", str(stat), "-fd", "1",
        "-trace_err", "-error_file", str(workdir / f"{name}.errors.log"),
        *(["-trace_msg", "-message_file", str(trace)] if trace else []),
    ]  # fmt: skip
    proc = ManagedProcess(name, args, workdir, cwd=workdir)
    started = time.monotonic()
    hard_limit = calls / rate + hold_ms / 1000 + 40  # every call ends within ~30 s of its start
    stopped = ""
    try:
        while proc.popen.poll() is None:
            time.sleep(0.2)
            if on_tick is not None:
                on_tick()
            rows = stat_rows(stat)
            failed = int(rows[-1]["FailedCall(C)"]) if rows else 0
            elapsed = time.monotonic() - started
            if failed >= calls * FAIL_LIMIT:
                stopped = f"{failed} calls failed already"
            elif stop_when is not None and stop_when():
                stopped = f"stopped after {elapsed:.0f}s, at the RSS plateau"
            elif elapsed > hard_limit:
                stopped = "hung"
            if stopped:
                proc.signal(signal.SIGKILL)
                break
    finally:
        code = proc.stop()
    return load_result(stat, code, calls, stopped, proc)


def load_result(
    stat: Path, code: int | None, calls: int, stopped: str, proc: ManagedProcess
) -> LoadResult:
    """What a finished sipp load run did, from its statistics file (``-trace_stat``): calls
    created, successful and failed, the creation rate and the most calls at once. ``code`` is
    sipp's exit status, ``stopped`` why the run was ended early ("" if it was not), ``proc``
    the sipp process (its log explains a run that wrote nothing). Shared with media_bench.py,
    whose loads use another scenario."""
    rows = stat_rows(stat)
    if not rows:
        raise PartFailed(f"sipp wrote no statistics (exit {code})\n{proc.log_tail()}")
    if code in (254, 255):  # sipp's fatal exits (-1, -2): it did not run the load at all
        raise PartFailed(f"sipp failed to run (exit {code})\n{proc.log_tail()}")
    last = stats_from_csv(stat, code)
    return LoadResult(
        planned=calls,
        created=last.created,
        successful=last.successful,
        failed=last.failed,
        achieved_cps=creation_rate(rows, calls),
        max_concurrent=max(int(r["CurrentCall"]) for r in rows),
        stopped=stopped,
    )


# -- load from several sources (an SBC with several workers) ----------------------------------


def run_from_sources(
    target: str,
    workdir: Path,
    ports: list[int],
    *,
    name: str,
    rate: int,
    calls: int,
    hold_ms: int = 0,
    trace: Path | None = None,
    on_tick: Callable[[], None] | None = None,
    stop_when: Callable[[], bool] | None = None,
) -> LoadResult:
    """:func:`run_load` split over one sipp UAC per source port, all at once, each with an
    equal share of the rate and the calls; their figures added up. With one port (or none) it
    is :func:`run_load` itself. Traces are written per UAC, then joined into ``trace``.

    SO_REUSEPORT hands all of one source's datagrams to one SBC worker, so a multi-worker SBC
    needs several sources to share the load (:func:`balanced_sources` picks the ports).
    """
    if len(ports) <= 1:
        return run_load(
            target, workdir, name=name, rate=rate, calls=calls, hold_ms=hold_ms, trace=trace,
            on_tick=on_tick, stop_when=stop_when, port=ports[0] if ports else None,
        )  # fmt: skip
    share = len(ports)
    results: list[LoadResult | BaseException] = [RuntimeError("not run")] * share
    traces = [trace.with_suffix(f".{i}{trace.suffix}") if trace else None for i in range(share)]

    def one(i: int) -> None:
        try:
            results[i] = run_load(
                target, workdir, name=f"{name}{i}", rate=rate / share,
                calls=max(1, calls // share), hold_ms=hold_ms, trace=traces[i],
                on_tick=on_tick if i == 0 else None, stop_when=stop_when, port=ports[i],
            )  # fmt: skip
        except BaseException as exc:  # re-raised in the caller's thread
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(share)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done: list[LoadResult] = []
    for r in results:
        if isinstance(r, BaseException):
            raise r
        done.append(r)
    if trace is not None:
        with trace.open("wb") as joined:
            for part in traces:
                if part is not None and part.exists():
                    joined.write(part.read_bytes())
                    part.unlink()
    rates = [r.achieved_cps for r in done]
    return LoadResult(
        planned=sum(r.planned for r in done),
        created=sum(r.created for r in done),
        successful=sum(r.successful for r in done),
        failed=sum(r.failed for r in done),
        achieved_cps=None if None in rates else sum(r or 0.0 for r in rates),
        max_concurrent=sum(r.max_concurrent for r in done),
        stopped="; ".join(sorted({r.stopped for r in done if r.stopped})),
    )


def balanced_sources(sbc: SbcProcess, workers: int, count: int) -> list[int]:
    """``count`` free UDP ports whose datagrams the kernel gives to the SBC's workers in equal
    numbers, found by asking: an OPTIONS for the SBC itself from each candidate port, and whose
    ``sbc_worker_sip_requests_total`` grew. A benchmark of capacity should not depend on how a
    handful of sources happen to hash; real traffic from many sources spreads by itself."""
    want = -(-count // workers)  # per worker
    chosen: dict[str, list[int]] = {}
    host, port = sbc.host("a"), sbc.port("a")
    for _ in range(50 * count):
        if sum(len(v) for v in chosen.values()) >= count:
            break
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((host, 0))
            mine = int(sock.getsockname()[1])
            before = _options_by_worker(sbc)
            sock.settimeout(2)
            sock.sendto(_options(host, port, mine), (host, port))
            sock.recv(65535)
            after = _options_by_worker(sbc)
        grown = [w for w, n in after.items() if n > before.get(w, 0)]
        if len(grown) == 1 and len(chosen.setdefault(grown[0], [])) < want:
            chosen[grown[0]].append(mine)
    ports = [p for group in zip(*chosen.values(), strict=False) for p in group][:count]
    if len(chosen) < workers or len(ports) < count:
        raise PartFailed(f"could not find {count} source ports spread over {workers} workers")
    return ports


def _options_by_worker(sbc: SbcProcess) -> dict[str, float]:
    return {
        s.labels["worker"]: s.value
        for s in sbc.metrics().samples
        if s.name == "sbc_worker_sip_requests_total" and s.labels.get("method") == "OPTIONS"
    }


def _options(host: str, port: int, local: int) -> bytes:
    tag = os.urandom(4).hex()
    return (
        f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{local};branch=z9hG4bK{tag}probe;rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:bench@{host}>;tag={tag}\r\nTo: <sip:{host}:{port}>\r\n"
        f"Call-ID: {tag}@bench\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


# -- response times from sipp's message trace ---------------------------------------------------


def invite_to_200_ms(trace: Path) -> list[float]:
    """Per call, ms from sending the first INVITE to receiving the first 200 for it.

    sipp's ``-trace_rtt`` rounds to its millisecond clock tick (0, 4, 8 ms seen here): too
    coarse for a 5 ms target. Its ``-trace_msg`` stamps every message in microseconds.
    """
    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    for stamp, outgoing, start, headers in trace_messages(trace):
        call_id = headers.get("call-id") or headers.get("i", "")
        cseq = headers.get("cseq", "")
        if outgoing and start.startswith("INVITE "):
            sent.setdefault(call_id, stamp)
        elif not outgoing and start.startswith("SIP/2.0 200") and cseq.endswith("INVITE"):
            answered.setdefault(call_id, stamp)
    return [(answered[c] - t) * 1000 for c, t in sent.items() if c in answered]


def trace_messages(trace: Path) -> Iterator[tuple[float, bool, str, dict[str, str]]]:
    """(time, sent by sipp?, start line, headers) for each message of a ``-trace_msg`` file."""
    with trace.open(errors="replace") as fh:
        lines = iter(fh)
        for line in lines:
            if not line.startswith("-----------------------------------------------"):
                continue
            if not line.strip("- \n"):
                continue  # sipp's "Dead call ... received" note: no timestamp, not a message
            stamp = datetime.fromisoformat(line.strip("- \n")).timestamp()
            outgoing = "message sent" in next(lines, "")
            start = ""
            headers: dict[str, str] = {}
            for raw in lines:
                text = raw.strip()
                if not text:
                    if start:
                        break  # end of the header section
                    continue
                if not start:
                    start = text
                else:
                    name, _, value = text.partition(":")
                    headers.setdefault(name.strip().lower(), value.strip())
            yield stamp, outgoing, start, headers


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


# -- trials -----------------------------------------------------------------------------------


@dataclass
class Trial:
    """One row of the trial table."""

    n: int
    at_s: float
    purpose: str
    peer: str
    rate: int
    planned: int
    successful: int
    failed: int
    achieved_cps: float | None
    passed: bool
    proxy_cpu_us_per_call: float | None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    """Runs trials on fresh processes and keeps the table."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.sipp_cpus = cpu_set(args.sipp_cpus)
        self.proxy_cpus = cpu_set(args.proxy_cpus)
        self.trials: list[Trial] = []
        self.started = time.monotonic()
        self._shown_pinning: set[str] = set()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def trial(
        self,
        purpose: str,
        peer: str,
        rate: int,
        *,
        hold_ms: int = 0,
        trace: bool = False,
        memory: bool = False,
    ) -> Trial:
        """Fresh UAS, fresh proxy, fresh ports; one UAC run; everything stopped afterwards."""
        n = len(self.trials) + 1
        workdir = self.root / f"{n:03d}-{purpose}-{peer}-{rate}"
        with affinity(self.sipp_cpus):
            uas = SippUas(workdir, name="uas").start()
        try:
            with affinity(self.proxy_cpus):
                proxy = start_peer(
                    peer, workdir, uas.port, self.args.workers, self.args.uac_sources
                )
            try:
                self._show_pinning(peer, proxy)
                with affinity(self.sipp_cpus):
                    row = self._measure(
                        n, purpose, peer, rate, proxy, workdir, hold_ms, trace, memory
                    )
            finally:
                proxy.stop()
        finally:
            uas.stop()
        self.trials.append(row)
        log(self._describe(row))
        if row.planned and not row.successful:
            log(f"  WARNING: no call succeeded; logs kept in {workdir}")
        elif not self.args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        return row

    def _measure(
        self,
        n: int,
        purpose: str,
        peer: str,
        rate: int,
        proxy: Proxy,
        workdir: Path,
        hold_ms: int,
        trace: bool,
        memory: bool,
    ) -> Trial:
        at = self.elapsed()
        extra: dict[str, Any] = {}
        sampler = None
        calls = int(rate * self.args.seconds)
        if memory:
            assert proxy.pgid is not None
            extra = self._warm_up_then_idle(proxy, workdir)
            sampler = RssSampler(proxy.pgid, extra.pop("rss_idle_bytes"), hold_ms / 1000)
            calls = rate * math.ceil(sampler.cap_s + 5)  # never runs out before the cap
        trace_path = workdir / "uac.messages.log" if trace else None
        before = group_sample(proxy.pgid) if proxy.pgid else None
        result = run_from_sources(
            proxy.target,
            workdir,
            proxy.sources,
            name="uac",
            rate=rate,
            calls=calls,
            hold_ms=hold_ms,
            trace=trace_path,
            on_tick=sampler.sample if sampler else None,
            stop_when=sampler.plateaued if sampler else None,
        )
        cpu_us = None  # calls still held open at the memory trial's end make it meaningless
        if before is not None and proxy.pgid is not None and result.successful and not memory:
            after = group_sample(proxy.pgid)
            cpu_us = (after.cpu_s - before.cpu_s) / result.successful * 1e6
            system_us = (after.sys_s - before.sys_s) / result.successful * 1e6
            extra["sys_us_per_call"] = round(system_us, 1)
        if sampler is not None:
            extra.update(sampler.summary(result.max_concurrent))
            extra["transactions_at_end"] = live_transactions(proxy)
        if trace_path is not None:
            extra.update(rtt_summary(trace_path))
            if not self.args.keep_logs:
                trace_path.unlink(missing_ok=True)
        return Trial(
            n=n,
            at_s=round(at, 1),
            purpose=purpose,
            peer=peer,
            rate=rate,
            planned=result.created if memory else result.planned,
            successful=result.successful,
            failed=result.failed,
            achieved_cps=None if result.achieved_cps is None else round(result.achieved_cps),
            passed=sustained(result, rate, memory),
            proxy_cpu_us_per_call=None if cpu_us is None else round(cpu_us, 1),
            note=result.stopped,
            extra=extra,
        )

    def _warm_up_then_idle(self, proxy: Proxy, workdir: Path) -> dict[str, Any]:
        """A short warm-up (lazy imports, caches), then the idle RSS the plateau is compared to."""
        run_load(proxy.target, workdir, name="warmup", rate=200, calls=400)
        assert proxy.pgid is not None
        rss = group_sample(proxy.pgid).rss_bytes
        return {
            "rss_idle_bytes": rss,
            "rss_idle_mb": round(rss / 2**20, 1),
            "transactions_at_idle": live_transactions(proxy),
        }

    def _show_pinning(self, peer: str, proxy: Proxy) -> None:
        if proxy.pgid is None or peer in self._shown_pinning:
            return
        self._shown_pinning.add(peer)
        pids = group_sample(proxy.pgid).pids
        log(
            f"  {peer}: {len(pids)} process(es) {list(pids)}, allowed CPUs "
            f"{sorted(allowed_cpus(pids))}; sipp on {self.args.sipp_cpus}"
        )

    def _describe(self, t: Trial) -> str:
        verdict = "pass" if t.passed else "FAIL"
        cpu = f", proxy {t.proxy_cpu_us_per_call:.0f} us/call" if t.proxy_cpu_us_per_call else ""
        got = f", created {t.achieved_cps}/s" if t.achieved_cps is not None else ""
        extra = "".join(f", {k} {v}" for k, v in t.extra.items())
        note = f" ({t.note})" if t.note else ""
        return (
            f"[{self.elapsed():5.0f}s] #{t.n:<3} {t.purpose:<7} {t.peer:<8} {t.rate:>6}/s: "
            f"{t.successful}/{t.planned} ok, {t.failed} failed{got}{cpu}{extra} -> "
            f"{verdict}{note}"
        )


def sustained(result: LoadResult, rate: int, memory: bool = False) -> bool:
    """Under 0.5% failed, every call created, and created at the rate asked (the generator's
    limit shows as a lower creation rate, not as failures). The memory trial is stopped by
    design: it counts the calls created until then."""
    if not memory and (result.stopped or result.created < result.planned):
        return False
    if result.failed >= (result.created if memory else result.planned) * FAIL_LIMIT:
        return False
    return result.achieved_cps is None or result.achieved_cps >= rate * RATE_TOLERANCE


def rtt_summary(trace: Path) -> dict[str, Any]:
    times = invite_to_200_ms(trace)
    if not times:
        return {"rtt_samples": 0}
    return {
        "rtt_samples": len(times),
        "p50_ms": round(percentile(times, 50), 3),
        "p99_ms": round(percentile(times, 99), 3),
        "max_ms": round(max(times), 3),
    }


def live_transactions(proxy: Proxy) -> int | None:
    """The SBC's ``sbc_sip_transactions`` gauge, summed over kinds (None for other peers)."""
    if proxy.transactions is None:
        return None
    with contextlib.suppress(OSError, PartFailed):
        return int(sum(proxy.transactions().values()))
    return None


class RssSampler:
    """The proxy's resident memory during the memory trial, and when it has stopped growing.

    The number of held calls is steady ``hold`` seconds in, but the SBC keeps each finished
    transaction for its RFC 3261 wait timers (INVITE server: Timer L, 64*T1 = 32 s; BYE server:
    Timer J, 32 s), so its memory only levels off some 32 s later. The plateau is reached when
    the last 5 s added under 2% of the growth since idle; the trial ends there or at ``cap_s``.
    """

    WINDOW_S = 5.0

    def __init__(self, pgid: int, idle_bytes: int, hold_s: float) -> None:
        self.pgid = pgid
        self.idle = idle_bytes
        self.settle_s = hold_s + self.WINDOW_S
        self.cap_s = hold_s + 50.0
        self.samples: list[tuple[float, int]] = []
        self._t0 = time.monotonic()

    def sample(self) -> None:
        rss = group_sample(self.pgid).rss_bytes
        self.samples.append((time.monotonic() - self._t0, rss))

    def plateaued(self) -> bool:
        if not self.samples:
            return False
        now, rss = self.samples[-1]
        if now >= self.cap_s:
            return True
        if now < self.settle_s:
            return False
        earlier = max(r for t, r in self.samples if t <= now - self.WINDOW_S)
        return rss - earlier <= 0.02 * (rss - self.idle)

    def summary(self, concurrent: int) -> dict[str, Any]:
        peak = max((r for _, r in self.samples), default=self.idle)
        at = self.samples[-1][0] if self.samples else 0.0
        return {
            "rss_plateau_mb": round(peak / 2**20, 1),
            "plateau_at_s": round(at, 1),
            "concurrent_calls": concurrent,
        }


# -- the rate search ----------------------------------------------------------------------------


@dataclass
class Search:
    """Highest sustained rate of one peer: double until a failure, then bisect to ``precision``."""

    peer: str
    start: int
    cap: int
    precision: float
    lo: int = 0  # highest rate that passed
    hi: int | None = None  # lowest rate that failed

    def done(self) -> bool:
        if self.lo >= self.cap:
            return True
        if self.hi is None:
            return False
        return self.hi - self.lo <= max(10, self.lo * self.precision)

    def next_rate(self) -> int:
        if self.hi is None:
            return min(self.cap, self.lo * 2 if self.lo else self.start)
        return round_rate((self.lo + self.hi) / 2)

    def record(self, rate: int, passed: bool) -> None:
        if passed:
            self.lo = max(self.lo, rate)
        else:
            self.hi = rate if self.hi is None else min(self.hi, rate)


def round_rate(rate: float) -> int:
    step = 50 if rate >= 1000 else 10
    return max(step, int(round(rate / step) * step))


def search_all(bench: Bench, peers: tuple[str, ...]) -> dict[str, int]:
    """Interleaved searches: each step runs the next trial of every unfinished peer in turn.

    A proxy only adds work to the same generator, so a rate at which sipp -> sipp alone
    already failed counts as failed for the proxies without a trial (saving ~15 s each).
    """
    a = bench.args
    searches = [Search(p, a.start_rate, a.max_rate, a.precision) for p in peers]
    ceiling = next((s for s in searches if s.peer == "ceiling"), None)
    while not all(s.done() for s in searches):
        for s in searches:
            if s.done():
                continue
            rate = s.next_rate()
            if s is not ceiling and ceiling is not None and ceiling.hi and rate >= ceiling.hi:
                log(f"  {s.peer} at {rate}/s: not run, sipp alone failed at {ceiling.hi}/s")
                s.record(rate, False)
                continue
            s.record(rate, bench.trial("search", s.peer, rate).passed)
    return {s.peer: s.lo for s in searches}


# -- the whole run ------------------------------------------------------------------------------


def fixed_rate_cpu(bench: Bench, rate: int, repeats: int) -> dict[str, float | None]:
    """CPU per call of each proxy at one comfortable rate, alternating K S K S."""
    per: dict[str, list[float]] = {"kamailio": [], "sbc": []}
    for _ in range(repeats):
        for peer, figures in per.items():
            t = bench.trial("cpu", peer, rate)
            if t.passed and t.proxy_cpu_us_per_call is not None:
                figures.append(t.proxy_cpu_us_per_call)
    return {p: (round(sum(v) / len(v), 1) if v else None) for p, v in per.items()}


def latency(bench: Bench, rate: int, peers: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    return {p: bench.trial("latency", p, rate, trace=True).extra for p in peers}


def memory(bench: Bench, rate: int, hold_ms: int) -> dict[str, Any]:
    """(RSS at the plateau - idle RSS) per 1,000 concurrent calls, and per live transaction."""
    t = bench.trial("memory", "sbc", rate, hold_ms=hold_ms, memory=True)
    info = dict(t.extra)
    grown_mb = info["rss_plateau_mb"] - info["rss_idle_mb"]
    calls = info["concurrent_calls"]
    info["rss_mb_per_1k_calls"] = round(grown_mb / calls * 1000, 2) if calls else None
    txns = (info["transactions_at_end"] or 0) - (info["transactions_at_idle"] or 0)
    info["rss_bytes_per_transaction"] = round(grown_mb * 2**20 / txns) if txns > 0 else None
    info["failed"] = t.failed
    return info


def snapshot_sbc(dest: Path, *, pure: bool = False) -> str:
    """Run every trial's SBC from a copy of the package taken now, not from the working tree.

    Others edit the tree while a run goes on; each trial starts a fresh SBC, so without the copy
    one run could measure several versions. PYTHONPATH comes before the editable install.
    Unless ``pure``, the copy is compiled with mypyc (tools/native_build.py, cached by content)
    and the compiled tree is what runs. Returns the build: "mypyc" or "pure".
    """
    shutil.copytree(
        REPO / "sbc" / "teams_sbc",
        dest / "teams_sbc",
        ignore=shutil.ignore_patterns("__pycache__"),
        dirs_exist_ok=True,
    )
    folder = dest
    if not pure:
        log("compiling the SBC's SIP core with mypyc (about a minute unless cached)")
        folder = native_build.build(dest / "teams_sbc")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p
    )
    return "pure" if pure else "mypyc"


def git_state() -> str:
    """The commit measured, ``+dirty`` when the tree had uncommitted changes."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            check=True, capture_output=True, text=True, timeout=5,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            check=True, capture_output=True, text=True, timeout=5,
        ).stdout.strip()  # fmt: skip
        return head + ("+dirty" if dirty else "")
    return ""


def kamailio_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["kamailio", "-v"], check=False, capture_output=True, text=True, timeout=5
        )
        return out.stdout.splitlines()[0] if out.stdout else ""
    return ""


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.workdir or tempfile.mkdtemp(prefix="sip-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, root)
    load_at_start = [round(x, 2) for x in os.getloadavg()]  # other work on the machine
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    git = git_state()
    args.sbc_build = snapshot_sbc(root / "sbc-snapshot", pure=args.pure)
    log(
        f"sip_proxy benchmark: {args.seconds:g}s trials, sipp on CPU {args.sipp_cpus}, "
        f"proxies on CPU {args.proxy_cpus}, {args.workers} worker(s); logs in {root}; "
        f"SBC code: a copy of the tree at {git or 'unknown'}, build {args.sbc_build}"
    )
    if args.only == "memory":
        return run_memory_only(args, bench, root, git, started_at, load_at_start)
    if args.only == "cpu":
        return run_cpu_only(args, bench, root, git, started_at, load_at_start)
    log("== search: highest rate with < 0.5% failed calls (peers alternate) ==")
    best = search_all(bench, PEERS)
    sbc_cps = best["sbc"]
    half = round_rate(max(10, sbc_cps / 2))
    cpu_rate = args.cpu_rate if sbc_cps >= 2 * args.cpu_rate else half
    log(f"== CPU per call at {cpu_rate} calls/s (K S K S) ==")
    cpu = fixed_rate_cpu(bench, cpu_rate, args.repeats)
    log(f"== INVITE->200 response time at {half} calls/s (50% of the SBC's maximum) ==")
    rtt = latency(bench, half, ("sbc",) if args.quick else ("ceiling", "kamailio", "sbc"))
    mem_rate = min(args.memory_rate, half)
    log(f"== SBC memory: {mem_rate} calls/s held {args.hold_ms} ms ==")
    mem = memory(bench, mem_rate, args.hold_ms)
    if not args.keep_logs:  # failed trials' logs stay, and with them the directory
        shutil.rmtree(root / "sbc-snapshot", ignore_errors=True)
        with contextlib.suppress(OSError):
            root.rmdir()
    return {
        "sbc_cps": sbc_cps,
        "kamailio_cps": best["kamailio"],
        "ceiling_cps": best["ceiling"],
        "ratio_to_kamailio": round(sbc_cps / best["kamailio"], 3) if best["kamailio"] else None,
        # Kamailio's figure is a lower bound when it reaches what the generator itself sustains.
        "kamailio_at_ceiling": best["kamailio"] >= 0.9 * best["ceiling"],
        "sbc_p99_ms": rtt["sbc"].get("p99_ms"),
        "sbc_rss_mb_per_1k_calls": mem["rss_mb_per_1k_calls"],
        "sbc_cpu_us_per_call": cpu["sbc"],
        "kamailio_cpu_us_per_call": cpu["kamailio"],
        "cpu_rate": cpu_rate,
        "latency_rate": half,
        "latency": rtt,
        "memory": {"rate": mem_rate, "hold_ms": args.hold_ms, **mem},
        "seconds": args.seconds,
        "workers": args.workers,
        "sipp_cpus": args.sipp_cpus,
        "proxy_cpus": args.proxy_cpus,
        "kamailio": kamailio_version(),
        "date": started_at,
        "git": git,
        "loadavg_at_start": load_at_start,
        "elapsed_s": round(bench.elapsed()),
        "trials": [asdict(t) for t in bench.trials],
    }


def run_memory_only(
    args: argparse.Namespace,
    bench: Bench,
    root: Path,
    git: str,
    started_at: str,
    load_at_start: list[float],
) -> dict[str, Any]:
    """``--only memory``: the memory trial alone, at ``--memory-rate`` (no search, so no
    ``sbc_cps`` to halve it against: pick a rate the SBC sustains, 500/s by default)."""
    log(f"== SBC memory only: {args.memory_rate} calls/s held {args.hold_ms} ms ==")
    mem = memory(bench, args.memory_rate, args.hold_ms)
    if not args.keep_logs:
        shutil.rmtree(root / "sbc-snapshot", ignore_errors=True)
        with contextlib.suppress(OSError):
            root.rmdir()
    return {
        "only": "memory",
        "sbc_rss_mb_per_1k_calls": mem["rss_mb_per_1k_calls"],
        "memory": {"rate": args.memory_rate, "hold_ms": args.hold_ms, **mem},
        "proxy_cpus": args.proxy_cpus,
        "sipp_cpus": args.sipp_cpus,
        "workers": args.workers,
        "date": started_at,
        "git": git,
        "loadavg_at_start": load_at_start,
        "elapsed_s": round(bench.elapsed()),
        "trials": [asdict(t) for t in bench.trials],
    }


def run_cpu_only(
    args: argparse.Namespace,
    bench: Bench,
    root: Path,
    git: str,
    started_at: str,
    load_at_start: list[float],
) -> dict[str, Any]:
    """``--only cpu``: the CPU-per-call trials alone, K S K S at ``--cpu-rate`` (no search:
    pick a rate both proxies sustain, 1,000/s by default); ``--repeats`` pairs."""
    log(f"== CPU per call only: {args.cpu_rate} calls/s, {args.repeats} x (K S) ==")
    cpu = fixed_rate_cpu(bench, args.cpu_rate, args.repeats)
    if not args.keep_logs:
        shutil.rmtree(root / "sbc-snapshot", ignore_errors=True)
        with contextlib.suppress(OSError):
            root.rmdir()
    sbc, kamailio = cpu["sbc"], cpu["kamailio"]
    return {
        "only": "cpu",
        "sbc_cpu_us_per_call": sbc,
        "kamailio_cpu_us_per_call": kamailio,
        # Kamailio's CPU per call over the SBC's: the ratio, seen from the CPU side.
        "cpu_ratio_to_kamailio": round(kamailio / sbc, 3) if sbc and kamailio else None,
        "cpu_rate": args.cpu_rate,
        "seconds": args.seconds,
        "proxy_cpus": args.proxy_cpus,
        "sipp_cpus": args.sipp_cpus,
        "workers": args.workers,
        "date": started_at,
        "git": git,
        "loadavg_at_start": load_at_start,
        "elapsed_s": round(bench.elapsed()),
        "trials": [asdict(t) for t in bench.trials],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="length of each trial's load")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes of each proxy (Kamailio -n; the SBC's `workers`)",
    )
    p.add_argument(
        "--uac-sources",
        type=int,
        default=None,
        help="sipp UACs sharing each trial's load, each from its own port (default: 1, or 2 "
        "per worker with --workers > 1: SO_REUSEPORT gives all of one source to one worker)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="coarser search (20%%), one CPU trial each, SBC-only latency",
    )
    p.add_argument("--sipp-cpus", default="0", help="CPUs of the sipp pair (taskset syntax)")
    p.add_argument("--proxy-cpus", default="1", help="CPUs of each proxy, all its processes")
    p.add_argument("--start-rate", type=int, default=1000, help="first rate the search tries")
    p.add_argument("--max-rate", type=int, default=20000, help="the search stops there")
    p.add_argument(
        "--precision",
        type=float,
        default=0.10,
        help="bisect until the fail/pass gap is under this share of the rate",
    )
    p.add_argument(
        "--cpu-rate",
        type=int,
        default=1000,
        help="rate of the CPU-per-call trials (halved SBC maximum if lower)",
    )
    p.add_argument("--memory-rate", type=int, default=500, help="call rate of the memory trial")
    p.add_argument("--hold-ms", type=int, default=10000, help="call hold time, memory trial")
    p.add_argument(
        "--only",
        choices=("memory", "cpu"),
        default=None,
        help="run one part alone: `memory` is the memory trial at --memory-rate (about 1 min); "
        "`cpu` the CPU-per-call trials at --cpu-rate, K S K S (--repeats pairs)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="K S pairs of CPU-per-call trials (default 2, 1 with --quick)",
    )
    p.add_argument("--workdir", default=None, help="where trial logs go (default: a temp dir)")
    p.add_argument("--keep-logs", action="store_true", help="keep each trial's logs")
    p.add_argument(
        "--pure",
        action="store_true",
        help="run the SBC as plain Python (default: its SIP core compiled with mypyc, as the "
        "production wheel ships it; see docs/performance.md)",
    )
    args = p.parse_args(argv)
    if args.uac_sources is None:
        args.uac_sources = 1 if args.workers == 1 else 2 * args.workers
    if args.quick:
        args.precision = max(args.precision, 0.2)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except PartFailed as exc:
        log(f"a part of the benchmark failed:\n{exc}")
        return 1
    if args.only == "cpu":
        log(
            f"done in {result['elapsed_s']}s: sbc {result['sbc_cpu_us_per_call']} us/call, "
            f"kamailio {result['kamailio_cpu_us_per_call']} us/call "
            f"(ratio {result['cpu_ratio_to_kamailio']})"
        )
    elif args.only == "memory":
        mem = result["memory"]
        log(
            f"done in {result['elapsed_s']}s: {result['sbc_rss_mb_per_1k_calls']} MB per 1k "
            f"calls, {mem['rss_bytes_per_transaction']} B per waiting transaction"
        )
    else:
        log(
            f"done in {result['elapsed_s']}s: sbc {result['sbc_cps']}/s, "
            f"kamailio {result['kamailio_cps']}/s, ceiling {result['ceiling_cps']}/s"
        )
    result["sbc_build"] = args.sbc_build  # "mypyc" or "pure": what the SBC ran as
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
