"""Media anchored by the real SBC, with real packets: sipp as the carrier sending RTP, the real
``teams-sbc run`` driving the real rtpengine, and on the Teams side sipp answering with
RTP/SAVP and an SDES key whose media address is this test's own socket (tests/media/sipp_bed.py
says how each direction is proven). rtpengine's session list is checked empty before and after
each call: nothing leaks.
"""

from __future__ import annotations

import base64
import http.client
import socket
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path

from teams_sbc.media.rtp import RtpPacket
from teams_sbc.media.srtp import SdesKey
from tests.media.sipp_bed import (
    FAST_MEDIA,
    PCMU,
    SCENARIOS,
    MediaBed,
    audio,
    carrier_frames,
    crypto,
    make_calls_from_teams_bed,
    make_media_bed,
    sdp_of,
    teams_packets,
)
from tests.test_proxy_sipp import read_trace
from tests.testbed.process import free_port, wait_until
from tests.testbed.rtpengine import Rtpengine
from tests.testbed.sbc import SbcFactory
from tests.testbed.sipp import SippFactory

RtpengineFactory = Callable[..., Rtpengine]


def assert_carrier_audio(packets: list[RtpPacket]) -> None:
    frames = set(carrier_frames())
    for packet in packets:
        assert packet.payload_type == PCMU
        assert packet.payload in frames, packet.payload[:16]


def test_carrier_call_early_media_and_both_directions(
    tmp_path: Path,
    sbc_factory: SbcFactory,
    sipp_factory: SippFactory,
    rtpengine_factory: RtpengineFactory,
) -> None:
    bed = make_media_bed(
        tmp_path, sbc_factory, sipp_factory, rtpengine_factory, "uas_teams_early_answer.xml"
    )
    assert bed.sessions() == []
    uac = bed.call("uac_media_call.xml")

    # The INVITE Teams gets: rtpengine's SRTP offer, only Microsoft's suites, no ICE.
    invite = bed.teams_received("INVITE")
    offer = audio(sdp_of(invite))
    assert offer.protocol == "RTP/SAVP"
    suites = [v.split()[1] for v in offer.attributes if v.startswith("crypto:")]
    assert suites and set(suites) <= {"AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"}
    assert not [a for a in offer.attributes if a.startswith(("candidate", "ice-", "fingerprint"))]
    assert offer.address == "127.0.0.1" and offer.port != 0
    rtpengine_key = crypto(offer, 1)
    assert rtpengine_key.suite == "AES_CM_128_HMAC_SHA1_80"
    assert ";rtpe=" in (invite.header("Record-Route") or "")

    # Early media: on the 183 the carrier streams; Teams gets it as SRTP that decrypts.
    bed.teams_sent(183)
    early = bed.receive(rtpengine_key, 10)
    assert_carrier_audio(early)
    answered = [t for t in bed.teams_messages() if t.status == 200 and t.cseq_method == "INVITE"]
    assert not answered, "the 200 went out before the early media was checked"

    # Answered: Teams' SRTP reaches the carrier as plain RTP (echoed back: same payload).
    bed.teams_received("ACK")
    bed.drain()
    sent = teams_packets(10, b"TEAMS-1")
    bed.send(bed.teams_key, sent, offer.port)
    echoed = bed.receive(rtpengine_key, 10, want=lambda p: p.payload.startswith(b"TEAMS-1"))
    assert sorted(p.payload for p in echoed) == sorted(p.payload for p in sent)
    assert_carrier_audio(bed.receive(rtpengine_key, 10, want=lambda p: p.payload[:3] == b"CAR"))

    bed.signal(uac.port, invite, lambda: MediaBed.uac_messages(uac))
    run = uac.finish()
    assert run.stats.all_ok, run.error_path.read_text() if run.error_path.exists() else run
    # The carrier got plain RTP/AVP and no key.
    ok = [t for t in MediaBed.uac_messages(uac) if t.status == 200 and t.cseq_method == "INVITE"]
    to_carrier = audio(sdp_of(ok[0]))
    assert to_carrier.protocol == "RTP/AVP"
    assert not [a for a in to_carrier.attributes if a.startswith("crypto:")]
    bed.wait_no_sessions()
    scrape = bed.sbc.metrics()
    assert scrape.value("sbc_media_commands_total", command="offer", result="ok") == 1
    # One answer: the 200 repeats the 183's SDP (same To tag), whose answer the SBC reuses.
    assert scrape.value("sbc_media_commands_total", command="answer", result="ok") == 1
    assert scrape.value("sbc_media_commands_total", command="delete", result="ok") == 1
    assert scrape.value("sbc_media_parked") == 0
    assert scrape.value("sbc_media_dialogs") == 0
    assert scrape.value("sbc_media_relay_up") == 1
    bed.sbc.wait_idle()


def test_call_from_teams_reaches_the_carrier_as_plain_rtp(
    sbc_factory: SbcFactory,
    sipp_factory: SippFactory,
    rtpengine_factory: RtpengineFactory,
) -> None:
    """Teams calls with Microsoft's SDP (ICE candidates, x-candidate-ipv6, an MKI key): the
    carrier gets clean RTP/AVP with Teams' codecs; media flows both ways."""
    secret = SdesKey.generate("AES_CM_128_HMAC_SHA1_80")
    teams_key = SdesKey(2, secret.suite, secret.key_salt, lifetime="2^31", mki=1, mki_length=1)
    bed, _carrier, carrier_trace = make_calls_from_teams_bed(
        sbc_factory, sipp_factory, rtpengine_factory, teams_key
    )
    assert bed.sessions() == []
    inline = base64.b64encode(teams_key.key_salt).decode().rstrip("=")
    uac = bed.sipp.start_uac(
        bed.sbc.address("teams"),
        scenario=SCENARIOS / "uac_teams_call.xml",
        extra_args=["-key", "teams_port", str(bed.teams_socket.getsockname()[1]),
                    "-key", "teams_key", inline],
    )  # fmt: skip
    assert uac.message_path is not None
    bed.teams_trace = uac.message_path
    answer = audio(sdp_of(bed.teams_got(200)))
    assert answer.protocol == "RTP/SAVP" and answer.rtcp_mux
    rtpengine_key = crypto(answer, 2)  # rtpengine answers under the tag Teams offered
    # What the carrier was offered: plain RTP, Teams' codecs, nothing of Teams' ICE.
    invite = next(t for t in read_trace(carrier_trace) if t.method == "INVITE")
    to_carrier = audio(sdp_of(invite))
    assert to_carrier.protocol == "RTP/AVP"
    assert to_carrier.formats == ("0", "8", "101", "13")
    assert not [
        a for a in to_carrier.attributes
        if a.startswith(("crypto", "candidate", "x-candidate", "ice-", "rtcp-mux"))
    ], to_carrier.attributes  # fmt: skip
    bed.teams_sent_request("ACK")
    bed.media_both_ways(rtpengine_key, teams_key, answer.port, b"FROM-TEAMS")

    bed.signal(uac.port, invite, bed.teams_messages)
    assert uac.finish().stats.all_ok
    bed.wait_no_sessions()
    assert [t for t in read_trace(carrier_trace) if t.method == "BYE"]
    bed.sbc.wait_idle()


def test_hold_reaches_teams_as_inactive_and_resume_brings_media_back(
    tmp_path: Path,
    sbc_factory: SbcFactory,
    sipp_factory: SippFactory,
    rtpengine_factory: RtpengineFactory,
) -> None:
    bed = make_media_bed(
        tmp_path, sbc_factory, sipp_factory, rtpengine_factory, "uas_teams_hold.xml"
    )
    assert bed.sessions() == []
    uac = bed.call("uac_media_hold.xml")
    invite = bed.teams_received("INVITE")
    offer = audio(sdp_of(invite))
    bed.teams_received("ACK")
    bed.media_both_ways(crypto(offer, 1), bed.teams_key, offer.port, b"BEFORE")

    bed.signal_carrier(uac, invite)  # the carrier holds (a=sendonly)
    held = audio(sdp_of(bed.teams_received("INVITE", count=2)))
    # Teams understands hold only as a=inactive, with a real address (not c=0.0.0.0).
    assert held.direction == "inactive"
    assert held.address == "127.0.0.1" and held.port == offer.port
    bed.teams_received("ACK", count=2)

    bed.signal_carrier(uac, invite)  # the carrier resumes (a=sendrecv)
    resumed = audio(sdp_of(bed.teams_received("INVITE", count=3)))
    assert resumed.direction == "sendrecv"
    bed.teams_received("ACK", count=3)
    bed.media_both_ways(crypto(resumed, 1), bed.teams_key, resumed.port, b"RESUMED")

    bed.signal_carrier(uac, invite)
    assert uac.finish().stats.all_ok
    bed.wait_no_sessions()
    scrape = bed.sbc.metrics()
    assert scrape.value("sbc_media_commands_total", command="offer", result="ok") == 3
    bed.sbc.wait_idle()


def test_teams_reinvite_with_a_new_key_keeps_media_flowing(
    tmp_path: Path,
    sbc_factory: SbcFactory,
    sipp_factory: SippFactory,
    rtpengine_factory: RtpengineFactory,
) -> None:
    bed = make_media_bed(
        tmp_path, sbc_factory, sipp_factory, rtpengine_factory, "uas_teams_rekey.xml",
        teams_keys=2,
    )  # fmt: skip
    assert bed.sessions() == []
    uac = bed.call("uac_media_reinvited.xml")
    invite = bed.teams_received("INVITE")
    offer = audio(sdp_of(invite))
    bed.teams_received("ACK")
    bed.media_both_ways(crypto(offer, 1), bed.teams_keys[0], offer.port, b"KEY-1")

    bed.signal_teams(invite)  # Teams re-INVITEs with its second key
    reinvite = bed.teams_sent_request("INVITE")
    assert bed.teams_keys[1].attribute().split("inline:")[1] in reinvite.text
    answer = audio(sdp_of(bed.teams_got(200)))
    assert answer.protocol == "RTP/SAVP"
    bed.teams_sent_request("ACK")
    # The carrier answered that re-INVITE itself: it saw plain RTP/AVP, no key.
    carrier_side = [t for t in MediaBed.uac_messages(uac) if t.method == "INVITE"]
    assert carrier_side and "a=crypto" not in carrier_side[-1].text
    assert "RTP/AVP" in carrier_side[-1].text
    bed.media_both_ways(crypto(answer, 1), bed.teams_keys[1], answer.port, b"KEY-2")

    bed.signal_carrier(uac, invite)
    assert uac.finish().stats.all_ok
    bed.wait_no_sessions()
    bed.sbc.wait_idle()


def test_media_timeout_ends_the_call_with_a_bye_to_each_party(
    tmp_path: Path,
    sbc_factory: SbcFactory,
    sipp_factory: SippFactory,
    rtpengine_factory: RtpengineFactory,
) -> None:
    """rtpengine (--timeout=3) sees no RTP and calls the SBC back (--b2b-url, XMLRPC): the SBC
    sends both parties a BYE with a Reason; the carrier's scenario fails without it."""
    bed = make_media_bed(
        tmp_path, sbc_factory, sipp_factory, rtpengine_factory, "uas_teams_early_answer.xml",
        rtpengine_args=["--timeout=3"],
    )  # fmt: skip
    uac = bed.call("uac_media_timeout.xml", echo=False)
    invite = bed.teams_received("INVITE")
    bye = bed.teams_received("BYE")
    assert bye.header("Reason") == 'Q.850;cause=102;text="media timeout"'
    assert bye.header("Call-ID") == invite.header("Call-ID")
    run = uac.finish()
    assert run.stats.all_ok, run.error_path
    carrier_bye = [t for t in MediaBed.uac_messages(uac) if t.method == "BYE"]
    assert carrier_bye[0].header("Reason") == 'Q.850;cause=102;text="media timeout"'
    bed.wait_no_sessions()
    scrape = bed.sbc.metrics()
    assert scrape.value("sbc_media_timeout_teardowns_total") == 1
    assert scrape.value("sbc_media_dialogs") == 0
    logged = [r for r in bed.sbc.log_records() if r["msg"] == "media timeout: call torn down"]
    assert [r["call_id"] for r in logged] == [invite.header("Call-ID")]
    bed.sbc.wait_idle()


def test_rtpengine_killed_mid_call_and_restarted(
    tmp_path: Path,
    sbc_factory: SbcFactory,
    sipp_factory: SippFactory,
    rtpengine_factory: RtpengineFactory,
) -> None:
    """The call in progress is not torn down while rtpengine is gone; new calls get 503 with
    Retry-After and readiness says why; once rtpengine is back, Teams' re-INVITE anchors the
    call's media again on the restarted instance and media flows."""
    bed = make_media_bed(
        tmp_path, sbc_factory, sipp_factory, rtpengine_factory, "uas_teams_rekey.xml",
        teams_keys=2,
    )  # fmt: skip
    uac = bed.call("uac_media_reinvited.xml")
    invite = bed.teams_received("INVITE")
    offer = audio(sdp_of(invite))
    bed.teams_received("ACK")
    bed.media_both_ways(crypto(offer, 1), bed.teams_keys[0], offer.port, b"BEFORE")

    bed.rtpengine.kill()
    wait_until(lambda: not bed.sbc.readiness()[0], 10, "the SBC to turn unready")
    _, reasons = bed.sbc.readiness()
    assert any(r.startswith("no rtpengine up") for r in reasons), reasons
    down = bed.sbc.metrics()
    assert down.value("sbc_media_relay_up") == 0 and down.value("sbc_ready") == 0
    assert [r for r in bed.sbc.log_records() if r["msg"].startswith("rtpengine down")]
    # A new call: 503 with Retry-After (the scenario checks it), no offer left waiting.
    refused = bed.sipp.uac(
        bed.sbc.address("carrier"), calls=1, scenario=SCENARIOS / "uac_media_503.xml",
        extra_args=["-mi", "127.0.0.1"],
    )  # fmt: skip
    assert refused.stats.all_ok, refused.error_path
    assert bed.sbc.metrics().value("sbc_media_calls_rejected_total", status="503") == 1
    # The call in progress goes on: nobody got a BYE.
    assert not [t for t in bed.teams_messages() if t.method == "BYE"]
    assert uac.alive()

    bed.rtpengine.restart()
    wait_until(lambda: bed.sbc.readiness()[0], 10, "the SBC to be ready again")
    assert bed.sbc.metrics().value("sbc_ready") == 1
    bed.signal_teams(invite)  # Teams re-INVITEs: the restarted rtpengine anchors it afresh
    answer = audio(sdp_of(bed.teams_got(200)))
    bed.teams_sent_request("ACK")
    bed.media_both_ways(crypto(answer, 1), bed.teams_keys[1], answer.port, b"AFTER")

    bed.signal_carrier(uac, invite)
    assert uac.finish().stats.all_ok
    bed.wait_no_sessions()
    bed.sbc.wait_idle()


def test_no_rtpengine_at_start_unready_and_calls_get_503(
    tmp_path: Path, sbc_factory: SbcFactory, sipp_factory: SippFactory
) -> None:
    ng_port = free_port(socket.SOCK_DGRAM)  # nothing listens there
    sbc = sbc_factory(
        start=False,
        listeners=[{"name": "carrier", "transport": "udp", "host": "127.0.0.1"}],
        routes=[{"name": "nowhere", "next_hop": "sip:127.0.0.1:9"}],
        media={"rtpengines": [{"address": f"127.0.0.1:{ng_port}"}], **FAST_MEDIA},
    )
    sbc.start(ready=False)
    ready, reasons = sbc.readiness()
    assert not ready and reasons and reasons[0].startswith("no rtpengine up"), reasons
    run = sipp_factory.uac(
        sbc.address("carrier"), calls=2, scenario=SCENARIOS / "uac_media_503.xml",
        extra_args=["-mi", "127.0.0.1"],
    )  # fmt: skip
    assert run.stats.all_ok, run.error_path
    scrape = sbc.metrics()
    assert scrape.value("sbc_media_calls_rejected_total", status="503") == 2
    assert scrape.value("sbc_media_commands_total", command="offer", result="unavailable") == 2
    assert scrape.value("sbc_media_relay_up") == 0
    assert scrape.value("sbc_ready") == 0
    sbc.wait_idle(allow_invite_clients=0)


def _post(sbc_port: int, body: bytes, source: str = "127.0.0.1") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", sbc_port, timeout=5, source_address=(source, 0))
    try:
        conn.request("POST", "/rtpengine/timeout", body, {"Content-Type": "text/xml"})
        reply = conn.getresponse()
        return reply.status, reply.read().decode()
    finally:
        conn.close()


def test_media_timeout_callback_takes_only_rtpengine_and_only_xmlrpc(
    sbc_factory: SbcFactory,
) -> None:
    """The callback ends calls: from another address it is refused; bad XML gets an XMLRPC
    fault, not a crash; a call this SBC does not know gets the fault rtpengine treats as
    "nothing to do"."""
    ng_port = free_port(socket.SOCK_DGRAM)
    sbc = sbc_factory(
        start=False,
        listeners=[{"name": "carrier", "transport": "udp", "host": "127.0.0.1"}],
        media={"rtpengines": [{"address": f"127.0.0.1:{ng_port}"}], **FAST_MEDIA},
    )
    sbc.start(ready=False)
    call = xmlrpc.client.dumps(("no-such-call", "a", "b"), "dlg.terminate_dlg").encode()
    status, body = _post(sbc.http_port, call, source="127.0.0.2")
    assert status == 403
    status, body = _post(sbc.http_port, call)
    assert status == 200 and "dialog not found" in body and "<fault>" in body
    status, body = _post(sbc.http_port, b"<methodCall><params>")
    assert status == 200 and "<fault>" in body
    status, body = _post(sbc.http_port, xmlrpc.client.dumps((1, 2), "system.shutdown").encode())
    assert status == 200 and "unsupported" in body
    assert sbc.alive() and sbc.http("/healthz")[0] == 200
