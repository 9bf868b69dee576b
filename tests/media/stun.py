"""Test-side STUN (RFC 5389) for ICE connectivity checks (RFC 8445 7.1): what a Teams client,
a full ICE agent and always the controlling one, sends to an ICE-lite SBC in media bypass, and
how it reads the answer. Only what the tests need: Binding requests with short-term
credentials, and responses checked for their MESSAGE-INTEGRITY and FINGERPRINT.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import struct
import zlib
from dataclasses import dataclass, field

from teams_sbc.media.sdp import media_descriptions

MAGIC_COOKIE = 0x2112A442
FINGERPRINT_XOR = 0x5354554E
HEADER = 20

BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111

USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
XOR_MAPPED_ADDRESS = 0x0020
PRIORITY = 0x0024
USE_CANDIDATE = 0x0025
FINGERPRINT = 0x8028
ICE_CONTROLLED = 0x8029
ICE_CONTROLLING = 0x802A


def is_stun(data: bytes) -> bool:
    """RFC 7983 demultiplexing: STUN's first byte is 0-3 (RTP/RTCP's is 128-191), and RFC 5389
    messages carry the magic cookie."""
    return len(data) >= HEADER and data[0] < 4 and struct.unpack("!I", data[4:8])[0] == MAGIC_COOKIE


def _attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def _header(kind: int, length: int, transaction: bytes) -> bytes:
    return struct.pack("!HHI", kind, length, MAGIC_COOKIE) + transaction


def binding_request(
    username: str,
    password: str,
    *,
    priority: int = 0x6E7F1EFF,
    nominate: bool = False,
    transaction: bytes | None = None,
) -> tuple[bytes, bytes]:
    """A controlling agent's check: USERNAME is ``<receiver's ufrag>:<sender's ufrag>``,
    signed with the receiver's password (RFC 8445 7.2.2). Returns (datagram, transaction id)."""
    transaction = transaction or os.urandom(12)
    body = _attribute(USERNAME, username.encode())
    body += _attribute(PRIORITY, struct.pack("!I", priority))
    body += _attribute(ICE_CONTROLLING, os.urandom(8))
    if nominate:
        body += _attribute(USE_CANDIDATE, b"")
    # MESSAGE-INTEGRITY covers the header with a length that already counts it (RFC 5389 15.4),
    # FINGERPRINT the whole message before it, its own length counted too (15.5).
    signed = _header(BINDING_REQUEST, len(body) + 24, transaction) + body
    body += _attribute(MESSAGE_INTEGRITY, hmac.new(password.encode(), signed, "sha1").digest())
    crc = zlib.crc32(_header(BINDING_REQUEST, len(body) + 8, transaction) + body)
    body += _attribute(FINGERPRINT, struct.pack("!I", crc ^ FINGERPRINT_XOR))
    return _header(BINDING_REQUEST, len(body), transaction) + body, transaction


@dataclass
class StunMessage:
    kind: int
    transaction: bytes
    #: (type, offset of the attribute in the message, value), in order.
    attributes: list[tuple[int, int, bytes]] = field(default_factory=list)
    raw: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> StunMessage:
        if not is_stun(data):
            raise ValueError(f"not a STUN message: {data[:8].hex()}")
        kind, length = struct.unpack("!HH", data[:4])
        if HEADER + length != len(data):
            raise ValueError(f"STUN length {length} for a {len(data)}-byte datagram")
        message = cls(kind, data[8:20], raw=data)
        offset = HEADER
        while offset < len(data):
            attr, size = struct.unpack("!HH", data[offset : offset + 4])
            message.attributes.append((attr, offset, data[offset + 4 : offset + 4 + size]))
            offset += 4 + size + (-size % 4)
        return message

    def value(self, kind: int) -> bytes | None:
        return next((v for k, _, v in self.attributes if k == kind), None)

    def integrity_ok(self, password: str) -> bool:
        """MESSAGE-INTEGRITY present and made with ``password`` (RFC 5389 15.4)."""
        for kind, offset, value in self.attributes:
            if kind == MESSAGE_INTEGRITY:
                head = _header(self.kind, offset + 24 - HEADER, self.transaction)
                expected = hmac.new(password.encode(), head + self.raw[HEADER:offset], "sha1")
                return hmac.compare_digest(expected.digest(), value)
        return False

    def fingerprint_ok(self) -> bool:
        for kind, offset, value in self.attributes:
            if kind == FINGERPRINT:
                crc = zlib.crc32(self.raw[:offset]) ^ FINGERPRINT_XOR
                return struct.pack("!I", crc) == value
        return False

    def mapped_address(self) -> tuple[str, int] | None:
        """XOR-MAPPED-ADDRESS (RFC 5389 15.2), IPv4: where the request came from."""
        value = self.value(XOR_MAPPED_ADDRESS)
        if value is None or value[1] != 0x01:
            return None
        port = struct.unpack("!H", value[2:4])[0] ^ (MAGIC_COOKIE >> 16)
        address = struct.unpack("!I", value[4:8])[0] ^ MAGIC_COOKIE
        return str(ipaddress.IPv4Address(address)), port


def ice_lite_sdp(sdp: str, host: str = "127.0.0.1") -> tuple[str, str, int]:
    """What Microsoft asks of an SBC in media bypass, on rtpengine's SDP to Teams: ICE-lite,
    exactly one IPv4 candidate (rtpengine's address and port, component 1: RTCP is muxed onto
    it), SDES keys, no DTLS. Returns rtpengine's (ufrag, password, port)."""
    (media,) = media_descriptions(sdp)
    assert "a=ice-lite" in sdp.partition("\nm=")[0]  # session level (RFC 8839 5.3)
    (candidate,) = media.attribute_values("candidate")
    _foundation, component, transport, _priority, address, port, _, kind = candidate.split()[:8]
    assert (component, transport.upper(), kind) == ("1", "UDP", "host"), candidate
    assert (address, int(port)) == (media.address, media.port) == (host, media.port)
    assert media.rtcp_mux and media.attribute_values("rtcp") == [str(media.port)]
    assert media.protocol == "RTP/SAVP" and media.attribute_values("crypto")
    assert not media.attribute_values("fingerprint")
    (ufrag,), (pwd,) = media.attribute_values("ice-ufrag"), media.attribute_values("ice-pwd")
    return ufrag, pwd, media.port
