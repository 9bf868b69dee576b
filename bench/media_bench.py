"""Media benchmark: calls per second and concurrent calls with their media anchored by rtpengine.

    uv run python bench/media_bench.py --seconds 5

Two peers in one run, alternating trial by trial: ``sip``, ``teams-sbc run`` proxying the same
calls with no media section (the SDP passes untouched), and ``media``, the same SBC with a
``media`` section and its rtpengine (Debian 10.5, userspace), so every call costs an ``offer``,
an ``answer`` and a ``delete``. The carrier is ``uac_media_bench.xml`` (an RTP/AVP offer, the
route set kept, so the BYE carries the instance's token), Teams is ``uas_teams_bench.xml``
(answers RTP/SAVP with an SDES key), both in ``tests/testbed/scenarios/``. No RTP flows: the
figures are the signalling and anchoring cost, not the media forwarding.

1. The highest call rate with under 0.5% failed calls (short calls, ramp by doubling then
   bisect, every trial ``--seconds`` long on fresh processes), for both peers.
2. Concurrent anchored calls: long calls (``--hold-ms``) at ``--held-rate`` against an rtpengine
   with ``--ports`` media ports; rtpengine's own session count at the peak, the calls refused
   with 503 once the ports ran out (4 ports a call), and the SBC's memory per 1,000 held calls.

The SBC and rtpengine run on ``--proxy-cpus`` (core 1), sipp on ``--sipp-cpus`` (core 0). The
last output line is one JSON object with every figure and the trials.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _path in (str(REPO), str(REPO / "bench")):  # the test bed's parts, and sip_proxy's helpers
    if _path not in sys.path:
        sys.path.insert(0, _path)

from tests.testbed.process import (  # noqa: E402
    ManagedProcess,
    PartFailed,
    free_port,
    require_binary,
)
from tests.testbed.rtpengine import Rtpengine  # noqa: E402
from tests.testbed.sbc import SbcProcess  # noqa: E402
from tests.testbed.sipp import SippUas  # noqa: E402

from sip_proxy import (  # noqa: E402
    FAIL_LIMIT,
    RFC_TIMERS,
    LoadResult,
    Search,
    affinity,
    cpu_set,
    git_state,
    group_sample,
    load_result,
    log,
    snapshot_sbc,
    stat_rows,
    sustained,
)

PEERS = ("sip", "media")
SCENARIOS = REPO / "tests" / "testbed" / "scenarios"
TEAMS_SCENARIO = SCENARIOS / "uas_teams_bench.xml"
CARRIER_SCENARIO = SCENARIOS / "uac_media_bench.xml"


def run_load(
    target: str,
    workdir: Path,
    *,
    name: str,
    rate: int,
    calls: int,
    hold_ms: int = 0,
    on_tick: Callable[[], None] | None = None,
) -> LoadResult:
    """The carrier's calls at ``rate`` until ``calls`` are done (sip_proxy's run_load with
    our scenario), watched every 0.2 s; stopped as soon as too many failed."""
    stat = workdir / f"{name}.stat.csv"
    args = [
        require_binary("sipp"), "-sf", str(CARRIER_SCENARIO), target,
        "-i", "127.0.0.1", "-p", str(free_port(socket.SOCK_DGRAM)), "-t", "u1",
        "-m", str(calls), "-r", str(rate), "-d", str(hold_ms),
        "-recv_timeout", "10s", "-nostdin",
        "-trace_stat", "-stf", str(stat), "-fd", "1",
        "-trace_err", "-error_file", str(workdir / f"{name}.errors.log"),
    ]  # fmt: skip
    proc = ManagedProcess(name, args, workdir, cwd=workdir)
    started = time.monotonic()
    hard_limit = calls / rate + hold_ms / 1000 + 40
    stopped = ""
    try:
        while proc.popen.poll() is None:
            time.sleep(0.2)
            if on_tick is not None:
                on_tick()
            rows = stat_rows(stat)
            failed = int(rows[-1]["FailedCall(C)"]) if rows else 0
            if on_tick is None and failed >= calls * FAIL_LIMIT:
                stopped = f"{failed} calls failed already"
            elif time.monotonic() - started > hard_limit:
                stopped = "hung"
            if stopped:
                proc.signal(signal.SIGKILL)
                break
    finally:
        code = proc.stop()
    return load_result(stat, code, calls, stopped, proc)


@dataclass
class Bed:
    uas: SippUas
    sbc: SbcProcess
    rtpengine: Rtpengine | None

    def stop(self) -> None:
        self.sbc.stop()
        if self.rtpengine is not None:
            self.rtpengine.stop()
        self.uas.stop()


def free_range(count: int) -> int:
    """A free range of ``count`` UDP ports below the ephemeral range, even first port."""
    for base in range(12000, 30000 - count, 1000):
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise PartFailed(f"no {count} free UDP ports below 30000")


class MediaRtpengine(Rtpengine):
    """The test bed's rtpengine on a range chosen here (large ranges rarely fit by chance)."""

    def __init__(self, log_dir: Path, ports: int) -> None:
        super().__init__(log_dir, port_count=ports)

    def start(self, timeout: float = 20.0) -> Rtpengine:
        self.ng_port = free_port(socket.SOCK_DGRAM, self.host)
        self.port_min = free_range(self.port_count)
        self.port_max = self.port_min + self.port_count - 1
        return self._run(timeout)


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.sipp_cpus = cpu_set(args.sipp_cpus)
        self.proxy_cpus = cpu_set(args.proxy_cpus)
        self.trials: list[dict[str, Any]] = []
        self.started = time.monotonic()
        key = base64.b64encode(secrets.token_bytes(30)).decode().rstrip("=")
        self.teams_args = ["-key", "teams_port", "40000", "-key", "teams_key", key]

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def bed(self, workdir: Path, peer: str, ports: int) -> Bed:
        with affinity(self.sipp_cpus):
            uas = SippUas(
                workdir, name="teams", scenario=TEAMS_SCENARIO, extra_args=self.teams_args
            ).start()
        engine: Rtpengine | None = None
        config: dict[str, Any] = {
            "logging": {"level": "WARNING", "format": "json"},
            "drain_seconds": 0,
            "routes": [{"name": "teams", "next_hop": f"sip:{uas.address}"}],
        }
        with affinity(self.proxy_cpus):
            if peer == "media":
                engine = MediaRtpengine(workdir, ports).start()
                config["media"] = {
                    "rtpengines": [{"address": engine.ng_address}],
                    "teams_listeners": ["a"],
                }
            sbc = SbcProcess(
                workdir,
                listeners=[{"name": "a", "transport": "udp", "host": "127.0.0.1"}],
                timers=RFC_TIMERS,
                config=config,
            ).start()
        return Bed(uas, sbc, engine)

    def trial(self, purpose: str, peer: str, rate: int) -> bool:
        n = len(self.trials) + 1
        workdir = self.root / f"{n:03d}-{purpose}-{peer}-{rate}"
        bed = self.bed(workdir, peer, self.args.ports)
        try:
            assert bed.sbc.proc is not None
            before = group_sample(bed.sbc.proc.pid).cpu_s
            with affinity(self.sipp_cpus):
                result = run_load(
                    bed.sbc.address("a"), workdir, name="carrier", rate=rate,
                    calls=int(rate * self.args.seconds),
                )  # fmt: skip
            used = group_sample(bed.sbc.proc.pid).cpu_s - before
            engine_cpu = None
            sessions_left = None
            if bed.rtpengine is not None:
                assert bed.rtpengine.proc is not None
                engine_cpu = group_sample(bed.rtpengine.proc.pid).cpu_s
                sessions_left = len(bed.rtpengine.client().list_calls())
        finally:
            bed.stop()
        passed = sustained(result, rate)
        row = {
            "n": n,
            "purpose": purpose,
            "peer": peer,
            "rate": rate,
            "planned": result.planned,
            "successful": result.successful,
            "failed": result.failed,
            "achieved_cps": None if result.achieved_cps is None else round(result.achieved_cps),
            "passed": passed,
            "sbc_cpu_us_per_call": round(used / result.successful * 1e6, 1)
            if result.successful
            else None,
            "rtpengine_cpu_s": None if engine_cpu is None else round(engine_cpu, 2),
            "rtpengine_sessions_left": sessions_left,
            "note": result.stopped,
        }
        self.trials.append(row)
        log(
            f"[{self.elapsed():5.0f}s] #{n:<3} {purpose:<7} {peer:<6} {rate:>5}/s: "
            f"{result.successful}/{result.planned} ok, {result.failed} failed, "
            f"SBC {row['sbc_cpu_us_per_call']} us/call"
            + (f", rtpengine sessions left {sessions_left}" if sessions_left is not None else "")
            + (" -> pass" if passed else " -> FAIL")
            + (f" ({result.stopped})" if result.stopped else "")
        )
        if passed and not self.args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        return passed

    def search(self) -> dict[str, int]:
        a = self.args
        searches = [Search(p, a.start_rate, a.max_rate, a.precision) for p in PEERS]
        while not all(s.done() for s in searches):
            for s in searches:
                if not s.done():
                    rate = s.next_rate()
                    s.record(rate, self.trial("search", s.peer, rate))
        return {s.peer: s.lo for s in searches}

    def held(self) -> dict[str, Any]:
        """Long calls until rtpengine's ports run out: how many it anchors at once."""
        a = self.args
        workdir = self.root / "held"
        bed = self.bed(workdir, "media", a.ports)
        assert bed.sbc.proc is not None and bed.rtpengine is not None
        capacity = a.ports // 4
        calls = int(capacity * 1.2)
        peak_sessions = 0
        rss_idle = group_sample(bed.sbc.proc.pid).rss_bytes
        rss_peak = rss_idle
        client = bed.rtpengine.client(timeout=2.0)

        def tick() -> None:
            nonlocal peak_sessions, rss_peak
            assert bed.sbc.proc is not None
            rss_peak = max(rss_peak, group_sample(bed.sbc.proc.pid).rss_bytes)
            stats = client.request("statistics").get("statistics", {})
            current = stats.get("currentstatistics", {}) if isinstance(stats, dict) else {}
            peak_sessions = max(peak_sessions, int(current.get("sessionsown", 0)))

        try:
            with affinity(self.sipp_cpus):
                result = run_load(
                    bed.sbc.address("a"), workdir, name="carrier-held", rate=a.held_rate,
                    calls=calls, hold_ms=a.hold_ms, on_tick=tick,
                )  # fmt: skip
            scrape = bed.sbc.metrics()
            refused = scrape.value("sbc_media_calls_rejected_total", status="503")
            left = len(bed.rtpengine.client().list_calls())
        finally:
            bed.stop()
        rows = stat_rows(workdir / "carrier-held.stat.csv")
        concurrent = max((int(r["CurrentCall"]) for r in rows), default=0)
        grown = (rss_peak - rss_idle) / 2**20
        info = {
            "ports": a.ports,
            "capacity_at_4_ports_a_call": capacity,
            "calls_offered": calls,
            "rate": a.held_rate,
            "hold_ms": a.hold_ms,
            "rtpengine_peak_sessions": peak_sessions,
            "successful": result.successful,
            "refused_503": int(refused),
            "sipp_peak_concurrent": concurrent,
            "rtpengine_sessions_left": left,
            "sbc_rss_idle_mb": round(rss_idle / 2**20, 1),
            "sbc_rss_peak_mb": round(rss_peak / 2**20, 1),
            "sbc_rss_mb_per_1k_held_calls": round(grown / peak_sessions * 1000, 2)
            if peak_sessions
            else None,
        }
        log(
            f"[{self.elapsed():5.0f}s] held: {peak_sessions} sessions at once in rtpengine "
            f"({a.ports} ports), {int(refused)} calls refused 503, "
            f"{result.successful}/{calls} completed, SBC RSS {info['sbc_rss_idle_mb']} -> "
            f"{info['sbc_rss_peak_mb']} MB"
        )
        return info


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.workdir or tempfile.mkdtemp(prefix="media-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, root)
    git = git_state()
    snapshot_sbc(root / "sbc-snapshot")
    log(
        f"media benchmark: {args.seconds:g}s trials, sipp on CPU {args.sipp_cpus}, SBC and "
        f"rtpengine on CPU {args.proxy_cpus}; logs in {root}; SBC code: {git or 'unknown'}"
    )
    log("== search: highest rate with < 0.5% failed calls (sip and media alternate) ==")
    best = bench.search()
    log(f"== concurrent anchored calls: {args.ports} rtpengine ports, {args.hold_ms} ms calls ==")
    held = bench.held()
    return {
        "sip_cps": best["sip"],
        "media_cps": best["media"],
        "media_to_sip_ratio": round(best["media"] / best["sip"], 3) if best["sip"] else None,
        "held": held,
        "seconds": args.seconds,
        "sipp_cpus": args.sipp_cpus,
        "proxy_cpus": args.proxy_cpus,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git,
        "elapsed_s": round(bench.elapsed()),
        "trials": bench.trials,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="length of each search trial")
    p.add_argument("--sipp-cpus", default="0", help="CPUs of sipp (taskset syntax)")
    p.add_argument("--proxy-cpus", default="1", help="CPUs of the SBC and rtpengine")
    p.add_argument("--start-rate", type=int, default=200, help="first rate the search tries")
    p.add_argument("--max-rate", type=int, default=5000, help="the search stops there")
    p.add_argument("--precision", type=float, default=0.15, help="bisection stops at this share")
    p.add_argument("--ports", type=int, default=2000, help="rtpengine's media port range")
    p.add_argument("--held-rate", type=int, default=100, help="call rate of the held-calls run")
    p.add_argument("--hold-ms", type=int, default=15000, help="length of each held call")
    p.add_argument("--workdir", default=None, help="where trial logs go (default: a temp dir)")
    p.add_argument("--keep-logs", action="store_true", help="keep every trial's logs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except PartFailed as exc:
        log(f"a part of the benchmark failed:\n{exc}")
        return 1
    log(
        f"done in {result['elapsed_s']}s: sip {result['sip_cps']}/s, media "
        f"{result['media_cps']}/s (ratio {result['media_to_sip_ratio']}), "
        f"{result['held']['rtpengine_peak_sessions']} anchored calls at once"
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
