"""Media anchored by the real SBC, with real packets: sipp as the carrier sending RTP, the real
``teams-sbc run`` driving the real rtpengine, and on the Teams side sipp answering with
RTP/SAVP and an SDES key whose media address is this test's own socket (tests/media/sipp_bed.py
says how each direction is proven). rtpengine's session list is checked empty before and after
each call: nothing leaks.
"""

from __future__ import annotations

import base64
import functools
import http.client
import socket
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path

import pytest

from teams_sbc.media.rtp import RtpPacket
from teams_sbc.media.srtp import SdesKey
from tests.media.peers import dtmf_event
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
from tests.media.stun import BINDING_SUCCESS, ice_lite_sdp
from tests.teams.test_emulator_e2e import SCENARIOS as EDGE_SCENARIOS
from tests.teams.test_emulator_e2e import EdgeFactory
from tests.test_proxy_sipp import Traced, read_trace
from tests.testbed.process import free_port, free_port_range, wait_until
from tests.testbed.rtpengine import Rtpengine
from tests.testbed.sbc import SbcFactory
from tests.testbed.sipp import SippFactory
from tests.testbed.teams_emulator import EmulatorFactory

RtpengineFactory = Callable[..., Rtpengine]
#: make_media_bed with the test's tmp_path and factories: ``media_bed(teams_scenario, ...)``.
MediaBedFactory = Callable[..., MediaBed]


@pytest.fixture
def media_bed(
    tmp_path: Path,
    sbc_factory: SbcFactory,
    sipp_factory: SippFactory,
    rtpengine_factory: RtpengineFactory,
) -> MediaBedFactory:
    return functools.partial(make_media_bed, tmp_path, sbc_factory, sipp_factory, rtpengine_factory)


def assert_carrier_audio(packets: list[RtpPacket]) -> None:
    frames = set(carrier_frames())
    for packet in packets:
        assert packet.payload_type == PCMU
        assert packet.payload in frames, packet.payload[:16]


def test_carrier_call_early_media_and_both_directions(
    media_bed: MediaBedFactory,
) -> None:
    bed = media_bed("uas_teams_early_answer.xml")
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


def test_rfc4733_events_pass_through_both_ways(
    media_bed: MediaBedFactory,
) -> None:
    """DTMF as RFC 4733 telephone-event, passed through: the payload type the carrier offered
    reaches Teams with its codec; a key press Teams sends (SRTP) reaches the carrier as plain
    RTP, and the carrier's RTP carrying it back (its echo) reaches Teams decrypting to the same
    payload type, marker, timestamp and event bytes."""
    bed = media_bed("uas_teams_early_answer.xml")
    uac = bed.call("uac_media_call.xml")
    invite = bed.teams_received("INVITE")
    offer = audio(sdp_of(invite))
    assert offer.formats == ("0", "101")  # the carrier's codecs, in its order: no transcoding
    assert "101 telephone-event/8000" in offer.attribute_values("rtpmap")
    assert offer.attribute_values("fmtp") == ["101 0-16"]
    rtpengine_key = crypto(offer, 1)
    bed.teams_received("ACK")
    bed.drain()
    press = dtmf_event(9, ssrc=0xD7F0D7F0, first_seq=6000, timestamp=480000)
    bed.send(bed.teams_key, press, offer.port)
    back = bed.receive(rtpengine_key, len(press), want=lambda p: p.payload_type == 101)
    assert sorted((p.sequence, p.marker, p.timestamp, p.payload) for p in back) == sorted(
        (p.sequence, p.marker, p.timestamp, p.payload) for p in press
    )

    bed.carrier_hangs_up(uac, invite)
    bed.sbc.wait_idle()


def test_media_bypass_teams_client_reaches_rtpengine_by_ice(
    media_bed: MediaBedFactory,
) -> None:
    """`media.bypass`: the INVITE Teams gets makes rtpengine an ICE-lite peer with one IPv4
    candidate (Microsoft's media bypass); the Teams client (full ICE, controlling) nominates
    its path with a check that rtpengine answers under its own password; media both ways."""
    bed = media_bed("uas_teams_bypass.xml", media={"bypass": True})
    assert bed.sessions() == []
    uac = bed.call("uac_media_call.xml")
    invite = bed.teams_received("INVITE")
    sdp = sdp_of(invite)
    ufrag, pwd, port = ice_lite_sdp(sdp)
    rtpengine_key = crypto(audio(sdp), 1)
    bed.teams_sent(183)
    response = bed.ice_check(port, ufrag, pwd, client_ufrag="TmsC")
    assert response.kind == BINDING_SUCCESS
    assert response.integrity_ok(pwd) and response.fingerprint_ok()
    assert response.mapped_address() == ("127.0.0.1", bed.teams_socket.getsockname()[1])
    bed.teams_received("ACK")
    bed.media_both_ways(rtpengine_key, bed.teams_key, port, b"BYPASS")
    # The carrier saw none of it: plain RTP/AVP, no ICE, no key.
    ok = [t for t in MediaBed.uac_messages(uac) if t.status == 200 and t.cseq_method == "INVITE"]
    to_carrier = audio(sdp_of(ok[0]))
    assert to_carrier.protocol == "RTP/AVP"
    assert not [a for a in to_carrier.attributes if a.startswith(("ice-", "candidate", "crypto"))]

    bed.carrier_hangs_up(uac, invite)
    bed.sbc.wait_idle()


def test_delayed_offer_is_anchored_offer_on_the_200_answer_on_the_ack(
    media_bed: MediaBedFactory,
) -> None:
    """The carrier's INVITE and re-INVITE carry no SDP: Teams' offer in each 200 reaches the
    carrier as rtpengine's RTP/AVP, the carrier's answer in each ACK reaches Teams as
    rtpengine's RTP/SAVP with its key; media flows both ways after each."""
    bed = media_bed("uas_teams_delayed.xml", teams_keys=2)
    assert bed.sessions() == []
    uac = bed.call("uac_media_delayed.xml")
    invite = bed.teams_received("INVITE")
    assert "m=audio" not in invite.text
    assert ";rtpe=" in (invite.header("Record-Route") or "")  # the instance, picked already

    def carrier_got_200(count: int) -> Traced:
        return bed.wait_for(
            lambda: MediaBed.uac_messages(uac), f"the carrier's 200 #{count}",
            lambda t: t.direction == "received" and t.status == 200 and t.cseq_method == "INVITE",
            count=count,
        )  # fmt: skip

    for round_, key, marker in [
        (1, bed.teams_keys[0], b"DELAYED"),
        (2, bed.teams_keys[1], b"AGAIN"),
    ]:
        offer = audio(sdp_of(carrier_got_200(round_)))
        assert offer.protocol == "RTP/AVP" and offer.address == "127.0.0.1"
        assert offer.port != bed.teams_socket.getsockname()[1]  # rtpengine's, not Teams'
        assert not [a for a in offer.attributes if a.startswith(("crypto", "rtcp-mux"))]
        answer = audio(sdp_of(bed.teams_received("ACK", count=round_, sdp=True)))
        assert answer.protocol == "RTP/SAVP"
        rtpengine_key = crypto(answer, 1)  # rtpengine answers Teams' offer under its tag
        assert rtpengine_key.suite == "AES_CM_128_HMAC_SHA1_80"
        bed.media_both_ways(rtpengine_key, key, answer.port, marker)
        bed.signal_carrier(uac, invite)  # round 1: re-INVITE without SDP; round 2: BYE
        if round_ == 1:
            assert "m=audio" not in bed.teams_received("INVITE", count=2).text

    assert uac.finish().stats.all_ok
    bed.wait_no_sessions()
    scrape = bed.sbc.metrics()
    assert scrape.value("sbc_media_commands_total", command="pick", result="ok") == 1
    assert scrape.value("sbc_media_commands_total", command="offer", result="ok") == 2
    assert scrape.value("sbc_media_commands_total", command="answer", result="ok") == 2
    assert scrape.value("sbc_media_parked") == 0
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


@pytest.mark.parametrize(
    ("uac", "teams"),
    [
        ("uac_busy.xml", "uas_busy.xml"),  # Teams rejects: 486 relayed
        ("uac_cancel.xml", "uas_ring_until_cancel.xml"),  # the carrier cancels: 487
        ("uac_no_answer.xml", None),  # nobody answers: the SBC's timer B, 408
    ],
    ids=["rejected", "cancelled", "timed-out"],
)
def test_failed_call_leaves_no_session(
    uac: str,
    teams: str | None,
    sbc_factory: SbcFactory,
    sipp_factory: SippFactory,
    rtpengine_factory: RtpengineFactory,
) -> None:
    """A call whose INVITE went out with rtpengine's offer but never got a 2xx: the offer
    made a session, the failure deletes it (rtpengine's list is empty again)."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes the INVITE, never answers
    silent.bind(("127.0.0.1", 0))
    callee = (
        f"127.0.0.1:{silent.getsockname()[1]}"
        if teams is None
        else sipp_factory.uas(scenario=SCENARIOS / teams).address
    )
    engine = rtpengine_factory()
    sbc = sbc_factory(
        listeners=[
            {"name": "carrier", "transport": "udp", "host": "127.0.0.1"},
            {"name": "teams", "transport": "udp", "host": "127.0.0.1"},
        ],
        routes=[{"name": "to-teams", "from_listeners": ["carrier"],
                 "next_hop": f"sip:{callee}", "listener": "teams"}],
        media={"rtpengines": [{"address": engine.ng_address}], "teams_listeners": ["teams"],
               **FAST_MEDIA},
    )  # fmt: skip
    try:
        assert engine.client().list_calls() == []
        run = sipp_factory.uac(
            sbc.address("carrier"), calls=1, scenario=SCENARIOS / uac,
            extra_args=["-mi", "127.0.0.1"],
        )  # fmt: skip
        assert run.stats.all_ok, run.error_path.read_text() if run.error_path.exists() else run
        wait_until(lambda: engine.client().list_calls() == [], 5, "rtpengine to hold no session")
        scrape = sbc.metrics()
        assert scrape.value("sbc_media_commands_total", command="offer", result="ok") == 1
        assert scrape.value("sbc_media_commands_total", command="delete", result="ok") == 1
        assert scrape.value("sbc_media_parked") == 0
        # A 486 or 487 leaves the INVITE client in Completed for timer D (32 s over UDP).
        sbc.wait_idle(allow_invite_clients=0 if teams is None else 1)
    finally:
        silent.close()


def test_call_from_teams_offering_the_32_bit_tag_first_is_answered_in_kind(
    sbc_factory: SbcFactory,
    sipp_factory: SippFactory,
    rtpengine_factory: RtpengineFactory,
) -> None:
    """Microsoft's example offer: AES_CM_128_HMAC_SHA1_32 first, _80 second. rtpengine takes
    the first (an answerer picks one of the offered keys, RFC 4568 7.1.2): its answer carries a
    _32 key under Teams' tag 0, and media flows both ways under the 32-bit tags."""
    first = SdesKey.generate("AES_CM_128_HMAC_SHA1_32", tag=0)
    teams_32 = SdesKey(0, first.suite, first.key_salt, lifetime="2^31")
    teams_80 = SdesKey.generate("AES_CM_128_HMAC_SHA1_80", tag=1)
    bed, _carrier, carrier_trace = make_calls_from_teams_bed(
        sbc_factory, sipp_factory, rtpengine_factory, teams_32
    )
    assert bed.sessions() == []
    inline = [base64.b64encode(k.key_salt).decode().rstrip("=") for k in (teams_32, teams_80)]
    uac = bed.sipp.start_uac(
        bed.sbc.address("teams"),
        scenario=SCENARIOS / "uac_teams_call_sdes.xml",
        extra_args=["-key", "teams_port", str(bed.teams_socket.getsockname()[1]),
                    "-key", "teams_key", inline[0], "-key", "teams_key2", inline[1]],
    )  # fmt: skip
    assert uac.message_path is not None
    bed.teams_trace = uac.message_path
    answer = audio(sdp_of(bed.teams_got(200)))
    assert answer.protocol == "RTP/SAVP" and answer.rtcp_mux
    (line,) = answer.attribute_values("crypto")
    assert line.split()[:2] == ["0", "AES_CM_128_HMAC_SHA1_32"]
    rtpengine_key = crypto(answer, 0)
    invite = next(t for t in read_trace(carrier_trace) if t.method == "INVITE")
    assert "crypto" not in invite.text and "RTP/AVP" in invite.text
    bed.teams_sent_request("ACK")
    bed.media_both_ways(rtpengine_key, teams_32, answer.port, b"SHA1-32")

    bed.signal(uac.port, invite, bed.teams_messages)
    assert uac.finish().stats.all_ok
    bed.wait_no_sessions()
    bed.sbc.wait_idle()


def test_hold_reaches_teams_as_inactive_and_resume_brings_media_back(
    media_bed: MediaBedFactory,
) -> None:
    bed = media_bed("uas_teams_hold.xml")
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
    bed.teams_received("ACK", count=2)
    bed.media_both_ways(crypto(resumed, 1), bed.teams_key, resumed.port, b"RESUMED")

    bed.carrier_hangs_up(uac, invite)
    scrape = bed.sbc.metrics()
    assert scrape.value("sbc_media_commands_total", command="offer", result="ok") == 3
    bed.sbc.wait_idle()


def test_teams_reinvite_with_a_new_key_keeps_media_flowing(
    media_bed: MediaBedFactory,
) -> None:
    bed = media_bed("uas_teams_rekey.xml", teams_keys=2)
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

    bed.carrier_hangs_up(uac, invite)
    bed.sbc.wait_idle()


def test_teams_answering_from_another_fork_keeps_srtp_both_ways(
    media_bed: MediaBedFactory,
) -> None:
    """Teams forks as Microsoft's SIP proxy does: fork A rings and sends early media (183, To tag
    A, its own socket and key), fork B answers (200, To tag B, another socket and key). After
    the 200 the carrier's audio reaches fork B as SRTP that decrypts with the key of the offer
    Teams got, and B's SRTP reaches the carrier as plain RTP with the same payload; re-INVITEs
    from fork B (a new key) and from the carrier (To tag B) keep media flowing both ways; no
    session is left. Before the fix rtpengine made a new leg for B without crypto ("SRTP output
    wanted, but no crypto suite was negotiated") and nothing decrypted after the 200."""
    bed = media_bed("uas_teams_forked.xml", teams_keys=3, teams_sockets=2)
    fork_a, fork_b = bed.teams_sockets
    key_a, key_b, key_b2 = bed.teams_keys
    assert bed.sessions() == []
    uac = bed.call("uac_media_forked.xml")
    invite = bed.teams_received("INVITE")
    offer = audio(sdp_of(invite))
    rtpengine_key = crypto(offer, 1)

    # Fork A's early media, both ways: the carrier's stream reaches A's socket, decrypting,
    # and A's SRTP (its own key) reaches the carrier, whose echo comes back.
    early = bed.teams_sent(183)
    assert_carrier_audio(bed.receive(rtpengine_key, 10))
    bed.media_both_ways(rtpengine_key, key_a, offer.port, b"FORK-A")
    assert not [t for t in bed.teams_messages() if t.status == 200 and t.cseq_method == "INVITE"]
    # Fork B answers: another To tag.
    ok = bed.teams_sent(200)
    assert early.header("To") != ok.header("To")
    bed.teams_received("ACK")
    carrier_ok = [
        t for t in MediaBed.uac_messages(uac) if t.status == 200 and t.cseq_method == "INVITE"
    ]
    assert carrier_ok and carrier_ok[0].header("To") == ok.header("To")
    assert audio(sdp_of(carrier_ok[0])).protocol == "RTP/AVP"

    # After the 200: fork B gets SRTP under the offer's key, its SRTP reaches the carrier.
    bed.teams_socket = fork_b
    bed.media_both_ways(rtpengine_key, key_b, offer.port, b"FORK-B")

    # Fork B re-INVITEs (From tag B) with a new key: media both ways under the new keys.
    bed.signal_teams(invite)
    assert key_b2.attribute().split("inline:")[1] in bed.teams_sent_request("INVITE").text
    answer = audio(sdp_of(bed.teams_got(200)))
    assert answer.protocol == "RTP/SAVP"
    bed.teams_sent_request("ACK")
    bed.media_both_ways(crypto(answer, 1), key_b2, answer.port, b"B-REINVITE")

    # The carrier re-INVITEs (To tag B): Teams gets rtpengine's SRTP offer; media both ways.
    bed.signal_carrier(uac, invite)
    reoffer = audio(sdp_of(bed.teams_received("INVITE", count=2)))
    assert reoffer.protocol == "RTP/SAVP"
    bed.teams_received("ACK", count=2)
    bed.media_both_ways(crypto(reoffer, 1), key_b2, reoffer.port, b"C-REINVITE")

    bed.carrier_hangs_up(uac, invite)
    assert "no crypto suite was negotiated" not in bed.rtpengine.proc.log_text()
    assert fork_a.getsockname() != fork_b.getsockname()
    scrape = bed.sbc.metrics()
    # The 183 (A), the 200 (B), each re-INVITE's 2xx: four answers, all taken.
    assert scrape.value("sbc_media_commands_total", command="answer", result="ok") == 4
    assert scrape.value("sbc_media_fork_switches_total") == 1
    assert scrape.value("sbc_media_dialogs") == 0
    bed.sbc.wait_idle()


def test_teams_emulator_forking_gets_the_carriers_audio_after_its_200(
    teams_emulator_factory: EmulatorFactory,
    sbc_factory: SbcFactory,
    sipp_factory: SippFactory,
    rtpengine_factory: RtpengineFactory,
) -> None:
    """The same through the Teams edge to the strict Teams emulator, which forks as Microsoft
    does (two devices: the 183 with SDP from the first, the 200 from the second). The carrier
    streams only once answered, so every packet the emulator gets came after the 200: all of
    them decrypt, and the emulator's own pattern comes back through the carrier's echo. Before
    the fix the emulator got 4 packets of about 120 and 4 of its 50 came back."""
    engine = rtpengine_factory()
    edge = EdgeFactory(teams_emulator_factory, sbc_factory, sipp_factory)(
        emulator={"forks": 2},
        media={"rtpengines": [{"address": engine.ng_address}], **FAST_MEDIA},
    )
    (sipp_factory.log_dir / "carrier.pcmu").write_bytes(b"".join(carrier_frames()))
    run = sipp_factory.uac(
        edge.sbc.address("carrier"), calls=1, scenario=EDGE_SCENARIOS / "uac_media_to_teams.xml",
        extra_args=["-s", "030123456", "-mi", "127.0.0.1",
                    "-mp", str(free_port_range(4, "127.0.0.1")), "-rtp_echo"],
    )  # fmt: skip
    assert run.stats.successful == 1, run.error_path
    record = edge.only_call()
    edge.assert_clean(record)
    assert record.answered_tag is not None and record.answered_tag != record.provisional_tags[0]
    media = record.media
    assert media is not None, record.ladder_text()
    # 1.5 s of the carrier's 20 ms frames, all after the 200, all decrypting.
    assert media.received >= 40 and media.decrypted == media.received - media.rtcp, media
    assert media.auth_failures == 0 and media.payload_other >= 40, media
    assert media.payload_ok >= media.sent * 0.9, media  # Teams' own packets came back
    wait_until(lambda: engine.client().list_calls() == [], 5, "rtpengine to hold no session")
    assert edge.sbc.metrics().value("sbc_media_fork_switches_total") == 1


def test_media_timeout_ends_the_call_with_a_bye_to_each_party(
    media_bed: MediaBedFactory,
) -> None:
    """rtpengine (--timeout=3) sees no RTP and calls the SBC back (--b2b-url, XMLRPC): the SBC
    sends both parties a BYE with a Reason; the carrier's scenario fails without it."""
    bed = media_bed("uas_teams_early_answer.xml", rtpengine_args=["--timeout=3"])
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
    media_bed: MediaBedFactory,
) -> None:
    """The call in progress is not torn down while rtpengine is gone; new calls get 503 with
    Retry-After and readiness says why; once rtpengine is back, Teams' re-INVITE anchors the
    call's media again on the restarted instance and media flows."""
    bed = media_bed("uas_teams_rekey.xml", teams_keys=2)
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

    bed.carrier_hangs_up(uac, invite)
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
