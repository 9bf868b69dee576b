"""Test-side helpers: UDP media peers (a "carrier" and a "Teams" socket), SDP bodies, and the
product's ng client pointed at the test bed's rtpengine."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import uvloop

from teams_sbc.media.config import RtpengineInstance
from teams_sbc.media.relays import RelayPool
from teams_sbc.media.rtp import RtpPacket
from teams_sbc.media.sdp import MediaDescription, media_descriptions
from teams_sbc.media.srtp import SdesKey
from tests.testbed.process import ManagedProcess
from tests.testbed.rtpengine import Rtpengine

T = TypeVar("T")

HOST = "127.0.0.1"
PCMU = 0
TELEPHONE_EVENT = 101


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Every async test runs on uvloop, the loop the SBC runs on."""
    return uvloop.run(coro)


class UdpPeer(asyncio.DatagramProtocol):
    """One media endpoint: a UDP socket on loopback and a queue of what it received."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls) -> UdpPeer:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(cls, local_addr=(HOST, 0))
        return peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport, but is one.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait((data, addr))

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, (HOST, port))

    async def receive(self, within: float = 2.0) -> bytes:
        data, _ = await asyncio.wait_for(self.received.get(), within)
        return data

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def carrier_sdp(port: int, version: int = 1, direction: str = "sendrecv", ip: str = HOST) -> str:
    """What a carrier's INVITE carries: plain RTP/AVP, G.711 and RFC 4733 events."""
    return (
        "v=0\r\n"
        f"o=carrier 1000 {version} IN IP4 {ip}\r\n"
        "s=-\r\n"
        f"c=IN IP4 {ip}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 8 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-16\r\n"
        "a=ptime:20\r\n"
        f"a={direction}\r\n"
    )


def teams_sdp(
    port: int,
    keys: list[SdesKey],
    version: int = 1,
    direction: str = "sendrecv",
    ice: bool = False,
) -> str:
    """What Teams' media processor sends: RTP/SAVP with SDES, rtcp-mux, optionally candidates."""
    lines = [
        "v=0",
        f"o=- 2000 {version} IN IP4 {HOST}",
        "s=session",
        f"c=IN IP4 {HOST}",
        "b=CT:10000000",
        "t=0 0",
        f"m=audio {port} RTP/SAVP 0 8 101 13",
        f"a=rtcp:{port + 1}",
    ]
    if ice:
        lines += [
            "a=ice-ufrag:Xa9b",
            "a=ice-pwd:0123456789abcdefghijklmn",
            f"a=candidate:1 1 UDP 2130706431 {HOST} {port} typ host",
            f"a=candidate:1 2 UDP 2130705918 {HOST} {port + 1} typ host",
            f"a=x-candidate-ipv6:1 1 UDP 2130706431 ::1 {port} typ host",
        ]
    lines += [f"a={key.attribute()}" for key in keys]
    lines += [
        "a=rtcp-mux",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=rtpmap:13 CN/8000",
        "a=ptime:20",
        f"a={direction}",
    ]
    return "\r\n".join(lines) + "\r\n"


def audio(sdp: str) -> MediaDescription:
    (media,) = media_descriptions(sdp)
    return media


def crypto_keys(sdp: str) -> list[SdesKey]:
    return [SdesKey.parse(value) for value in audio(sdp).attributes if value.startswith("crypto:")]


def pcmu_packets(count: int, ssrc: int, first_seq: int = 1000, marker: int = 0) -> list[RtpPacket]:
    """20 ms PCMU frames whose payload bytes say which packet they are."""
    return [
        RtpPacket(
            payload_type=PCMU,
            sequence=first_seq + i,
            timestamp=160 * (first_seq + i),
            ssrc=ssrc,
            payload=bytes([(marker + i) & 0xFF]) * 8 + bytes(range(152)),
        )
        for i in range(count)
    ]


def dtmf_event(
    digit: int, ssrc: int, first_seq: int, timestamp: int, payload_type: int = TELEPHONE_EVENT
) -> list[RtpPacket]:
    """One key press as RFC 4733 sends it: the first packet marked (2.5.1.3), updates with a
    growing duration, all with the event's start timestamp, then the end bit three times
    (2.5.1.4). Payload: event, E|R|volume (10 dBm0 below), duration in timestamp units."""
    durations = [160, 320, 480, 640, 800, 800, 800]
    return [
        RtpPacket(
            payload_type=payload_type,
            sequence=first_seq + i,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=bytes([digit, (0x80 if i >= 4 else 0) | 10]) + duration.to_bytes(2, "big"),
            marker=i == 0,
        )
        for i, duration in enumerate(durations)
    ]


def pool_for(*engines: Rtpengine, **kwargs: Any) -> RelayPool:
    return RelayPool([RtpengineInstance(address=e.ng_address) for e in engines], **kwargs)


@contextlib.asynccontextmanager
async def started(pool: RelayPool) -> AsyncIterator[RelayPool]:
    await pool.start(background=False)
    try:
        yield pool
    finally:
        await pool.close()


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    """Probe until true (a real request each time), never a fixed sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


def _all_threads_stopped(pid: int) -> bool:
    """Every thread in state T: a SIGSTOP has taken effect (kill() returns before it does)."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(OSError):
            states.append(stat.read_text().rpartition(")")[2].split()[0])
    return bool(states) and all(state in "tT" for state in states)


@contextlib.contextmanager
def frozen(proc: ManagedProcess) -> Iterator[None]:
    """rtpengine alive with its socket open but reading nothing, as a hung daemon; then thawed."""
    proc.signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 5.0
        while not _all_threads_stopped(proc.pid):
            if time.monotonic() > deadline:
                raise AssertionError(f"{proc.name} did not stop on SIGSTOP")
            time.sleep(0.005)
        yield
    finally:
        proc.signal(signal.SIGCONT)
