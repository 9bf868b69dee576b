"""Per-leg flag sets and the SDP edits after rtpengine (pure functions)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from teams_sbc.media.config import (
    RTPENGINE_SDES_SUITES,
    MediaConfig,
    RtpengineInstance,
    derived_token,
    parse_address,
)
from teams_sbc.media.legs import (
    Leg,
    MediaPolicy,
    answer_params,
    delete_params,
    finish_sdp,
    leg_flags,
    offer_params,
)
from teams_sbc.media.sdp import hold_as_inactive, media_descriptions, strip_attributes

TEAMS_KEEPS = {"AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"}


def test_towards_teams_srtp_sdes_only_the_teams_suites_no_dtls_no_ice() -> None:
    flags = leg_flags(Leg.TEAMS, MediaPolicy(), offer=True)

    assert flags["transport-protocol"] == "RTP/SAVP"
    assert flags["DTLS"] == "off"
    assert flags["ICE"] == "remove"
    assert flags["rtcp-mux"] == ["offer"]
    dropped = {s.removeprefix("no-") for s in flags["SDES"]}
    assert dropped == set(RTPENGINE_SDES_SUITES) - TEAMS_KEEPS
    assert "ICE-lite" not in flags
    assert "reject-ICE" in flags["flags"]  # a carrier offering ICE gets none back


def test_towards_carrier_plain_rtp_no_ice_rtcp_demuxed() -> None:
    flags = leg_flags(Leg.CARRIER, MediaPolicy(), offer=True)

    assert flags["transport-protocol"] == "RTP/AVP"
    assert flags["ICE"] == "remove"
    assert flags["rtcp-mux"] == ["demux"]
    assert "reject-ICE" in flags["flags"]  # no STUN checks towards Teams' candidates
    assert "codec" not in flags  # the carrier's codecs are kept: no transcoding


def test_answers_carry_no_offer_only_keys() -> None:
    for leg in Leg:
        flags = leg_flags(leg, MediaPolicy(bypass=True), offer=False)
        assert "rtcp-mux" not in flags and "ICE-lite" not in flags


def test_media_bypass_makes_rtpengine_ice_lite_towards_teams() -> None:
    policy = MediaPolicy(bypass=True)

    assert leg_flags(Leg.TEAMS, policy, offer=True)["ICE"] == "force"
    assert leg_flags(Leg.TEAMS, policy, offer=True)["ICE-lite"] == "forward"
    # One candidate (Microsoft): RTCP muxed on the RTP port, no component 2.
    assert leg_flags(Leg.TEAMS, policy, offer=True)["rtcp-mux"] == ["require"]
    assert leg_flags(Leg.TEAMS, policy, offer=False)["ICE"] == "force"
    assert leg_flags(Leg.CARRIER, policy, offer=True)["ICE-lite"] == "backward"
    assert leg_flags(Leg.CARRIER, policy, offer=True)["ICE"] == "remove"
    assert "reject-ICE" not in leg_flags(Leg.CARRIER, policy, offer=True)["flags"]


def test_policy_from_config_narrows_the_suites() -> None:
    config = MediaConfig(
        rtpengines=[RtpengineInstance(address="127.0.0.1:2223")],
        teams_sdes_suites=["AES_CM_128_HMAC_SHA1_80"],
    )

    policy = MediaPolicy.from_config(config)

    assert "no-AES_CM_128_HMAC_SHA1_32" in leg_flags(Leg.TEAMS, policy, offer=True)["SDES"]
    assert "no-AES_CM_128_HMAC_SHA1_80" not in leg_flags(Leg.TEAMS, policy, offer=True)["SDES"]


def test_bypass_is_the_media_sections_option() -> None:
    instances = [RtpengineInstance(address="127.0.0.1:2223")]
    assert not MediaPolicy.from_config(MediaConfig(rtpengines=instances)).bypass
    config = MediaConfig(rtpengines=instances, bypass=True)
    assert MediaPolicy.from_config(config).bypass
    assert not MediaPolicy.from_config(config, bypass=False).bypass  # a caller may override


def test_command_params_carry_the_dialog_identifiers() -> None:
    policy = MediaPolicy()
    offer = offer_params(call_id="c", from_tag="f", sdp="v=0", towards=Leg.TEAMS, policy=policy)
    reoffer = offer_params(
        call_id="c", from_tag="t", to_tag="f", sdp="v=0", towards=Leg.CARRIER, policy=policy
    )
    answer = answer_params(
        call_id="c", from_tag="f", to_tag="t", sdp="v=0", towards=Leg.CARRIER, policy=policy
    )

    assert (offer["call-id"], offer["from-tag"], "to-tag" in offer) == ("c", "f", False)
    assert (reoffer["from-tag"], reoffer["to-tag"]) == ("t", "f")
    assert (answer["from-tag"], answer["to-tag"], answer["sdp"]) == ("f", "t", "v=0")
    assert delete_params(call_id="c", from_tag="f") == {"call-id": "c", "from-tag": "f"}


HELD = (
    "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    "m=audio 30000 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendonly\r\na=rtcp-mux\r\n"
)


@pytest.mark.parametrize("direction", ["sendonly", "recvonly", "inactive"])
def test_hold_towards_teams_becomes_inactive(direction: str) -> None:
    out = hold_as_inactive(HELD.replace("a=sendonly", f"a={direction}"))

    assert out == HELD.replace("a=sendonly", "a=inactive")  # only that line changed


def test_sendrecv_is_left_byte_for_byte() -> None:
    sdp = HELD.replace("a=sendonly", "a=sendrecv")

    assert hold_as_inactive(sdp) == sdp
    assert hold_as_inactive(sdp.replace("a=sendrecv\r\n", "")) == sdp.replace("a=sendrecv\r\n", "")


def test_session_level_hold_moves_into_each_section() -> None:
    sdp = (
        "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\na=sendonly\r\n"
        "m=audio 30000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        "m=video 0 RTP/AVP 96\r\n"
        "m=audio 30002 RTP/AVP 0\r\na=sendrecv\r\n"
    )

    media = media_descriptions(hold_as_inactive(sdp))

    assert [m.direction for m in media] == ["inactive", "sendonly", "sendrecv"]
    assert "a=sendonly\r\nm=audio 30000" not in hold_as_inactive(sdp)


def test_finish_sdp_per_leg() -> None:
    teams_offer = HELD + "a=x-candidate-ipv6:1 1 UDP 2130706431 ::1 52000 typ host\r\n"

    to_carrier = finish_sdp(teams_offer, Leg.CARRIER)
    to_teams = finish_sdp(teams_offer, Leg.TEAMS)

    assert "x-candidate" not in to_carrier and "a=sendonly" in to_carrier
    assert "a=inactive" in to_teams and "x-candidate" in to_teams


def test_strip_attributes_matches_whole_names_only() -> None:
    sdp = "v=0\na=x-candidate:1\na=x-candidate-ipv6:2\na=x-candidates-other:3\n"

    assert (
        strip_attributes(sdp, ["x-candidate"])
        == "v=0\na=x-candidate-ipv6:2\na=x-candidates-other:3\n"
    )


def test_media_descriptions_read_ports_addresses_and_attributes() -> None:
    (audio,) = media_descriptions(HELD)

    assert (audio.media, audio.port, audio.protocol, audio.formats) == (
        "audio",
        30000,
        "RTP/SAVP",
        ("0",),
    )
    assert (audio.address, audio.direction, audio.rtcp_mux) == ("192.0.2.1", "sendonly", True)
    assert audio.attribute_values("rtpmap") == ["0 PCMU/8000"]


def test_config_addresses_tokens_and_unknown_keys() -> None:
    assert parse_address("[::1]:2223") == ("::1", 2223)
    assert parse_address("10.0.0.5:2223") == ("10.0.0.5", 2223)
    with pytest.raises(ValueError):
        parse_address("rtpengine:2223")  # an address, not a name: no DNS in the hot path
    # Every replica derives the same token from the same address.
    assert RtpengineInstance(address="10.0.0.5:2223").identity == derived_token("10.0.0.5:2223")
    assert RtpengineInstance(address="10.0.0.5:2223", token="pod-a").identity == "pod-a"
    with pytest.raises(ValidationError):
        RtpengineInstance(address="10.0.0.5:2223", token="has;semicolon")
    with pytest.raises(ValidationError):
        MediaConfig(rtpengines=[RtpengineInstance(address="10.0.0.5:2223")], retransmit=[1])  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        MediaConfig(rtpengines=[RtpengineInstance(address="10.0.0.5:2223")] * 2)
    with pytest.raises(ValidationError):
        MediaConfig(rtpengines=[RtpengineInstance(address="1.2.3.4:1")], teams_sdes_suites=["X"])
