"""In-process benchmark of the sans-IO proxy core: whole calls, no sockets, no event loop.

`uv run python bench/proxy_core_bench.py --calls 20000 [--profile]` plays sipp's built-in uac and
uas scenarios (INVITE, 100, 180, 200, ACK, BYE, 200) through `Proxy.receive` and prints the core's
CPU time per call. It isolates the core from the transport and from the load generator.
`--driver` plays the same calls through the SBC process's driver (`teams_sbc.app.Sbc`) on a
uvloop loop, sockets left out, to count what the driver adds to the core.

The core runs compiled with mypyc by default (tools/native_build.py builds or reuses the compiled
tree and the script runs itself again with it on PYTHONPATH); `--pure` runs it as plain Python.
The building of the test messages (plain Python either way) is counted in both.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

from teams_sbc.config import parse_config
from teams_sbc.metrics import Metrics
from teams_sbc.sip.peer import Peer
from teams_sbc.sip.proxy import Proxy

UAC = Peer("udp", "127.0.0.1", 5061)
UAS = Peer("udp", "127.0.0.1", 5080)

CONFIG = {
    "listeners": [{"name": "a", "transport": "udp", "host": "127.0.0.1", "port": 5060}],
    "routes": [{"name": "uas", "next_hop": "sip:127.0.0.1:5080"}],
}

SDP = (
    "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def invite(n: int) -> bytes:
    return (
        f"INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-{n}-0\r\n"
        f"From: sipp <sip:sipp@127.0.0.1:5061>;tag=1SIPpTag00{n}\r\n"
        f"To: service <sip:service@127.0.0.1:5060>\r\n"
        f"Call-ID: {n}-1@127.0.0.1\r\n"
        f"CSeq: 1 INVITE\r\n"
        f"Contact: sip:sipp@127.0.0.1:5061\r\n"
        f"Max-Forwards: 70\r\n"
        f"Subject: Performance Test\r\n"
        f"Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n{SDP}"
    ).encode()


def in_dialog(method: str, n: int, cseq: int, branch: str) -> bytes:
    return (
        f"{method} sip:service@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-{n}-{branch}\r\n"
        f"From: sipp <sip:sipp@127.0.0.1:5061>;tag=1SIPpTag00{n}\r\n"
        f"To: service <sip:service@127.0.0.1:5060>;tag=2SIPpTag01{n}\r\n"
        f"Call-ID: {n}-1@127.0.0.1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Contact: sip:sipp@127.0.0.1:5061\r\n"
        f"Max-Forwards: 70\r\n"
        f"Subject: Performance Test\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def answer(request: bytes, status: str, tag: bool, body: str = "") -> bytes:
    """What sipp's uas sends back: the request's Vias joined on one line, To with a tag."""
    lines = request.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")[1:]
    vias = [line[5:] for line in lines if line.startswith("Via: ")]
    keep = {
        k: v
        for k, v in (line.split(": ", 1) for line in lines)
        if k in ("From", "To", "Call-ID", "CSeq")
    }
    to = keep["To"] + (";tag=2SIPpTag01x" if tag and ";tag=" not in keep["To"] else "")
    rr = "".join(line + "\r\n" for line in lines if line.startswith("Record-Route: "))
    extra = "Content-Type: application/sdp\r\n" if body else ""
    return (
        f"SIP/2.0 {status}\r\nVia: {', '.join(vias)}\r\nFrom: {keep['From']}\r\nTo: {to}\r\n"
        f"Call-ID: {keep['Call-ID']}\r\nCSeq: {keep['CSeq']}\r\n{rr}"
        "Contact: <sip:127.0.0.1:5080;transport=UDP>\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def run(calls: int) -> float:
    return _run(calls)[0]


def run_proxy(calls: int) -> Proxy:
    return _run(calls, fresh_peers=True)[1]


def _fresh(peer: Peer) -> Peer:
    """A new but equal Peer, as the UDP transport makes one (address string too) per datagram."""
    return Peer(peer.transport, peer.host.encode().decode(), peer.port)


def _same(peer: Peer) -> Peer:
    return peer


def _run(calls: int, fresh_peers: bool = False) -> tuple[float, Proxy]:
    """``fresh_peers``: each message comes from its own Peer object, as from the transport
    (what the memory figure should see); the CPU figure keeps two shared ones."""
    peer = _fresh if fresh_peers else _same
    proxy = Proxy(parse_config(CONFIG), Metrics())
    now = 0.0
    start = time.process_time()
    for n in range(calls):
        now += 0.0005
        proxy.receive(invite(n), peer(UAC), "a", now)
        fwd = next(o.data for o in proxy.outbox if o.peer == UAS)
        proxy.outbox.clear()
        proxy.receive(answer(fwd, "100 Trying", False), peer(UAS), "a", now)
        proxy.receive(answer(fwd, "180 Ringing", True), peer(UAS), "a", now)
        proxy.receive(answer(fwd, "200 OK", True, SDP), peer(UAS), "a", now)
        proxy.outbox.clear()
        proxy.receive(in_dialog("ACK", n, 1, "5"), peer(UAC), "a", now)
        proxy.outbox.clear()
        proxy.receive(in_dialog("BYE", n, 2, "6"), peer(UAC), "a", now)
        fwd_bye = next(o.data for o in proxy.outbox if o.peer == UAS)
        proxy.outbox.clear()
        proxy.receive(answer(fwd_bye, "200 OK", False), peer(UAS), "a", now)
        proxy.outbox.clear()
        proxy.advance(now)
    return (time.process_time() - start) / calls, proxy


def run_driver(calls: int) -> float:
    """The same calls through the SBC process's driver (``Sbc._on_message``: the core, then
    flushing its outbox and arming the loop timer) on a uvloop loop; sends are discarded."""
    import asyncio

    import uvloop

    from teams_sbc.app import Sbc
    from teams_sbc.sip.peer import Outgoing

    async def play() -> float:
        sbc = Sbc(parse_config(CONFIG))
        sbc._loop = asyncio.get_running_loop()
        sent: list[Outgoing] = []
        sbc.transports.send = sent.append  # type: ignore[method-assign,assignment]
        deliver = sbc._on_message
        start = time.process_time()
        for n in range(calls):
            deliver(invite(n), UAC, "a")
            fwd = next(o.data for o in sent if o.peer == UAS)
            sent.clear()
            deliver(answer(fwd, "100 Trying", False), UAS, "a")
            deliver(answer(fwd, "180 Ringing", True), UAS, "a")
            deliver(answer(fwd, "200 OK", True, SDP), UAS, "a")
            sent.clear()
            deliver(in_dialog("ACK", n, 1, "5"), UAC, "a")
            sent.clear()
            deliver(in_dialog("BYE", n, 2, "6"), UAC, "a")
            fwd_bye = next(o.data for o in sent if o.peer == UAS)
            sent.clear()
            deliver(answer(fwd_bye, "200 OK", False), UAS, "a")
            sent.clear()
            if n % 50 == 0:
                await asyncio.sleep(0)  # let due loop timers run, as they would between reads
        return (time.process_time() - start) / calls

    return uvloop.run(play())


def _build() -> str:
    """Which build of the core runs here: re-run this script on the compiled tree unless
    ``--pure`` (or already re-run); then "mypyc" or "pure", checked against what was imported."""
    import teams_sbc.sip.proxy as proxy_module

    compiled = Path(proxy_module.__file__ or "").suffix in {".so", ".pyd"}
    if "--pure" not in sys.argv and not os.environ.get("TEAMS_SBC_BENCH_REEXEC"):
        repo = Path(__file__).resolve().parent.parent
        sys.path.insert(0, str(repo))
        from tools import native_build

        folder = str(native_build.build())
        path = os.pathsep.join(p for p in (folder, os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": path, "TEAMS_SBC_BENCH_REEXEC": "1"}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if "--pure" in sys.argv and compiled:
        raise SystemExit("--pure, yet the core imported is compiled: check PYTHONPATH")
    if "--pure" not in sys.argv and not compiled:
        raise SystemExit("the compiled core did not load: see tools/native_build.py")
    return "mypyc" if compiled else "pure"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--memory", action="store_true", help="bytes held per call afterwards")
    parser.add_argument(
        "--driver", action="store_true", help="through the process's driver on uvloop (app.Sbc)"
    )
    parser.add_argument("--pure", action="store_true", help="the core as plain Python")
    args = parser.parse_args()
    build = _build()
    print(f"core: {build}")
    if args.driver:
        per_call = run_driver(args.calls)
        print(f"core and driver CPU per call: {per_call * 1e6:.1f} us (message building included)")
        return
    if args.memory:
        import gc
        import tracemalloc

        tracemalloc.start()
        proxy = run_proxy(args.calls)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
        print(f"{len(proxy.txns)} transactions alive; {held / args.calls:.0f} bytes held per call")
        # Who holds it: the lines that allocated what is still alive (every call's transactions
        # are still waiting on timers J, K, L and M when the run ends).
        for stat in tracemalloc.take_snapshot().statistics("lineno")[:12]:
            frame = stat.traceback[0]
            print(
                f"  {stat.size / args.calls:6.0f} B {stat.count / args.calls:5.2f} objects"
                f"  {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
            )
        return
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        per_call = run(args.calls)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    else:
        per_call = run(args.calls)
    print(f"core CPU per call: {per_call * 1e6:.1f} us (message building included)")


if __name__ == "__main__":
    main()
