"""The proxy's media step, sans-IO, on the virtual clock: an INVITE, a 183/200 with SDP, a BYE
or a failed INVITE queue rtpengine commands in ``proxy.media_commands``; the test plays the
driver and feeds each result back with ``proxy.media_done(id, result, now)``.

The cast is tests/sip/test_proxy.py's: the caller (a carrier) at 192.0.2.10 reaches the SBC
on listener "a" (10.0.0.1); the callee (Teams, in these tests) at 192.0.2.20:5080 is reached
from listener "b" (10.0.0.2), which the media section says faces Teams.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from teams_sbc.config import SbcConfig, parse_config
from teams_sbc.media.commands import Failure, MediaCommand, MediaResult, Op
from teams_sbc.media.legs import Leg
from teams_sbc.sip.message import Request, make_response
from teams_sbc.sip.peer import Peer
from tests.sip.test_proxy import (
    SBC_A,
    SBC_B,
    UAC,
    UAS,
    UAS_CONTACT,
    Bench,
    Out,
    only,
    sip,
    statuses,
)

CARRIER_SDP = (
    "v=0\r\no=carrier 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
)
TEAMS_SDP = (
    "v=0\r\no=- 1 1 IN IP4 192.0.2.20\r\ns=session\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n"
    "m=audio 50000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:KEY\r\n"
)
#: What "rtpengine" hands back: recognisable, and of another length than what went in.
TO_TEAMS = "v=0\r\no=rtpengine 1 1 IN IP4 10.9.9.9\r\nm=audio 30000 RTP/SAVP 0\r\n"
TO_CARRIER = "v=0\r\no=rtpengine 2 1 IN IP4 10.9.9.9\r\nm=audio 30002 RTP/AVP 0\r\n"
TOKEN = "r1"
DEADLINE = 0.5 + 1.0 + 2.0 + 1.0  # the default retransmission schedule, and a second


def media_config(**media: Any) -> SbcConfig:
    return parse_config(
        {
            "listeners": [
                {"name": "a", "transport": "udp", "host": "10.0.0.1", "port": 5060},
                {"name": "b", "transport": "udp", "host": "10.0.0.2", "port": 5060},
            ],
            "routes": [
                {
                    "name": "teams",
                    "next_hop": "sip:192.0.2.20:5080",
                    "listener": "b",
                    "from_listeners": ["a"],
                },
            ],
            "media": {
                "rtpengines": [{"address": "127.0.0.1:2223", "token": TOKEN}],
                "teams_listeners": ["b"],
                **media,
            },
        }
    )


class MediaBench(Bench):
    def __init__(self, cfg: SbcConfig | None = None) -> None:
        super().__init__(cfg or media_config())

    def commands(self) -> list[MediaCommand]:
        out, self.proxy.media_commands = self.proxy.media_commands, []
        return out

    def command(self, op: Op | None = None) -> MediaCommand:
        (cmd,) = self.commands()
        if op is not None:
            assert cmd.op is op, cmd
        return cmd

    def done(self, cmd: MediaCommand, **result: Any) -> list[Out]:
        self.proxy.media_done(cmd.id, MediaResult(**result), self.now)
        return self.take()


@pytest.fixture
def bench() -> MediaBench:
    return MediaBench()


def sdp_invite(
    *,
    sdp: str | None = CARRIER_SDP,
    call_id: str = "call-1",
    branch: str | None = None,
    to_tag: str | None = None,
    ruri: str = f"sip:+15550100@{SBC_A}",
    routes: list[str] = (),  # type: ignore[assignment]
    cseq: int = 1,
    from_callee: bool = False,
) -> bytes:
    branch = branch or "z9hG4bK" + secrets.token_hex(6)
    if from_callee:
        via, from_, to = "192.0.2.20:5080", "<sip:b@x>;tag=callee1", "<sip:a@y>;tag=caller1"
        contact = UAS_CONTACT
    else:
        via, from_ = "192.0.2.10:5060", "<sip:alice@192.0.2.10>;tag=caller1"
        to = f"<sip:+15550100@{SBC_A}>" + (f";tag={to_tag}" if to_tag else "")
        contact = "<sip:alice@192.0.2.10:5060>"
    body = sdp or ""
    ctype = "Content-Type: application/sdp\n" if sdp else ""
    route_lines = "".join(f"Route: {r}\n" for r in routes)
    head = sip(
        f"INVITE {ruri} SIP/2.0\nVia: SIP/2.0/UDP {via};branch={branch}\n{route_lines}"
        f"Max-Forwards: 70\nFrom: {from_}\nTo: {to}\nCall-ID: {call_id}\nCSeq: {cseq} INVITE\n"
        f"Contact: {contact}\n{ctype}Content-Length: {len(body)}\n\n"
    )
    return head + body.encode()


def reply(request: Request, status: int, sdp: str | None = None, to_tag: str = "callee1") -> bytes:
    extra = [("Contact", UAS_CONTACT)] if status < 300 else []
    if sdp is not None:
        extra.append(("Content-Type", "application/sdp"))
    resp = make_response(request, status, to_tag=to_tag, extra_headers=extra)
    if sdp is not None:
        resp.body = sdp.encode()
    return resp.to_bytes()


def offer_through(bench: MediaBench, **invite_kw: Any) -> Out:
    """The caller's INVITE, its offer answered by rtpengine: the INVITE as forwarded."""
    outs = bench.feed(sdp_invite(**invite_kw))
    assert statuses(outs) == [100]
    offer = bench.command(Op.OFFER)
    return only(bench.done(offer, sdp=TO_TEAMS, relay=TOKEN))


def answered(bench: MediaBench, fwd: Out, status: int = 200) -> Out:
    """The callee's response with SDP, through rtpengine: the response as relayed upstream."""
    assert not bench.feed(reply(fwd.req, status, TEAMS_SDP), UAS, "b")
    answer = bench.command(Op.ANSWER)
    return only(bench.done(answer, sdp=TO_CARRIER, relay=TOKEN), peer=UAC)


# -- the offer ------------------------------------------------------------------------------------


def test_invite_with_sdp_waits_for_the_offer_then_goes_on_with_rtpengines_sdp(
    bench: MediaBench,
) -> None:
    outs = bench.feed(sdp_invite())
    assert statuses(outs) == [100]  # 16.2: Trying at once; nothing forwarded yet
    offer = bench.command(Op.OFFER)
    assert (offer.call_id, offer.from_tag, offer.to_tag) == ("call-1", "caller1", None)
    assert offer.relay is None  # a new call: the driver picks an instance
    assert offer.towards is Leg.TEAMS  # the INVITE leaves by "b", the Teams side
    assert offer.sdp == CARRIER_SDP
    assert bench.sample("sbc_media_parked") == 1

    fwd = only(bench.done(offer, sdp=TO_TEAMS, relay=TOKEN), peer=UAS, listener="b")
    req = fwd.req
    assert req.body == TO_TEAMS.encode()
    assert req.content_length == len(TO_TEAMS)
    # The instance's token rides in both Record-Route entries, so any replica finds it.
    assert req.headers.values("record-route") == [
        f"<sip:{SBC_B};lr;r2=on;rtpe={TOKEN}>",
        f"<sip:{SBC_A};lr;r2=on;rtpe={TOKEN}>",
    ]
    assert bench.sample("sbc_media_parked") == 0


def test_retransmitted_invite_while_parked_gets_trying_again_and_no_second_offer(
    bench: MediaBench,
) -> None:
    branch = "z9hG4bKretrans1"
    bench.feed(sdp_invite(branch=branch))
    offer = bench.command(Op.OFFER)
    assert statuses(bench.feed(sdp_invite(branch=branch))) == [100]
    assert bench.commands() == []
    assert only(bench.done(offer, sdp=TO_TEAMS, relay=TOKEN)).peer == UAS


def test_no_media_section_no_commands() -> None:
    plain = Bench(
        parse_config(
            {
                "listeners": [{"name": "a", "transport": "udp", "host": "10.0.0.1", "port": 5060}],
                "routes": [{"name": "uas", "next_hop": "sip:192.0.2.20:5080"}],
            }
        )
    )
    outs = plain.feed(sdp_invite())
    fwd = only([o for o in outs if not o.is_response])
    assert fwd.req.body == CARRIER_SDP.encode()
    assert plain.proxy.media_commands == []


def test_no_rtpengine_gives_503_with_retry_after(bench: MediaBench) -> None:
    bench.feed(sdp_invite())
    offer = bench.command(Op.OFFER)
    outs = bench.done(offer, failure=Failure.UNAVAILABLE, reason="no rtpengine is up")
    rejected = only(outs, peer=UAC).resp
    assert rejected.status == 503 and rejected.headers.get("retry-after") == "10"
    assert bench.commands() == []  # no instance was chosen: nothing to delete
    assert bench.sample("sbc_media_calls_rejected_total", status="503") == 1


def test_offer_timeout_gives_503_and_deletes_what_rtpengine_may_have_made(
    bench: MediaBench,
) -> None:
    bench.feed(sdp_invite())
    offer = bench.command(Op.OFFER)
    outs = bench.done(offer, failure=Failure.UNAVAILABLE, reason="no answer", relay=TOKEN)
    assert statuses(outs) == [503]
    delete = bench.command(Op.DELETE)
    assert (delete.call_id, delete.from_tag, delete.relay) == ("call-1", "caller1", TOKEN)


def test_rtpengine_refusing_the_sdp_gives_488_with_its_reason(bench: MediaBench) -> None:
    bench.feed(sdp_invite())
    offer = bench.command(Op.OFFER)
    outs = bench.done(offer, failure=Failure.REFUSED, reason='Failed to parse "SDP"', relay=TOKEN)
    rejected = only(outs).resp
    assert rejected.status == 488
    assert rejected.headers.get("warning") == '399 teams-sbc "Failed to parse  SDP "'


def test_ports_exhausted_is_503_not_488(bench: MediaBench) -> None:
    bench.feed(sdp_invite())
    offer = bench.command(Op.OFFER)
    outs = bench.done(offer, failure=Failure.REFUSED, reason="Ran out of ports", relay=TOKEN)
    assert statuses(outs) == [503]


def test_parked_invite_does_not_leak_when_the_driver_never_answers(bench: MediaBench) -> None:
    """The core's own deadline: the ng schedule (3.5 s) and a second, then 503. A success that
    arrives after that is undone with a delete, or rtpengine would keep the session."""
    bench.feed(sdp_invite())
    offer = bench.command(Op.OFFER)
    assert bench.advance(DEADLINE - 0.01) == []
    outs = bench.advance(0.02)
    assert statuses(outs) == [503]
    assert bench.sample("sbc_media_parked") == 0
    assert bench.done(offer, sdp=TO_TEAMS, relay=TOKEN) == []  # late: not forwarded...
    delete = bench.command(Op.DELETE)  # ...but deleted
    assert (delete.call_id, delete.relay) == ("call-1", TOKEN)
    # The INVITE server transaction ends as any other does after a final response.
    bench.advance(40)
    assert bench.proxy.transaction_count() == 0


def test_cancel_while_parked_ends_the_invite_and_deletes_the_late_offer(
    bench: MediaBench,
) -> None:
    branch = "z9hG4bKcancelme"
    bench.feed(sdp_invite(branch=branch))
    offer = bench.command(Op.OFFER)
    cancel = sip(
        f"CANCEL sip:+15550100@{SBC_A} SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch={branch}\n"
        "Max-Forwards: 70\nFrom: <sip:alice@192.0.2.10>;tag=caller1\n"
        f"To: <sip:+15550100@{SBC_A}>\nCall-ID: call-1\nCSeq: 1 CANCEL\nContent-Length: 0\n\n"
    )
    outs = bench.feed(cancel)
    assert sorted(statuses(outs)) == [200, 487]
    assert bench.done(offer, sdp=TO_TEAMS, relay=TOKEN) == []
    assert bench.command(Op.DELETE).relay == TOKEN


# -- the answer -----------------------------------------------------------------------------------


def test_early_media_183_and_the_200_each_get_an_answer_in_order(bench: MediaBench) -> None:
    fwd = offer_through(bench)
    # Teams' 183 with SDP goes to rtpengine; the 180 and the 200 behind it wait their turn.
    assert bench.feed(reply(fwd.req, 183, TEAMS_SDP), UAS, "b") == []
    answer = bench.command(Op.ANSWER)
    assert (answer.call_id, answer.from_tag, answer.to_tag) == ("call-1", "caller1", "callee1")
    assert answer.relay == TOKEN and answer.towards is Leg.CARRIER
    assert bench.feed(reply(fwd.req, 180), UAS, "b") == []
    assert bench.feed(reply(fwd.req, 200, TEAMS_SDP + "a=x:1\r\n"), UAS, "b") == []
    assert bench.commands() == []  # one command at a time per INVITE

    outs = bench.done(answer, sdp=TO_CARRIER, relay=TOKEN)
    assert statuses(outs) == [183, 180]
    assert outs[0].resp.body == TO_CARRIER.encode()
    second = bench.command(Op.ANSWER)
    assert second.sdp == TEAMS_SDP + "a=x:1\r\n"
    (ok,) = bench.done(second, sdp=TO_CARRIER + "a=y:2\r\n", relay=TOKEN)
    assert ok.status == 200 and ok.resp.body == (TO_CARRIER + "a=y:2\r\n").encode()


def test_retransmitted_200_gets_the_same_answer_without_a_command(bench: MediaBench) -> None:
    fwd = offer_through(bench)
    first = answered(bench, fwd)
    again = only(bench.feed(reply(fwd.req, 200, TEAMS_SDP), UAS, "b"), peer=UAC)
    assert again.resp.body == first.resp.body == TO_CARRIER.encode()
    assert bench.commands() == []


def test_answer_failure_keeps_the_call_alive(bench: MediaBench) -> None:
    """A 183 goes on without its SDP (ringing, no early media); a 2xx with the callee's own SDP
    (a proxy cannot take back a 2xx)."""
    fwd = offer_through(bench)
    bench.feed(reply(fwd.req, 183, TEAMS_SDP), UAS, "b")
    answer = bench.command(Op.ANSWER)
    ringing = only(bench.done(answer, failure=Failure.UNAVAILABLE, reason="no answer")).resp
    assert ringing.status == 183 and ringing.body == b""
    assert "content-type" not in ringing.headers
    bench.feed(reply(fwd.req, 200, TEAMS_SDP), UAS, "b")
    answer = bench.command(Op.ANSWER)
    ok = only(bench.done(answer, failure=Failure.UNAVAILABLE, reason="no answer")).resp
    assert ok.status == 200 and ok.body == TEAMS_SDP.encode()
    assert bench.sample("sbc_media_answers_unanchored_total") == 2
    assert bench.commands() == []  # nothing deleted: the call is up


def test_rejected_call_deletes_its_media(bench: MediaBench) -> None:
    fwd = offer_through(bench)
    outs = bench.feed(reply(fwd.req, 486), UAS, "b")
    busy = [o for o in outs if o.is_response]
    assert statuses(busy) == [486]
    delete = bench.command(Op.DELETE)
    assert (delete.call_id, delete.from_tag, delete.relay) == ("call-1", "caller1", TOKEN)


def test_callee_timeout_deletes_the_media(bench: MediaBench) -> None:
    offer_through(bench)
    outs = bench.advance(40)  # timer B: nobody answers the INVITE
    assert 408 in statuses([o for o in outs if o.is_response])
    assert bench.command(Op.DELETE).relay == TOKEN


# -- in the dialog --------------------------------------------------------------------------------


def our_routes() -> list[str]:
    """The caller's route set: our Record-Route entries reversed (12.1.2)."""
    return [f"<sip:{SBC_A};lr;r2=on;rtpe={TOKEN}>", f"<sip:{SBC_B};lr;r2=on;rtpe={TOKEN}>"]


def bye(*, from_callee: bool = False, routes: list[str] | None = None, cseq: int = 2) -> bytes:
    caller, callee = "<sip:a@y>;tag=caller1", "<sip:b@x>;tag=callee1"
    if from_callee:
        via, from_, to, ruri = "192.0.2.20:5080", callee, caller, "sip:alice@192.0.2.10:5060"
        routes = list(reversed(our_routes())) if routes is None else routes
    else:
        via, from_, to, ruri = "192.0.2.10:5060", caller, callee, "sip:bob@192.0.2.20:5080"
        routes = our_routes() if routes is None else routes
    route_lines = "".join(f"Route: {r}\n" for r in routes)
    return sip(
        f"BYE {ruri} SIP/2.0\nVia: SIP/2.0/UDP {via};branch=z9hG4bK{secrets.token_hex(5)}\n"
        f"{route_lines}Max-Forwards: 70\nFrom: {from_}\nTo: {to}\nCall-ID: call-1\n"
        f"CSeq: {cseq} BYE\nContent-Length: 0\n\n"
    )


def test_bye_is_forwarded_at_once_and_deletes_at_the_instance_in_its_route(
    bench: MediaBench,
) -> None:
    """Any replica: this proxy never saw the call; the token in the Route says where it is."""
    down = only(bench.feed(bye()), peer=UAS, listener="b")
    assert down.req.method == "BYE" and "route" not in down.req.headers
    delete = bench.command(Op.DELETE)
    assert (delete.call_id, delete.from_tag, delete.relay) == ("call-1", "caller1", TOKEN)


def test_bye_without_a_token_deletes_at_every_instance() -> None:
    """A UA that ignores Record-Route sends its BYE with no Route: the call's instance is not
    known, and a session must not outlive its call, so each instance gets the delete."""
    bench = MediaBench(
        media_config(rtpengines=[{"address": "127.0.0.1:2223", "token": TOKEN},
                                 {"address": "127.0.0.1:2224", "token": "r2"}])
    )  # fmt: skip
    routes = [f"<sip:{SBC_A};lr;r2=on>", f"<sip:{SBC_B};lr;r2=on>"]
    assert only(bench.feed(bye(routes=routes))).peer == UAS
    deletes = bench.commands()
    assert [(d.op, d.relay) for d in deletes] == [(Op.DELETE, TOKEN), (Op.DELETE, "r2")]


def test_reinvite_offers_to_the_dialogs_instance(bench: MediaBench) -> None:
    outs = bench.feed(
        sdp_invite(sdp=TEAMS_SDP, from_callee=True, routes=list(reversed(our_routes())),
                   ruri="sip:alice@192.0.2.10:5060", cseq=7),
        UAS,
        "b",
    )  # fmt: skip
    assert statuses(outs) == [100]
    offer = bench.command(Op.OFFER)
    assert offer.relay == TOKEN  # stuck to the instance the Record-Route names
    assert (offer.from_tag, offer.to_tag) == ("callee1", "caller1")
    assert offer.towards is Leg.CARRIER  # the re-INVITE leaves by "a", the carrier side
    fwd = only(bench.done(offer, sdp=TO_CARRIER, relay=TOKEN), peer=UAC, listener="a")
    assert fwd.req.body == TO_CARRIER.encode()
    assert "record-route" not in fwd.req.headers  # inside a dialog: no new Record-Route
    # The caller's 200 (its answer) goes to rtpengine towards Teams, then to the callee.
    resp = make_response(fwd.req, 200, extra_headers=[("Content-Type", "application/sdp")])
    resp.body = CARRIER_SDP.encode()
    assert bench.feed(resp.to_bytes(), UAC, "a") == []
    answer = bench.command(Op.ANSWER)
    assert (answer.from_tag, answer.to_tag, answer.towards) == ("callee1", "caller1", Leg.TEAMS)
    ok = only(bench.done(answer, sdp=TO_TEAMS, relay=TOKEN), peer=Peer("udp", "192.0.2.20", 5080))
    assert ok.resp.body == TO_TEAMS.encode()


def test_failed_reinvite_offer_keeps_the_call(bench: MediaBench) -> None:
    bench.feed(sdp_invite(to_tag="callee1", routes=our_routes(), ruri="sip:bob@192.0.2.20:5080"))
    offer = bench.command(Op.OFFER)
    outs = bench.done(offer, failure=Failure.UNAVAILABLE, reason="no answer", relay=TOKEN)
    rejected = only(outs).resp
    assert rejected.status == 500 and rejected.headers.get("retry-after") == "10"
    assert bench.commands() == []  # no delete: the session stays as it was (14.2)


def test_reinvite_without_a_token_goes_to_the_only_instance(bench: MediaBench) -> None:
    routes = [f"<sip:{SBC_A};lr;r2=on>", f"<sip:{SBC_B};lr;r2=on>"]
    bench.feed(sdp_invite(to_tag="callee1", routes=routes, ruri="sip:bob@192.0.2.20:5080"))
    assert bench.command(Op.OFFER).relay == TOKEN


def test_reinvite_without_a_token_passes_untouched_when_the_instance_is_unknown() -> None:
    bench = MediaBench(
        media_config(rtpengines=[{"address": "127.0.0.1:2223", "token": TOKEN},
                                 {"address": "127.0.0.1:2224", "token": "r2"}])
    )  # fmt: skip
    routes = [f"<sip:{SBC_A};lr;r2=on>", f"<sip:{SBC_B};lr;r2=on>"]
    outs = bench.feed(sdp_invite(to_tag="callee1", routes=routes, ruri="sip:bob@192.0.2.20:5080"))
    fwd = only([o for o in outs if not o.is_response])
    assert fwd.req.body == CARRIER_SDP.encode()
    assert bench.commands() == []


# -- media timeout --------------------------------------------------------------------------------


def test_media_timeout_sends_both_parties_a_bye_with_a_reason(bench: MediaBench) -> None:
    fwd = offer_through(bench, cseq=5)
    ok = answered(bench, fwd)
    assert bench.sample("sbc_media_dialogs") == 1
    assert bench.proxy.media_timeout("call-1", "caller1", "callee1", bench.now) == 1
    outs = bench.take()
    byes = {o.peer: o for o in outs}
    assert set(byes) == {UAS, UAC}
    to_callee, to_caller = byes[UAS].req, byes[UAC].req
    # Towards the callee: from the caller's place, out of "b", to the callee's Contact.
    assert byes[UAS].listener == "b" and to_callee.uri == "sip:bob@192.0.2.20:5080"
    assert to_callee.from_tag == "caller1" and to_callee.to_tag == "callee1"
    assert to_callee.cseq.number == 6 and to_callee.cseq.method == "BYE"
    assert to_callee.headers.get("reason") == 'Q.850;cause=102;text="media timeout"'
    assert "route" not in to_callee.headers  # nothing between us and the callee
    assert len(to_callee.vias) == 1 and to_callee.vias[0].sent_by == SBC_B
    # Towards the caller: the callee's tags swapped, out of "a", to the caller's Contact.
    assert byes[UAC].listener == "a" and to_caller.uri == "sip:alice@192.0.2.10:5060"
    assert to_caller.from_tag == "callee1" and to_caller.to_tag == "caller1"
    assert to_caller.headers.get("call-id") == ok.resp.call_id
    assert to_caller.headers.get("reason") == 'Q.850;cause=102;text="media timeout"'
    assert bench.sample("sbc_media_timeout_teardowns_total") == 1
    assert bench.sample("sbc_media_dialogs") == 0
    # The parties' 200s end our client transactions; a second report finds nothing.
    for out in outs:
        bench.feed(make_response(out.req, 200).to_bytes(), out.peer, out.listener)
    assert bench.proxy.media_timeout("call-1", "caller1", "callee1", bench.now) == 0
    bench.advance(40)
    assert bench.proxy.transaction_count() == 0


def test_media_timeout_bye_follows_the_route_set_past_us_and_the_latest_cseq() -> None:
    """A proxy beyond us on each side: each BYE carries the Route entries past ours. In-dialog
    requests we routed raised the CSeq the BYE must exceed."""
    bench = MediaBench()
    outs = bench.feed(sdp_invite())
    offer = bench.command(Op.OFFER)
    fwd = only(bench.done(offer, sdp=TO_TEAMS, relay=TOKEN))
    callee_proxy = "<sip:198.51.100.9:5070;lr>"
    caller_proxy = "<sip:198.51.100.1:5060;lr>"
    rr = [callee_proxy, *fwd.req.headers.values("record-route"), caller_proxy]
    resp = make_response(fwd.req, 200, to_tag="callee1", extra_headers=[
        ("Contact", UAS_CONTACT), ("Content-Type", "application/sdp")])  # fmt: skip
    resp.headers.replace("record-route", *rr)
    resp.body = TEAMS_SDP.encode()
    bench.feed(resp.to_bytes(), UAS, "b")
    bench.done(bench.command(Op.ANSWER), sdp=TO_CARRIER, relay=TOKEN)
    # The caller re-INVITEs (CSeq 9) through us; no SDP, so no media step.
    routes = [f"<sip:{SBC_A};lr;r2=on;rtpe={TOKEN}>", f"<sip:{SBC_B};lr;r2=on;rtpe={TOKEN}>",
              callee_proxy]  # fmt: skip
    bench.feed(sdp_invite(sdp=None, to_tag="callee1", routes=routes, cseq=9,
                          ruri="sip:bob@192.0.2.20:5080"))  # fmt: skip
    assert bench.proxy.media_timeout("call-1", None, None, bench.now) == 1
    byes = {o.peer: o.req for o in bench.take() if not o.is_response and o.req.method == "BYE"}
    to_callee = byes[Peer("udp", "198.51.100.9", 5070)]
    assert to_callee.headers.values("route") == [callee_proxy]
    assert to_callee.cseq.number == 10
    to_caller = byes[Peer("udp", "198.51.100.1", 5060)]
    assert to_caller.headers.values("route") == [caller_proxy]
    assert to_caller.uri == "sip:alice@192.0.2.10:5060"
    assert outs  # (the INVITE's 100)


def test_bye_through_us_forgets_the_dialog(bench: MediaBench) -> None:
    answered(bench, offer_through(bench))
    assert bench.proxy.dialog_count() == 1
    bench.feed(bye(from_callee=True), UAS, "b")
    assert bench.proxy.dialog_count() == 0
    assert bench.command(Op.DELETE).from_tag == "callee1"


def test_dialog_audit_forgets_calls_rtpengine_no_longer_has(bench: MediaBench) -> None:
    """A BYE that went through another replica: rtpengine dropped the call, and the audit
    query says so."""
    answered(bench, offer_through(bench))
    bench.commands()
    bench.advance(60.0)
    query = bench.command(Op.QUERY)
    assert (query.call_id, query.relay) == ("call-1", TOKEN)
    bench.done(query, relay=TOKEN)  # still there: asked again a minute later
    assert bench.proxy.dialog_count() == 1
    bench.advance(60.0)
    query = bench.command(Op.QUERY)
    bench.done(query, failure=Failure.REFUSED, reason="Unknown call-id", relay=TOKEN)
    assert bench.proxy.dialog_count() == 0
    assert bench.proxy.next_deadline() is None or bench.proxy.next_deadline() > bench.now


def test_stray_2xx_of_an_anchored_call_goes_through_rtpengine(bench: MediaBench) -> None:
    fwd = offer_through(bench)
    answered(bench, fwd)
    bench.advance(40)  # the client transaction is gone (timer M)
    again = reply(fwd.req, 200, TEAMS_SDP)
    assert bench.feed(again, UAS, "b") == []
    answer = bench.command(Op.ANSWER)
    assert answer.relay == TOKEN and answer.to_tag == "callee1"
    ok = only(bench.done(answer, sdp=TO_CARRIER, relay=TOKEN), peer=UAC)
    assert ok.resp.body == TO_CARRIER.encode()


def test_media_needs_record_route() -> None:
    with pytest.raises(Exception, match="record_route"):
        parse_config(
            {
                "listeners": [{"name": "a", "transport": "udp", "host": "10.0.0.1", "port": 5060}],
                "record_route": False,
                "media": {"rtpengines": [{"address": "127.0.0.1:2223"}]},
            }
        )


def test_teams_listeners_must_exist() -> None:
    with pytest.raises(Exception, match="teams_listeners"):
        media_config(teams_listeners=["nope"])


def test_teams_section_names_the_teams_leg_when_media_does_not() -> None:
    """With a `teams` section, `media.teams_listeners` may stay empty: the Teams edge's
    listener is the SRTP leg."""
    raw = {
        "listeners": [
            {"name": "teams", "transport": "tls", "host": "10.0.0.2", "port": 5061,
             "tls": {"cert_file": "c.pem", "key_file": "k.pem", "ca_file": "ca.pem"}},
            {"name": "carrier", "transport": "udp", "host": "10.0.0.1", "port": 5060},
        ],
        "teams": {
            "fqdn": "sbc.carrier.example",
            "teams_listener": "teams",
            "carrier_listener": "carrier",
            "carrier": {"next_hop": "sip:192.0.2.30:5060"},
        },
        "media": {"rtpengines": [{"address": "127.0.0.1:2223"}]},
    }  # fmt: skip
    proxy = MediaBench(parse_config(raw)).proxy
    assert proxy._roles == {"teams": Leg.TEAMS, "carrier": Leg.CARRIER}


# -- delayed offer: SDP in the 2xx (the offer) and in the ACK (the answer) ----------------------


def ack(*, sdp: str | None = None, routes: list[str] | None = None) -> bytes:
    """The caller's ACK for the 2xx (its own transaction), along the route set."""
    routes = our_routes() if routes is None else routes
    route_lines = "".join(f"Route: {r}\n" for r in routes)
    body = sdp or ""
    ctype = "Content-Type: application/sdp\n" if sdp else ""
    return sip(
        f"ACK sip:bob@192.0.2.20:5080 SIP/2.0\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{secrets.token_hex(5)}\n"
        f"{route_lines}Max-Forwards: 70\nFrom: <sip:alice@192.0.2.10>;tag=caller1\n"
        f"To: <sip:+15550100@{SBC_A}>;tag=callee1\nCall-ID: call-1\nCSeq: 1 ACK\n"
        f"{ctype}Content-Length: {len(body)}\n\n"
    ) + body.encode()


def delayed_through(bench: MediaBench) -> Out:
    """A new call without SDP: its instance picked, the INVITE as forwarded."""
    outs = bench.feed(sdp_invite(sdp=None))
    assert statuses(outs) == [100]  # nothing forwarded before the instance is known
    pick = bench.command(Op.PICK)
    assert (pick.call_id, pick.from_tag, pick.relay, pick.sdp) == ("call-1", "caller1", None, None)
    fwd = only(bench.done(pick, relay=TOKEN), peer=UAS, listener="b")
    assert fwd.req.body == b""
    # The token rides in our Record-Route as for any call, though rtpengine has no session yet.
    assert fwd.req.headers.values("record-route") == list(reversed(our_routes()))
    return fwd


def test_delayed_offer_offers_on_the_2xx_and_answers_on_the_ack(bench: MediaBench) -> None:
    fwd = delayed_through(bench)
    # Teams' 200 carries the offer: rtpengine's `offer` from Teams' tag, towards the carrier.
    assert bench.feed(reply(fwd.req, 200, TEAMS_SDP), UAS, "b") == []
    offer = bench.command(Op.OFFER)
    assert (offer.from_tag, offer.to_tag, offer.relay) == ("callee1", "caller1", TOKEN)
    assert offer.towards is Leg.CARRIER and offer.sdp == TEAMS_SDP
    ok = only(bench.done(offer, sdp=TO_CARRIER, relay=TOKEN), peer=UAC)
    assert ok.resp.status == 200 and ok.resp.body == TO_CARRIER.encode()
    # A retransmitted 200 carries the same offer, without a second command.
    again = only(bench.feed(reply(fwd.req, 200, TEAMS_SDP), UAS, "b"), peer=UAC)
    assert again.resp.body == TO_CARRIER.encode()
    assert bench.commands() == []
    # The carrier's ACK carries its answer: `answer` to Teams' offer, then the ACK goes on.
    assert bench.feed(ack(sdp=CARRIER_SDP)) == []
    answer = bench.command(Op.ANSWER)
    assert (answer.from_tag, answer.to_tag, answer.relay) == ("callee1", "caller1", TOKEN)
    assert answer.towards is Leg.TEAMS and answer.sdp == CARRIER_SDP
    sent = only(bench.done(answer, sdp=TO_TEAMS, relay=TOKEN), peer=UAS, listener="b")
    assert sent.req.method == "ACK" and sent.req.body == TO_TEAMS.encode()
    assert sent.req.content_length == len(TO_TEAMS)
    assert "route" not in sent.req.headers
    assert bench.sample("sbc_media_parked") == 0


def test_ack_without_sdp_goes_on_at_once(bench: MediaBench) -> None:
    assert only(bench.feed(ack())).req.method == "ACK"
    assert bench.commands() == []


def test_ack_answer_failure_still_forwards_the_ack(bench: MediaBench) -> None:
    """The 2xx's offer cannot be taken back: the ACK goes on, with the caller's own SDP."""
    bench.feed(ack(sdp=CARRIER_SDP))
    answer = bench.command(Op.ANSWER)
    sent = only(bench.done(answer, failure=Failure.UNAVAILABLE, reason="no answer"), peer=UAS)
    assert sent.req.body == CARRIER_SDP.encode()
    assert bench.sample("sbc_media_answers_unanchored_total") == 1


def test_ack_answer_is_not_lost_when_the_driver_never_answers(bench: MediaBench) -> None:
    bench.feed(ack(sdp=CARRIER_SDP))
    bench.command(Op.ANSWER)
    assert bench.advance(DEADLINE - 0.01) == []
    assert only(bench.advance(0.02), peer=UAS).req.method == "ACK"


def test_delayed_offer_without_rtpengine_gets_503(bench: MediaBench) -> None:
    bench.feed(sdp_invite(sdp=None))
    pick = bench.command(Op.PICK)
    rejected = only(bench.done(pick, failure=Failure.UNAVAILABLE, reason="no rtpengine up"))
    assert rejected.resp.status == 503 and rejected.resp.headers.get("retry-after") == "10"
    assert bench.commands() == []


def test_delayed_offer_rejected_before_any_sdp_deletes_nothing(bench: MediaBench) -> None:
    fwd = delayed_through(bench)
    outs = bench.feed(reply(fwd.req, 486), UAS, "b")
    assert 486 in statuses([o for o in outs if o.is_response])
    assert bench.commands() == []  # rtpengine never heard of the call


def test_delayed_offer_rejected_after_early_media_deletes_its_session(bench: MediaBench) -> None:
    fwd = delayed_through(bench)
    bench.feed(reply(fwd.req, 183, TEAMS_SDP), UAS, "b")
    offer = bench.command(Op.OFFER)  # the 183's SDP is Teams' offer too
    assert statuses(bench.done(offer, sdp=TO_CARRIER, relay=TOKEN)) == [183]
    bench.feed(reply(fwd.req, 486), UAS, "b")
    delete = bench.command(Op.DELETE)
    assert (delete.call_id, delete.relay) == ("call-1", TOKEN)


def test_reinvite_without_sdp_goes_on_at_once_and_its_2xx_is_the_offer(
    bench: MediaBench,
) -> None:
    outs = bench.feed(
        sdp_invite(sdp=None, to_tag="callee1", routes=our_routes(), ruri="sip:bob@192.0.2.20:5080")
    )
    fwd = only([o for o in outs if not o.is_response], peer=UAS)
    assert bench.commands() == []  # the dialog's Route names the instance: nothing to ask
    bench.feed(reply(fwd.req, 200, TEAMS_SDP), UAS, "b")
    offer = bench.command(Op.OFFER)
    assert (offer.from_tag, offer.to_tag, offer.relay) == ("callee1", "caller1", TOKEN)
    assert offer.towards is Leg.CARRIER
    assert only(bench.done(offer, sdp=TO_CARRIER, relay=TOKEN)).resp.body == TO_CARRIER.encode()


# -- UPDATE (RFC 3311): an offer in the request, the answer in its 2xx ------------------------


def update(*, sdp: str | None) -> bytes:
    body = sdp or ""
    ctype = "Content-Type: application/sdp\n" if sdp else ""
    route_lines = "".join(f"Route: {r}\n" for r in our_routes())
    return sip(
        "UPDATE sip:bob@192.0.2.20:5080 SIP/2.0\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{secrets.token_hex(5)}\n"
        f"{route_lines}Max-Forwards: 70\nFrom: <sip:alice@192.0.2.10>;tag=caller1\n"
        f"To: <sip:+15550100@{SBC_A}>;tag=callee1\nCall-ID: call-1\nCSeq: 3 UPDATE\n"
        f"Contact: <sip:alice@192.0.2.10:5060>\n{ctype}Content-Length: {len(body)}\n\n"
    ) + body.encode()


def test_update_with_sdp_is_anchored_as_a_reinvite_is(bench: MediaBench) -> None:
    assert bench.feed(update(sdp=CARRIER_SDP)) == []  # no 100 Trying for a non-INVITE
    offer = bench.command(Op.OFFER)
    assert (offer.from_tag, offer.to_tag, offer.relay) == ("caller1", "callee1", TOKEN)
    assert offer.towards is Leg.TEAMS
    fwd = only(bench.done(offer, sdp=TO_TEAMS, relay=TOKEN), peer=UAS)
    assert fwd.req.method == "UPDATE" and fwd.req.body == TO_TEAMS.encode()
    bench.feed(reply(fwd.req, 200, TEAMS_SDP), UAS, "b")
    answer = bench.command(Op.ANSWER)
    assert (answer.from_tag, answer.to_tag, answer.towards) == ("caller1", "callee1", Leg.CARRIER)
    ok = only(bench.done(answer, sdp=TO_CARRIER, relay=TOKEN), peer=UAC)
    assert ok.resp.status == 200 and ok.resp.body == TO_CARRIER.encode()


def test_update_without_sdp_passes_at_once(bench: MediaBench) -> None:
    """A session refresh (RFC 4028) carries no SDP: nothing for rtpengine."""
    assert only(bench.feed(update(sdp=None))).req.method == "UPDATE"
    assert bench.commands() == []


def test_failed_update_offer_keeps_the_session(bench: MediaBench) -> None:
    bench.feed(update(sdp=CARRIER_SDP))
    offer = bench.command(Op.OFFER)
    outs = bench.done(offer, failure=Failure.UNAVAILABLE, reason="no answer", relay=TOKEN)
    rejected = only(outs, peer=UAC).resp
    assert rejected.status == 500 and rejected.headers.get("retry-after") == "10"
    assert bench.commands() == []
