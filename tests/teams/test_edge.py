"""The Teams edge on the SIP core, sans-IO, on a virtual clock: recorded-style Teams messages
in, what Teams and the carrier would get out."""

from __future__ import annotations

import pytest

from teams_sbc.sip.message import Request
from teams_sbc.sip.peer import Peer
from tests.teams.bench import (
    CARRIER,
    CONTOSO,
    FAB,
    FQDN,
    SIP1,
    SIP2,
    SIP3,
    TEAMS_IN,
    Edge,
    Out,
    config,
    only,
    reply,
    requests,
    responses,
)
from tests.teams.messages import (
    CARRIER_SDP,
    TEAMS_CONTACT,
    TEAMS_RR,
    carrier_invite,
    teams_invite,
    teams_options,
)

INSIDE_RR = "<sip:10.0.0.5:5060;lr;r2=on>"
CONTOSO_RR = f"<sip:{CONTOSO}:5061;transport=tls;lr;r2=on>"
X_MS_SBC = "teams-sbc/community/0.1.0"


def contact_line(raw: bytes) -> bytes:
    return next(line for line in raw.split(b"\r\n") if line.upper().startswith(b"CONTACT:"))


# -- calls from Teams -------------------------------------------------------------------------


def test_call_from_teams_reaches_the_carrier_with_the_july_2020_record_route() -> None:
    edge = Edge()
    raw = teams_invite()
    outs = edge.from_teams(raw)
    trying = only(responses(outs))
    assert trying.status == 100 and trying.peer == TEAMS_IN
    assert trying.resp.headers.get("x-ms-sbc") == X_MS_SBC
    fwd = only(requests(outs))
    # Over 1,300 bytes: the carrier takes TCP, so TCP (RFC 3261 18.1.1).
    assert fwd.peer == Peer("tcp", "192.0.2.20", 5060) and fwd.listener == "carrier-tcp"
    inv = fwd.req
    assert inv.uri == "sip:+4930123456@192.0.2.20:5060;user=phone"
    assert inv.headers.values("record-route") == [
        "<sip:10.0.0.5:5060;transport=tcp;lr;r2=on>",  # inside, facing the carrier, on top
        CONTOSO_RR,  # the tenant's FQDN, facing Teams
        TEAMS_RR,
    ]
    # Teams' Contact is never altered: byte for byte.
    assert contact_line(fwd.raw) == contact_line(raw.encode())
    assert edge.sample("sbc_teams_calls_total", tenant="contoso", direction="from_teams") == 1


def test_answer_from_the_carrier_reaches_teams_with_the_tenant_fqdn() -> None:
    edge = Edge()
    inv = only(requests(edge.from_teams(teams_invite()))).req
    ringing = only(edge.feed(reply(inv, 180, to_tag="gw1", contact="<sip:gw@192.0.2.20>"),
                             CARRIER, "carrier"))  # fmt: skip
    assert ringing.peer == TEAMS_IN and ringing.status == 180
    extra = [
        ("Allow", "INVITE, ACK, BYE, CANCEL, REFER"),
        ("Record-Route", "<sip:192.0.2.21;lr=on>"),
    ]
    ok = only(edge.feed(
        reply(inv, 200, to_tag="gw1", contact="<sip:gw@192.0.2.20>", extra=extra,
              body=CARRIER_SDP.encode()),
        CARRIER, "carrier",
    ))  # fmt: skip
    resp = ok.resp
    assert resp.status == 200 and ok.peer == TEAMS_IN
    (contact,) = resp.headers.values("contact")
    assert contact.startswith(f"<sip:gw@{CONTOSO}:5061;transport=tls;tsc=")
    assert resp.headers.get("allow") == "INVITE, ACK, BYE, CANCEL"
    assert resp.headers.get("x-ms-sbc") == X_MS_SBC and resp.headers.get("server") == "teams-sbc"
    assert "lr=on" not in ok.raw.decode() and "<sip:192.0.2.21;lr>" in ok.raw.decode()
    # Teams ACKs and later hangs up at the Contact it was given: the carrier's URI again.
    route = f"{CONTOSO_RR}, {INSIDE_RR.replace(';lr', ';transport=tcp;lr')}"
    bye = (
        f"BYE {contact[1:-1]} SIP/2.0\r\n"
        "VIA: SIP/2.0/TLS 52.114.75.24:5061;branch=z9hG4bKbye1\r\n"
        f"ROUTE: {route}\r\n"
        "MAX-FORWARDS: 70\r\n"
        "FROM: <sip:+4930123499@sip.pstnhub.microsoft.com:5061;user=phone>;tag=3b94a1e6c7b54e1a\r\n"
        f"TO: <sip:+4930123456@{CONTOSO}:5061;user=phone>;tag=gw1\r\n"
        "CSEQ: 2 BYE\r\nCALL-ID: 8c2f0a2e1f9b5d4c8a7e6b5d4c3b2a19\r\nCONTENT-LENGTH: 0\r\n\r\n"
    )
    fwd = only(requests(edge.from_teams(bye)))
    assert fwd.req.uri == "sip:gw@192.0.2.20"
    assert fwd.peer == Peer("udp", "192.0.2.20", 5060) and "route" not in fwd.req.headers


def test_unknown_trunk_from_teams_is_refused_with_a_reason() -> None:
    edge = Edge()
    outs = edge.from_teams(teams_invite(host="nobody.sbc.carrier.example"))
    out = responses(outs)[-1]
    assert out.status == 404 and out.peer == TEAMS_IN
    assert out.resp.reason == "Not Found (no trunk nobody.sbc.carrier.example here)"
    assert edge.sample("sbc_teams_rejections_total", reason="unknown_tenant") == 1


def test_microsofts_options_get_200_with_our_fqdn_and_allow() -> None:
    edge = Edge()
    ok = only(edge.from_teams(teams_options()))
    resp = ok.resp
    assert resp.status == 200
    assert resp.headers.get("contact") == f"<sip:{FQDN}:5061;transport=tls>"
    assert "REFER" not in (resp.headers.get("allow") or "") and "INVITE" in (
        resp.headers.get("allow") or ""
    )
    assert resp.headers.get("x-ms-sbc") == X_MS_SBC and resp.headers.get("server") == "teams-sbc"
    tenant = only(edge.from_teams(teams_options(host=CONTOSO)))
    assert tenant.resp.headers.get("contact") == f"<sip:{CONTOSO}:5061;transport=tls>"


# -- calls from the carrier ---------------------------------------------------------------------


def call_to_teams(edge: Edge, **kw: str) -> tuple[Out, Out]:
    """The carrier's INVITE: (100 Trying to the carrier, the INVITE to Microsoft)."""
    outs = edge.from_carrier(carrier_invite(**kw))
    return only(responses(outs)), only(requests(outs))


def test_call_from_the_carrier_goes_to_sip_with_microsofts_name() -> None:
    edge = Edge()
    trying, fwd = call_to_teams(edge)
    assert trying.status == 100 and trying.peer == CARRIER
    assert fwd.peer == SIP1 and fwd.peer.server_name == "sip.pstnhub.microsoft.com"
    inv = fwd.req
    assert inv.uri == "sip:+4930123456@sip.pstnhub.microsoft.com:5061;user=phone;transport=tls"
    assert inv.headers.values("record-route") == [
        CONTOSO_RR,  # the tenant's FQDN on top, facing Teams
        INSIDE_RR,
        "<sip:192.0.2.21:5060;lr>",  # the carrier's Kamailio said lr=on
    ]
    (contact,) = inv.headers.values("contact")
    assert contact.startswith(f"<sip:gw@{CONTOSO}:5061;transport=tls;tsc=")
    assert inv.headers.get("from") == '"Carrier Caller" <sip:+4930999888@192.0.2.20>;tag=c4rr1er'
    assert inv.headers.get("to") == "<sip:+4930123456@10.0.0.5:5060>"
    assert inv.headers.get("allow") == "INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY"
    assert inv.headers.get("x-ms-sbc") == X_MS_SBC and inv.headers.get("user-agent") == "teams-sbc"
    assert inv.top_via.sent_by == f"{FQDN}:5061"
    assert edge.sample("sbc_teams_calls_total", tenant="contoso", direction="to_teams") == 1


def test_teams_responses_reach_the_carrier_as_it_sent_the_call() -> None:
    edge = Edge()
    _, fwd = call_to_teams(edge)
    inv = fwd.req
    busy = only(responses(edge.feed(reply(inv, 486, to_tag="t9"), SIP1, "teams")))
    assert busy.peer == CARRIER and busy.status == 486
    assert (
        busy.resp.headers.get("from") == '"Carrier Caller" <sip:030999888@192.0.2.20>;tag=c4rr1er'
    )
    assert busy.resp.headers.get("to") == "<sip:030123456@10.0.0.5:5060>;tag=t9"
    assert busy.resp.headers.get("reason") == 'Q.850;cause=17;text="User busy"'


def test_fabrikam_policy_pai_to_from_183_to_180_and_refer_kept() -> None:
    edge = Edge()
    pai = "P-Asserted-Identity: <sip:+4940555777@192.0.2.20>\n"
    _, fwd = call_to_teams(edge, called="040555123", extra=pai)
    inv = fwd.req
    assert inv.uri.startswith("sip:+4940555123@sip.pstnhub.microsoft.com")
    assert inv.headers.values("record-route")[0] == f"<sip:{FAB}:5061;transport=tls;lr;r2=on>"
    assert inv.headers.get("from") == '"Carrier Caller" <sip:+4940555777@192.0.2.20>;tag=c4rr1er'
    assert "REFER" in (inv.headers.get("allow") or "")
    progress = only(
        edge.feed(reply(inv, 183, to_tag="f3", body=CARRIER_SDP.encode()), SIP1, "teams")
    )
    assert progress.status == 180 and progress.resp.body == b""
    assert (
        progress.resp.headers.get("from")
        == '"Carrier Caller" <sip:030999888@192.0.2.20>;tag=c4rr1er'
    )


def test_unknown_number_and_tenant_header() -> None:
    edge = Edge()
    out = responses(edge.from_carrier(carrier_invite(called="08912345")))[-1]
    assert out.status == 404 and out.resp.reason == "No tenant for +498912345"
    header = Edge(config(tenant_header="X-Tenant", unknown_tenant_status=403))
    _, fwd = call_to_teams(header, called="08912345", extra="X-Tenant: fabrikam\n")
    assert fwd.req.headers.values("record-route")[0].startswith(f"<sip:{FAB}:")
    assert "x-tenant" not in fwd.req.headers
    out = responses(
        header.from_carrier(carrier_invite(branch="z9hG4bKx2", extra="X-Tenant: zz\n"))
    )[-1]
    assert out.status == 403 and out.resp.reason == "Unknown tenant 'zz'"


def test_ack_with_a_provisional_to_tag_is_repaired_before_teams() -> None:
    edge = Edge()
    _, fwd = call_to_teams(edge)
    inv = fwd.req
    edge.feed(reply(inv, 180, to_tag="fork1", contact="<sip:dev1@ms.example>"), SIP1, "teams")
    ok = only(edge.feed(reply(inv, 200, to_tag="fork2", contact=TEAMS_CONTACT), SIP1, "teams"))
    assert ok.resp.to_tag == "fork2"
    routes = f"{INSIDE_RR}, {CONTOSO_RR}, {TEAMS_RR}"  # the carrier's route set
    ack = carrier_invite(method="ACK", to_tag="fork1", sdp="", route=routes,
                         branch="z9hG4bKack").replace("ACK sip:030123456@10.0.0.5:5060",
                                                      "ACK sip:dev1@ms.example", 1)  # fmt: skip
    out = only(edge.from_carrier(ack))
    # Teams' Record-Route names its proxy: resolved by the transport, the name kept for TLS.
    assert out.peer == Peer("tls", "sip-du-a-eu.pstnhub.microsoft.com", 5061,
                            "sip-du-a-eu.pstnhub.microsoft.com")  # fmt: skip
    assert out.req.to_tag == "fork2"
    assert out.req.uri == TEAMS_CONTACT[1:-1]
    assert edge.sample("sbc_teams_ack_repairs_total") == 1


def test_hold_from_the_carrier_reaches_teams_as_inactive() -> None:
    edge = Edge()
    _, fwd = call_to_teams(edge)
    edge.feed(reply(fwd.req, 200, to_tag="t1", contact=TEAMS_CONTACT), SIP1, "teams")
    routes = f"{INSIDE_RR}, {CONTOSO_RR}, <sip:sip.pstnhub.microsoft.com:5061;transport=tls;lr>"
    hold = carrier_invite(to_tag="t1", cseq=2, route=routes, branch="z9hG4bKhold",
                          sdp=CARRIER_SDP.replace("a=sendrecv", "a=sendonly"))  # fmt: skip
    out = only(requests(edge.from_carrier(hold)))
    assert out.peer == SIP1  # a Microsoft proxy by name: its configured address
    body = out.req.body.decode()
    assert "a=inactive" in body and "a=sendonly" not in body
    # In-dialog: Teams' Contact is the Request-URI; the tenant is still known from the route.
    assert (out.req.headers.get("contact") or "").startswith(f"<sip:gw@{CONTOSO}:5061")


def test_cancel_from_the_carrier_reaches_teams() -> None:
    edge = Edge()
    _, fwd = call_to_teams(edge)
    edge.feed(reply(fwd.req, 180, to_tag="f1"), SIP1, "teams")
    cancel = carrier_invite(method="CANCEL", sdp="")
    outs = edge.from_carrier(cancel)
    assert [o.status for o in responses(outs)] == [200]
    out = only(requests(outs))
    assert out.peer == SIP1 and out.req.method == "CANCEL"
    assert out.req.uri == fwd.req.uri
    assert out.req.headers.get("x-ms-sbc") == X_MS_SBC


# -- failover -----------------------------------------------------------------------------------


def test_a_silent_proxy_is_left_after_the_failover_timeout() -> None:
    edge = Edge()
    _, first = call_to_teams(edge)
    assert first.peer == SIP1
    assert edge.advance(3.9) == []
    second = only(edge.advance(0.2))
    assert second.peer == SIP2 and second.req.uri.startswith("sip:+4930123456@sip2.pstnhub")
    assert edge.sample("sbc_teams_failovers_total", proxy="sip.pstnhub.microsoft.com") == 1
    # A late answer from the abandoned proxy goes nowhere; sip2's goes to the carrier.
    assert edge.feed(reply(first.req, 200, to_tag="late"), SIP1, "teams") == []
    ok = only(edge.feed(reply(second.req, 200, to_tag="s2", contact=TEAMS_CONTACT), SIP2, "teams"))
    assert ok.peer == CARRIER and ok.status == 200
    # sip is down now: the next call tries sip2 first, sip last.
    _, nxt = call_to_teams(edge, call_id="c2@192.0.2.20", branch="z9hG4bKc2")
    assert nxt.peer == SIP2
    status = edge.proxy.teams_status(edge.now)
    assert status["proxies"][0]["state"] == "down"  # type: ignore[index]


@pytest.mark.parametrize("status", [408, 503])
def test_408_and_503_move_on_and_retry_after_keeps_a_proxy_away(status: int) -> None:
    edge = Edge()
    _, first = call_to_teams(edge)
    extra = [("Retry-After", "120")] if status == 503 else []
    outs = edge.feed(reply(first.req, status, to_tag="x", extra=extra), SIP1, "teams")
    (ack,) = [o for o in requests(outs) if o.req.method == "ACK"]  # for the failure
    (second,) = [o for o in requests(outs) if o.req.method == "INVITE"]
    assert ack.peer == SIP1 and second.peer == SIP2
    assert ack.req.headers.get("x-ms-sbc") == X_MS_SBC
    assert second.req.top_via.branch != first.req.top_via.branch
    edge.feed(reply(second.req, 200, to_tag="s2", contact=TEAMS_CONTACT), SIP2, "teams")
    _, nxt = call_to_teams(edge, call_id="c3@192.0.2.20", branch="z9hG4bKc3")
    assert nxt.peer == SIP2
    if status == 503:  # for 120 s sip is not even tried last
        edge.feed(reply(nxt.req, 503, to_tag="y", extra=[("Retry-After", "120")]), SIP2, "teams")
        assert edge.proxy.pool["sip2.pstnhub.microsoft.com"].retry_after_until > edge.now


def test_tls_failure_moves_on_and_the_last_failure_reaches_the_carrier() -> None:
    edge = Edge()
    _, first = call_to_teams(edge)
    proxy = edge.proxy

    def fail(out: Out) -> list[Out]:
        assert out.item is not None
        proxy.send_failed(out.item, edge.now)
        return edge.take()

    second = only(requests(fail(first)))
    assert second.peer == SIP2
    third = only(requests(fail(second)))
    assert third.peer == SIP3
    final = only(fail(third))
    assert final.peer == CARRIER and final.status == 500  # 16.7: a 503 is not passed on
    assert edge.sample("sbc_teams_failovers_total", proxy="sip2.pstnhub.microsoft.com") == 1


# -- keepalive ----------------------------------------------------------------------------------


def test_options_keepalive_marks_proxies_up_and_down() -> None:
    edge = Edge(probes=True)
    probes = edge.advance(0)
    assert [o.peer for o in probes] == [SIP1, SIP2, SIP3]
    for probe in probes:
        req = probe.req
        assert req.method == "OPTIONS"
        assert req.headers.get("contact") == f"<sip:{FQDN}:5061;transport=tls>"
        assert req.headers.get("x-ms-sbc") == X_MS_SBC
    edge.advance(0.05)
    edge.feed(reply(probes[0].req, 200, to_tag="o1"), SIP1, "teams")
    edge.feed(reply(probes[1].req, 403, to_tag="o2"), SIP2, "teams")
    assert edge.advance(9.0) == []
    edge.advance(1.0)  # sip3 unanswered after 10 s
    assert edge.sample("sbc_teams_proxy_up", proxy="sip.pstnhub.microsoft.com") == 1
    assert edge.sample("sbc_teams_proxy_up", proxy="sip2.pstnhub.microsoft.com") == 0
    assert edge.sample("sbc_teams_proxy_up", proxy="sip3.pstnhub.microsoft.com") == 0
    assert edge.sample(
        "sbc_teams_proxy_rtt_seconds", proxy="sip.pstnhub.microsoft.com"
    ) == pytest.approx(0.05)
    status = edge.proxy.teams_status(edge.now)
    proxies = status["proxies"]
    assert isinstance(proxies, list)
    assert proxies[1]["last_error"] == "OPTIONS answered 403 Forbidden"
    assert proxies[2]["last_error"] == "OPTIONS unanswered after 10 s"
    # Every 60 s, again.
    again = edge.advance(50.0)
    assert [o.peer for o in again] == [SIP1, SIP2, SIP3]
    assert edge.sample("sbc_teams_options_sent_total", proxy="sip.pstnhub.microsoft.com") == 2


# -- large messages -------------------------------------------------------------------------------


def test_large_invite_to_a_udp_only_carrier_is_trimmed() -> None:
    edge = Edge(config(carrier={"next_hop": "sip:192.0.2.20:5060", "tcp_allowed": False}))
    fwd = only(requests(edge.from_teams(teams_invite())))
    assert fwd.peer == Peer("udp", "192.0.2.20", 5060)
    body = fwd.req.body.decode()
    assert "a=candidate" not in body and "SILK" not in body and "PCMA/8000" in body
    assert len(body) < 650 and contact_line(fwd.raw) == contact_line(teams_invite().encode())
    assert edge.sample("sbc_teams_sdp_trimmed_total") == 1
    # Teams' headers alone are near 1,000 bytes: still over 1,300, sent and counted.
    assert len(fwd.raw) > 1300 and edge.sample("sbc_sip_large_udp_requests_total") == 1
    whole = Edge(config(carrier={"next_hop": "sip:192.0.2.20:5060", "tcp_allowed": False},
                        policies={"default": {"trim_large_sdp": False}, "fab": {}}))  # fmt: skip
    fwd = only(requests(whole.from_teams(teams_invite())))
    assert fwd.peer.transport == "udp" and len(fwd.raw) > 1500
    assert whole.sample("sbc_sip_large_udp_requests_total") == 1


def test_requests_keep_parsing_after_edits() -> None:
    edge = Edge()
    _, fwd = call_to_teams(edge)
    assert isinstance(fwd.msg, Request)
