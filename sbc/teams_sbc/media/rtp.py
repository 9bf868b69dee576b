"""RTP packets (RFC 3550 section 5.1): enough to build and read real headers for the Teams
emulator, the demo and the tests. Relaying is rtpengine's job, not ours.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_HEADER = struct.Struct("!BBHII")
VERSION = 2


@dataclass(frozen=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False

    def encode(self) -> bytes:
        """Version 2, no padding, no extension, no CSRC."""
        return (
            _HEADER.pack(
                VERSION << 6,
                (int(self.marker) << 7) | (self.payload_type & 0x7F),
                self.sequence & 0xFFFF,
                self.timestamp & 0xFFFFFFFF,
                self.ssrc & 0xFFFFFFFF,
            )
            + self.payload
        )

    @classmethod
    def decode(cls, data: bytes) -> RtpPacket:
        """Parses CSRCs, a header extension and padding away; ValueError if it is not RTP."""
        if len(data) < _HEADER.size:
            raise ValueError(f"RTP packet too short: {len(data)} bytes")
        first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
        if first >> 6 != VERSION:
            raise ValueError(f"not RTP version 2 (first byte {first:#04x})")
        offset = _HEADER.size + 4 * (first & 0x0F)
        if first & 0x10:  # header extension: 16-bit profile, 16-bit length in words
            if len(data) < offset + 4:
                raise ValueError("truncated RTP header extension")
            (words,) = struct.unpack_from("!H", data, offset + 2)
            offset += 4 + 4 * words
        end = len(data)
        if first & 0x20:
            end -= data[-1]
        if offset > end:
            raise ValueError("RTP header longer than the packet")
        return cls(
            payload_type=second & 0x7F,
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=bytes(data[offset:end]),
            marker=bool(second & 0x80),
        )


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 section 4: on a muxed port, payload types 64-95 (RTCP types 192-223) are RTCP."""
    return len(data) >= 2 and 192 <= data[1] <= 223
