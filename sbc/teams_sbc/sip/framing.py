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
# The value may continue on folded lines (RFC 3261 7.3.1).
_CONTENT_LENGTH_RE: Final = re.compile(
    rb"^(?:content-length|l)[ \t]*:((?:[^\r\n]|\r?\n[ \t])*)", re.I | re.M
)
_MAX_DIGITS: Final = 10


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
        buf = self._buf
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        buf += data
        events: list[FramerEvent] = []
        while buf:
            if self._need:
                if len(buf) < self._need:
                    break
                events.append(bytes(buf[: self._need]))
                del buf[: self._need]
                self._need = 0
                continue
            if buf[0] in b"\r\n":
                if not self._keepalive(buf, events):
                    break
                continue
            if not self._header(buf, events):
                break
        return events

    def _keepalive(self, buf: bytearray, events: list[FramerEvent]) -> bool:
        """Consume CR/LF bytes between messages. False when more bytes are needed to decide."""
        if buf.startswith(b"\r\n\r\n"):
            events.append(KEEPALIVE_PING)
            del buf[:4]
        elif buf.startswith(b"\r\n"):
            if len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)):
                return False  # maybe the first half of a ping
            del buf[:2]  # a pong, or CRLF before a start line (RFC 3261 7.5)
        elif buf == b"\r":
            return False
        else:
            del buf[:1]  # stray LF or CR
        return True

    def _header(self, buf: bytearray, events: list[FramerEvent]) -> bool:
        """Find the header section and its Content-Length. False when more bytes are needed."""
        m = _BLANK_LINE_RE.search(buf, max(0, self._scan - 2))
        if m is None:
            if len(buf) > self.max_size:
                self._fail(events, 513, f"Header section longer than {self.max_size} bytes")
            else:
                self._scan = len(buf)
            return False
        self._scan = 0
        head_len = m.end()
        head = bytes(buf[:head_len])
        if head_len > self.max_size:
            self._fail(events, 513, f"Header section longer than {self.max_size} bytes", head)
            return False
        length = _content_length(head)
        if isinstance(length, str):
            self._fail(events, 400, length, head)
            return False
        total = head_len + length
        if total > self.max_size:
            events.append(
                FramingError(
                    513,
                    f"Message of {total} bytes is over the limit of {self.max_size}",
                    False,
                    head,
                )
            )
            del buf[:head_len]
            dropped = min(length, len(buf))
            del buf[:dropped]
            self._skip = length - dropped
            return True
        self._need = total
        return True

    def _fail(self, events: list[FramerEvent], status: int, reason: str, head: bytes = b"") -> None:
        events.append(FramingError(status, reason, True, head))
        self._closed = True
        self._buf.clear()
        self._need = self._skip = self._scan = 0


def _content_length(head: bytes) -> int | str:
    """Content-Length of a header section, or the reason it has none usable (RFC 3261 18.3)."""
    values = {tuple(v.split()) for v in _CONTENT_LENGTH_RE.findall(head)}
    if not values:
        return "Missing Content-Length on a stream transport"
    if len(values) > 1:
        return "Conflicting Content-Length headers"
    value = values.pop()
    if len(value) != 1 or not value[0].isdigit() or len(value[0]) > _MAX_DIGITS:
        return "Malformed Content-Length header"
    return int(value[0])
