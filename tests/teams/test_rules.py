"""The Teams rules as pure functions: Record-Route (July 2020), `;lr`, Contact, the
normalisations, SDP trimming and hold, ACK repair, and the proxies' state machine."""

from __future__ import annotations

import itertools

from teams_sbc.sip.message import Request, Response, make_response, parse_message
from teams_sbc.teams import contact, normalise, record_route
from teams_sbc.teams.ack_repair import AckRepair, mark_worker, worker_in
from teams_sbc.teams.config import MicrosoftProxy, NumberRules
from teams_sbc.teams.proxies import Health, Outcome, ProxyPool, build_options
from teams_sbc.teams.sdp import ICE_ATTRIBUTES, hold_towards_teams, trim_for_udp
from tests.teams.messages import CARRIER_SDP, TEAMS_SDP, carrier_invite, teams_invite


def req(text: str) -> Request:
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


# -- Record-Route --------------------------------------------------------------------------------


def test_the_entry_facing_teams_names_the_tenant_fqdn() -> None:
    """The July 2020 rule: from Teams, the inside address on top and the FQDN below; to Teams
    the reverse; the core's r2=on and other parameters kept."""
    inside = "<sip:10.0.0.5:5060;lr;r2=on>"
    teams = "<sip:sbc.example:5061;transport=tls;lr;r2=on;rtpe=r1>"
    theirs = "<sip:192.0.2.21;lr>"
    from_teams = req(teams_invite())
    from_teams.headers.replace("record-route", inside, teams, theirs)
    record_route.tenant_fqdn_in_record_route(from_teams, 2, True, "t.sbc.example")
    assert from_teams.headers.values("record-route") == [
        inside,
        "<sip:t.sbc.example:5061;transport=tls;lr;r2=on;rtpe=r1>",
        theirs,
    ]
    to_teams = req(carrier_invite())
    to_teams.headers.replace("record-route", teams, inside, theirs)
    record_route.tenant_fqdn_in_record_route(to_teams, 2, False, "t.sbc.example")
    assert to_teams.headers.values("record-route")[:2] == [
        "<sip:t.sbc.example:5061;transport=tls;lr;r2=on;rtpe=r1>",
        inside,
    ]
    one = req(carrier_invite())
    one.headers.replace("record-route", "<sip:sbc.example:5061;transport=tls;lr>")
    record_route.tenant_fqdn_in_record_route(one, 1, False, "t.sbc.example")
    assert one.headers.values("record-route") == ["<sip:t.sbc.example:5061;transport=tls;lr>"]


def test_lr_on_is_rewritten_and_good_entries_keep_their_bytes() -> None:
    msg = req(carrier_invite(extra="Route: <sip:192.0.2.30;lr=on;x=1>\n"))
    assert record_route.full_lr_to_lr(msg) == 2
    assert msg.headers.values("record-route") == ["<sip:192.0.2.21:5060;lr>"]
    assert msg.headers.values("route") == ["<sip:192.0.2.30;lr;x=1>"]
    assert record_route.full_lr_to_lr(msg) == 0
    fine = req(teams_invite())
    before = fine.to_bytes()
    assert record_route.full_lr_to_lr(fine) == 0 and fine.to_bytes() == before


# -- Contact ----------------------------------------------------------------------------------


def test_contact_towards_teams_round_trips_through_the_request_uri() -> None:
    msg = req(carrier_invite())
    assert contact.contact_towards_teams(msg, "contoso.sbc.example", 5061)
    (value,) = msg.headers.values("contact")
    assert value.startswith("<sip:gw@contoso.sbc.example:5061;transport=tls;tsc=")
    # Teams sends its BYE to that Contact; the carrier's URI comes back.
    uri = value[1:-1]
    bye = req(
        carrier_invite(method="BYE", to_tag="x").replace(
            "BYE sip:030123456@10.0.0.5:5060", f"BYE {uri}", 1
        )
    )
    assert contact.restore_request_uri(bye)
    assert bye.uri == "sip:gw@192.0.2.20:5060"
    assert not contact.restore_request_uri(bye)  # nothing of ours left
    # Already our FQDN: left alone.
    assert not contact.contact_towards_teams(msg, "contoso.sbc.example", 5061)


def test_a_forged_contact_parameter_is_ignored() -> None:
    bye = req(
        carrier_invite(method="BYE", to_tag="x").replace(
            "BYE sip:030123456@10.0.0.5:5060", "BYE sip:x@t.example;tsc=!!!", 1
        )
    )
    assert not contact.restore_request_uri(bye)


# -- normalisations -------------------------------------------------------------------------


def test_refer_is_stripped_from_allow() -> None:
    msg = req(carrier_invite())
    assert normalise.strip_refer(msg)
    assert msg.headers.get("allow") == "INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY"
    assert not normalise.strip_refer(msg)


def test_numbers_to_e164_in_request_uri_from_to_and_pai() -> None:
    msg = req(carrier_invite(extra="P-Asserted-Identity: <sip:030555@192.0.2.20>\n"))
    assert normalise.numbers_to_e164(msg, NumberRules(country_code="49"))
    assert msg.uri == "sip:+4930123456@10.0.0.5:5060;user=phone"
    assert msg.headers.get("from") == '"Carrier Caller" <sip:+4930999888@192.0.2.20>;tag=c4rr1er'
    assert msg.headers.get("to") == "<sip:+4930123456@10.0.0.5:5060>"
    assert msg.headers.get("p-asserted-identity") == "<sip:+4930555@192.0.2.20>"


def test_pai_to_from_and_back_for_the_carrier() -> None:
    original = req(carrier_invite(extra="P-Asserted-Identity: <tel:+4930555>\n"))
    msg = original.copy()
    assert normalise.pai_to_from(msg)
    assert msg.headers.get("from") == '"Carrier Caller" <sip:+4930555@192.0.2.20>;tag=c4rr1er'
    resp = make_response(msg, 200, to_tag="t1")
    assert normalise.restore_from_to(resp, original)
    assert resp.headers.get("from") == original.headers.get("from")
    assert resp.headers.get("to") == "<sip:030123456@10.0.0.5:5060>;tag=t1"


def test_busy_gets_q850_cause_17_unless_teams_gave_one() -> None:
    busy = make_response(req(carrier_invite()), 486, to_tag="t")
    assert normalise.busy_cause_17(busy)
    assert busy.headers.get("reason") == 'Q.850;cause=17;text="User busy"'
    same = make_response(req(carrier_invite()), 486, to_tag="t",
                         extra_headers=[("Reason", 'Q.850;cause=17;text="abc"')])  # fmt: skip
    assert not normalise.busy_cause_17(same)
    reason = [("REASON", 'Q.850;cause=34;text="c0ffee;busy"')]
    teams = make_response(req(carrier_invite()), 486, to_tag="t", extra_headers=reason)
    assert normalise.busy_cause_17(teams)
    assert teams.headers.values("reason") == ['Q.850;cause=17;text="c0ffee;busy"']


def test_183_with_sdp_becomes_180() -> None:
    progress = make_response(req(carrier_invite()), 183, to_tag="t")
    progress.headers.set("Content-Type", "application/sdp")
    progress.body = CARRIER_SDP.encode()
    assert normalise.early_media_to_ringing(progress)
    raw = progress.to_bytes()
    assert raw.startswith(b"SIP/2.0 180 Ringing\r\n")
    assert b"Content-Length: 0\r\n" in raw and b"content-type" not in raw.lower()


def test_identify_sets_x_ms_sbc_and_user_agent_or_server() -> None:
    msg = req(carrier_invite())
    normalise.identify(msg, "teams-sbc", "teams-sbc/community/0.1.0")
    assert msg.headers.get("x-ms-sbc") == "teams-sbc/community/0.1.0"
    assert msg.headers.get("user-agent") == "teams-sbc"
    assert msg.headers.keys()[-1] == "content-length"
    resp: Response = make_response(msg, 200, to_tag="x")
    normalise.identify(resp, "teams-sbc", "x")
    assert resp.headers.get("server") == "teams-sbc" and "user-agent" not in resp.headers


# -- SDP ----------------------------------------------------------------------------------


def test_hold_towards_teams_is_inactive() -> None:
    assert "a=inactive" in hold_towards_teams(CARRIER_SDP.replace("a=sendrecv", "a=sendonly"))
    held = hold_towards_teams(CARRIER_SDP.replace("c=IN IP4 192.0.2.20", "c=IN IP4 0.0.0.0"))
    assert "0.0.0.0" not in held and "c=IN IP4 192.0.2.20" in held
    assert "a=inactive" in held and "a=sendrecv" not in held
    assert hold_towards_teams(CARRIER_SDP) == CARRIER_SDP


def test_trim_for_udp_drops_ice_and_codecs_the_carrier_does_not_take() -> None:
    trimmed = trim_for_udp(TEAMS_SDP, ["PCMU", "PCMA", "G722", "telephone-event", "CN"])
    assert len(trimmed) < len(TEAMS_SDP) / 2
    assert "m=audio 50012 RTP/SAVP 9 0 8 13 118 101" in trimmed
    assert "SILK" not in trimmed and "G729" not in trimmed and "fmtp:18" not in trimmed
    assert not any(line[2:].split(":")[0] in ICE_ATTRIBUTES
                   for line in trimmed.splitlines() if line.startswith("a="))  # fmt: skip
    assert "a=crypto:2 AES_CM_128_HMAC_SHA1_80" in trimmed and "a=rtcp-mux" in trimmed
    # Nothing wanted in a section: it stays whole rather than empty.
    assert "m=audio 50012 RTP/SAVP 104 9" in trim_for_udp(TEAMS_SDP, ["AMR"])


# -- ACK repair -------------------------------------------------------------------------------


def test_ack_with_a_provisional_tag_gets_the_2xx_tag() -> None:
    invite = req(carrier_invite())
    repair = AckRepair(lifetime=32.0)
    for status, tag in ((180, "fork1"), (183, "fork3"), (200, "fork2")):
        resp = make_response(invite, status, to_tag=tag)
        if status == 200:
            resp.headers.append("Contact", "<sip:teams@ms.example;x-i=1>")
        repair.note_response(resp, 10.0)
    ack = req(carrier_invite(method="ACK", to_tag="fork1", sdp=""))
    fixed = repair.repair(ack, 11.0)
    assert fixed is not None and fixed.right_tag == "fork2" and fixed.was_provisional
    assert ack.to_tag == "fork2" and ack.uri == "sip:teams@ms.example;x-i=1"
    assert repair.repair(ack, 11.0) is None  # right now
    late = req(carrier_invite(method="ACK", to_tag="fork1", sdp=""))
    assert repair.repair(late, 43.0) is None  # forgotten after its lifetime
    assert len(repair) == 0 and repair.repairs == 1


def test_the_worker_mark_rides_in_our_record_route_and_comes_back_in_the_route() -> None:
    """With workers: the carrier-facing entry (the second of our two) names the worker; the
    entries above and below keep their bytes; the carrier's Route carries it back."""
    invite = req(carrier_invite())
    invite.headers.prepend("Record-Route", "<sip:10.0.0.1:5060;lr;r2=on>")
    invite.headers.prepend("Record-Route", "<sip:sbc.example.com:5061;transport=tls;lr;r2=on>")
    invite.headers.append("Record-Route", "<sip:carrier.example.net;lr>, <sip:x.example;lr>")
    before = invite.headers.values("record-route")
    mark_worker(invite, 1, 3)
    after = invite.headers.values("record-route")
    assert after[:2] == [
        "<sip:sbc.example.com:5061;transport=tls;lr;r2=on>",
        "<sip:10.0.0.1:5060;lr;r2=on;sbcw=3>",
    ]
    assert after[2:] == before[2:] and after[-2:] == ["<sip:carrier.example.net;lr>",
                                                      "<sip:x.example;lr>"]  # fmt: skip
    routes = list(reversed(invite.headers.values("record-route")))
    assert worker_in(routes) == 3
    assert worker_in(["<sip:10.0.0.1:5060;lr>"]) is None
    assert worker_in(["<sip:10.0.0.1:5060;lr;sbcw=>"]) is None  # no digits: no worker


# -- Microsoft's proxies ------------------------------------------------------------------------


def test_proxy_state_machine_and_failover_order() -> None:
    proxies = tuple(MicrosoftProxy(name=f"sip{n}.example.com") for n in ("", "2", "3"))
    pool = ProxyPool(proxies, interval=60, timeout=10, retry_after_max=300)
    first, second, third = pool.states
    assert [s.name for s in pool.due_probes(0.0)] == [s.name for s in pool.states]
    assert pool.due_probes(30.0) == [] and pool.next_deadline() == 10.0
    assert pool.probe_answered(first, 200, "OK", 0.25) and first.health is Health.UP
    assert first.rtt == 0.25
    assert pool.probe_answered(second, 403, "Forbidden", 0.3)
    assert second.health is Health.DOWN and second.last_error == "OPTIONS answered 403 Forbidden"
    assert [s.name for s in pool.overdue_probes(10.0)] == [third.name]
    assert pool.probe_failed(third, "timeout", 10.0) and third.health is Health.DOWN
    assert [s.name for s in pool.order(11.0)] == [first.name, second.name, third.name]
    pool.record(first, Outcome.FAILED, 12.0, "503")
    pool.retry_after(second, 120, 12.0)
    assert [s.name for s in pool.order(13.0)] == [first.name, third.name]  # down ones last
    assert [s.name for s in pool.order(133.0)] == [first.name, second.name, third.name]
    assert pool.next_deadline() == 60.0
    status = first.status(13.0)
    assert status["state"] == "down" and status["rtt_ms"] == 250.0


def test_workers_options_go_in_slots_of_their_own_evenly_spaced() -> None:
    """Three workers, interval 60: each probes at once when it starts, then on its own slot
    (0, 20, 40 s past each minute of the shared monotonic clock), every 60 s: the SBC's
    OPTIONS to the proxy are 20 s apart, not three at once."""
    proxy = (MicrosoftProxy(name="sip.example.com"),)
    pools = [ProxyPool(proxy, interval=60, timeout=10, retry_after_max=300) for _ in range(3)]
    for index, pool in enumerate(pools):
        pool.stagger(index, 3)
    sent: list[tuple[float, int]] = []
    for tick in range(0, 3000):  # 0.1 s steps, 300 s; the workers started at 1000.3 s
        now = 1000.3 + tick / 10
        for index, pool in enumerate(pools):
            for state in pool.due_probes(now):
                sent.append((round(now, 1), index))
                pool.probe_answered(state, 200, "OK", now + 0.05)
    assert sent[:3] == [(1000.3, 0), (1000.3, 1), (1000.3, 2)]  # first, at once
    later = sent[3:]
    assert [round(t % 60, 1) for t, _ in later[:6]] == [20.0, 40.0, 0.0, 20.0, 40.0, 0.0]
    assert [i for _, i in later[:6]] == [1, 2, 0, 1, 2, 0]
    gaps = {round(b - a, 1) for (a, _), (b, _) in itertools.pairwise(later)}
    assert gaps == {20.0}
    for index in range(3):  # each worker still probes every interval (its own first-hand view)
        mine = [t for t, i in later if i == index]
        assert {round(b - a, 1) for a, b in itertools.pairwise(mine)} == {60.0}
    # The first slot after a start is at least half an interval away: no double probe.
    assert all(later[i][0] - 1000.3 >= 30 for i in range(3))


def test_a_single_process_keeps_its_plain_interval() -> None:
    pool = ProxyPool((MicrosoftProxy(name="sip.example.com"),), 60, 10, 300)
    pool.stagger(0, 1)
    (state,) = pool.due_probes(7.5)
    assert state.next_probe_at == 67.5


def test_options_keepalive_names_the_fqdn() -> None:
    opt = build_options(
        MicrosoftProxy(name="sip.pstnhub.microsoft.com"), "sbc.example.com", 5061,
        "SIP/2.0/TLS sbc.example.com:5061;branch=z9hG4bKtsx", "cid", "tag", [],
    )  # fmt: skip
    assert opt.uri == "sip:sip.pstnhub.microsoft.com:5061;transport=tls"
    assert opt.headers.get("contact") == "<sip:sbc.example.com:5061;transport=tls>"
    assert opt.headers.get("to") == "<sip:sip.pstnhub.microsoft.com>"
    assert opt.headers.get("from") == "<sip:sbc.example.com:5061>;tag=tag"
