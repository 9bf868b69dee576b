"""Media anchored by the real SBC, with real packets: sipp as the carrier sending RTP, the real
``teams-sbc run`` driving the real rtpengine, and on the Teams side sipp answering with
RTP/SAVP and an SDES key whose media address is this test's own socket (tests/media/sipp_bed.py
says how each direction is proven). rtpengine's session list is checked empty before and after
each call: nothing leaks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from teams_sbc.media.rtp import RtpPacket
from tests.media.sipp_bed import (
    PCMU,
    MediaBed,
    audio,
    carrier_frames,
    crypto,
    make_media_bed,
    sdp_of,
    teams_packets,
)
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
