"""Several worker processes (config ``workers: 2``): the real ``teams-sbc run`` as a supervisor
and its workers, sipp on both sides.

What a user sees: calls from many source ports complete and are spread over both workers (the
supervisor's /metrics sums them and shows each worker's share); the UAS sees each worker's own
port in the Via and the shared listener in the Record-Route; an in-dialog BYE that reaches the
other worker is routed from the Record-Route all the same; a killed worker is restarted and the
calls go on; SIGTERM to the supervisor alone drains every worker and it exits 0; over TCP, each
connection is one worker's. Then the pieces without processes: the proxy core as two workers
(their Via, loop detection across them) and the merging of the workers' metrics.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from teams_sbc.config import ConfigError, load_config, parse_config
from teams_sbc.sip.peer import Peer
from teams_sbc.sip.proxy import Proxy
from teams_sbc.workers.aggregate import Aggregator
from teams_sbc.workers.seat import Seat, handshake, read_handshake
from teams_sbc.workers.supervisor import restart_delay
from teams_sbc.workers.teams import annotation_report, combine
from tests.media.sipp_bed import make_media_bed
from tests.sip.test_proxy import UAC, UAS, Bench, answer, config, invite, only
from tests.teams.test_emulator_e2e import FQDN, Edge, EdgeFactory
from tests.test_proxy_sipp import Traced, read_trace
from tests.test_sbc_process import Reply, UdpPeer, new_branch, new_call_id, request
from tests.testbed.process import free_port, wait_until
from tests.testbed.rtpengine import Rtpengine
from tests.testbed.sbc import SbcFactory, SbcProcess, teams_sbc_command
from tests.testbed.sipp import SippFactory, SippUas, Transport, UacRun
from tests.testbed.teams_emulator import EmulatorFactory

SCENARIOS = Path(__file__).parent / "testbed" / "scenarios"
WORKERS = {"workers": 2}
SIP = "sip.pstnhub.microsoft.com"


# -- helpers ---------------------------------------------------------------------------------------


def start_pair(
    sbc_factory: SbcFactory, sipp_factory: SippFactory, *, uas_args: list[str] | None = None,
    **config: object,
) -> tuple[SbcProcess, SippUas, Path]:  # fmt: skip
    """A UAS answering with ``uas_answer.xml`` (traced) and a two-worker SBC routing to it."""
    trace = sipp_factory.log_dir / "uas.messages.log"
    uas = sipp_factory.uas(
        scenario=SCENARIOS / "uas_answer.xml",
        extra_args=["-trace_msg", "-message_file", str(trace), *(uas_args or [])],
    )
    sbc = sbc_factory(
        routes=[{"name": "uas", "next_hop": f"sip:{uas.address}"}], **{**WORKERS, **config}
    )
    return sbc, uas, trace


def callers(
    sbc: SbcProcess,
    sipp: SippFactory,
    *,
    count: int,
    calls: int,
    transport: Transport = "un",
    listener: str = "udp",
) -> list[UacRun]:
    """``count`` sipp UACs at once, each placing ``calls`` calls (caller hangs up). With ``un``
    or ``tn`` each call also has a socket of its own, so the calls come from many ports."""
    runs: list[UacRun] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            run = sipp.uac(
                sbc.address(listener),
                calls=calls,
                rate=20,
                transport=transport,
                scenario=SCENARIOS / "uac_caller_hangs_up.xml",
                # sipp refuses a socket per call unless its socket limit fits under ulimit -n
                extra_args=["-max_socket", "200"] if transport in ("un", "tn") else [],
                timeout=60,
            )
        except BaseException as exc:  # reported by the test's thread below
            with lock:
                errors.append(exc)
            return
        with lock:
            runs.append(run)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    if errors:
        raise errors[0]
    assert len(runs) == count, "a UAC run did not finish"
    for run in runs:
        assert (run.stats.successful, run.stats.failed) == (calls, 0), run.error_path
    return runs


def per_worker(sbc: SbcProcess, method: str) -> dict[str, float]:
    """``sbc_worker_sip_requests_total`` for ``method``, by worker."""
    return {
        s.labels["worker"]: s.value
        for s in sbc.metrics().samples
        if s.name == "sbc_worker_sip_requests_total" and s.labels.get("method") == method
    }


def via_ports(sbc: SbcProcess) -> dict[int, int]:
    """Each worker's own UDP port for the ``udp`` listener, as the worker logged it."""
    ports: dict[int, int] = {}
    for record in sbc.log_records():
        if record.get("msg") == "sbc started" and "worker" in record:
            ports[int(record["worker"])] = int(record["via_ports"]["udp"])
    return ports


def top_via_port(message: Traced) -> int:
    via = message.headers("Via")[0].split(",")[0]
    return int(via.split()[1].split(";")[0].rsplit(":", 1)[1])


# -- calls over both workers -----------------------------------------------------------------------


def test_calls_from_many_source_ports_are_spread_over_both_workers(
    sbc_factory: SbcFactory, sipp_factory: SippFactory
) -> None:
    sbc, _uas, trace = start_pair(sbc_factory, sipp_factory)
    callers(sbc, sipp_factory, count=3, calls=10)

    scrape = sbc.metrics()
    assert scrape.value("sbc_sip_requests_total", method="INVITE") == 30
    assert scrape.value("sbc_sip_requests_total", method="BYE") == 30
    assert scrape.value("sbc_worker_up") == 2
    invites = per_worker(sbc, "INVITE")
    assert set(invites) == {"0", "1"} and sum(invites.values()) == 30, invites
    assert min(invites.values()) > 0, f"one worker took every call: {invites}"

    # On the wire at the UAS: each worker's own port in the Via (responses come back to it),
    # the shared listener in the Record-Route (in-dialog requests may reach any worker).
    ports = via_ports(sbc)
    assert len(set(ports.values()) | {sbc.port("udp")}) == 3, ports
    received = [t for t in read_trace(trace) if t.direction == "received" and t.method == "INVITE"]
    assert len(received) == 30
    assert {top_via_port(t) for t in received} == set(ports.values())
    assert {t.header("Record-Route") for t in received} == {f"<sip:127.0.0.1:{sbc.port('udp')};lr>"}

    # Every log line says who wrote it: a worker (its index) or the supervisor.
    records = sbc.log_records()
    assert records and all("worker" in r or r.get("role") == "supervisor" for r in records)
    assert {r["worker"] for r in records if r.get("msg") == "sbc started" and "role" not in r} == {
        0,
        1,
    }
    sbc.wait_idle()


def test_tcp_connections_are_spread_and_each_stays_with_its_worker(
    sbc_factory: SbcFactory, sipp_factory: SippFactory
) -> None:
    """sipp ``tn``: a TCP connection per call to the shared TCP listener (SO_REUSEPORT spreads
    the connections); the UAS is over UDP. A response comes back on the connection the request
    came in on, which its worker owns."""
    sbc, _uas, _trace = start_pair(sbc_factory, sipp_factory)
    callers(sbc, sipp_factory, count=2, calls=10, transport="tn", listener="tcp")
    invites = per_worker(sbc, "INVITE")
    assert sum(invites.values()) == 20 and min(invites.values()) > 0, invites
    wait_until(
        lambda: sbc.metrics().value("sbc_transport_connections", transport="tcp") == 0,
        10,
        "every TCP connection to be closed and counted out by its worker",
    )
    sbc.wait_idle()


# -- a dialog across workers -----------------------------------------------------------------------


def in_dialog(
    method: str, target: str, route: str, peer: UdpPeer, call_id: str, to: str, cseq: int
) -> bytes:
    return (
        f"{method} {target} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
        f"Route: {route}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@127.0.0.1>;tag=alice1\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def worker_of(sbc: SbcProcess, peer: UdpPeer, listener: str = "udp") -> str:
    """Which worker the kernel gives ``peer``'s datagrams: an OPTIONS for the SBC itself (it
    answers 200 on its own), and whose OPTIONS count went up. Other OPTIONS may arrive at the
    same time (the Teams emulator's keepalives, on any worker): a probe during which more than
    one count grew says nothing and is repeated."""
    uri = f"sip:127.0.0.1:{sbc.port(listener)}"
    seen: list[list[str]] = []
    for _ in range(5):
        before = per_worker(sbc, "OPTIONS")
        peer.send(request("OPTIONS", uri, via_host=peer.host, via_port=peer.port), sbc, listener)
        assert peer.replies()[-1].status == 200
        after = per_worker(sbc, "OPTIONS")
        grown = [w for w, n in after.items() if n > before.get(w, 0)]
        if len(grown) == 1:
            return grown[0]
        seen.append(grown)
    raise AssertionError(f"no probe grew exactly one worker's OPTIONS count: {seen}")


def test_in_dialog_bye_reaching_the_other_worker_is_routed_from_the_record_route(
    sbc_factory: SbcFactory, sipp_factory: SippFactory
) -> None:
    """The call is set up from one UDP socket (one worker, A); the BYE comes from another
    socket that the kernel gives to the other worker, B. B holds no state of the call and
    routes the BYE by the Route the caller built from the Record-Route: the UAS gets it with
    B's Via, answers, and the 200 reaches the caller."""
    sbc, uas, trace = start_pair(sbc_factory, sipp_factory)
    caller = UdpPeer()
    others: list[UdpPeer] = []
    try:
        a = worker_of(sbc, caller)
        call_id = new_call_id()
        to = f"<sip:bob@127.0.0.1:{sbc.port('udp')}>"
        caller.send(
            (
                f"INVITE sip:bob@127.0.0.1:{sbc.port('udp')} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{caller.port};branch=z9hG4bK{secrets.token_hex(8)}"
                ";rport\r\n"
                "Max-Forwards: 70\r\n"
                "From: <sip:alice@127.0.0.1>;tag=alice1\r\n"
                f"To: {to}\r\n"
                f"Call-ID: {call_id}\r\n"
                "CSeq: 1 INVITE\r\n"
                f"Contact: <sip:alice@127.0.0.1:{caller.port}>\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            sbc,
        )
        ok: Reply = caller.replies(timeout=5)[-1]
        assert ok.status == 200, ok.status_line
        record_route = ok.header("Record-Route")
        assert record_route == f"<sip:127.0.0.1:{sbc.port('udp')};lr>"
        contact = (ok.header("Contact") or "").strip("<>")
        to_tagged = ok.header("To") or ""
        caller.send(in_dialog("ACK", contact, record_route, caller, call_id, to_tagged, 1), sbc)

        # A socket whose datagrams reach the other worker.
        other = None
        for _ in range(40):
            candidate = UdpPeer()
            others.append(candidate)
            if worker_of(sbc, candidate) != a:
                other = candidate
                break
        assert other is not None, "no source port reached the second worker"
        b = "1" if a == "0" else "0"
        other.send(in_dialog("BYE", contact, record_route, other, call_id, to_tagged, 2), sbc)
        bye_answer = other.replies(timeout=5)[-1]
        assert bye_answer.status == 200 and (bye_answer.header("CSeq") or "").endswith("BYE")

        invites, byes = per_worker(sbc, "INVITE"), per_worker(sbc, "BYE")
        assert invites.get(a) == 1 and not invites.get(b), invites
        assert byes.get(b) == 1 and not byes.get(a), byes
        ports = via_ports(sbc)
        received = [t for t in read_trace(trace) if t.direction == "received"]
        (inv,) = [t for t in received if t.method == "INVITE"]
        (bye,) = [t for t in received if t.method == "BYE"]
        assert top_via_port(inv) == ports[int(a)]
        assert top_via_port(bye) == ports[int(b)]
        wait_until(lambda: uas.stats().successful == 1, 5, "the UAS to count the call done")
    finally:
        caller.close()
        for p in others:
            p.close()
    sbc.wait_idle()


# -- restart and drain --------------------------------------------------------------------------


def test_a_killed_worker_is_restarted_and_calls_go_on(
    sbc_factory: SbcFactory, sipp_factory: SippFactory
) -> None:
    sbc, _uas, _trace = start_pair(sbc_factory, sipp_factory)
    callers(sbc, sipp_factory, count=1, calls=10)
    assert sbc.metrics().value("sbc_sip_requests_total", method="INVITE") == 10
    first = sbc.worker_pids()
    assert set(first) == {0, 1}

    os.kill(first[0], signal.SIGKILL)
    wait_until(
        lambda: sbc.worker_pids().get(0) not in (None, first[0]),
        15,
        "the supervisor to start a new worker 0",
        sbc.proc,
    )
    wait_until(lambda: sbc.http("/readyz")[0] == 200, 15, "both workers ready again", sbc.proc)
    ended = [r for r in sbc.log_records() if r.get("msg") == "worker ended unasked: restarting"]
    assert len(ended) == 1 and ended[0]["worker"] == 0, ended
    assert ended[0]["exit"] == "killed by SIGKILL"
    assert sbc.worker_pids()[1] == first[1], "the other worker went on"

    scrape = sbc.metrics()
    assert scrape.value("sbc_worker_restarts_total", worker="0") == 1
    assert scrape.value("sbc_worker_restarts_total", worker="1") == 0
    # The dead worker's counts are kept: the sum does not fall (no counter reset).
    assert scrape.value("sbc_sip_requests_total", method="INVITE") == 10

    callers(sbc, sipp_factory, count=2, calls=10)
    assert sbc.metrics().value("sbc_sip_requests_total", method="INVITE") == 30
    assert min(per_worker(sbc, "INVITE").values()) > 0, "the new worker takes calls"
    sbc.wait_idle()


def test_sigterm_to_the_supervisor_drains_every_worker_then_exits_0(
    sbc_factory: SbcFactory, sipp_factory: SippFactory
) -> None:
    """Only the supervisor gets SIGTERM (as from Kubernetes): it forwards it. The UAS answers
    after 1.5 s; during the ring, /readyz says draining, a new INVITE gets 503 from whichever
    worker it reaches, the ringing call completes, and the supervisor exits 0 after both
    workers have drained."""
    sbc, _uas, _trace = start_pair(
        sbc_factory, sipp_factory, uas_args=["-d", "1500"], drain_seconds=20
    )
    result: list[UacRun] = []
    caller = threading.Thread(
        target=lambda: result.append(
            sipp_factory.uac(
                sbc.address("udp"), calls=1, scenario=SCENARIOS / "uac_caller_hangs_up.xml"
            )
        )
    )
    caller.start()
    peer = UdpPeer()
    try:
        wait_until(
            lambda: sbc.transactions().get("invite_client", 0) == 1,
            10,
            "the call's INVITE to be forwarded",
        )
        sbc.signal_main(signal.SIGTERM)
        wait_until(lambda: sbc.http("/readyz")[0] == 503, 5, "/readyz to say not ready")
        assert "draining" in sbc.http("/readyz")[1]
        uri = f"sip:bob@127.0.0.1:{sbc.port('udp')}"
        peer.send(request("INVITE", uri, via_host=peer.host, via_port=peer.port), sbc)
        assert [r.status for r in peer.replies()] == [100, 503]
        assert sbc.alive(), "the SBC must wait for the call in progress"
    finally:
        caller.join(30)
        peer.close()
    assert result and result[0].stats.successful == 1, "the call in progress did not complete"
    assert sbc.proc is not None
    assert sbc.proc.wait(30) == 0
    records = sbc.log_records()
    drained = [r for r in records if r.get("msg") == "drained" and r.get("role") != "supervisor"]
    assert sorted(r["worker"] for r in drained) == [0, 1]
    assert any(r.get("msg") == "drained" and r.get("role") == "supervisor" for r in records)
    assert not [r for r in records if r.get("msg") == "worker ended unasked: restarting"]


def test_workers_of_a_killed_supervisor_drain_and_exit_on_their_own(
    sbc_factory: SbcFactory, sipp_factory: SippFactory
) -> None:
    """SIGKILL to the supervisor (nothing forwarded): each worker sees its pipe close, drains
    and exits, so no orphan keeps the listener."""
    sbc, _uas, _trace = start_pair(sbc_factory, sipp_factory)
    pids = sbc.worker_pids()
    sbc.signal_main(signal.SIGKILL)
    wait_until(lambda: not any(alive(pid) for pid in pids.values()), 15, "the workers to exit")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", sbc.port("udp")))  # free: nobody holds it any more
    sockets = {r["http_socket"] for r in sbc.log_records() if "http_socket" in r}
    assert sockets, "the supervisor logs where the workers' sockets are"
    assert not any(Path(path).parent.exists() for path in sockets), "left behind"


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for a parent that will not wait)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_media_timeout_callback_reaches_the_worker_that_holds_the_call(
    tmp_path: Path,
    sbc_factory: SbcFactory,
    sipp_factory: SippFactory,
    rtpengine_factory: Callable[..., Rtpengine],
) -> None:
    """rtpengine calls the HTTP port back (the supervisor's): it passes the call to every
    worker, the one that set the call up sends both parties a BYE with the Reason, and
    rtpengine gets that worker's answer. As tests/test_media_calls.py, with two workers."""
    bed = make_media_bed(
        tmp_path, sbc_factory, sipp_factory, rtpengine_factory, "uas_teams_early_answer.xml",
        rtpengine_args=["--timeout=3"], sbc_config=WORKERS,
    )  # fmt: skip
    uac = bed.call("uac_media_timeout.xml", echo=False)
    invite = bed.teams_received("INVITE")
    bye = bed.teams_received("BYE")
    assert bye.header("Reason") == 'Q.850;cause=102;text="media timeout"'
    assert bye.header("Call-ID") == invite.header("Call-ID")
    run = uac.finish()
    assert run.stats.all_ok, run.error_path
    bed.wait_no_sessions()
    scrape = bed.sbc.metrics()
    assert scrape.value("sbc_media_timeout_teardowns_total") == 1
    assert scrape.value("sbc_media_dialogs") == 0
    logged = [r for r in bed.sbc.log_records() if r["msg"] == "media timeout: call torn down"]
    assert [r["call_id"] for r in logged] == [invite.header("Call-ID")]
    assert logged[0]["worker"] in (0, 1)
    bed.sbc.wait_idle()


# -- refusals -----------------------------------------------------------------------------------


def test_a_listener_address_in_use_stops_the_start_with_its_name(tmp_path: Path) -> None:
    """Taken by anyone, another SBC's workers included (SO_REUSEPORT would let us share it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        config = tmp_path / "sbc.yaml"
        config.write_text(
            f"listeners: [{{name: edge, transport: udp, host: 127.0.0.1, port: {port}}}]\n"
            f"http: {{port: {free_port()}}}\nworkers: 2\n"
        )
        proc = subprocess.run(
            [*teams_sbc_command(), "run", "--config", str(config)],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 1, proc.stderr
    assert "listener 'edge' cannot bind" in proc.stderr and "Traceback" not in proc.stderr
    assert "worker started" not in proc.stderr


def test_a_worker_that_keeps_ending_is_restarted_ever_more_slowly() -> None:
    assert [restart_delay(n) for n in range(9)] == [0, 0.5, 1, 2, 4, 8, 16, 30, 30]
    assert restart_delay(10_000) == 30


def test_workers_must_be_a_positive_count() -> None:
    listeners = [{"name": "a", "transport": "udp", "host": "127.0.0.1", "port": 5060}]
    assert parse_config({"listeners": listeners}).workers == 1
    assert parse_config({"listeners": listeners, "workers": 2}).workers == 2
    with pytest.raises(ConfigError, match="workers"):
        parse_config({"listeners": listeners, "workers": 0})


def test_a_worker_gets_the_whole_config_and_its_seat_through_its_pipe() -> None:
    """What the supervisor writes is what the worker reads: every example config, Teams
    section included, and the seat (its descriptors, its siblings' ports)."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    for example in sorted(examples.glob("*.yaml")):
        config = load_config(example)
        seat = Seat(1, "/tmp/w1.sock", {"udp": 7}, {"udp": [40000, 41000]})
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, handshake(config, seat) + b"more for later")
            assert read_handshake(read_end) == (config, seat), example
            assert os.read(read_end, 100) == b"more for later", "read past its line"
        finally:
            os.close(read_end)
            os.close(write_end)


# -- the proxy core as two workers (sans-IO) ------------------------------------------------------


def worker_bench(own: int, ports: list[int]) -> Bench:
    """A proxy core as one of two workers: listener "a" shared on 5060, worker ports given."""
    bench = Bench()
    bench.proxy = Proxy(config(), bench.metrics, token=lambda _n: secrets.token_hex(8))
    bench.proxy.set_bound_addresses(
        {}, {"a": own, "b": own + 1}, {"a": ports, "b": [p + 1 for p in ports]}
    )
    return bench


def test_a_worker_names_its_own_port_in_via_and_the_shared_one_in_record_route() -> None:
    w0 = worker_bench(40000, [40000, 41000])
    outs = w0.feed(invite())
    (fwd,) = [o for o in outs if not o.is_response]
    assert fwd.req.headers.values("via")[0].startswith("SIP/2.0/UDP 10.0.0.1:40000;branch=")
    assert fwd.req.headers.values("record-route") == ["<sip:10.0.0.1:5060;lr>"]
    # The response comes back to that port, in this worker: forwarded to the caller.
    ok = only(w0.feed(answer(fwd.req, 200), UAS, "a"), peer=UAC)
    assert ok.status == 200


def test_a_response_for_the_other_worker_is_passed_to_it() -> None:
    """sipp answers everything of a call to where its INVITE came from: the 200 for a BYE that
    worker 1 forwarded may reach worker 0. Worker 0 sends it on, unchanged, to worker 1's
    port (and does not count it: worker 1 will), and worker 1 forwards it to the caller."""
    w0, w1 = worker_bench(40000, [40000, 41000]), worker_bench(41000, [40000, 41000])
    bye = invite(method="BYE", to_tag="callee1", ruri="sip:bob@192.0.2.20:5080")
    (fwd,) = [o for o in w1.feed(bye) if not o.is_response]
    ok = answer(fwd.req, 200)
    passed = only(w0.feed(ok, UAS, "a"))
    assert passed.raw == ok and passed.peer == Peer("udp", "10.0.0.1", 41000)
    assert w0.sample("sbc_sip_responses_total", status_class="2xx", direction="received") == 0
    assert only(w1.feed(passed.raw, Peer("udp", "10.0.0.1", 5060), "a"), peer=UAC).status == 200


def test_a_loop_through_the_other_worker_is_detected() -> None:
    """The forwarded INVITE comes back to the shared port and reaches worker 1, with worker
    0's Via on top: worker 1 knows that port as the SBC's and answers 482. A worker told
    nothing of its sibling's port would forward the loop again."""
    w0, w1 = worker_bench(40000, [40000, 41000]), worker_bench(41000, [40000, 41000])
    (fwd,) = [o for o in w0.feed(invite()) if not o.is_response]
    outs = w1.feed(fwd.raw, UAS, "a")
    assert [o.status for o in outs if o.is_response] == [100, 482]
    alone = worker_bench(41000, [41000])
    assert [o for o in alone.feed(fwd.raw, UAS, "a") if not o.is_response], "control"


# -- merging the workers' metrics -----------------------------------------------------------------


def exposition(requests: int, ready: int, transactions: int) -> str:
    return (
        "# HELP sbc_sip_requests_total SIP requests received, by method.\n"
        "# TYPE sbc_sip_requests_total counter\n"
        f'sbc_sip_requests_total{{method="INVITE"}} {requests}.0\n'
        "# HELP sbc_sip_parse_errors_created when\n"
        "# TYPE sbc_sip_parse_errors_created gauge\n"
        'sbc_sip_parse_errors_created{kind="request"} 1.7e9\n'
        "# HELP sbc_sip_parse_errors_total bad\n"
        "# TYPE sbc_sip_parse_errors_total counter\n"
        'sbc_sip_parse_errors_total{kind="request"} 1.0\n'
        "# HELP sbc_sip_transactions live\n"
        "# TYPE sbc_sip_transactions gauge\n"
        f'sbc_sip_transactions{{kind="invite_server"}} {transactions}.0\n'
        "# HELP sbc_ready 1 when the SBC takes new calls.\n"
        "# TYPE sbc_ready gauge\n"
        f"sbc_ready {ready}.0\n"
    )


def merged(agg: Aggregator) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in agg.families()
        for s in family.samples
    }


def test_counters_add_up_and_survive_a_worker_gauges_sum_readiness_needs_all() -> None:
    agg = Aggregator(2)
    agg.update(0, 1, exposition(requests=5, ready=1, transactions=3))
    agg.update(1, 1, exposition(requests=7, ready=1, transactions=4))
    m = merged(agg)
    assert m[("sbc_sip_requests_total", (("method", "INVITE"),))] == 12
    assert m[("sbc_sip_parse_errors_total", (("kind", "request"),))] == 2
    assert m[("sbc_sip_transactions", (("kind", "invite_server"),))] == 7
    assert m[("sbc_ready", ())] == 1
    assert m[("sbc_worker_sip_requests_total", (("method", "INVITE"), ("worker", "1")))] == 7
    assert not [k for k in m if k[0].endswith("_created")], "creation times do not add up"

    # Worker 0 dies: its counts stay in the sum, its gauges go, readiness needs every seat.
    agg.retire(0, 1)
    agg.update(0, 1, exposition(requests=6, ready=1, transactions=9))  # late: ignored
    m = merged(agg)
    assert m[("sbc_sip_requests_total", (("method", "INVITE"),))] == 12
    assert m[("sbc_sip_transactions", (("kind", "invite_server"),))] == 4
    assert m[("sbc_ready", ())] == 0
    assert ("sbc_worker_sip_requests_total", (("method", "INVITE"), ("worker", "0"))) not in m

    # Its successor starts from 0 and adds on top.
    agg.update(0, 2, exposition(requests=2, ready=1, transactions=1))
    m = merged(agg)
    assert m[("sbc_sip_requests_total", (("method", "INVITE"),))] == 14
    assert m[("sbc_ready", ())] == 1
    agg.update(1, 1, exposition(requests=7, ready=0, transactions=0))  # draining
    assert merged(agg)[("sbc_ready", ())] == 0


# -- /teams combined over the workers (teams_sbc.workers.teams) ------------------------------------


def proxy_view(
    name: str, state: str, result_ago: float | None, **more: object
) -> dict[str, object]:
    return {
        "name": name, "address": None, "port": 5061, "state": state, "rtt_ms": more.get("rtt"),
        "last_error": more.get("error"), "changed_seconds_ago": result_ago,
        "last_ok_seconds_ago": more.get("ok_ago"), "last_result_seconds_ago": result_ago,
        "retry_after_seconds": more.get("retry_after", 0.0), "options_sent": 4,
        "options_failed": 1 if state == "down" else 0, "failovers": more.get("failovers", 0),
    }  # fmt: skip


def teams_view(*proxies: dict[str, object], repairs: int = 0) -> dict[str, object]:
    return {"fqdn": "sbc.example.com", "cloud": "commercial", "tenants": {},
            "proxies": list(proxies), "ack_repairs": repairs}  # fmt: skip


def test_combined_teams_view_takes_each_proxys_freshest_answer() -> None:
    a, b, c = "sip.example.com", "sip2.example.com", "sip3.example.com"
    views = {
        0: teams_view(
            proxy_view(a, "up", 0.4, ok_ago=0.4, rtt=12.0),
            proxy_view(b, "down", 9.0, error="OPTIONS answered 503 Busy", retry_after=30.0),
            proxy_view(c, "unknown", None), repairs=1,
        ),
        1: teams_view(
            proxy_view(a, "down", 5.0, ok_ago=65.0, error="timeout", failovers=2),
            proxy_view(b, "up", 1.5, ok_ago=1.5, rtt=20.0),
            proxy_view(c, "unknown", None), repairs=2,
        ),
        2: None,  # a worker that did not answer
    }
    combined = combine(views)
    sip, sip2, sip3 = combined["proxies"]
    assert (sip["state"], sip["decided_by"], sip["rtt_ms"]) == ("up", 0, 12.0)
    assert (sip2["state"], sip2["decided_by"], sip2["rtt_ms"]) == ("up", 1, 20.0)
    assert (sip3["state"], sip3["decided_by"]) == ("unknown", None)
    assert sip["workers"] == {"0": "up", "1": "down"}
    assert sip["last_ok_seconds_ago"] == 0.4 and sip["failovers"] == 2
    assert sip["options_sent"] == 8 and sip["options_failed"] == 1
    assert sip2["retry_after_seconds"] == 30.0  # one worker still keeps calls away
    assert combined["ack_repairs"] == 3 and combined["fqdn"] == "sbc.example.com"
    assert combined["workers"]["2"] is None and combined["workers"]["0"] == views[0]
    assert "freshest" in combined["combined_by"] or "most recent" in combined["combined_by"]
    # The annotation waits while a proxy is unknown to every worker...
    assert annotation_report(combined) is None
    views[1]["proxies"][2] = proxy_view(c, "down", 0.1)  # type: ignore[index]
    assert annotation_report(combine(views)) == {a: "up", b: "up", c: "down"}
    # ... and says nothing when no worker answers.
    assert annotation_report(combine({0: None, 1: None})) is None


# -- the Teams edge with workers ------------------------------------------------------------------


def options_seen(edge: Edge, proxy: str) -> list[float]:
    """When the emulator's ``proxy`` received each OPTIONS it accepted (its clock, seconds)."""
    return list(edge.emu.do(lambda emu: [
        e.at for e in emu.core.stray
        if e.arrow == "<-" and e.proxy == proxy and e.text.startswith("OPTIONS ")
    ]))  # fmt: skip


def test_teams_edge_with_workers_interleaves_options_and_serves_teams_for_all(
    teams_emulator_factory: EmulatorFactory, sbc_factory: SbcFactory, sipp_factory: SippFactory
) -> None:
    """Two workers, OPTIONS every 2 s: Microsoft's sip gets one OPTIONS a second, evenly
    spaced (each worker in its own slot), not two at once every 2 s. The supervisor's /teams
    shows each worker's view and the combined one; a proxy that refuses turns down in all."""
    interval = 2.0
    edge = EdgeFactory(teams_emulator_factory, sbc_factory, sipp_factory)(
        sbc_config=WORKERS, options_interval=interval, options_timeout=1.0
    )

    def teams() -> dict[str, Any]:
        code, body = edge.sbc.http("/teams")
        assert code == 200, body
        return dict(json.loads(body))

    def all_up() -> bool:
        status = teams()
        views = [status, *(v or {} for v in status["workers"].values())]
        return all([p["state"] for p in v.get("proxies", [])] == ["up"] * 3 for v in views)

    wait_until(all_up, 15, "sip, sip2, sip3 up in the supervisor's /teams, for each worker",
               edge.sbc.proc)  # fmt: skip
    status = teams()
    assert status["fqdn"] == FQDN and set(status["workers"]) == {"0", "1"}
    for index, view in status["workers"].items():
        assert [p["state"] for p in view["proxies"]] == ["up"] * 3, index
    for proxy in status["proxies"]:
        assert proxy["workers"] == {"0": "up", "1": "up"} and proxy["decided_by"] in (0, 1)
        assert proxy["options_sent"] == sum(
            next(p for p in v["proxies"] if p["name"] == proxy["name"])["options_sent"]
            for v in status["workers"].values()
        )
    assert "most recent" in status["combined_by"]
    # /metrics: Microsoft's proxies as combined (1 up), not the sum of the workers' gauges (2).
    scrape = edge.sbc.metrics()
    for name in ("sip", "sip2", "sip3"):
        assert scrape.value("sbc_teams_proxy_up", proxy=f"{name}.pstnhub.microsoft.com") == 1
    assert 0 < scrape.value("sbc_teams_proxy_rtt_seconds", proxy=SIP) < 1

    # On the wire: after the two start-up OPTIONS, one every interval/2, each gap near 1 s
    # (without the slots: pairs 2 s apart, gaps of about 0 and 2 s).
    wait_until(lambda: len(options_seen(edge, "sip")) >= 12, 20, "12 OPTIONS at sip",
               edge.sbc.proc)  # fmt: skip
    seen = options_seen(edge, "sip")[2:]
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(seen)]
    assert all(interval / 2 * 0.6 <= gap <= interval / 2 * 1.4 for gap in gaps), gaps
    # Each worker keeps its own first-hand state: both probe, equally often.
    sent = [
        next(p for p in v["proxies"] if p["name"] == SIP)["options_sent"]
        for v in teams()["workers"].values()
    ]
    assert min(sent) >= 4 and max(sent) - min(sent) <= 1, sent

    edge.emu.set_failure("sip", "refuse")
    wait_until(
        lambda: next(p for p in teams()["proxies"] if p["name"] == SIP)["workers"]
        == {"0": "down", "1": "down"}, 15, "sip down in both workers", edge.sbc.proc,
    )  # fmt: skip
    sip, sip2, sip3 = teams()["proxies"]
    assert (sip["state"], sip2["state"], sip3["state"]) == ("down", "up", "up")
    assert sip["last_error"] and sip["options_failed"] >= 2
    # /metrics sums the workers' counters (each worker's OPTIONS), combines the state, and
    # gives each worker's own.
    scrape = edge.sbc.metrics()
    assert scrape.value("sbc_teams_options_sent_total", proxy=SIP) >= sum(sent)
    assert scrape.value("sbc_teams_proxy_up", proxy=SIP) == 0
    assert scrape.value("sbc_teams_proxy_up", proxy="sip2.pstnhub.microsoft.com") == 1
    for worker in ("0", "1"):
        assert scrape.value("sbc_worker_teams_proxy_up", proxy=SIP, worker=worker) == 0


CALLER_SDP = (
    "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/SAVP 0 101\r\n"
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:QF3j5Yt3i1VZ9m0x0Yl7t7O5b8m4G3Q1Kq9Xw2Zr\r\n"
    "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


def all_values(reply: Reply, name: str) -> list[str]:
    """Every value of a list header (each line, comma-split between entries)."""
    out: list[str] = []
    for line in reply.raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.decode(errors="replace").partition(":")
        if key.strip().lower() == name.lower():
            out += [v.strip() for v in re.split(r",(?=\s*<)", value)]
    return out


def to_tag(reply: Reply) -> str:
    found = re.search(r";tag=([^;>\s]+)", reply.header("To") or "")
    assert found, reply.status_line
    return found.group(1)


def test_an_ack_reaching_the_other_worker_is_repaired_by_the_one_that_sent_the_invite(
    teams_emulator_factory: EmulatorFactory, sbc_factory: SbcFactory, sipp_factory: SippFactory
) -> None:
    """The carrier calls Teams from one UDP port (worker A forwards the INVITE, Teams' forked
    180s and 200 come back to A) and ACKs, with the first 180's To-tag (the voipswitch bug the
    ACK repair is for), from another port the kernel gives to worker B. B has no tags; the
    Route names A (``sbcw``), so B passes the ACK to A, which repairs it: Teams gets the 200's
    tag and the call is confirmed."""
    edge = EdgeFactory(teams_emulator_factory, sbc_factory, sipp_factory)(sbc_config=WORKERS)
    wait_until(lambda: edge.states() == ["up", "up", "up"], 15, "the proxies up", edge.sbc.proc)
    caller = UdpPeer()
    peers = [caller]
    try:
        a = worker_of(edge.sbc, caller, "carrier")
        other = None
        for _ in range(40):
            candidate = UdpPeer()
            peers.append(candidate)
            if worker_of(edge.sbc, candidate, "carrier") != a:
                other = candidate
                break
        assert other is not None, "no source port reached the second worker"
        b = "1" if a == "0" else "0"

        sbc_uri = f"127.0.0.1:{edge.sbc.port('carrier')}"
        call_id = new_call_id()
        invite = request(
            "INVITE", f"sip:030123456@{sbc_uri}", via_host=caller.host, via_port=caller.port,
            call_id=call_id, body=CALLER_SDP, extra="Content-Type: application/sdp\r\n",
        )  # fmt: skip
        caller.send(invite, edge.sbc, "carrier")
        replies = caller.replies(timeout=10)
        ok = replies[-1]
        assert ok.status == 200, [r.status_line for r in replies]
        rings = [r for r in replies if r.status == 180]
        assert rings and to_tag(rings[0]) != to_tag(ok), "Teams did not fork"
        record_route = all_values(ok, "Record-Route")
        ours = [e for e in record_route if f"sbcw={a}>" in e]
        assert ours == [f"<sip:{sbc_uri};lr;r2=on;sbcw={a}>"], record_route

        contact = (ok.header("Contact") or "").strip("<>")
        from_line = re.search(r"^From: [^\r\n]*", invite.decode(), re.M)
        assert from_line is not None
        ack = (
            f"ACK {contact} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{other.port};branch={new_branch()};rport\r\n"
            f"Route: {', '.join(reversed(record_route))}\r\n"
            "Max-Forwards: 70\r\n"
            f"{from_line.group(0)}\r\n"
            f"To: <sip:030123456@{sbc_uri}>;tag={to_tag(rings[0])}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        other.send(ack, edge.sbc, "carrier")
        record = edge.emu.wait_call(call_id, "confirmed")
        assert record.acks_ignored == 0 and not record.violations, record.ladder_text()

        acks = per_worker(edge.sbc, "ACK")
        assert acks.get(b) == 1 and acks.get(a) == 1, acks  # B got it, passed it to A
        scrape = edge.sbc.metrics()
        assert scrape.value("sbc_teams_acks_passed_total") == 1
        assert scrape.value("sbc_teams_ack_repairs_total") == 1
    finally:
        for peer in peers:
            peer.close()
