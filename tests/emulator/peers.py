"""The SBC's side of the wire, for driving the emulator: real TLS connections (client and
server, with real certificates), raw SIP written out in full, real SRTP over UDP.

Nothing here reuses the emulator's own code paths: messages are text, parsed with the SIP core's
parser, and media goes through :class:`SrtpSession` directly, so a test fails when the emulator
says something other than what the wire carried.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from teams_sbc.emulator import is_pattern, pattern_payload
from teams_sbc.media.rtp import RtpPacket, is_rtcp
from teams_sbc.media.sdp import media_descriptions
from teams_sbc.media.srtp import SdesKey, SrtpError, SrtpSession
from teams_sbc.pki import CertFiles
from teams_sbc.sip import Request, Response, parse_message
from teams_sbc.sip.framing import KeepAlivePing, StreamFramer

T = TypeVar("T")

SBC_FQDN = "sbc.example.test"
MS = "sip.pstnhub.microsoft.com"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)


def token() -> str:
    return secrets.token_hex(6)


# --- SDP and messages as an SBC (rtpengine behind it) writes them ----------------------------


def sbc_sdp(port: int, keys: list[SdesKey], *, protocol: str = "RTP/SAVP",
            direction: str = "sendrecv", address: str = "127.0.0.1", version: int = 1,
            codecs: str = "0 8 101") -> str:
    lines = [
        "v=0",
        f"o=rtpengine 1001 {version} IN IP4 {address}",
        "s=-",
        f"c=IN IP4 {address}",
        "t=0 0",
        f"m=audio {port} {protocol} {codecs}",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        *[f"a={key.attribute()}" for key in keys],
        "a=ptime:20",
        f"a={direction}",
    ]
    return "\r\n".join(lines) + "\r\n"


@dataclass
class Invite:
    text: str
    call_id: str
    from_tag: str
    branch: str
    uri: str
    headers: list[str] = field(default_factory=list)


def build_request(method: str, uri: str, *, call_id: str, from_tag: str, to: str,
                  from_: str, cseq: int, contact: str | None, branch: str | None = None,
                  extra: list[str] | None = None, body: str = "",
                  local: str = "127.0.0.1:5061") -> str:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/TLS {local};branch={branch or 'z9hG4bK' + token()};rport",
        "Max-Forwards: 70",
        f"From: {from_};tag={from_tag}",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
    ]
    if contact is not None:
        lines.append(f"Contact: {contact}")
    lines += extra or []
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


def options(*, contact: str | None = f"<sip:{SBC_FQDN}:5061;transport=tls>",
            extra: list[str] | None = None, uri: str = f"sip:{MS}:5061;transport=tls") -> str:
    return build_request(
        "OPTIONS", uri, call_id=token(), from_tag=token(), to=f"<sip:{MS}:5061>",
        from_=f"<sip:{SBC_FQDN}:5061>", cseq=1, contact=contact, extra=extra,
    )


def invite(*, number: str = "+14255550123", caller: str = "+12065550100",
           contact: str | None = None, sdp: str = "", port: int = 5061,
           extra: list[str] | None = None, ruri: str | None = None, to_number: str | None = None,
           fqdn: str = SBC_FQDN) -> Invite:
    uri = ruri or f"sip:{number}@{MS}:5061;user=phone;transport=tls"
    call_id, from_tag, branch = token() + "@sbc", token(), "z9hG4bK" + token()
    text = build_request(
        "INVITE", uri, call_id=call_id, from_tag=from_tag, branch=branch,
        to=f"<sip:{to_number or number}@{MS};user=phone>",
        from_=f"<sip:{caller}@{fqdn};user=phone>", cseq=1,
        contact=contact if contact is not None else f"<sip:{caller}@{fqdn}:{port};transport=tls>",
        extra=extra, body=sdp,
    )
    return Invite(text, call_id, from_tag, branch, uri)


# --- blocking-free TLS connections -----------------------------------------------------------


def client_context(ca_file: Path, cert: CertFiles | None, *, max_tls: str = "1.3"
                   ) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if max_tls == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(ca_file))
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


class SipConnection:
    """One TLS connection carrying SIP: send text, receive parsed messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.framer = StreamFramer()
        self.queue: list[Request | Response] = []
        self.raw: list[bytes] = []

    @classmethod
    async def connect(cls, address: tuple[str, int], ctx: ssl.SSLContext,
                      server_hostname: str = MS, local_host: str = "127.0.0.1") -> SipConnection:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            address[0], address[1], ssl=ctx, server_hostname=server_hostname,
            local_addr=(local_host, 0)), 5)
        return cls(reader, writer)

    @property
    def tls_version(self) -> str | None:
        obj = self.writer.get_extra_info("ssl_object")
        return obj.version() if obj is not None else None

    async def send(self, text: str | bytes) -> None:
        self.writer.write(text.encode() if isinstance(text, str) else text)
        await self.writer.drain()

    async def receive(self, within: float = 3.0) -> Request | Response:
        while not self.queue:
            data = await asyncio.wait_for(self.reader.read(65536), within)
            if not data:
                raise ConnectionError("closed by the emulator")
            for event in self.framer.feed(data):
                if isinstance(event, bytes):
                    self.raw.append(event)
                    self.queue.append(parse_message(event))
                elif isinstance(event, KeepAlivePing):
                    continue
        return self.queue.pop(0)

    async def response(self, within: float = 3.0, *, final: bool = True) -> Response:
        """The next (final) response, skipping provisionals when ``final``."""
        while True:
            message = await self.receive(within)
            if isinstance(message, Response) and (not final or message.status >= 200):
                return message

    async def closed_by_peer(self, within: float = 3.0) -> bool:
        try:
            data = await asyncio.wait_for(self.reader.read(65536), within)
        except (ConnectionError, ssl.SSLError):
            return True
        return data == b""

    def close(self) -> None:
        self.writer.close()


# --- the SBC as a TLS server the emulator connects to ----------------------------------------


class SrtpPeer(asyncio.DatagramProtocol):
    """The SBC's media socket (rtpengine's, in real life): SRTP with its own key."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.key = SdesKey.generate("AES_CM_128_HMAC_SHA1_80", 1)
        self.recv: SrtpSession | None = None
        self.send_session: SrtpSession | None = None
        self.received = 0
        self.decrypted = 0
        self.pattern_ok = 0
        self.failures = 0
        self.sent = 0
        self.remote: tuple[str, int] | None = None

    @classmethod
    async def open(cls) -> SrtpPeer:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(cls, local_addr=("127.0.0.1", 0))
        return peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def use(self, remote_key: SdesKey, remote: tuple[str, int], own_tag: int) -> None:
        self.recv = SrtpSession(remote_key, outbound=False)
        self.key = SdesKey(own_tag, remote_key.suite, self.key.key_salt)
        self.send_session = SrtpSession(self.key, outbound=True)
        self.remote = remote

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1
        if self.recv is None or is_rtcp(data):
            return
        try:
            packet = RtpPacket.decode(self.recv.unprotect(data))
        except (SrtpError, ValueError):
            self.failures += 1
            return
        self.decrypted += 1
        self.pattern_ok += is_pattern(packet.payload)

    async def send_pattern(self, count: int, interval: float = 0.01) -> None:
        assert self.transport is not None and self.send_session is not None and self.remote
        for i in range(count):
            packet = RtpPacket(0, 500 + i, 160 * i, 0x5BC5BC, pattern_payload(7000 + i))
            self.transport.sendto(self.send_session.protect(packet.encode()), self.remote)
            self.sent += 1
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class IncomingCall:
    invite: Request
    conn: SipConnection
    media: SrtpPeer | None = None
    acks: list[Request] = field(default_factory=list)
    byes: list[Request] = field(default_factory=list)


class TestSbc:
    """A TLS server on 127.0.0.1 standing in for the SBC's Teams listener: records every message
    the emulator sends; answers OPTIONS 200 and INVITEs 100 + 200 with an SRTP answer (picking
    the emulator's first key), ACKs and BYEs as a UAS would."""

    __test__ = False

    def __init__(self, ca_file: Path, cert: CertFiles, *, verify_client: bool = True,
                 record_route: list[str] | None = None, fqdn: str = SBC_FQDN,
                 answer: str = "200", answer_sdp: str | None = None,
                 auto_media: int = 0) -> None:
        self.ca_file = ca_file
        self.cert = cert
        self.verify_client = verify_client
        self.record_route = record_route
        self.fqdn = fqdn
        self.answer = answer
        self.answer_sdp = answer_sdp
        self.auto_media = auto_media
        self.port = 0
        self.messages: list[Request | Response] = []
        self.conns: list[SipConnection] = []
        self.calls: dict[str, IncomingCall] = {}
        self.peer_names: list[str | None] = []
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TestSbc:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert.cert, self.cert.key)
        ctx.load_verify_locations(cafile=str(self.ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED if self.verify_client else ssl.CERT_NONE
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ctx)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = SipConnection(reader, writer)
        self.conns.append(conn)
        obj = writer.get_extra_info("ssl_object")
        cert = obj.getpeercert() if obj is not None else None
        self.peer_names.append(str(cert.get("subject")) if cert else None)
        try:
            while True:
                message = await conn.receive(within=3600)
                self.messages.append(message)
                if isinstance(message, Request):
                    await self._on_request(conn, message)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            return

    async def _on_request(self, conn: SipConnection, request: Request) -> None:
        method = request.method
        if method == "OPTIONS":
            await conn.send(self.reply(request, 200, extra=[
                f"Contact: <sip:{self.fqdn}:{self.port};transport=tls>",
                "Allow: INVITE, ACK, OPTIONS, CANCEL, BYE"]))
        elif method == "INVITE" and request.to_tag is None:
            await self._on_invite(conn, request)
        elif method == "INVITE":
            call = self.calls.get(request.call_id)
            body = self.answer_sdp or (sbc_sdp(call.media.port, [call.media.key], version=2)
                                       if call and call.media else "")
            await conn.send(self.reply(request, 200, body=body, extra=[
                f"Contact: <sip:+14255550123@{self.fqdn}:{self.port};transport=tls>"]))
        elif method == "ACK":
            call = self.calls.get(request.call_id)
            if call is not None:
                call.acks.append(request)
        elif method == "BYE":
            call = self.calls.get(request.call_id)
            if call is not None:
                call.byes.append(request)
            await conn.send(self.reply(request, 200))
        elif method == "CANCEL":
            await conn.send(self.reply(request, 200))

    async def _on_invite(self, conn: SipConnection, request: Request) -> None:
        call = IncomingCall(request, conn)
        self.calls[request.call_id] = call
        await conn.send(self.reply(request, 100))
        if self.answer != "200":
            await conn.send(self.reply(request, int(self.answer), tag="uas1"))
            return
        (audio,) = media_descriptions(request.body.decode())
        keys = [SdesKey.parse("crypto:" + v) for v in audio.attribute_values("crypto")]
        chosen = keys[0]
        media = await SrtpPeer.open()
        media.use(chosen, (audio.address or "127.0.0.1", audio.port), chosen.tag)
        call.media = media
        await conn.send(self.reply(request, 180, tag="uas1"))
        body = self.answer_sdp or sbc_sdp(media.port, [media.key])
        await conn.send(self.reply(request, 200, tag="uas1", body=body,
                                   own_record_route=self.record_route, extra=[
            f"Contact: <sip:+14255550123@{self.fqdn}:{self.port};transport=tls>",
            "Session-Expires: 1800;refresher=uac", "Require: timer"]))
        if self.auto_media:
            task = asyncio.get_running_loop().create_task(media.send_pattern(self.auto_media))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def reply(self, request: Request, status: int, *, tag: str | None = None, body: str = "",
              extra: list[str] | None = None, own_record_route: list[str] | None = None) -> str:
        reason = {100: "Trying", 180: "Ringing", 200: "OK"}.get(status, "Whatever")
        lines = [f"SIP/2.0 {status} {reason}"]
        for name in ("via", "from"):
            lines += [f"{name.title()}: {v}" for v in request.headers.get_all(name)]
        to = request.headers.get("to") or ""
        if tag and request.to_tag is None:
            to += f";tag={tag}"
        lines += [f"To: {to}", f"Call-ID: {request.call_id}",
                  f"CSeq: {request.cseq.number} {request.cseq.method}"]
        if 100 < status < 300:
            # As a proxy in front of a UAS: its own entries on top of those of the request.
            lines += [f"Record-Route: {v}" for v in own_record_route or []]
            lines += [f"Record-Route: {v}" for v in request.headers.get_all("record-route")]
        lines += extra or []
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + body

    def requests(self, method: str) -> list[Request]:
        return [m for m in self.messages if isinstance(m, Request) and m.method == method]

    async def close(self) -> None:
        for call in self.calls.values():
            if call.media is not None:
                call.media.close()
        for conn in self.conns:
            conn.close()
        if self._server is not None:
            self._server.close()


async def eventually(check: Any, within: float = 5.0, what: str = "a condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)
