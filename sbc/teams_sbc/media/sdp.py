"""The few SDP edits rtpengine 10.5 cannot make for us, and the reading the tests and the Teams
emulator need. Line-based and lossless: lines we do not touch come out byte for byte.

- Hold towards Teams: rtpengine passes ``a=sendonly``/``a=recvonly`` through and turns a
  ``c=0.0.0.0`` hold into ``a=sendonly``; Teams understands only ``a=inactive``
  (docs/media.md), and 10.5 has no ``sdp-attr`` manipulation (tried: it is ignored), so
  :func:`hold_as_inactive` rewrites the direction after rtpengine.
- Towards the carrier: ``ICE: remove`` leaves Microsoft's ``a=x-candidate-ipv6`` lines in place;
  :func:`strip_attributes` removes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


@dataclass
class _Section:
    lines: list[str] = field(default_factory=list)


def _split(sdp: str) -> tuple[str, list[_Section]]:
    """Lines with their own endings kept; section 0 is the session part."""
    newline = "\r\n" if "\r\n" in sdp else "\n"
    sections = [_Section()]
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append(_Section())
        sections[-1].lines.append(line)
    return newline, sections


def _join(newline: str, sections: list[_Section]) -> str:
    lines = [line for section in sections for line in section.lines]
    return newline.join(lines) + newline if lines else ""


def _direction_of(lines: Iterable[str]) -> str | None:
    for line in lines:
        if line.startswith("a=") and line[2:] in DIRECTIONS:
            return line[2:]
    return None


@dataclass(frozen=True)
class MediaDescription:
    """One ``m=`` section as the tests and the emulator need it."""

    media: str
    port: int
    protocol: str
    formats: tuple[str, ...]
    address: str | None  # from the section's c= line, else the session's
    direction: str  # effective: the section's, else the session's, else sendrecv
    rtcp_mux: bool
    attributes: tuple[str, ...]  # every a= line of the section, without "a="

    def attribute_values(self, name: str) -> list[str]:
        """Values of ``a=name:value`` lines, in order."""
        prefix = name + ":"
        return [a[len(prefix) :] for a in self.attributes if a.startswith(prefix)]


def media_descriptions(sdp: str) -> list[MediaDescription]:
    _, sections = _split(sdp)
    session = sections[0].lines
    session_addr = _connection(session)
    session_dir = _direction_of(session) or "sendrecv"
    out = []
    for section in sections[1:]:
        media, port, proto, *formats = section.lines[0][2:].split()
        attrs = tuple(line[2:] for line in section.lines if line.startswith("a="))
        out.append(
            MediaDescription(
                media=media,
                port=int(port.split("/")[0]),
                protocol=proto,
                formats=tuple(formats),
                address=_connection(section.lines) or session_addr,
                direction=_direction_of(section.lines) or session_dir,
                rtcp_mux="rtcp-mux" in attrs,
                attributes=attrs,
            )
        )
    return out


def _connection(lines: Iterable[str]) -> str | None:
    for line in lines:
        if line.startswith("c="):
            parts = line[2:].split()
            if len(parts) >= 3:
                return parts[2].split("/")[0]
    return None


def hold_as_inactive(sdp: str) -> str:
    """Every media section that is not sendrecv says ``a=inactive``; sendrecv ones unchanged.

    A session-level direction is moved into the sections (rewritten there as needed), since a
    session-level ``a=sendonly`` would otherwise still reach Teams. Rejected streams (port 0)
    are left alone.
    """
    newline, sections = _split(sdp)
    session_dir = _direction_of(sections[0].lines)
    if session_dir is not None:
        sections[0].lines = [
            line
            for line in sections[0].lines
            if not (line.startswith("a=") and line[2:] in DIRECTIONS)
        ]
    for section in sections[1:]:
        own = _direction_of(section.lines)
        effective = own or session_dir or "sendrecv"
        if section.lines[0].split()[1] == "0":
            wanted = own or session_dir
        else:
            wanted = effective if effective == "sendrecv" else "inactive"
        if wanted is None or wanted == own or (own is None and wanted == "sendrecv"):
            continue  # unchanged, or sendrecv by default
        if own is None:
            section.lines.append("a=" + wanted)
        else:
            section.lines = [
                "a=" + wanted if line == "a=" + own else line for line in section.lines
            ]
    return _join(newline, sections)


def strip_attributes(sdp: str, names: Iterable[str]) -> str:
    """Remove every ``a=<name>`` or ``a=<name>:...`` line whose name is in ``names``."""
    wanted = set(names)
    newline, sections = _split(sdp)
    for section in sections:
        section.lines = [
            line
            for line in section.lines
            if not (line.startswith("a=") and line[2:].split(":", 1)[0] in wanted)
        ]
    return _join(newline, sections)
