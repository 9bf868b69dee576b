"""SDP as Teams' media processors write it, and the checks they make on the SBC's SDP.

Facts (Microsoft "Direct Routing - media", shared/docs/teams-direct-routing.md "Media"): SRTP is
required, ``RTP/SAVP`` with SDES keys, AES_CM_128_HMAC_SHA1_80 (``_32`` accepted); codecs SILK,
G.711, G.722, G.729; DTMF as RFC 4733 telephone-event; comfort noise; rtcp-mux offered. An offer
or answer without SRTP, or without a codec in common, gets 488. Teams' own offers are large (ICE
candidates, ``x-candidate-ipv6``, several crypto lines, some with an MKI): with the headers they
pass 1,500 bytes, which is the point of sending them.
"""

from __future__ import annotations

from dataclasses import dataclass

from teams_sbc.media.sdp import MediaDescription, media_descriptions
from teams_sbc.media.srtp import SUITES, SdesKey, SrtpError

#: Voice codecs Teams (non-bypass) takes, by encoding name (upper case).
VOICE_CODECS = ("SILK", "G722", "PCMU", "PCMA", "G729")
#: Static payload types of those codecs (RFC 3551), for SDP without rtpmap lines.
STATIC_TYPES = {0: "PCMU", 8: "PCMA", 9: "G722", 18: "G729", 13: "CN"}
#: Payload types a test or the SBC's relay can carry as-is (the emulator sends these).
SENDABLE = ("PCMU", "PCMA", "G722")

#: Teams' audio formats in its offers: (payload type, rtpmap, fmtp or None).
TEAMS_FORMATS = (
    (111, "SILK/16000", "useinbandfec=1; usedtx=0"),
    (104, "SILK/16000", None),
    (9, "G722/8000", None),
    (0, "PCMU/8000", None),
    (8, "PCMA/8000", None),
    (103, "SILK/8000", None),
    (97, "RED/8000", None),
    (13, "CN/8000", None),
    (118, "CN/16000", None),
    (101, "telephone-event/8000", "0-16"),
)


class SdpProblem(ValueError):
    """The SDP breaks a Teams media rule; the message says which (it goes into the 488)."""


@dataclass(frozen=True)
class RemoteMedia:
    """What the emulator needs from the SBC's SDP to send and receive SRTP."""

    address: str
    port: int
    keys: tuple[SdesKey, ...]  # the usable crypto lines, in the SDP's order
    codecs: dict[int, str]  # payload type -> encoding name (upper case)
    direction: str
    zero_address: bool
    rtcp_mux: bool

    def voice_type(self, allowed: tuple[str, ...] = SENDABLE) -> int | None:
        """The first payload type of the SDP that the emulator can send."""
        for pt, name in self.codecs.items():
            if name in allowed:
                return pt
        return None


def _codecs(media: MediaDescription) -> dict[int, str]:
    names: dict[int, str] = {}
    for value in media.attribute_values("rtpmap"):
        pt, _, encoding = value.partition(" ")
        if pt.isdigit():
            names[int(pt)] = encoding.split("/")[0].upper()
    out: dict[int, str] = {}
    for fmt in media.formats:
        if fmt.isdigit():
            number = int(fmt)
            name = names.get(number) or STATIC_TYPES.get(number)
            if name:
                out[number] = name
    return out


def read_sbc_sdp(body: bytes, content_type: str | None) -> RemoteMedia:
    """Check an SBC's offer or answer as Teams' media processor would and read it.

    Raises :class:`SdpProblem` (the caller answers 488, or ends the call) when: there is no SDP
    (Teams takes no delayed offer), no audio stream, the audio is not ``RTP/SAVP``, no
    ``a=crypto`` line with a suite Teams supports, or no voice codec in common.
    """
    if not body:
        raise SdpProblem("no SDP: Direct Routing does not accept offers without SDP")
    if content_type is not None and content_type.split(";")[0].strip().lower() != "application/sdp":
        raise SdpProblem(f"body is {content_type}, not application/sdp")
    try:
        text = body.decode("utf-8")
        audio = [m for m in media_descriptions(text) if m.media == "audio"]
    except (UnicodeDecodeError, ValueError, IndexError) as exc:
        raise SdpProblem(f"malformed SDP ({exc})") from None
    active = [m for m in audio if m.port != 0]
    if not active:
        raise SdpProblem("no active audio stream in the SDP")
    media = active[0]
    if media.protocol.upper() != "RTP/SAVP":
        raise SdpProblem(
            f"audio is {media.protocol}: Teams requires SRTP (RTP/SAVP with a=crypto)"
        )
    keys: list[SdesKey] = []
    suites: list[str] = []
    for value in media.attribute_values("crypto"):
        try:
            keys.append(SdesKey.parse("crypto:" + value))
        except SrtpError:
            suites.append(value.split()[1] if len(value.split()) > 1 else value)
    if not keys:
        offered = ", ".join(suites) or "none"
        raise SdpProblem(
            f"no usable a=crypto line (suites offered: {offered}; Teams takes "
            f"{', '.join(SUITES)})"
        )
    codecs = _codecs(media)
    if not any(name in VOICE_CODECS for name in codecs.values()):
        raise SdpProblem(
            f"no codec in common (offered {', '.join(codecs.values()) or 'none'}; Teams takes "
            f"{', '.join(VOICE_CODECS)})"
        )
    address = media.address or ""
    return RemoteMedia(
        address=address,
        port=media.port,
        keys=tuple(keys),
        codecs=codecs,
        direction=media.direction,
        zero_address=address in {"0.0.0.0", "::"},
        rtcp_mux=media.rtcp_mux,
    )


def hold_problem(remote: RemoteMedia) -> str | None:
    """Teams understands hold only as ``a=inactive`` (shared doc, "Media": sendonly, recvonly
    and ``c=0.0.0.0`` are not understood); what is wrong with this SDP's hold, if anything."""
    if remote.zero_address:
        return "hold signalled with c=0.0.0.0; Teams understands only a=inactive"
    if remote.direction in {"sendonly", "recvonly"}:
        return f"hold signalled with a={remote.direction}; Teams understands only a=inactive"
    return None


def teams_offer(
    address: str,
    port: int,
    keys: list[SdesKey],
    *,
    session_id: int,
    version: int,
    direction: str = "sendrecv",
) -> str:
    """An offer as Teams' media processor writes one: candidates, several keys, many codecs."""
    pts = " ".join(str(pt) for pt, _, _ in TEAMS_FORMATS)
    lines = [
        "v=0",
        f"o=- {session_id} {version} IN IP4 {address}",
        "s=SIP Call",
        f"c=IN IP4 {address}",
        "b=CT:10000000",
        "t=0 0",
        f"m=audio {port} RTP/SAVP {pts}",
        f"c=IN IP4 {address}",
        f"a=rtcp:{port + 1}",
        "a=ice-ufrag:" + f"{session_id:08x}"[:4],
        "a=ice-pwd:" + f"{session_id * 7919:024x}"[:24],
        "a=rtcp-mux",
        f"a=candidate:1 1 UDP 2130706431 {address} {port} typ host",
        f"a=candidate:1 2 UDP 2130705918 {address} {port + 1} typ host",
        f"a=candidate:2 1 tcp-pass 174455807 {address} {port + 10} typ host",
        f"a=candidate:2 2 tcp-pass 174455294 {address} {port + 10} typ host",
        f"a=candidate:3 1 UDP 1694234111 198.51.100.23 {port + 2000} typ srflx raddr "
        f"{address} rport {port}",
        f"a=candidate:3 2 UDP 1694233598 198.51.100.23 {port + 2001} typ srflx raddr "
        f"{address} rport {port + 1}",
        f"a=candidate:4 1 tcp-act 174846975 {address} {port} typ host",
        f"a=candidate:4 2 tcp-act 174846462 {address} {port} typ host",
        f"a=x-candidate-ipv6:5 1 UDP 2130706431 2001:db8::5 {port} typ host",
        f"a=x-candidate-ipv6:5 2 UDP 2130705918 2001:db8::5 {port + 1} typ host",
    ]
    lines += [f"a={key.attribute()}" for key in keys]
    lines.append("a=maxptime:200")
    for pt, rtpmap, fmtp in TEAMS_FORMATS:
        lines.append(f"a=rtpmap:{pt} {rtpmap}")
        if fmtp:
            lines.append(f"a=fmtp:{pt} {fmtp}")
    lines += ["a=ptime:20", f"a={direction}"]
    return "\r\n".join(lines) + "\r\n"


def teams_answer(
    remote: RemoteMedia,
    address: str,
    port: int,
    key: SdesKey,
    *,
    session_id: int,
    version: int,
    direction: str = "sendrecv",
) -> str:
    """Teams' answer to the SBC's offer: the voice codec it sends with, telephone-event and CN
    where offered, one crypto line (the offer's tag and suite, Teams' own key)."""
    chosen: list[tuple[int, str]] = []
    voice = remote.voice_type(SENDABLE) or remote.voice_type(VOICE_CODECS)
    if voice is not None:
        chosen.append((voice, remote.codecs[voice]))
    chosen += [(pt, n) for pt, n in remote.codecs.items() if n in {"TELEPHONE-EVENT", "CN"}]
    rates = {"G722": 8000, "PCMU": 8000, "PCMA": 8000, "G729": 8000, "SILK": 16000}
    lines = [
        "v=0",
        f"o=- {session_id} {version} IN IP4 {address}",
        "s=SIP Call",
        f"c=IN IP4 {address}",
        "t=0 0",
        f"m=audio {port} RTP/SAVP {' '.join(str(pt) for pt, _ in chosen)}",
        f"a=rtcp:{port + 1}",
        f"a={key.attribute()}",
    ]
    if remote.rtcp_mux:
        lines.append("a=rtcp-mux")
    for pt, name in chosen:
        if name == "TELEPHONE-EVENT":
            lines += [f"a=rtpmap:{pt} telephone-event/8000", f"a=fmtp:{pt} 0-16"]
        else:
            lines.append(f"a=rtpmap:{pt} {name}/{rates.get(name, 8000)}")
    lines += ["a=ptime:20", f"a={direction}"]
    return "\r\n".join(lines) + "\r\n"


def answer_direction(offered: str) -> str:
    """RFC 3264 6.1: the answer's direction for an offered one."""
    return {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}.get(
        offered, "sendrecv"
    )
