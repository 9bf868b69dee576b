"""The media test bed: sipp as the carrier, the real ``teams-sbc run``, the real rtpengine, and
sipp as Teams whose media address is the TEST's own UDP socket.

- The carrier (a background sipp UAC) sends plain RTP with ``rtp_stream`` (a PCMU file of
  recognisable frames, :func:`carrier_frames`) and runs ``-rtp_echo`` on its media port: what
  rtpengine sends the carrier comes straight back. Its SDP names that port, and rtpengine
  learns the same address from its packets, so both directions use one socket.
- Teams (a sipp UAS) answers with RTP/SAVP, an SDES key of the test's (``-key teams_key``) and
  the test's socket as media address (``-key teams_port``). The test reads rtpengine's key
  from the INVITE sipp received (its message trace), decrypts what rtpengine sends Teams with
  it, and encrypts what it sends with its own key.

Proof that the carrier receives plain RTP: the test's SRTP goes to rtpengine, which must
decrypt it and send the carrier plain RTP (the SDP the carrier got says RTP/AVP, no key); the
carrier echoes those bytes as its own RTP, and they come back to the test encrypted under
rtpengine's key with the test's payload. Had rtpengine sent the carrier anything but the
decrypted packet, the echo would not decrypt to that payload.

sipp waits for the test between steps: a scenario's ``<recv request="MESSAGE"/>`` is the test's
"checked, go on" (:meth:`MediaBed.signal`), sent straight to that sipp in the call's dialog.
"""

from __future__ import annotations

import base64
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teams_sbc.media.rtp import RtpPacket, is_rtcp
from teams_sbc.media.sdp import MediaDescription, media_descriptions
from teams_sbc.media.srtp import SdesKey, SrtpSession
from tests.media.stun import StunMessage, binding_request, is_stun
from tests.test_proxy_sipp import Traced, read_trace
from tests.testbed.process import PartFailed, free_port_range, wait_until
from tests.testbed.rtpengine import Rtpengine
from tests.testbed.sbc import SbcFactory, SbcProcess
from tests.testbed.sipp import SippFactory, SippUac, SippUas

SCENARIOS = Path(__file__).resolve().parents[1] / "testbed" / "scenarios"
HOST = "127.0.0.1"
PCMU = 0
FRAMES = 50
#: The ng client's timing in these tests: a dead rtpengine is noticed within a second.
FAST_MEDIA = {"ping_interval": 0.5, "ping_timeout": 0.3, "retransmit_intervals": [0.2, 0.4]}


def carrier_frames() -> list[bytes]:
    """The carrier's audio: 160-byte PCMU frames that say which frame they are."""
    return [(b"CARRIER-%02d-" % i + bytes(range(256)))[:160] for i in range(FRAMES)]


def teams_packets(count: int, marker: bytes, ssrc: int = 0x7EA4500D) -> list[RtpPacket]:
    """What the test sends as Teams: PCMU frames whose payload starts with ``marker``."""
    return [
        RtpPacket(PCMU, 4000 + i, 160 * i, ssrc, (marker + b"-%02d-" % i).ljust(160, b"\xd5"))
        for i in range(count)
    ]


def sdp_of(traced: Traced) -> str:
    _, _, body = traced.text.partition("\n\n")
    return body.replace("\n", "\r\n")


def audio(sdp: str) -> MediaDescription:
    (media,) = media_descriptions(sdp)
    return media


def crypto(media: MediaDescription, tag: int) -> SdesKey:
    keys = [SdesKey.parse(v) for v in media.attributes if v.startswith("crypto:")]
    (key,) = [k for k in keys if k.tag == tag]
    return key


@dataclass
class MediaBed:
    sbc: SbcProcess
    rtpengine: Rtpengine
    sipp: SippFactory
    teams: SippUas | None  # Teams' sipp when it answers (None in calls from Teams)
    teams_trace: Path  # Teams' sipp's message trace
    teams_socket: socket.socket
    teams_keys: list[SdesKey]  # Teams' own keys: [0] in its first SDP, then -key teams_key2...
    rtp_file: Path
    uacs: list[SippUac] = field(default_factory=list)
    #: Every Teams media socket, ``teams_socket`` first; a forking Teams answers from another
    #: one (``-key teams_port2``...): point ``teams_socket`` at it to use it.
    teams_sockets: list[socket.socket] = field(default_factory=list)

    @property
    def teams_key(self) -> SdesKey:
        return self.teams_keys[0]

    # -- the carrier --------------------------------------------------------------------------

    def call(self, scenario: str, *, echo: bool = True) -> SippUac:
        """Start the carrier's call (one) in the background."""
        media_port = free_port_range(4, HOST)
        args = ["-mi", HOST, "-mp", str(media_port)]
        uac = self.sipp.start_uac(
            self.sbc.address("carrier"),
            scenario=SCENARIOS / scenario,
            extra_args=[*args, *(["-rtp_echo"] if echo else [])],
        )
        self.uacs.append(uac)
        return uac

    # -- sipp's message traces ----------------------------------------------------------------

    def teams_messages(self) -> list[Traced]:
        return read_trace(self.teams_trace) if self.teams_trace.exists() else []

    def wait_for(
        self,
        trace: Callable[[], list[Traced]],
        what: str,
        match: Callable[[Traced], bool],
        *,
        count: int = 1,
        timeout: float = 15.0,
    ) -> Traced:
        """The ``count``-th message matching, once sipp has traced it."""
        found: list[Traced] = []

        def seen() -> bool:
            nonlocal found
            found = [t for t in trace() if match(t)]
            return len(found) >= count

        wait_until(seen, timeout, what, self.sbc.proc)
        return found[count - 1]

    def teams_received(self, method: str, *, count: int = 1, sdp: bool = False) -> Traced:
        return self.wait_for(
            self.teams_messages,
            f"Teams (sipp) to receive {method} #{count}",
            lambda t: t.direction == "received"
            and t.method == method
            and (not sdp or "m=audio" in t.text),
            count=count,
        )

    def teams_got(self, status: int, *, count: int = 1, cseq: str = "INVITE") -> Traced:
        """A response Teams (sipp) received to a request of its own (a re-INVITE)."""
        return self.wait_for(
            self.teams_messages,
            f"Teams (sipp) to receive {status} to {cseq} #{count}",
            lambda t: t.direction == "received" and t.status == status and t.cseq_method == cseq,
            count=count,
        )

    def teams_sent_request(self, method: str, *, count: int = 1) -> Traced:
        return self.wait_for(
            self.teams_messages,
            f"Teams (sipp) to send {method} #{count}",
            lambda t: t.direction == "sent" and t.method == method,
            count=count,
        )

    def teams_sent(self, status: int, *, count: int = 1, cseq: str = "INVITE") -> Traced:
        return self.wait_for(
            self.teams_messages,
            f"Teams (sipp) to send {status} to {cseq} #{count}",
            lambda t: t.direction == "sent" and t.status == status and t.cseq_method == cseq,
            count=count,
        )

    @staticmethod
    def uac_messages(uac: SippUac) -> list[Traced]:
        path = uac.message_path
        return read_trace(path) if path is not None and path.exists() else []

    # -- signals: "checked, go on" ------------------------------------------------------------

    def signal(self, port: int, call: Traced, trace: Callable[[], list[Traced]]) -> None:
        """Send sipp on ``port`` a MESSAGE in the call of ``call`` (any message of it that sipp
        traced) until its ``trace`` shows it received: the scenario goes on to its next step.
        (sipp answers it, but to the address its call talks to, the SBC, which drops it.)"""
        call_id = call.header("Call-ID")
        before = len([t for t in trace() if t.method == "MESSAGE"])
        branch = "z9hG4bK" + secrets.token_hex(6)
        tag = secrets.token_hex(4)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((HOST, 0))
            here = sock.getsockname()[1]
            message = (
                f"MESSAGE sip:sipp@{HOST}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {HOST}:{here};branch={branch}\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:test@{HOST}>;tag={tag}\r\n"
                f"To: <sip:sipp@{HOST}>\r\n"
                f"Call-ID: {call_id}\r\n"
                "CSeq: 1 MESSAGE\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()

            def received() -> bool:
                if len([t for t in trace() if t.method == "MESSAGE"]) > before:
                    return True
                sock.sendto(message, (HOST, port))
                return False

            wait_until(received, 10.0, f"sipp on port {port} to take the test's signal",
                       interval=0.3)  # fmt: skip

    def signal_carrier(self, uac: SippUac, call: Traced) -> None:
        self.signal(uac.port, call, lambda: self.uac_messages(uac))

    def carrier_hangs_up(self, uac: SippUac, call: Traced) -> None:
        """The carrier's last step (its BYE): its sipp completes the call, no session is left."""
        self.signal_carrier(uac, call)
        run = uac.finish()
        assert run.stats.all_ok, run.error_path.read_text() if run.error_path.exists() else run
        self.wait_no_sessions()

    def signal_teams(self, call: Traced) -> None:
        assert self.teams is not None
        self.signal(self.teams.port, call, self.teams_messages)

    # -- media as Teams -----------------------------------------------------------------------

    def drain(self) -> None:
        """Forget what the Teams socket has received so far."""
        self.teams_socket.setblocking(False)
        try:
            while True:
                self.teams_socket.recv(65535)
        except BlockingIOError:
            pass
        finally:
            self.teams_socket.setblocking(True)

    def receive(
        self,
        key: SdesKey,
        count: int,
        *,
        want: Callable[[RtpPacket], bool] = lambda _p: True,
        within: float = 5.0,
    ) -> list[RtpPacket]:
        """SRTP from rtpengine, decrypted with its ``key``: the first ``count`` wanted ones.
        Every RTP packet must decrypt (an SRTP failure raises); muxed RTCP is skipped."""
        session = SrtpSession(key, outbound=False)
        got: list[RtpPacket] = []
        deadline = time.monotonic() + within
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"only {len(got)} of {count} packets within {within}s")
            self.teams_socket.settimeout(left)
            try:
                data = self.teams_socket.recv(65535)
            except TimeoutError:
                continue
            assert data[0] >> 6 == 2, f"not RTP: {data[:8].hex()}"
            if is_rtcp(data):
                continue
            packet = RtpPacket.decode(session.unprotect(data))
            if want(packet):
                got.append(packet)
        return got

    def media_both_ways(self, rtpengine_key: SdesKey, teams_key: SdesKey, port: int,
                        marker: bytes) -> None:  # fmt: skip
        """Teams' SRTP (``teams_key``) reaches the carrier as plain RTP (its echo comes back
        with the same payload) and the carrier's stream reaches Teams; both decrypt with
        ``rtpengine_key``."""
        self.drain()
        sent = teams_packets(10, marker)
        self.send(teams_key, sent, port)
        echoed = self.receive(rtpengine_key, 10, want=lambda p: p.payload.startswith(marker))
        assert sorted(p.payload for p in echoed) == sorted(p.payload for p in sent)
        frames = set(carrier_frames())
        carried = self.receive(rtpengine_key, 10, want=lambda p: p.payload[:8] == b"CARRIER-")
        assert all(p.payload in frames and p.payload_type == PCMU for p in carried)

    def ice_check(self, port: int, ufrag: str, pwd: str, client_ufrag: str) -> StunMessage:
        """A Teams client's nominating connectivity check from the test's socket to rtpengine's
        ``port``; rtpengine's answer (RTP arriving meanwhile, early media, is skipped)."""
        request, transaction = binding_request(f"{ufrag}:{client_ufrag}", pwd, nominate=True)
        self.teams_socket.sendto(request, (HOST, port))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            self.teams_socket.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data = self.teams_socket.recv(65535)
            except TimeoutError:
                break
            if is_stun(data):
                response = StunMessage.parse(data)
                assert response.transaction == transaction, "a STUN request from rtpengine"
                return response
        raise AssertionError(f"no answer to a connectivity check on port {port}")

    def send(self, key: SdesKey, packets: Sequence[RtpPacket], port: int) -> None:
        """SRTP to rtpengine's Teams-side port, encrypted with Teams' ``key``."""
        session = SrtpSession(key, outbound=True)
        for packet in packets:
            self.teams_socket.sendto(session.protect(packet.encode()), (HOST, port))
            time.sleep(0.002)

    # -- rtpengine ----------------------------------------------------------------------------

    def sessions(self) -> list[str]:
        return self.rtpengine.client().list_calls()

    def wait_no_sessions(self, timeout: float = 5.0) -> None:
        last: list[str] = []

        def empty() -> bool:
            nonlocal last
            last = self.sessions()
            return not last

        try:
            wait_until(empty, timeout, "rtpengine to hold no session")
        except PartFailed as exc:
            raise AssertionError(f"rtpengine kept sessions {last}") from exc


def _two_listener_sbc(
    sbc_factory: SbcFactory, towards: str, next_hop: str, **sbc_config: Any
) -> SbcProcess:
    """The SBC, not started: a "carrier" and a "teams" UDP listener; the calls arriving on the
    other one go to ``next_hop`` out of listener ``towards``."""
    source = "carrier" if towards == "teams" else "teams"
    return sbc_factory(
        start=False,
        listeners=[
            {"name": "carrier", "transport": "udp", "host": HOST},
            {"name": "teams", "transport": "udp", "host": HOST},
        ],
        routes=[
            {
                "name": f"to-{towards}",
                "from_listeners": [source],
                "next_hop": f"sip:{next_hop}",
                "listener": towards,
            }
        ],
        **sbc_config,
    )


def _start_with_media(
    sbc: SbcProcess, engine: Rtpengine, media: dict[str, Any] | None = None
) -> None:
    """Start ``sbc`` anchoring media on ``engine``, SRTP towards "teams" (``media``: more
    keys of the media section)."""
    sbc.config["media"] = {
        "rtpengines": [{"address": engine.ng_address}],
        "teams_listeners": ["teams"],
        **FAST_MEDIA,
        **(media or {}),
    }
    sbc.start()


def _carrier_rtp_file(sipp_factory: SippFactory) -> Path:
    """The carrier's audio, where sipp's rtp_stream reads it: its working directory (it
    expands no keyword)."""
    rtp_file = sipp_factory.log_dir / "carrier.pcmu"
    rtp_file.write_bytes(b"".join(carrier_frames()))
    return rtp_file


def make_media_bed(
    tmp_path: Path,
    sbc_factory: SbcFactory,
    sipp_factory: SippFactory,
    rtpengine_factory: Callable[..., Rtpengine],
    teams_scenario: str,
    *,
    rtpengine_args: Sequence[str] = (),
    media: dict[str, Any] | None = None,
    teams_keys: int = 1,
    sbc_config: dict[str, Any] | None = None,
    teams_sockets: int = 1,
) -> MediaBed:
    """rtpengine, the SBC (a "carrier" and a "teams" UDP listener; calls from the carrier go
    to Teams) and Teams' sipp, all started; the carrier's calls come with :meth:`call`.
    ``sbc_config``: more top-level SBC config keys (``workers``...). ``teams_sockets``: how
    many media sockets Teams has (``-key teams_port``, ``teams_port2``...: Teams' forks)."""
    sockets = []
    port_args: list[str] = []
    for index in range(teams_sockets):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))
        sockets.append(sock)
        name = "teams_port" if index == 0 else f"teams_port{index + 1}"
        port_args += ["-key", name, str(sock.getsockname()[1])]
    teams_socket = sockets[0]
    keys = [SdesKey.generate("AES_CM_128_HMAC_SHA1_80", tag=1) for _ in range(teams_keys)]
    key_args: list[str] = []
    for index, key in enumerate(keys):
        name = "teams_key" if index == 0 else f"teams_key{index + 1}"
        key_args += ["-key", name, base64.b64encode(key.key_salt).decode().rstrip("=")]
    trace = sipp_factory.log_dir / f"teams-{teams_scenario}.messages.log"
    teams = sipp_factory.uas(
        scenario=SCENARIOS / teams_scenario,
        extra_args=[
            "-trace_msg", "-message_file", str(trace),
            *port_args,
            *key_args,
        ],
    )  # fmt: skip
    sbc = _two_listener_sbc(sbc_factory, "teams", teams.address, **(sbc_config or {}))
    engine = rtpengine_factory(
        extra_args=[
            f"--b2b-url=http://{HOST}:{sbc.http_port}/rtpengine/timeout",
            "--xmlrpc-format=2",
            *rtpengine_args,
        ]
    )
    _start_with_media(sbc, engine, media)
    rtp_file = _carrier_rtp_file(sipp_factory)
    return MediaBed(
        sbc, engine, sipp_factory, teams, trace, teams_socket, keys, rtp_file,
        teams_sockets=sockets,
    )  # fmt: skip


def make_calls_from_teams_bed(
    sbc_factory: SbcFactory,
    sipp_factory: SippFactory,
    rtpengine_factory: Callable[..., Rtpengine],
    teams_key: SdesKey,
) -> tuple[MediaBed, SippUas, Path]:
    """The other direction: Teams calls (a background sipp UAC the test starts on
    ``sbc.address("teams")``, then points ``bed.teams_trace`` at), the carrier answers (a sipp
    UAS streaming and echoing RTP). Returns the bed, the carrier and the carrier's trace."""
    teams_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    teams_socket.bind((HOST, 0))
    rtp_file = _carrier_rtp_file(sipp_factory)
    carrier_trace = sipp_factory.log_dir / "carrier.messages.log"
    carrier = sipp_factory.uas(
        scenario=SCENARIOS / "uas_carrier_media.xml",
        extra_args=[
            "-trace_msg", "-message_file", str(carrier_trace),
            "-mi", HOST, "-mp", str(free_port_range(4, HOST)), "-rtp_echo",
        ],
    )  # fmt: skip
    sbc = _two_listener_sbc(sbc_factory, "carrier", carrier.address)
    engine = rtpengine_factory()
    _start_with_media(sbc, engine)
    trace = sipp_factory.log_dir / "not-started.messages.log"
    bed = MediaBed(sbc, engine, sipp_factory, None, trace, teams_socket, [teams_key], rtp_file)
    return bed, carrier, carrier_trace
