"""``teams-sbc run`` as a process: its HTTP endpoints, its answer to bad input, its drain on
SIGTERM, its JSON logs, its refusal of a bad config, and an IPv6 listener.

Everything is observed from outside, as an operator or a SIP peer would: HTTP requests, SIP
messages on the wire (a small raw-socket client below), the log file and the exit code.
"""

from __future__ import annotations

import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.testbed.process import free_port, wait_until
from tests.testbed.sbc import SbcFactory, SbcProcess, teams_sbc_command
from tests.testbed.sipp import SippFactory, SippUas, UacRun, run_uac

SCENARIOS = Path(__file__).parent / "testbed" / "scenarios"

# -- a raw SIP client ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A SIP response as bytes on the wire, with a few conveniences."""

    raw: bytes

    @property
    def status_line(self) -> str:
        return self.raw.split(b"\r\n", 1)[0].decode(errors="replace")

    @property
    def status(self) -> int:
        return int(self.status_line.split(" ")[1])

    def header(self, name: str) -> str | None:
        for line in self.raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
            key, _, value = line.decode(errors="replace").partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


def request(
    method: str,
    ruri: str,
    *,
    via_host: str,
    via_port: int,
    call_id: str | None = None,
    branch: str | None = None,
    transport: str = "UDP",
    extra: str = "",
    cseq: str | None = None,
    body: str = "",
) -> bytes:
    """A well-formed request (``extra`` is raw header lines, each ending in CRLF)."""
    host = f"[{via_host}]" if ":" in via_host else via_host
    return (
        f"{method} {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {host}:{via_port};branch={branch or new_branch()};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:tester@{host}>;tag={secrets.token_hex(4)}\r\n"
        f"To: {ruri.replace(' ', '')}\r\n"
        f"Call-ID: {call_id or new_call_id()}\r\n"
        f"CSeq: {cseq or '1 ' + method}\r\n"
        f"Contact: <sip:tester@{host}:{via_port}>\r\n"
        f"{extra}"
        f"Content-Length: {len(body.encode())}\r\n\r\n{body}"
    ).encode()


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def new_call_id() -> str:
    return secrets.token_hex(10) + "@test"


class UdpPeer:
    """One UDP socket talking to the SBC; collects every datagram it gets."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.host = host
        self.port = int(self.sock.getsockname()[1])

    def send(self, data: bytes, sbc: SbcProcess, listener: str = "udp") -> None:
        self.sock.sendto(data, (sbc.host(listener), sbc.port(listener)))

    def replies(self, timeout: float = 2.0, until_final: bool = True) -> list[Reply]:
        """Responses until a final one (or the timeout); raises if none came at all."""
        got: list[Reply] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                break
            reply = Reply(data)
            got.append(reply)
            if until_final and reply.status >= 200:
                break
        assert got, "the SBC sent nothing back"
        return got

    def close(self) -> None:
        self.sock.close()


def options_to_sbc(sbc: SbcProcess, peer: UdpPeer, listener: str = "udp") -> Reply:
    """An OPTIONS for the SBC itself (no user part): it answers 200 on its own."""
    host = sbc.host(listener)
    uri = (
        f"sip:[{host}]:{sbc.port(listener)}" if ":" in host else f"sip:{host}:{sbc.port(listener)}"
    )
    peer.send(request("OPTIONS", uri, via_host=peer.host, via_port=peer.port), sbc, listener)
    return peer.replies()[-1]


@pytest.fixture
def peer() -> Iterator[UdpPeer]:
    p = UdpPeer()
    try:
        yield p
    finally:
        p.close()


# -- HTTP endpoints and metrics -------------------------------------------------------------------


def test_health_readiness_and_metrics_of_a_serving_sbc(
    sbc_factory: SbcFactory, peer: UdpPeer
) -> None:
    sbc = sbc_factory()
    assert sbc.http("/healthz") == (200, "ok\n")
    status, body = sbc.http("/readyz")
    assert status == 200 and '"ready": true' in body

    assert options_to_sbc(sbc, peer).status == 200
    bad = request(
        "OPTIONS", "sip:x@127.0.0.1", via_host=peer.host, via_port=peer.port, cseq="one OPTIONS"
    )
    peer.send(bad, sbc)
    assert peer.replies()[-1].status == 400
    peer.send(b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n", sbc)  # an unparseable response
    with socket.create_connection((sbc.host("tcp"), sbc.port("tcp"))) as tcp:
        wait_until(
            lambda: sbc.metrics().value("sbc_transport_connections", transport="tcp") == 1,
            5,
            "the TCP connection in sbc_transport_connections",
        )
        tcp.sendall(b"\r\n\r\n")  # RFC 5626 keep-alive ping: answered with a single CRLF
        tcp.settimeout(2)
        assert tcp.recv(16) == b"\r\n"

    scrape = sbc.metrics()
    # The unparseable request is a parse error, not a request: only the good OPTIONS counts.
    assert scrape.value("sbc_sip_requests_total", method="OPTIONS") == 1
    assert scrape.value("sbc_sip_responses_total", status_class="2xx", direction="sent") == 1
    assert scrape.value("sbc_sip_responses_total", status_class="4xx", direction="sent") == 1
    assert scrape.value("sbc_sip_parse_errors_total", kind="request") == 1
    wait_until(
        lambda: sbc.metrics().value("sbc_sip_parse_errors_total", kind="response") == 1,
        5,
        "the unparseable response to be counted",
    )
    for family in (
        "sbc_sip_transactions",
        "sbc_sip_retransmissions_total",
        "sbc_sip_transaction_events_total",
        "sbc_transport_connections",
        "sbc_ready",
    ):
        assert family in scrape.names(), family
    assert scrape.value("sbc_ready") == 1
    assert scrape.value("sbc_sip_transaction_events_total", event="created") == 1
    wait_until(
        lambda: sbc.metrics().value("sbc_transport_connections", transport="tcp") == 0,
        5,
        "the closed TCP connection to leave sbc_transport_connections",
    )
    sbc.wait_idle()


# -- bad input on the wire ------------------------------------------------------------------------


#: Broken copies of a good INVITE: (what is wrong, how to break it, the answer, a word its
#: reason phrase and Warning must contain).
MALFORMED: list[tuple[str, Callable[[bytes], bytes], int, str]] = [
    ("bad CSeq", lambda r: r.replace(b"CSeq: 1 INVITE", b"CSeq: x INVITE"), 400, "CSeq"),
    ("SIP/3.0", lambda r: r.replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1), 505, "version"),
    ("http URI", lambda r: r.replace(b"INVITE sip:", b"INVITE http:", 1), 416, "scheme"),
    # Found only when the proxy reads it, after the INVITE started its transaction: answered
    # on that transaction (after the 100 Trying), which then ends as usual.
    (
        "bad Max-Forwards",
        lambda r: r.replace(b"Max-Forwards: 70", b"Max-Forwards: x"),
        400,
        "Max-Forwards",
    ),
    (
        "4 KB datagram",
        lambda r: r.replace(b"Max-Forwards", b"X-Pad: " + b"p" * 4000 + b"\r\nMax-Forwards"),
        513,
        "limit",
    ),
]


def test_malformed_input_is_answered_or_dropped_and_the_sbc_keeps_serving(
    sbc_factory: SbcFactory, peer: UdpPeer
) -> None:
    """Bad requests get the right answer on the wire (reason phrase and Warning: 399 saying
    what was wrong); what cannot be answered is dropped and counted; nothing stops the SBC."""
    sbc = sbc_factory(max_message_size=1500)
    uri = f"sip:bob@127.0.0.1:{sbc.port('udp')}"
    for name, mangle, status, word in MALFORMED:
        fresh = UdpPeer()  # one each: a UDP INVITE's final answer repeats until it is ACKed
        try:
            fresh.send(
                mangle(request("INVITE", uri, via_host=fresh.host, via_port=fresh.port)), sbc
            )
            reply = fresh.replies()[-1]
        finally:
            fresh.close()
        assert reply.status == status, (name, reply.status_line)
        assert word.lower() in reply.status_line.lower(), (name, reply.status_line)
        warning = reply.header("Warning") or ""
        assert warning.startswith("399 teams-sbc "), (name, warning)
        assert word.lower() in warning.lower(), (name, warning)
        assert options_to_sbc(sbc, peer).status == 200, f"not serving after {name}"
    # No answer can be built without a Call-ID (8.2.6.2 copies it); a response that does not
    # parse is never answered. Both are dropped, and counted.
    no_call_id = request("OPTIONS", uri, via_host=peer.host, via_port=peer.port)
    peer.send(no_call_id.replace(b"Call-ID:", b"X-Call-ID:"), sbc)
    peer.send(b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n", sbc)
    assert options_to_sbc(sbc, peer).status == 200  # the only answer is to this one
    scrape = sbc.metrics()
    assert scrape.value("sbc_sip_parse_errors_total", kind="request") == len(MALFORMED) + 1
    assert scrape.value("sbc_sip_parse_errors_total", kind="response") == 1
    assert sbc.alive()
    sbc.wait_idle()


# -- drain on SIGTERM -----------------------------------------------------------------------------


def test_sigterm_drains_a_call_in_progress_then_exits_0(
    sbc_factory: SbcFactory, sipp_factory: SippFactory, peer: UdpPeer
) -> None:
    """The UAS answers after 1.5 s; SIGTERM arrives while the call rings. New INVITEs get 503
    with Retry-After, /readyz says draining, the ringing call completes (answer, ACK, BYE),
    and the process exits 0 once its transactions are over."""
    uas = sipp_factory.uas(scenario=SCENARIOS / "uas_answer.xml", extra_args=["-d", "1500"])
    sbc = sbc_factory(routes=[{"name": "uas", "next_hop": f"sip:{uas.address}"}], drain_seconds=20)
    result: list[UacRun] = []
    caller = threading.Thread(
        target=lambda: result.append(
            sipp_factory.uac(
                sbc.address("udp"), calls=1, scenario=SCENARIOS / "uac_caller_hangs_up.xml"
            )
        )
    )
    caller.start()
    try:
        wait_until(
            lambda: sbc.transactions().get("invite_client", 0) == 1,
            10,
            "the call's INVITE to be forwarded",
        )
        assert sbc.proc is not None
        sbc.proc.signal(signal.SIGTERM)
        wait_until(lambda: sbc.http("/readyz")[0] == 503, 5, "/readyz to say not ready")
        assert "draining" in sbc.http("/readyz")[1]

        call_id = new_call_id()
        invite = request(
            "INVITE",
            f"sip:bob@127.0.0.1:{sbc.port('udp')}",
            via_host=peer.host,
            via_port=peer.port,
            call_id=call_id,
        )
        peer.send(invite, sbc)
        replies = peer.replies()
        assert [r.status for r in replies] == [100, 503], [r.status_line for r in replies]
        assert replies[-1].header("Retry-After") is not None
        assert sbc.alive(), "the SBC must wait for the call in progress"
    finally:
        caller.join(30)
    assert result and result[0].stats.successful == 1, "the call in progress did not complete"
    code = sbc.terminate(timeout=20)
    assert code == 0
    messages = [r.get("msg") for r in sbc.log_records()]
    assert "draining" in messages and "drained" in messages
    rejected = [r for r in sbc.log_records() if r.get("call_id") == call_id]
    assert any(r.get("status") == 503 for r in rejected), rejected


# -- logs and config ------------------------------------------------------------------------------


def test_json_logs_carry_the_call_id(sbc_factory: SbcFactory, peer: UdpPeer) -> None:
    sbc = sbc_factory()  # no route: an INVITE for someone gets 404
    uri = f"sip:bob@127.0.0.1:{sbc.port('udp')}"
    call_id, bad_id = new_call_id(), new_call_id()
    peer.send(request("INVITE", uri, via_host=peer.host, via_port=peer.port, call_id=call_id), sbc)
    assert peer.replies()[-1].status == 404
    other = UdpPeer()  # not the first one: it gets the 404 again until it ACKs (timer G)
    try:
        bad = request(
            "OPTIONS",
            uri,
            via_host=other.host,
            via_port=other.port,
            call_id=bad_id,
            cseq="x OPTIONS",
        )
        other.send(bad, sbc)
        assert other.replies()[-1].status == 400
    finally:
        other.close()

    def logged() -> bool:
        ids = {r.get("call_id") for r in sbc.log_records()}
        return call_id in ids and bad_id in ids

    wait_until(logged, 5, "log lines naming both Call-IDs")
    for record in sbc.log_records():
        assert {"ts", "level", "logger", "msg"} <= record.keys()


#: Bad config files and the key their error message must name.
BAD_CONFIGS = {
    "timers.t1_ms": "listeners: [{name: a, transport: udp, host: 127.0.0.1, port: 5060}]\n"
    "timers: {t1_ms: 1}\n",
    "listners": "listeners: [{name: a, transport: udp, host: 127.0.0.1, port: 5060}]\n"
    "listners: []\n",
    "listeners.0.host": "listeners: [{name: a, transport: udp, host: sbc.example, port: 5060}]\n",
}


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    runs = {}
    for key, content in BAD_CONFIGS.items():  # all at once: each is a Python start-up
        config = tmp_path / f"{key}.yaml"
        config.write_text(content)
        runs[key] = subprocess.Popen(
            [*teams_sbc_command(), "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for key, proc in runs.items():
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 2, (key, stderr)
        assert key in stderr and "Traceback" not in stderr, stderr


# -- IPv6 -----------------------------------------------------------------------------------------


def test_ipv6_listener_carries_a_call(sbc_factory: SbcFactory, sipp_factory: SippFactory) -> None:
    """sipp 3.6.1 does IPv6 (``-i ::1``): its built-in UAC calls its UAS through the SBC's
    ``::1`` listener; the SBC also answers an OPTIONS to itself there."""
    trace = sipp_factory.log_dir / "sipp-uas-v6.messages.log"
    uas = SippUas(
        sipp_factory.log_dir,
        name="sipp-uas-v6",
        host="::1",
        port=free_port(socket.SOCK_DGRAM, "::1"),
        extra_args=["-trace_msg", "-message_file", str(trace)],
    ).start()
    try:
        sbc = sbc_factory(
            listeners=[{"name": "v6", "transport": "udp", "host": "::1"}],
            routes=[{"name": "uas", "next_hop": f"sip:[::1]:{uas.port}"}],
        )
        v6 = UdpPeer("::1")
        try:
            assert options_to_sbc(sbc, v6, "v6").status == 200
        finally:
            v6.close()
        run = run_uac(
            sbc.address("v6"),
            sipp_factory.log_dir,
            name="sipp-uac-v6",
            host="::1",
            calls=3,
            rate=20,
        )
        assert (run.stats.successful, run.stats.failed) == (3, 0)
        # What the UAS got came from the SBC's IPv6 listener, which named itself in brackets.
        seen = trace.read_text()
        port = sbc.port("v6")
        assert f"Via: SIP/2.0/UDP [::1]:{port};branch=z9hG4bK" in seen
        assert f"Record-Route: <sip:[::1]:{port};lr>" in seen
        sbc.wait_idle()
    finally:
        uas.stop()


def test_next_hop_refusing_tcp_fails_the_call_at_once(
    sbc_factory: SbcFactory, peer: UdpPeer
) -> None:
    """A TCP next hop that refuses the connection ends the transaction with a transport error
    (RFC 3261 17.1.4), which a proxy treats as a 503 (16.9) and, being the best response, answers
    upstream as 500 (16.7 step 6): at once, not as a 408 after timer B."""
    closed = free_port()  # nothing listens here
    sbc = sbc_factory(
        routes=[{"name": "dead", "next_hop": f"sip:127.0.0.1:{closed};transport=tcp"}],
        timers={"t1_ms": 500, "t2_ms": 4000, "t4_ms": 5000},  # timer B would take 32 s
    )
    started = time.monotonic()
    uri = f"sip:someone@{sbc.host('udp')}:{sbc.port('udp')}"
    peer.send(request("INVITE", uri, via_host=peer.host, via_port=peer.port), sbc)
    final = [r for r in peer.replies(timeout=10) if r.status >= 200]
    assert [r.status for r in final] == [500]
    assert time.monotonic() - started < 5
    assert sbc.metrics().value("sbc_transport_send_errors_total", transport="tcp") >= 1
