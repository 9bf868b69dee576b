"""SDP edits of the Teams edge: hold as ``a=inactive`` and trimming for UDP carriers.

Line-based and lossless like :mod:`teams_sbc.media.sdp` (which this builds on): lines not
edited come out as they came.
"""

from __future__ import annotations

from collections.abc import Iterable

from teams_sbc.media.sdp import DIRECTIONS, hold_as_inactive

#: ICE attributes (RFC 8839) and Microsoft's own candidate lines: useless to a carrier that
#: gets the call over plain UDP, and most of the size of Teams' offers.
ICE_ATTRIBUTES = frozenset(
    {
        "candidate",
        "remote-candidates",
        "ice-ufrag",
        "ice-pwd",
        "ice-options",
        "ice-lite",
        "ice-mismatch",
        "end-of-candidates",
        "x-candidate",
        "x-candidate-ipv6",
    }
)


def _lines(sdp: str) -> tuple[str, list[str]]:
    newline = "\r\n" if "\r\n" in sdp else "\n"
    return newline, sdp.splitlines()


def _join(newline: str, lines: list[str]) -> str:
    return newline.join(lines) + newline if lines else ""


def hold_towards_teams(sdp: str) -> str:
    """Microsoft, "Direct Routing - media" (hold): Teams understands hold only as
    ``a=inactive``. ``a=sendonly``/``a=recvonly`` become inactive (media.sdp), and an RFC 2543
    hold (``c=0.0.0.0``) becomes ``a=inactive`` with the origin's address in ``c=``."""
    newline, lines = _lines(sdp)
    zero = [i for i, line in enumerate(lines) if line.startswith("c=IN IP4 0.0.0.0")]
    if zero:
        origin = next((line.split() for line in lines if line.startswith("o=")), [])
        address = origin[5] if len(origin) >= 6 and origin[5] != "0.0.0.0" else None
        for i in zero:
            if address is not None:
                lines[i] = f"c=IN IP4 {address}"
        # The hold is now said by the direction: inactive in every section.
        out: list[str] = []
        for line in lines:
            if line.startswith("a=") and line[2:] in DIRECTIONS:
                continue
            out.append(line)
            if line.startswith("m="):
                out.append("a=inactive")
        lines = out
    return hold_as_inactive(_join(newline, lines))


def trim_for_udp(sdp: str, keep_codecs: Iterable[str]) -> str:
    """teams-direct-routing.md (large messages) and the seed article, "Beware of very large
    packets": towards a UDP-only carrier, drop ICE attributes and every codec whose encoding
    name is not in ``keep_codecs`` (case-insensitive) from the audio and video sections, with
    their ``rtpmap``, ``fmtp`` and ``rtcp-fb`` lines. A section would keep at least one codec:
    if none of its codecs is wanted it is left as it came."""
    keep = {c.lower() for c in keep_codecs}
    newline, lines = _lines(sdp)
    lines = [
        line
        for line in lines
        if not (line.startswith("a=") and line[2:].split(":", 1)[0] in ICE_ATTRIBUTES)
    ]
    out: list[str] = []
    section: list[str] = []
    for line in [*lines, "m=end"]:
        if line.startswith("m="):
            out.extend(_trim_section(section, keep))
            section = []
        section.append(line)
    return _join(newline, out)


def _trim_section(section: list[str], keep: set[str]) -> list[str]:
    if not section or not section[0].startswith("m="):
        return section
    parts = section[0].split()
    if len(parts) < 4 or parts[2] not in ("RTP/AVP", "RTP/SAVP", "RTP/AVPF", "RTP/SAVPF"):
        return section
    names: dict[str, str] = {}
    for line in section:
        if line.startswith("a=rtpmap:"):
            pt, _, rest = line[9:].partition(" ")
            names[pt] = rest.split("/", 1)[0].lower()
    # Static payload types without an rtpmap line (RFC 3551): 0 PCMU, 8 PCMA, 9 G722, 18 G729.
    static = {"0": "pcmu", "8": "pcma", "9": "g722", "18": "g729", "13": "cn"}
    formats = parts[3:]
    wanted = [pt for pt in formats if names.get(pt, static.get(pt, "")) in keep]
    if not wanted or len(wanted) == len(formats):
        return section
    dropped = set(formats) - set(wanted)
    out = [" ".join(parts[:3] + wanted)]
    for line in section[1:]:
        if line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")):
            pt = line.split(":", 1)[1].split(" ", 1)[0]
            if pt in dropped:
                continue
        out.append(line)
    return out
