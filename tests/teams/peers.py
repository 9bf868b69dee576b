"""Scripted TLS peers playing Microsoft's side for the Teams edge's end-to-end tests.

Not an emulator (that is ``teams_sbc.emulator``): each peer is a few lines of script over a
real TLS socket (the ``ssl`` module), so a test states exactly what Microsoft sends and checks
exactly what the real ``teams-sbc run`` sent back. :class:`ProxyPeer` listens like one of
Microsoft's proxies (mutual TLS: it demands the SBC's certificate, records the SNI the SBC sent
and the certificate it presented), answers OPTIONS, and answers INVITEs by a plan (forked 180s,
a 183 with SDP, a 200 from another fork; or a status; or silence). :class:`TeamsClient` connects
to the SBC as Microsoft does and sends requests.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from teams_sbc.pki import CertFiles
from teams_sbc.sip.framing import StreamFramer
from teams_sbc.sip.message import Message, Request, Response, make_response, parse_message

TEAMS_SDP = (
    "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=session\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 50012 RTP/SAVP 104 9 0 8 101\r\n"
    "a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:QF3j5Yt3i1VZ9m0x0Yl7t7O5b8m4G3Q1Kq9Xw2Zr|2^31\r\n"
    "a=rtpmap:104 SILK/16000\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
)


class SipStream:
    """One TLS connection carrying SIP, read on its own thread into a queue."""

    def __init__(self, sock: ssl.SSLSocket, on_message: Callable[[SipStream, Message], None]):
        self.sock = sock
        self.on_message = on_message
        self.messages: queue.Queue[Message] = queue.Queue()
        self.server_name: str | None = None
        self.peer_cert: x509.Certificate | None = None
        der = sock.getpeercert(binary_form=True)
        if der:
            self.peer_cert = x509.load_der_x509_certificate(der)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        # One SSL object must not be read and written by two threads at once (OpenSSL's rule):
        # the reader takes the lock only to read what is there, the writer to write.
        framer = StreamFramer()
        try:
            self.sock.settimeout(0.05)
        except OSError:  # closed before this thread ran (a test that ends at once)
            return
        while True:
            try:
                readable = self.sock.pending() > 0 or bool(
                    select.select([self.sock], [], [], 0.05)[0]
                )
            except (OSError, ValueError):
                return
            if not readable:
                continue
            with self._lock:
                try:
                    data = self.sock.recv(65536)
                except (TimeoutError, ssl.SSLWantReadError):
                    continue
                except (OSError, ValueError):
                    return
            if not data:
                return
            for event in framer.feed(data):
                if isinstance(event, bytes):
                    msg = parse_message(event)
                    self.messages.put(msg)
                    self.on_message(self, msg)

    def send(self, data: bytes | str) -> None:
        with self._lock:
            self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader; the peer sees FIN now
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass
class InvitePlan:
    """How a :class:`ProxyPeer` answers a new INVITE."""

    kind: str = "answer"  # "answer", "status", "silent"
    status: int = 486
    extra: list[tuple[str, str]] = field(default_factory=list)
    forks: tuple[str, ...] = ("fork-a", "fork-b")  # the 180s' To-tags
    early_tag: str = "fork-c"  # the 183's
    answer_tag: str = "fork-d"  # the 200's


@dataclass
class Dialog:
    """What a peer remembers of a call it answered."""

    invite: Request
    stream: SipStream
    acks: list[Request] = field(default_factory=list)
    byes: list[Request] = field(default_factory=list)
    ok: Response | None = None


class ProxyPeer:
    """One of Microsoft's proxies, played by a script: a TLS server with mutual TLS."""

    def __init__(
        self,
        name: str,
        cert: CertFiles,
        ca_file: Path,
        host: str = "127.0.0.1",
        contact_host: str | None = None,
    ) -> None:
        self.name = name
        self.contact_host = contact_host or name
        self.plan = InvitePlan()
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_file))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_cert_chain(cert.cert, cert.key)
        self.names_seen: list[str | None] = []
        self.ctx.sni_callback = self._sni
        self.listener = socket.create_server((host, 0))
        self.host, self.port = self.listener.getsockname()[:2]
        self.streams: list[SipStream] = []
        self.received: queue.Queue[tuple[SipStream, Message]] = queue.Queue()
        self.dialogs: dict[str, Dialog] = {}
        self.options: list[Request] = []
        self.handshake_errors: list[str] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _sni(self, _sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.names_seen.append(name)

    def _accept(self) -> None:
        while not self._stop:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            try:
                sock = self.ctx.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                self.handshake_errors.append(str(exc))
                raw.close()
                continue
            stream = SipStream(sock, self._on_message)
            stream.server_name = self.names_seen[-1] if self.names_seen else None
            self.streams.append(stream)

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):  # wakes the accepting thread: no one listens now
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for stream in self.streams:
            stream.close()

    # -- the script ---------------------------------------------------------------------------

    def _on_message(self, stream: SipStream, msg: Message) -> None:
        self.received.put((stream, msg))
        if not isinstance(msg, Request):
            return
        if msg.method == "OPTIONS":
            self.options.append(msg)
            stream.send(make_response(msg, 200, to_tag="opt1").to_bytes())
        elif msg.method == "INVITE" and msg.to_tag is None:
            self._invite(stream, msg)
        elif msg.method == "ACK":
            dialog = self.dialogs.get(msg.call_id)
            if dialog is not None:
                dialog.acks.append(msg)
        elif msg.method == "BYE":
            dialog = self.dialogs.get(msg.call_id)
            if dialog is not None:
                dialog.byes.append(msg)
            stream.send(make_response(msg, 200).to_bytes())
        elif msg.method == "CANCEL":
            stream.send(make_response(msg, 200).to_bytes())
            dialog = self.dialogs.get(msg.call_id)
            if dialog is not None and dialog.ok is None:
                stream.send(make_response(dialog.invite, 487, to_tag="cx").to_bytes())
        elif msg.method == "INVITE":  # re-INVITE
            ok = make_response(msg, 200, extra_headers=[("Contact", self._contact())])
            stream.send(self._with_sdp(ok).to_bytes())

    def _contact(self) -> str:
        return f"<sip:api.{self.contact_host}:443;x-i=0a1b2c;x-c=d00d/d/8/ff>"

    @staticmethod
    def _with_sdp(resp: Response) -> Response:
        resp.headers.set("Content-Type", "application/sdp")
        resp.body = TEAMS_SDP.encode()
        return resp

    def _invite(self, stream: SipStream, invite: Request) -> None:
        plan = self.plan
        self.dialogs[invite.call_id] = Dialog(invite, stream)
        if plan.kind == "silent":
            return
        stream.send(make_response(invite, 100).to_bytes())
        if plan.kind == "status":
            resp = make_response(invite, plan.status, to_tag="rej", extra_headers=plan.extra)
            stream.send(resp.to_bytes())
            return
        threading.Thread(target=self._ring_and_answer, args=(stream, invite), daemon=True).start()

    def _respond(self, invite: Request, status: int, tag: str, sdp: bool = False) -> Response:
        """A response as Microsoft's proxy passes it on: its own Record-Route on top of the
        set the SBC sent (it is a record-routing proxy), a Contact of Teams' kind."""
        resp = make_response(
            invite, status, to_tag=tag, extra_headers=[("Contact", self._contact())]
        )
        resp.headers.prepend("Record-Route", f"<sip:{self.contact_host}:5061;transport=tls;lr>")
        return self._with_sdp(resp) if sdp else resp

    def _ring_and_answer(self, stream: SipStream, invite: Request) -> None:
        plan = self.plan
        for tag in plan.forks:  # Teams forks to every device: a 180 from each
            stream.send(self._respond(invite, 180, tag).to_bytes())
        stream.send(self._respond(invite, 183, plan.early_tag, sdp=True).to_bytes())
        time.sleep(0.1)
        if self.dialogs[invite.call_id].ok is not None:
            return
        ok = self._respond(invite, 200, plan.answer_tag, sdp=True)
        self.dialogs[invite.call_id].ok = ok
        stream.send(ok.to_bytes())

    # -- what the test reads ----------------------------------------------------------------

    def wait(self, what: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: condition not met within {timeout} s")
            time.sleep(0.02)

    def next_invite(self, timeout: float = 10.0) -> Dialog:
        self.wait(lambda: bool(self.dialogs), timeout)
        return next(iter(self.dialogs.values()))


class TeamsClient:
    """Microsoft connecting to the SBC: a TLS client presenting ``cert`` (SNI: ``server_name``)."""

    def __init__(
        self,
        host: str,
        port: int,
        cert: CertFiles | None,
        ca_file: Path,
        server_name: str,
    ) -> None:
        ctx = ssl.create_default_context(cafile=str(ca_file))
        if cert is not None:
            ctx.load_cert_chain(cert.cert, cert.key)
        raw = socket.create_connection((host, port), timeout=5)
        self.sock = ctx.wrap_socket(raw, server_hostname=server_name)
        self.stream = SipStream(self.sock, lambda _s, _m: None)
        self.local = "{}:{}".format(*self.sock.getsockname()[:2])

    def send(self, data: bytes | str) -> None:
        self.stream.send(data)

    def recv(self, timeout: float = 5.0) -> Message:
        return self.stream.messages.get(timeout=timeout)

    def recv_until(self, match: Callable[[Message], bool], timeout: float = 5.0) -> Message:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if match(msg):
                return msg

    def close(self) -> None:
        self.stream.close()
