"""How the SBC scales from one core to two: one worker on one core against two workers on two
cores, in the same run.

    uv run python bench/worker_scaling.py --seconds 3

Three setups, their trials alternating (this machine's speed swings within minutes):

- ``1w``: ``teams-sbc run`` with ``workers: 1`` on CPU 1, the sipp pair on CPU 0 (the split
  bench/sip_proxy.py uses);
- ``2w``: ``workers: 2`` (a supervisor and two workers) on CPUs 0-1, and the sipp pair on CPUs
  0-1 too: this machine has two cores, so the load generator shares them with the SBC;
- ``ceiling``: sipp -> sipp with no proxy, sipp on CPUs 0-1: the generator's own limit in the
  ``2w`` setup (when ``2w`` reaches it, its figure is a lower bound).

Every setup gets the same load: ``--uac-sources`` sipp UACs at once, each from its own port with
an equal share of the rate. SO_REUSEPORT gives all of one source's traffic to one worker, so for
``2w`` the ports are picked (by asking the SBC, see ``balanced_sources``) so that each worker
gets the same number of sources. Each setup's highest rate with under 0.5% failed calls is found
as in bench/sip_proxy.py (double, then bisect), then its CPU per call at ``--cpu-rate``, summed
over all its processes. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent):  # bench/sip_proxy.py, and the test bed in tests/testbed
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from tests.testbed.process import PartFailed  # noqa: E402

from sip_proxy import (  # noqa: E402
    Bench,
    Search,
    git_state,
    log,
    snapshot_sbc,
)
from sip_proxy import parse_args as proxy_args  # noqa: E402

#: label -> (SBC workers, SBC CPUs, sipp CPUs)
SETUPS = {"1w": (1, "1", "0"), "2w": (2, "0-1", "0-1")}


def bench_for(args: argparse.Namespace, label: str, root: Path) -> Bench:
    workers, proxy_cpus, sipp_cpus = SETUPS[label]
    argv = [
        "--seconds", str(args.seconds), "--workers", str(workers),
        "--proxy-cpus", proxy_cpus, "--sipp-cpus", sipp_cpus,
        "--uac-sources", str(args.uac_sources), "--precision", str(args.precision),
        *(["--keep-logs"] if args.keep_logs else []),
    ]  # fmt: skip
    return Bench(proxy_args(argv), root / label)


def search(benches: dict[str, Bench], args: argparse.Namespace) -> dict[str, int]:
    """Interleaved searches of ``ceiling`` (on the 2w CPUs), ``1w`` and ``2w``."""
    plan = [("ceiling", benches["2w"], "ceiling"), ("1w", benches["1w"], "sbc"),
            ("2w", benches["2w"], "sbc")]  # fmt: skip
    searches = {label: Search(label, args.start_rate, args.max_rate, args.precision)
                for label, _, _ in plan}  # fmt: skip
    ceiling = searches["ceiling"]
    while not all(s.done() for s in searches.values()):
        for label, bench, peer in plan:
            s = searches[label]
            if s.done():
                continue
            rate = s.next_rate()
            if label == "2w" and ceiling.hi and rate >= ceiling.hi:
                log(f"  2w at {rate}/s: not run, sipp alone failed at {ceiling.hi}/s")
                s.record(rate, False)
                continue
            s.record(rate, bench.trial(label, peer, rate).passed)
    return {label: s.lo for label, s in searches.items()}


def cpu_per_call(benches: dict[str, Bench], rate: int, repeats: int) -> dict[str, float | None]:
    per: dict[str, list[float]] = {"1w": [], "2w": []}
    for _ in range(repeats):
        for label, figures in per.items():
            t = benches[label].trial(f"cpu-{label}", "sbc", rate)
            if t.passed and t.proxy_cpu_us_per_call is not None:
                figures.append(t.proxy_cpu_us_per_call)
    return {k: (round(sum(v) / len(v), 1) if v else None) for k, v in per.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.workdir or tempfile.mkdtemp(prefix="sbc-scaling-"))
    root.mkdir(parents=True, exist_ok=True)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    git = git_state()
    snapshot_sbc(root / "sbc-snapshot")
    benches = {label: bench_for(args, label, root) for label in SETUPS}
    log(
        f"worker scaling: {args.seconds:g}s trials, {args.uac_sources} UAC sources; 1w: SBC on "
        f"CPU 1, sipp on CPU 0; 2w: SBC and sipp on CPUs 0-1; logs in {root}; SBC code: a copy "
        f"of the tree at {git or 'unknown'}"
    )
    log("== search: highest rate with < 0.5% failed calls (setups alternate) ==")
    best = search(benches, args)
    rate = min(args.cpu_rate, max(100, best["1w"] // 2))
    log(f"== CPU per call at {rate} calls/s ==")
    cpu = cpu_per_call(benches, rate, 1 if args.quick else 2)
    if not args.keep_logs:
        shutil.rmtree(root / "sbc-snapshot", ignore_errors=True)
        with contextlib.suppress(OSError):
            for label in SETUPS:
                (root / label).rmdir()
            root.rmdir()
    one, two = best["1w"], best["2w"]
    return {
        "sbc_1_worker_1_core_cps": one,
        "sbc_2_workers_2_cores_cps": two,
        "scaling": round(two / one, 2) if one else None,
        "ceiling_2_cores_cps": best["ceiling"],
        "sbc_2_workers_at_ceiling": two >= 0.9 * best["ceiling"],
        "cpu_us_per_call_1w": cpu["1w"],
        "cpu_us_per_call_2w": cpu["2w"],
        "cpu_rate": rate,
        "uac_sources": args.uac_sources,
        "seconds": args.seconds,
        "date": started_at,
        "git": git,
        "loadavg_at_start": load_at_start,
        "elapsed_s": round(max(b.elapsed() for b in benches.values())),
        "trials": {label: [asdict(t) for t in b.trials] for label, b in benches.items()},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="length of each trial's load")
    p.add_argument("--uac-sources", type=int, default=4, help="sipp UACs sharing the load")
    p.add_argument("--quick", action="store_true", help="20%% search precision, one CPU trial")
    p.add_argument("--start-rate", type=int, default=1000)
    p.add_argument("--max-rate", type=int, default=20000)
    p.add_argument("--precision", type=float, default=0.10)
    p.add_argument("--cpu-rate", type=int, default=1000, help="rate of the CPU-per-call trials")
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.precision = max(args.precision, 0.2)
    if args.uac_sources % 2:
        p.error("--uac-sources must be even: the 2w setup gives each worker half")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except PartFailed as exc:
        log(f"a part of the benchmark failed:\n{exc}")
        return 1
    log(
        f"done in {result['elapsed_s']}s: 1 worker on 1 core {result['sbc_1_worker_1_core_cps']}"
        f"/s, 2 workers on 2 cores {result['sbc_2_workers_2_cores_cps']}/s "
        f"(x{result['scaling']}), sipp alone on 2 cores {result['ceiling_2_cores_cps']}/s"
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
