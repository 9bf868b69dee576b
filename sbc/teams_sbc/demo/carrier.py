"""The carrier's trunk in the demo: sipp (Debian ``sip-tester``) with RTP.

One sipp answers every call from Teams (``scenarios/carrier_answers.xml``); one sipp per call
towards Teams places it (``scenarios/carrier_calls_teams.xml``). Both send plain RTP (a G.711
tone, :func:`write_tone`, with sipp's ``rtp_stream``) and echo whatever RTP reaches them
(``-rtp_echo``, which needs no privileges), so Teams' own packets come back to it through the
SBC's rtpengine. Their message traces give the carrier's half of each call's ladder
(:func:`read_trace`).
"""

from __future__ import annotations

import datetime
import math
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from teams_sbc.demo.children import Child, Children, free_port, free_udp_range, require

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
TONE_FILE = "carrier.pcmu"
HOST = "127.0.0.1"

_TRACE_SEPARATOR = re.compile(r"^-{47} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\s*$", re.MULTILINE)
_TRACE_HEAD = re.compile(r"^(UDP|TCP) message (sent|received)")


def _ulaw(sample: int) -> int:
    """One 16-bit linear sample as G.711 mu-law (ITU-T G.711, the usual segment encoding)."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = 7
    for bit in range(7):
        if magnitude < (0x100 << bit):
            exponent = bit
            break
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def write_tone(directory: Path, hertz: float = 425.0, seconds: float = 1.0) -> Path:
    """A G.711 mu-law tone (8 kHz, one 20 ms frame per 160 bytes) for sipp's ``rtp_stream``;
    425 Hz is the European ringing tone's frequency."""
    count = int(8000 * seconds)
    data = bytes(
        _ulaw(int(8000 * math.sin(2 * math.pi * hertz * i / 8000))) for i in range(count)
    )
    path = directory / TONE_FILE
    path.write_bytes(data)
    return path


@dataclass(frozen=True)
class Traced:
    """One message in a sipp trace, from sipp's (the carrier's) point of view."""

    at: float  # wall-clock time (seconds since the epoch)
    direction: str  # "sent" or "received"
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    def header(self, name: str) -> str | None:
        head = self.text.split("\n\n", 1)[0]
        for line in head.split("\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    @property
    def call_id(self) -> str | None:
        return self.header("Call-ID") or self.header("i")

    @property
    def has_sdp(self) -> bool:
        return "\nm=audio" in self.text

    @property
    def status(self) -> int | None:
        first = self.first_line
        if first.startswith("SIP/2.0 "):
            return int(first.split(" ")[1])
        return None

    @property
    def method(self) -> str | None:
        return None if self.status is not None else self.first_line.split(" ", 1)[0]

    @property
    def cseq_method(self) -> str | None:
        cseq = self.header("CSeq")
        return cseq.split()[-1] if cseq else None

    def summary(self) -> str:
        """The start line, and what matters of the rest (SDP, To-tag, Reason)."""
        parts = [self.first_line.removesuffix(" SIP/2.0").removeprefix("SIP/2.0 ")]
        if self.status is not None:
            parts[0] += f" ({self.cseq_method})" if self.cseq_method != "INVITE" else ""
        if self.has_sdp:
            parts.append("with SDP")
        reason = self.header("Reason")
        if reason and self.status is not None and self.status >= 300:
            parts.append(f"[Reason: {reason}]")
        return " ".join(parts)


def read_trace(path: Path) -> list[Traced]:
    """The messages of a sipp ``-trace_msg`` file in order (local-time stamps made absolute)."""
    try:
        text = path.read_text(errors="replace").replace("\r\n", "\n")
    except OSError:
        return []
    marks = list(_TRACE_SEPARATOR.finditer(text))
    messages: list[Traced] = []
    for index, mark in enumerate(marks):
        end = marks[index + 1].start() if index + 1 < len(marks) else len(text)
        block = text[mark.end():end].strip("\n")
        head, _, body = block.partition("\n")
        found = _TRACE_HEAD.match(head.strip())
        if found is None:
            continue
        stamp = datetime.datetime.strptime(mark.group(1), "%Y-%m-%d %H:%M:%S.%f")
        messages.append(Traced(stamp.timestamp(), found.group(2), body.strip("\n")))
    return messages


@dataclass
class Sipp:
    """One sipp run of the carrier's."""

    child: Child
    port: int
    trace: Path

    def messages(self, call_id: str | None = None) -> list[Traced]:
        traced = read_trace(self.trace)
        return traced if call_id is None else [m for m in traced if m.call_id == call_id]


def _sipp() -> str:
    return require("sipp", "sip-tester")


def start_answering(children: Children, work: Path) -> Sipp:
    """The carrier's side of calls from Teams: answers every call, RTP streamed and echoed."""
    port = free_port(socket.SOCK_DGRAM, HOST)
    trace = work / "carrier-answers.messages.log"
    child = children.start(
        "carrier sipp (answering)",
        [
            _sipp(), "-sf", str(SCENARIOS / "carrier_answers.xml"),
            "-i", HOST, "-p", str(port), "-t", "u1",
            "-mi", HOST, "-mp", str(free_udp_range(4, HOST)), "-rtp_echo",
            "-aa", "-nostdin", "-trace_msg", "-message_file", str(trace),
            "-trace_err", "-error_file", str(work / "carrier-answers.errors.log"),
        ],
        cwd=work,
    )  # fmt: skip
    return Sipp(child, port, trace)


def start_call(
    children: Children, work: Path, target: str, *, name: str, called: str, caller: str,
    hold_ms: int, timeout: float,
) -> Sipp:
    """One call from the carrier to ``called`` (E.164) through the SBC at ``target``."""
    port = free_port(socket.SOCK_DGRAM, HOST)
    trace = work / f"{name}.messages.log"
    child = children.start(
        f"carrier sipp ({name})",
        [
            _sipp(), "-sf", str(SCENARIOS / "carrier_calls_teams.xml"), target,
            "-i", HOST, "-p", str(port), "-t", "u1",
            "-mi", HOST, "-mp", str(free_udp_range(4, HOST)), "-rtp_echo",
            "-s", called, "-key", "caller", caller, "-d", str(hold_ms),
            "-m", "1", "-nostdin", "-recv_timeout", f"{int(timeout)}s",
            "-timeout", f"{int(timeout * 2)}s", "-timeout_error",
            "-trace_msg", "-message_file", str(trace),
            "-trace_err", "-error_file", str(work / f"{name}.errors.log"),
        ],
        cwd=work,
    )  # fmt: skip
    return Sipp(child, port, trace)
