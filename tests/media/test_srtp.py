"""RTP packets and SDES/SRTP helpers (libsrtp2 through pylibsrtp), without rtpengine."""

from __future__ import annotations

import pytest

from teams_sbc.media.rtp import RtpPacket, is_rtcp
from teams_sbc.media.srtp import SdesKey, SrtpError, SrtpSession

KEY_80 = "crypto:2 AES_CM_128_HMAC_SHA1_80 inline:C0qE6fUdy7naZoBjkw+yyYRQrXWGu4xbNGgLGgE7"


def test_rtp_round_trip_and_header_fields() -> None:
    packet = RtpPacket(payload_type=0, sequence=65535, timestamp=2**32 - 1, ssrc=7, payload=b"x")

    wire = packet.encode()

    assert wire[:2] == b"\x80\x00" and len(wire) == 13
    assert RtpPacket.decode(wire) == packet


def test_rtp_decode_skips_csrc_extension_and_padding() -> None:
    header = bytes([0x80 | 0x20 | 0x10 | 0x01, 0x80 | 101, 0, 5, 0, 0, 0, 9, 0, 0, 0, 42])
    wire = header + b"CSRC" + b"\xbe\xde\x00\x01" + b"EXT!" + b"payload" + b"\x00\x02"

    packet = RtpPacket.decode(wire)

    assert (packet.payload_type, packet.marker, packet.sequence, packet.ssrc) == (101, True, 5, 42)
    assert packet.payload == b"payload"


@pytest.mark.parametrize("data", [b"\x80\x00", b"\x40" + bytes(11)])
def test_not_rtp_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        RtpPacket.decode(data)


def test_rtcp_is_told_apart_from_rtp_on_a_muxed_port() -> None:
    assert is_rtcp(b"\x80\xc8" + bytes(26))  # sender report, PT 200
    assert not is_rtcp(RtpPacket(0, 1, 1, 1, b"").encode())


def test_crypto_attribute_parse_and_format() -> None:
    key = SdesKey.parse("a=" + KEY_80 + "|2^31|1:1")

    assert (key.tag, key.suite, key.lifetime, key.mki, key.mki_length) == (
        2,
        "AES_CM_128_HMAC_SHA1_80",
        "2^31",
        1,
        1,
    )
    assert len(key.key_salt) == 30
    assert key.attribute() == KEY_80 + "|2^31|1:1"
    assert SdesKey.parse(KEY_80).attribute() == KEY_80


@pytest.mark.parametrize(
    "attribute",
    [
        "crypto:1 AES_256_CM_HMAC_SHA1_80 inline:C0qE6fUdy7naZoBjkw+yyYRQrXWGu4xbNGgLGgE7",
        "crypto:1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ",
        "rtpmap:0 PCMU/8000",
    ],
)
def test_unusable_crypto_attributes_are_refused(attribute: str) -> None:
    with pytest.raises(SrtpError):
        SdesKey.parse(attribute)


@pytest.mark.parametrize("suite", ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"])
@pytest.mark.parametrize("mki", [None, 1])
def test_protect_unprotect_round_trip(suite: str, mki: int | None) -> None:
    key = SdesKey.generate(suite)
    if mki is not None:
        key = SdesKey(key.tag, key.suite, key.key_salt, "2^31", mki, 1)
    sender, receiver = SrtpSession(key, outbound=True), SrtpSession(key, outbound=False)
    rtp = RtpPacket(0, 1, 160, 0x1234, bytes(range(160))).encode()

    srtp = sender.protect(rtp)

    tag = 10 if suite.endswith("_80") else 4
    assert len(srtp) == len(rtp) + tag + (1 if mki else 0)
    assert srtp[12:] != rtp[12:]  # the payload is encrypted
    assert receiver.unprotect(srtp) == rtp


def test_wrong_key_fails_authentication() -> None:
    sender = SrtpSession(SdesKey.generate(), outbound=True)
    receiver = SrtpSession(SdesKey.generate(), outbound=False)

    with pytest.raises(SrtpError):
        receiver.unprotect(sender.protect(RtpPacket(0, 1, 160, 1, b"\x00" * 160).encode()))


def test_srtcp_round_trip() -> None:
    key = SdesKey.generate()
    report = b"\x80\xc8\x00\x06" + bytes(24)  # an empty sender report

    protected = SrtpSession(key, outbound=True).protect_rtcp(report)

    assert SrtpSession(key, outbound=False).unprotect_rtcp(protected) == report
