"""The Teams edge end to end: the real ``teams-sbc run``, sipp as the carrier, and scripted TLS
peers (tests/teams/peers.py) playing Microsoft's proxies over real mutual TLS.

What is asserted is what each side sees on the wire: the OPTIONS keepalive and the SBC's
certificate and SNI, the INVITE Microsoft gets (Microsoft's name in the Request-URI, the
tenant's FQDN in Record-Route and Contact, E.164, X-MS-SBC, no REFER), failover when sip is
silent or refuses connections, the ACK's To-tag repaired, calls from Teams reaching the carrier
with the July 2020 Record-Route, Microsoft's serverAuth-only client certificates accepted and
wrong ones refused, the source allow-list, and a certificate rotated during a call.
"""

from __future__ import annotations

import json
import queue
import secrets
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from teams_sbc.pki import CertFiles, DevCA
from teams_sbc.sip.message import Request, Response
from tests.teams import sbc_edge
from tests.teams.peers import ProxyPeer, TeamsClient
from tests.teams.sbc_edge import sipp_errors
from tests.testbed.process import free_port, wait_until
from tests.testbed.sbc import SbcFactory, SbcProcess
from tests.testbed.sipp import SippFactory, SippUas

SCENARIOS = Path(__file__).resolve().parents[1] / "testbed" / "scenarios"
HERE_SCENARIOS = Path(__file__).parent / "scenarios"
FQDN = sbc_edge.FQDN
CONTOSO = f"contoso.{FQDN}"
MS_NAMES = [
    "sip.pstnhub.microsoft.com",
    "sip2.pstnhub.microsoft.com",
    "sip3.pstnhub.microsoft.com",
    "*.pstnhub.microsoft.com",
]


@dataclass
class Bed:
    tmp: Path
    ca: DevCA
    sbc_cert: CertFiles
    ms_cert: CertFiles
    peers: dict[str, ProxyPeer]
    sbc: SbcProcess
    uas: SippUas | None
    uas_trace: Path | None

    @property
    def teams_port(self) -> int:
        return self.sbc.port("teams")

    def status(self) -> dict[str, Any]:
        code, body = self.sbc.http("/teams")
        assert code == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def proxy_state(self, index: int) -> dict[str, Any]:
        state: dict[str, Any] = self.status()["proxies"][index]
        return state

    def teams_client(self, cert: CertFiles | None = None, sni: str = CONTOSO) -> TeamsClient:
        return TeamsClient(
            "127.0.0.1", self.teams_port, cert or self.ms_cert, self.ca.cert_path, sni
        )


class BedFactory:
    def __init__(self, tmp: Path, sbc_factory: SbcFactory, sipp_factory: SippFactory) -> None:
        self.tmp = tmp
        self.sbc_factory = sbc_factory
        self.sipp_factory = sipp_factory
        self.ca = DevCA(tmp / "pki")
        self.sbc_cert = self.ca.issue("sbc", FQDN, dns_names=[FQDN, f"*.{FQDN}"])
        # Microsoft's certificate as of 2026: serverAuth only, no clientAuth.
        self.ms_cert = self.ca.issue("ms", MS_NAMES[0], dns_names=MS_NAMES, client_auth=False)
        self.peers: list[ProxyPeer] = []

    def __call__(self, *, uas_scenario: str | None = "uas_answer.xml", **teams: Any) -> Bed:
        sip = ProxyPeer(MS_NAMES[0], self.ms_cert, self.ca.cert_path)
        sip2 = ProxyPeer(MS_NAMES[1], self.ms_cert, self.ca.cert_path)
        self.peers += [sip, sip2]
        closed = free_port()  # sip3: nothing listens there
        uas = None
        trace = None
        if uas_scenario is not None:
            trace = self.sipp_factory.log_dir / f"uas-{len(self.peers)}.messages.log"
            uas = self.sipp_factory.uas(
                scenario=SCENARIOS / uas_scenario,
                extra_args=["-trace_msg", "-message_file", str(trace)],
            )
        proxies = [
            {"name": MS_NAMES[0], "address": "127.0.0.1", "port": sip.port},
            {"name": MS_NAMES[1], "address": "127.0.0.1", "port": sip2.port},
            {"name": MS_NAMES[2], "address": "127.0.0.1", "port": closed},
        ]
        sbc = self.sbc_factory(
            listeners=sbc_edge.listeners(self.sbc_cert, self.ca.cert_path),
            teams=sbc_edge.teams_section(uas.address if uas else None, proxies, **teams),
            tls_reload_seconds=0.2,
        )
        peers = {"sip": sip, "sip2": sip2}
        return Bed(self.tmp, self.ca, self.sbc_cert, self.ms_cert, peers, sbc, uas, trace)

    def close(self) -> None:
        for peer in self.peers:
            peer.close()


@pytest.fixture
def beds(
    tmp_path: Path, sbc_factory: SbcFactory, sipp_factory: SippFactory
) -> Iterator[BedFactory]:
    factory = BedFactory(tmp_path, sbc_factory, sipp_factory)
    try:
        yield factory
    finally:
        factory.close()


# -- OPTIONS keepalive --------------------------------------------------------------------------


def test_options_keepalive_mutual_tls_and_status(beds: BedFactory) -> None:
    bed = beds(uas_scenario=None)
    sip = bed.peers["sip"]
    sip.wait(lambda: len(sip.options) >= 2)  # every options_interval
    options = sip.options[0]
    assert options.uri == "sip:sip.pstnhub.microsoft.com:5061;transport=tls"
    assert options.headers.get("contact") == f"<sip:{FQDN}:{bed.teams_port};transport=tls>"
    assert (options.headers.get("x-ms-sbc") or "").startswith("teams-sbc/")
    # The SBC sent Microsoft's name as SNI and presented its own certificate (mutual TLS).
    stream = sip.streams[0]
    assert stream.server_name == "sip.pstnhub.microsoft.com"
    assert stream.peer_cert is not None
    cn = stream.peer_cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == FQDN
    wait_until(lambda: bed.proxy_state(2)["state"] == "down", 10, "sip3 marked down")
    wait_until(lambda: bed.proxy_state(1)["state"] == "up", 10, "sip2 marked up")
    first = bed.proxy_state(0)
    assert first["state"] == "up" and first["rtt_ms"] is not None and first["rtt_ms"] < 1000
    assert bed.proxy_state(2)["last_error"]
    scrape = bed.sbc.metrics()
    assert scrape.value("sbc_teams_proxy_up", proxy="sip.pstnhub.microsoft.com") == 1
    assert scrape.value("sbc_teams_proxy_up", proxy="sip3.pstnhub.microsoft.com") == 0
    assert bed.status()["tenants"] == {"contoso": CONTOSO, "fabrikam": f"fab.{FQDN}"}


# -- calls from the carrier ---------------------------------------------------------------------


def test_call_from_the_carrier_reaches_teams_as_microsoft_wants_it(
    beds: BedFactory, sipp_factory: SippFactory
) -> None:
    bed = beds(uas_scenario=None)
    run = sipp_factory.uac(bed.sbc.address("carrier"), calls=1,
                           scenario=HERE_SCENARIOS / "uac_call_to_teams.xml",
                           extra_args=["-s", "030123456"])  # fmt: skip
    assert run.stats.successful == 1, sipp_errors(run)
    dialog = bed.peers["sip"].next_invite()
    invite = dialog.invite
    assert invite.uri == "sip:+4930123456@sip.pstnhub.microsoft.com:5061;user=phone;transport=tls"
    rr = invite.headers.values("record-route")
    assert rr[0] == f"<sip:{CONTOSO}:{bed.teams_port};transport=tls;lr;r2=on>"
    assert rr[1].startswith("<sip:127.0.0.1:") and rr[1].endswith(";lr;r2=on>")
    # The carrier side's ;lr=on reached Teams as ;lr.
    assert rr[2].startswith("<sip:127.0.0.1:") and rr[2].endswith(";lr>")
    assert "lr=on" not in str(invite.headers.get_all("record-route"))
    (contact,) = invite.headers.values("contact")
    assert contact.startswith(f"<sip:caller@{CONTOSO}:{bed.teams_port};transport=tls;tsc=")
    assert "+4930123456@" in (invite.headers.get("to") or "")
    assert (invite.headers.get("x-ms-sbc") or "").startswith("teams-sbc/")
    assert "REFER" not in (invite.headers.get("allow") or "")
    # The carrier's ACK (to the 200's tag) and BYE reached Teams.
    bed.peers["sip"].wait(lambda: bool(dialog.acks and dialog.byes))
    assert dialog.acks[0].to_tag == "fork-d"
    scrape = bed.sbc.metrics()
    assert scrape.value("sbc_teams_calls_total", tenant="contoso", direction="to_teams") == 1


def test_ack_with_the_first_180s_tag_is_repaired(
    beds: BedFactory, sipp_factory: SippFactory
) -> None:
    """The voipswitch case of the seed article: the carrier ACKs the 200 with the To-tag of
    the first 180; Teams must get the 200's."""
    bed = beds(uas_scenario=None)
    run = sipp_factory.uac(bed.sbc.address("carrier"), calls=1,
                           scenario=HERE_SCENARIOS / "uac_ack_with_180_tag.xml",
                           extra_args=["-s", "030123456"])  # fmt: skip
    assert run.stats.successful == 1, sipp_errors(run)
    dialog = bed.peers["sip"].next_invite()
    bed.peers["sip"].wait(lambda: bool(dialog.acks and dialog.byes))
    assert [a.to_tag for a in dialog.acks] == ["fork-d"]
    assert bed.sbc.metrics().value("sbc_teams_ack_repairs_total") == 1
    repaired = [r for r in bed.sbc.log_records() if r.get("msg") == "ACK To-tag repaired"]
    assert repaired and repaired[0]["wrong_tag"] == "fork-a" and repaired[0]["tenant"] == "contoso"


def test_failover_when_sip_is_silent(beds: BedFactory, sipp_factory: SippFactory) -> None:
    bed = beds(uas_scenario=None)
    bed.peers["sip"].plan.kind = "silent"
    run = sipp_factory.uac(bed.sbc.address("carrier"), calls=1,
                           scenario=HERE_SCENARIOS / "uac_call_to_teams.xml",
                           extra_args=["-s", "040555123"])  # fmt: skip
    assert run.stats.successful == 1, sipp_errors(run)
    assert bed.peers["sip"].dialogs, "sip was tried first"
    dialog = bed.peers["sip2"].next_invite()
    assert dialog.invite.uri.startswith("sip:+4940555123@sip2.pstnhub.microsoft.com")
    assert dialog.invite.headers.values("record-route")[0].startswith(f"<sip:fab.{FQDN}:")
    scrape = bed.sbc.metrics()
    assert scrape.value("sbc_teams_failovers_total", proxy="sip.pstnhub.microsoft.com") == 1


def _call(bed: Bed, sipp_factory: SippFactory, number: str, calls: int = 1) -> int:
    run = sipp_factory.uac(bed.sbc.address("carrier"), calls=calls, rate=2,
                           scenario=HERE_SCENARIOS / "uac_call_to_teams.xml",
                           extra_args=["-s", number])  # fmt: skip
    return run.stats.successful


def test_failover_on_a_refused_connection(beds: BedFactory, sipp_factory: SippFactory) -> None:
    bed = beds(uas_scenario=None, options_interval=30)
    wait_until(lambda: bed.proxy_state(0)["state"] == "up", 10, "sip up")
    bed.peers["sip"].close()  # sip goes away between two keepalives
    time.sleep(0.3)  # for the SBC to see its connection close
    assert _call(bed, sipp_factory, "030123456") == 1
    assert bed.peers["sip2"].dialogs
    assert bed.sbc.metrics().value("sbc_teams_failovers_total",
                                   proxy="sip.pstnhub.microsoft.com") == 1  # fmt: skip
    assert bed.proxy_state(0)["state"] == "down"


def test_503_moves_on_and_retry_after_keeps_sip_away(
    beds: BedFactory, sipp_factory: SippFactory
) -> None:
    bed = beds(uas_scenario=None)
    sip = bed.peers["sip"]
    sip.plan.kind = "status"
    sip.plan.status = 503
    sip.plan.extra = [("Retry-After", "60")]
    assert _call(bed, sipp_factory, "030123456", calls=2) == 2
    assert len(sip.dialogs) == 1  # the second call did not even try sip
    assert len(bed.peers["sip2"].dialogs) == 2
    assert bed.proxy_state(0)["retry_after_seconds"] > 30


# -- calls from Teams ---------------------------------------------------------------------------


def _teams_invite(client: TeamsClient, call_id: str, number: str = "+4930123456") -> str:
    return (
        f"INVITE sip:{number}@{CONTOSO}:5061;user=phone;transport=tls SIP/2.0\r\n"
        f"VIA: SIP/2.0/TLS {client.local};branch=z9hG4bK{call_id}\r\n"
        "MAX-FORWARDS: 70\r\n"
        "FROM: <sip:+4930999@sip.pstnhub.microsoft.com:5061;user=phone>;tag=ms1\r\n"
        f"TO: <sip:{number}@{CONTOSO}:5061;user=phone>\r\n"
        f"CALL-ID: {call_id}\r\nCSEQ: 1 INVITE\r\n"
        "RECORD-ROUTE: <sip:sip.pstnhub.microsoft.com:5061;transport=tls;lr>\r\n"
        "CONTACT: <sip:api-du-b.pstnhub.microsoft.com:443;x-i=abc;x-c=1/d/8/ff>\r\n"
        "ALLOW: INVITE,ACK,OPTIONS,CANCEL,BYE,NOTIFY\r\n"
        "CONTENT-TYPE: application/sdp\r\n"
        f"CONTENT-LENGTH: {len(TEAMS_OFFER)}\r\n\r\n{TEAMS_OFFER}"
    )


TEAMS_OFFER = (
    "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=session\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 50012 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
)


def _in_dialog(client: TeamsClient, method: str, ok: Response, call_id: str, cseq: int) -> str:
    contact = (ok.headers.values("contact") or [""])[0]
    target = contact.strip("<>")
    # Teams is the caller here: its route set is the Record-Route reversed (RFC 3261 12.1.2),
    # less Microsoft's own proxy's entry (the proxy sending this pops it).
    routes = ", ".join(
        rr for rr in reversed(ok.headers.values("record-route")) if "pstnhub" not in rr
    )
    return (
        f"{method} {target} SIP/2.0\r\n"
        f"VIA: SIP/2.0/TLS {client.local};branch=z9hG4bK{call_id}{method}\r\n"
        f"ROUTE: {routes}\r\n"
        "MAX-FORWARDS: 70\r\n"
        "FROM: <sip:+4930999@sip.pstnhub.microsoft.com:5061;user=phone>;tag=ms1\r\n"
        f"TO: {ok.headers.get('to')}\r\n"
        f"CALL-ID: {call_id}\r\nCSEQ: {cseq} {method}\r\nCONTENT-LENGTH: 0\r\n\r\n"
    )


def _answered_call_from_teams(bed: Bed, client: TeamsClient, call_id: str) -> Response:
    client.send(_teams_invite(client, call_id))
    msg = client.recv_until(lambda m: isinstance(m, Response) and m.status >= 200, timeout=10)
    assert isinstance(msg, Response) and msg.status == 200, msg
    return msg


def test_call_from_teams_with_a_serverauth_only_certificate(beds: BedFactory) -> None:
    bed = beds()
    client = bed.teams_client()  # Microsoft's 2026 certificate: no clientAuth purpose
    try:
        ok = _answered_call_from_teams(bed, client, "teamscall1")
        (contact,) = ok.headers.values("contact")
        assert contact.startswith(f"<sip:callee@{CONTOSO}:{bed.teams_port};transport=tls;tsc=")
        assert (ok.headers.get("x-ms-sbc") or "").startswith("teams-sbc/")
        assert ok.headers.get("server") == "teams-sbc"
        rr = ok.headers.values("record-route")
        assert rr[:2][1] == f"<sip:{CONTOSO}:{bed.teams_port};transport=tls;lr;r2=on>"
        client.send(_in_dialog(client, "ACK", ok, "teamscall1", 1))
        client.send(_in_dialog(client, "BYE", ok, "teamscall1", 2))
        bye_ok = client.recv_until(lambda m: isinstance(m, Response) and m.cseq.method == "BYE")
        assert isinstance(bye_ok, Response) and bye_ok.status == 200
    finally:
        client.close()
    # What the carrier got: the inside address on top, the tenant's FQDN below it, Teams' RR
    # and Contact as Teams sent them.
    assert bed.uas_trace is not None
    wait_until(lambda: bed.uas_trace is not None and "BYE sip:" in bed.uas_trace.read_text(), 10,
               "the carrier's UAS to get the BYE")  # fmt: skip
    invite = _traced_invite(bed.uas_trace.read_text())
    rr = [
        line.split(":", 1)[1].strip() for line in invite if line.lower().startswith("record-route:")
    ]
    assert rr[0].startswith("<sip:127.0.0.1:") and rr[0].endswith(";lr;r2=on>")
    assert rr[1] == f"<sip:{CONTOSO}:{bed.teams_port};transport=tls;lr;r2=on>"
    assert rr[2] == "<sip:sip.pstnhub.microsoft.com:5061;transport=tls;lr>"
    contact = [line for line in invite if line.upper().startswith("CONTACT:")]
    assert contact == ["CONTACT: <sip:api-du-b.pstnhub.microsoft.com:443;x-i=abc;x-c=1/d/8/ff>"]
    scrape = bed.sbc.metrics()
    assert scrape.value("sbc_teams_calls_total", tenant="contoso", direction="from_teams") == 1


def _traced_invite(trace: str) -> list[str]:
    """The header lines of the first INVITE in a sipp message trace."""
    start = trace.index("INVITE sip:")
    head = trace[start:].split("\n\n", 1)[0]
    return [line.rstrip("\r") for line in head.split("\n")]


def test_wrong_or_missing_client_certificates_are_refused(beds: BedFactory) -> None:
    bed = beds(uas_scenario=None)
    other = DevCA(bed.tmp / "other", "untrusted")
    stranger = other.issue("stranger", MS_NAMES[0], dns_names=MS_NAMES)
    for cert in (stranger, None):
        answer = None
        try:
            client = TeamsClient("127.0.0.1", bed.teams_port, cert, bed.ca.cert_path, CONTOSO)
            try:
                # TLS 1.3: the client finishes first; the refusal arrives on the next read.
                client.send(_options_to_us(client))
                answer = client.recv(timeout=2)
            finally:
                client.close()
        except (ssl.SSLError, OSError, queue.Empty):
            pass
        assert answer is None, f"a client with {cert} got an answer"
    failures = "sbc_tls_handshake_failures_total"
    wait_until(lambda: bed.sbc.metrics().value(failures, listener="teams") >= 2, 5,
               "both handshakes counted as failed")  # fmt: skip
    # The right certificate gets through on the same listener.
    client = bed.teams_client()
    try:
        client.send(_options_to_us(client))
        ok = client.recv()
        assert isinstance(ok, Response) and ok.status == 200
    finally:
        client.close()


def _options_to_us(client: TeamsClient) -> str:
    return (
        f"OPTIONS sip:{FQDN}:5061;transport=tls SIP/2.0\r\n"
        f"VIA: SIP/2.0/TLS {client.local};branch=z9hG4bK{secrets.token_hex(4)}\r\n"
        "MAX-FORWARDS: 70\r\nFROM: <sip:sip.pstnhub.microsoft.com>;tag=o1\r\n"
        f"TO: <sip:{FQDN}>\r\nCALL-ID: {secrets.token_hex(6)}\r\nCSEQ: 1 OPTIONS\r\n"
        "CONTENT-LENGTH: 0\r\n\r\n"
    )


def test_sources_outside_the_allow_list_are_closed_before_tls(beds: BedFactory) -> None:
    bed = beds(uas_scenario=None, allow_sources=["52.112.0.0/14"])
    raw = socket.create_connection(("127.0.0.1", bed.teams_port), timeout=5)
    raw.settimeout(5)
    assert raw.recv(100) == b""  # closed without a byte of TLS
    raw.close()
    refused = "sbc_transport_source_refused_total"
    wait_until(lambda: bed.sbc.metrics().value(refused, listener="teams") == 1, 5,
               "the refusal counted")  # fmt: skip


def test_certificate_rotated_during_a_call(beds: BedFactory) -> None:
    bed = beds(uas_scenario="uas_answer.xml")
    client = bed.teams_client()
    try:
        ok = _answered_call_from_teams(bed, client, "rotate1")
        client.send(_in_dialog(client, "ACK", ok, "rotate1", 1))
        assert client.stream.peer_cert is not None
        old_serial = client.stream.peer_cert.serial_number
        renewed = bed.ca.issue("renewed", FQDN, dns_names=[FQDN, f"*.{FQDN}"])
        bed.sbc_cert.key.write_bytes(renewed.key.read_bytes())
        bed.sbc_cert.cert.write_bytes(renewed.cert.read_bytes())
        deadline = time.monotonic() + 10
        new_serial = old_serial
        while new_serial == old_serial and time.monotonic() < deadline:
            time.sleep(0.2)
            probe = bed.teams_client()
            assert probe.stream.peer_cert is not None
            new_serial = probe.stream.peer_cert.serial_number
            probe.close()
        assert new_serial != old_serial, "the renewed certificate never reached a new connection"
        # The call made before the renewal goes on over its connection: BYE and its 200.
        client.send(_in_dialog(client, "BYE", ok, "rotate1", 2))
        bye_ok = client.recv_until(lambda m: isinstance(m, Response) and m.cseq.method == "BYE")
        assert isinstance(bye_ok, Response) and bye_ok.status == 200
    finally:
        client.close()


def test_microsofts_options_are_answered_with_the_fqdn(beds: BedFactory) -> None:
    bed = beds(uas_scenario=None)
    client = bed.teams_client(sni=FQDN)
    try:
        client.send(
            f"OPTIONS sip:{FQDN}:{bed.teams_port};transport=tls SIP/2.0\r\n"
            f"VIA: SIP/2.0/TLS {client.local};branch=z9hG4bKopt1\r\nMAX-FORWARDS: 70\r\n"
            "FROM: <sip:sip.pstnhub.microsoft.com>;tag=o1\r\n"
            f"TO: <sip:{FQDN}>\r\nCALL-ID: opt1\r\nCSEQ: 1 OPTIONS\r\nCONTENT-LENGTH: 0\r\n\r\n"
        )
        resp = client.recv()
    finally:
        client.close()
    assert isinstance(resp, Response) and resp.status == 200
    assert resp.headers.get("contact") == f"<sip:{FQDN}:{bed.teams_port};transport=tls>"
    allow = resp.headers.get("allow") or ""
    assert "INVITE" in allow and "REFER" not in allow
    assert isinstance(resp, Response) and not isinstance(resp, Request)
