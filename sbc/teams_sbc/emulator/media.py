"""The emulator's media: real SRTP over UDP with the keys from the SDP (Teams' media processor,
non-bypass). One :class:`MediaEndpoint` per call sends RTP packets protected with the emulator's
key and decrypts what arrives with the SBC's key, counting everything (:class:`MediaStats`).

Payload check: the emulator's packets carry a test pattern (:func:`pattern_payload`): a magic
prefix, a sequence number of its own and bytes derived from it. A relay that forwards without
transcoding (rtpengine between SRTP and RTP) keeps payloads intact, so whoever decrypts or reads
the other side can check each packet with :func:`is_pattern` (tests and the demo do, for the
carrier side). Packets with another payload are counted, not judged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import socket
from typing import cast

from teams_sbc.emulator.core import MediaPlan
from teams_sbc.emulator.records import MediaStats
from teams_sbc.media.rtp import RtpPacket, is_rtcp
from teams_sbc.media.srtp import SdesKey, SrtpError, SrtpSession

log = logging.getLogger("teams_sbc.emulator.media")

MAGIC = b"TSBC"


def pattern_payload(sequence: int, size: int = 160) -> bytes:
    """``size`` bytes (at least 6): MAGIC, the 16-bit ``sequence``, then bytes derived from it."""
    sequence &= 0xFFFF
    body = bytes((sequence * 7 + i) & 0xFF for i in range(max(size, 6) - 6))
    return MAGIC + sequence.to_bytes(2, "big") + body


def is_pattern(payload: bytes) -> bool:
    """Whether ``payload`` is an intact :func:`pattern_payload`."""
    if len(payload) < 6 or payload[:4] != MAGIC:
        return False
    return payload == pattern_payload(int.from_bytes(payload[4:6], "big"), len(payload))


def bind_udp(host: str) -> socket.socket:
    """A UDP socket bound to a free port of ``host`` (the core needs the port for its SDP
    before the endpoint exists)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


class MediaEndpoint(asyncio.DatagramProtocol):
    """The SRTP of one call: sends the test pattern every ``ptime``, decrypts what arrives."""

    def __init__(self, sock: socket.socket, ptime_ms: int, budget: int | None) -> None:
        self.sock = sock
        self.ptime = ptime_ms / 1000
        self.budget = budget
        host, port = sock.getsockname()[:2]
        self.stats = MediaStats(local=f"{host}:{port}")
        self.transport: asyncio.DatagramTransport | None = None
        self._plan: MediaPlan | None = None
        self._send_session: SrtpSession | None = None
        self._send_key: SdesKey | None = None
        self._recv_session: SrtpSession | None = None
        self._recv_key: SdesKey | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ssrc = random.getrandbits(32)
        self._seq = random.getrandbits(15)
        self._timestamp = random.getrandbits(31)
        self._closed = False

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, sock=self.sock)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        if self._plan is not None:
            self.apply(self._plan)

    def apply(self, plan: MediaPlan) -> None:
        """Start, or change (new keys, new address, hold), what this endpoint does."""
        self._plan = plan
        if plan.recv_key != self._recv_key:
            self._recv_key = plan.recv_key
            self._recv_session = SrtpSession(plan.recv_key, outbound=False)
        if plan.send_key != self._send_key:
            self._send_key = plan.send_key
            self._send_session = SrtpSession(plan.send_key, outbound=True)
        self.stats.remote = f"{plan.remote[0]}:{plan.remote[1]}"
        self.stats.payload_type = plan.payload_type
        if self.transport is None or self._closed:
            return
        if plan.send and self._timer is None:
            self._tick()
        elif not plan.send and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        plan = self._plan
        if self._closed or plan is None or not plan.send or self.transport is None:
            return
        if self.budget is not None and self.stats.sent >= self.budget:
            return
        assert self._send_session is not None
        packet = RtpPacket(
            payload_type=plan.payload_type,
            sequence=self._seq,
            timestamp=self._timestamp,
            ssrc=self._ssrc,
            payload=pattern_payload(self._seq),
            marker=self.stats.sent == 0,
        )
        self._seq = (self._seq + 1) & 0xFFFF
        self._timestamp = (self._timestamp + int(8000 * self.ptime)) & 0xFFFFFFFF
        try:
            self.transport.sendto(self._send_session.protect(packet.encode()), plan.remote)
            self.stats.sent += 1
        except (OSError, SrtpError) as exc:
            log.warning("media send failed: %s", exc, extra={"call_id": plan.call_id})
        self._timer = asyncio.get_running_loop().call_later(self.ptime, self._tick)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.stats.received += 1
        source = f"{addr[0]}:{addr[1]}"
        if source not in self.stats.from_addresses and len(self.stats.from_addresses) < 8:
            self.stats.from_addresses.append(source)
        session = self._recv_session
        if session is None:
            self.stats.auth_failures += 1
            return
        if is_rtcp(data):
            self.stats.rtcp += 1
            return
        try:
            clear = session.unprotect(data)
            packet = RtpPacket.decode(clear)
        except (SrtpError, ValueError):
            self.stats.auth_failures += 1
            return
        self.stats.decrypted += 1
        if is_pattern(packet.payload):
            self.stats.payload_ok += 1
        else:
            self.stats.payload_other += 1

    def error_received(self, exc: Exception) -> None:
        log.debug("media socket error: %s", exc)

    def stop_sending(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._plan is not None:
            self._plan = dataclasses.replace(self._plan, send=False)

    def close(self) -> None:
        self.stop_sending()
        self._closed = True
        if self.transport is not None:
            self.transport.close()
        else:
            self.sock.close()
