"""How long the SBC waits for rtpengine: ping, offer, answer and delete round trips through the
product's client (flags and SDP edits included), one call at a time and many at once.

    uv run python -m tests.media.ng_round_trip [--calls 300] [--concurrent 50]

Prints one JSON object; docs/media.md quotes its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from teams_sbc.media.legs import Leg, MediaPolicy
from teams_sbc.media.relays import MediaRelay
from teams_sbc.media.srtp import SdesKey
from tests.media.peers import carrier_sdp, pool_for, run, started, teams_sdp
from tests.testbed.rtpengine import Rtpengine

POLICY = MediaPolicy()


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1] * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


async def one_call(relay: MediaRelay, n: int, times: dict[str, list[float]]) -> None:
    call_id, key = f"rtt-{n}", SdesKey.generate()
    t0 = time.perf_counter()
    await relay.offer(
        call_id=call_id,
        from_tag="c",
        sdp=carrier_sdp(20000 + 2 * (n % 1000)),
        towards=Leg.TEAMS,
        policy=POLICY,
    )
    t1 = time.perf_counter()
    await relay.answer(
        call_id=call_id,
        from_tag="c",
        to_tag="t",
        sdp=teams_sdp(30000, [key]),
        towards=Leg.CARRIER,
        policy=POLICY,
    )
    t2 = time.perf_counter()
    await relay.delete(call_id=call_id, from_tag="c", to_tag="t")
    t3 = time.perf_counter()
    times["offer"].append(t1 - t0)
    times["answer"].append(t2 - t1)
    times["delete"].append(t3 - t2)


async def measure(engine: Rtpengine, calls: int, concurrent: int) -> dict[str, object]:
    async with started(pool_for(engine)) as pool:
        relay = pool.relays[0]
        pings = [await relay.client.ping() for _ in range(calls)]
        times: dict[str, list[float]] = {"offer": [], "answer": [], "delete": []}
        for n in range(calls):
            await one_call(relay, n, times)
        burst: dict[str, list[float]] = {"offer": [], "answer": [], "delete": []}
        began = time.perf_counter()
        await asyncio.gather(*(one_call(relay, calls + n, burst) for n in range(concurrent)))
        burst_seconds = time.perf_counter() - began
        assert await relay.client.list_calls() == []
        return {
            "rtpengine": "Debian rtpengine-daemon 10.5, userspace, loopback",
            "ping": summary(pings),
            **{f"sequential_{k}": summary(v) for k, v in times.items()},
            "concurrent_calls": concurrent,
            "concurrent_offer": summary(burst["offer"]),
            "concurrent_call_setups_per_s": round(concurrent / burst_seconds),
            "retransmissions": relay.client.core.counters.retransmitted,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--concurrent", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as logs:
        engine = Rtpengine(Path(logs), port_count=4 * args.concurrent + 20).start()
        try:
            print(json.dumps(run(measure(engine, args.calls, args.concurrent))))
        finally:
            engine.stop()


if __name__ == "__main__":
    main()
