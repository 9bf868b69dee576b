"""Message framing on stream transports (TCP, TLS): RFC 3261 7.5 and 18.3, RFC 5626 4.4.1.

A sans-IO framer: the transport feeds it whatever bytes a read returned and gets back events:

- ``bytes``: one complete message, header section plus exactly Content-Length body bytes, ready
  for :func:`teams_sbc.sip.message.parse_message`;
- :data:`KEEPALIVE_PING`: a double CRLF between messages; the transport answers :data:`PONG`
  (a single CRLF). A single CRLF between messages is a pong (or stray padding) and is dropped;
- :class:`FramingError`: the stream cannot be read further as sent (no or bad Content-Length,
  a header section over the size limit) so the transport closes the connection after
  answering if it can (``close`` is True); or one message was too large, was skipped, and the
  stream goes on (``close`` False, ``head`` is its header section to answer 513 from).

Memory is bounded by ``max_size``: the framer never holds more than one message's worth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from teams_sbc.sip.errors import SipParseError
from teams_sbc.sip.message import Request, error_response, parse_message

__all__ = ["KEEPALIVE_PING", "PONG", "FramerEvent", "FramingError", "KeepAlivePing", "StreamFramer"]

#: What a transport sends back for a :class:`KeepAlivePing` (RFC 5626 4.4.1).
PONG: Final = b"\r\n"

_BLANK_LINE_RE: Final = re.compile(rb"\n\r?\n")
# Content-Length lines (any case, compact "l"), their value possibly folded (RFC 3261 7.3.1).
# Found after a line feed: a regex that starts with one is searched far faster than one that
# starts with "^" under re.MULTILINE. The first line of a header section has its own.
_CONTENT_LENGTH: Final = rb"(?:content-length|l)[ \t]*:((?:[^\r\n]|\r?\n[ \t])*)"
_CONTENT_LENGTH_RE: Final = re.compile(rb"\n" + _CONTENT_LENGTH, re.I)
_FIRST_LINE_CONTENT_LENGTH_RE: Final = re.compile(_CONTENT_LENGTH, re.I)
_MAX_DIGITS: Final = 10
# Stray bytes between messages: a LF, or a CR followed by anything but a LF (which would
# make a pong, or half a ping).
_STRAY_RE: Final = re.compile(rb"\n+|\r+(?=[^\n])")


@dataclass(frozen=True, slots=True)
class KeepAlivePing:
    """A CRLFCRLF keep-alive ping from the peer: answer with :data:`PONG`."""


KEEPALIVE_PING: Final = KeepAlivePing()


@dataclass(frozen=True, slots=True)
class FramingError:
    """The stream broke SIP framing. ``status`` and ``reason`` suit an error response.

    ``close`` says the connection must be closed (framing is lost); ``head`` is the header
    section of the offending message when it is known, to build a response from.
    """

    status: int
    reason: str
    close: bool
    head: bytes = b""

    @property
    def response(self) -> bytes | None:
        """The error response to send before closing (or skipping), when one can be built:
        the offending message was a request (not ACK) with Via, From, To, Call-ID and CSeq."""
        if not self.head:
            return None
        try:
            message = parse_message(self.head)
        except SipParseError as exc:
            request = exc.partial
        else:
            request = message if isinstance(message, Request) else None
        if request is None:
            return None
        failure = SipParseError(self.reason, self.status, is_request=True, partial=request)
        response = error_response(failure)
        return None if response is None else response.to_bytes()


FramerEvent = bytes | KeepAlivePing | FramingError


class StreamFramer:
    """Cuts a byte stream into SIP messages by Content-Length."""

    __slots__ = ("_buf", "_closed", "_need", "_scan", "_skip", "max_size")

    def __init__(self, max_size: int = 65535) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._scan = 0  # where to resume looking for the blank line
        self._need = 0  # total length of the message being received, once its header is known
        self._skip = 0  # body bytes of a too-large message still to discard
        self._closed = False

    @property
    def closed(self) -> bool:
        """True after an error that closes the connection: further input is ignored."""
        return self._closed

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[FramerEvent]:
        """Take the bytes of one read; return the events they complete, in order."""
        if self._closed:
            return []
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        events: list[FramerEvent] = []
        buf = self._buf
        if buf:  # the rest of a message already begun
            buf += data
            used = self._cut(buf, events)
            del buf[:used]
        else:  # the usual case on a busy connection: read from ``data`` itself, no copy
            used = self._cut(data, events)
            if used < len(data) and not self._closed:
                buf += memoryview(data)[used:]
        return events

    def _cut(self, data: bytes | bytearray, events: list[FramerEvent]) -> int:
        """Cut the events out of ``data``; returns how many bytes they used."""
        pos, end = 0, len(data)
        while pos < end:
            need = self._need
            if need:
                if end - pos < need:
                    break
                events.append(bytes(data[pos : pos + need]))  # no copy when data is bytes
                pos += need
                self._need = 0
            elif data[pos] in b"\r\n":
                stray = _STRAY_RE.match(data, pos)
                if stray is not None:  # dropped all at once: a flood of them costs no more
                    pos = stray.end()
                    continue
                step = self._keepalive(bytes(data[pos : pos + 4]), events)
                if not step:
                    break
                pos += step
            else:
                after = self._header(data, pos, events)
                if after < 0:
                    break
                pos = after
        return pos

    def _keepalive(self, rest: bytes, events: list[FramerEvent]) -> int:
        """CR/LF bytes between messages (``rest`` is up to four of them, from the first).

        Returns how many are consumed; 0 when more bytes are needed to decide.
        """
        if rest == b"\r\n\r\n":
            events.append(KEEPALIVE_PING)
            return 4
        if rest.startswith(b"\r\n"):
            if len(rest) < 4 and b"\r\n\r\n".startswith(rest):
                return 0  # maybe the first half of a ping
            return 2  # a pong, or CRLF before a start line (RFC 3261 7.5)
        if rest == b"\r":
            return 0
        return 1  # stray LF or CR

    def _header(self, data: bytes | bytearray, pos: int, events: list[FramerEvent]) -> int:
        """Find the header section starting at ``pos`` and its Content-Length.

        Returns where the message's bytes continue, or -1 when more are needed (or the
        stream failed).
        """
        m = _BLANK_LINE_RE.search(data, pos + max(0, self._scan - 2))
        if m is None:
            if len(data) - pos > self.max_size:
                self._fail(events, 513, f"Header section longer than {self.max_size} bytes")
            else:
                self._scan = len(data) - pos
            return -1
        self._scan = 0
        head_end = m.end()
        head_len = head_end - pos
        if head_len > self.max_size:
            head = bytes(data[pos:head_end])
            self._fail(events, 513, f"Header section longer than {self.max_size} bytes", head)
            return -1
        length = _content_length(data, pos, head_end)
        if isinstance(length, str):
            self._fail(events, 400, length, bytes(data[pos:head_end]))
            return -1
        total = head_len + length
        if total > self.max_size:
            reason = f"Message of {total} bytes is over the limit of {self.max_size}"
            events.append(FramingError(513, reason, False, bytes(data[pos:head_end])))
            dropped = min(length, len(data) - head_end)
            self._skip = length - dropped
            return head_end + dropped
        self._need = total
        return pos

    def _fail(self, events: list[FramerEvent], status: int, reason: str, head: bytes = b"") -> None:
        events.append(FramingError(status, reason, True, head))
        self._closed = True
        self._buf.clear()
        self._need = self._skip = self._scan = 0


def _content_length(data: bytes | bytearray, start: int, end: int) -> int | str:
    """Content-Length of the header section ``data[start:end]``, or the reason it has none
    usable (RFC 3261 18.3)."""
    found = _CONTENT_LENGTH_RE.findall(data, start, end)
    first = _FIRST_LINE_CONTENT_LENGTH_RE.match(data, start, end)
    if first is not None:
        found.append(first.group(1))
    values = {tuple(v.split()) for v in found}
    if not values:
        return "Missing Content-Length on a stream transport"
    if len(values) > 1:
        return "Conflicting Content-Length headers"
    value = values.pop()
    if len(value) != 1 or not value[0].isdigit() or len(value[0]) > _MAX_DIGITS:
        return "Malformed Content-Length header"
    return int(value[0])
