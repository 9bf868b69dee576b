"""The SIP core's error hierarchy.

Every failure to understand bytes from the network is a :class:`SipParseError`. It carries the
status code a UAS or proxy should answer a request with (RFC 3261 8.2 and 16.3), a reason saying
exactly what was wrong (safe to put in a reason phrase or a Warning header: printable, one line,
bounded), whether the bytes were a request (answer it) or a response (drop it and count it), and
for requests whatever could still be parsed, so the caller can build that answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from teams_sbc.sip.message import Request

#: Longest reason text we produce; it ends up in a reason phrase or a Warning header.
MAX_REASON = 200


def snippet(data: bytes | str, limit: int = 40) -> str:
    """A short, printable, single-line rendering of offending input for an error reason.

    Control characters, quotes and non-ASCII are escaped so the text can never break a header
    line or inject one.
    """
    text = data.decode("utf-8", "backslashreplace") if isinstance(data, bytes) else data
    cut = len(text) > limit
    text = text[:limit]
    out = []
    for ch in text:
        if ch in {"\\", '"'} or not (" " <= ch <= "~"):
            out.append(ch.encode("unicode_escape").decode("ascii") if ch != '"' else "'")
        else:
            out.append(ch)
    return "".join(out) + ("..." if cut else "")


class SipError(Exception):
    """Base of every error the SIP core raises on purpose."""


class SipParseError(SipError):
    """Bytes that are not an acceptable SIP message (or a header value that does not parse).

    ``status`` is what a request gets as an answer: 400 in general, 505 for a SIP version other
    than 2.0, 513 for a message over the size limits, 416 for a Request-URI scheme we do not
    serve. ``is_request`` is True for a request (answer it if ``partial`` allows), False for a
    response (drop it), None when the start line was not recognisable at all.
    """

    default_status = 400

    def __init__(
        self,
        reason: str,
        status: int | None = None,
        *,
        is_request: bool | None = None,
        partial: Request | None = None,
    ) -> None:
        reason = " ".join(reason.split())[:MAX_REASON]
        super().__init__(reason)
        self.reason = reason
        self.status = self.default_status if status is None else status
        self.is_request = is_request
        self.partial = partial

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.reason!r})"


class MessageTooLarge(SipParseError):
    """The message (or its header section) exceeds the configured limits: RFC 3261 21.5.14."""

    default_status = 513


class VersionNotSupported(SipParseError):
    """A SIP version other than SIP/2.0 in a start line: answer 505 (RFC 3261 21.5.7)."""

    default_status = 505


class SipUriError(SipParseError):
    """A URI that does not follow RFC 3261 section 19.1 / RFC 3966 syntax."""


class UnsupportedUriScheme(SipUriError):
    """A well-formed URI whose scheme is not sip, sips or tel: answer 416 (RFC 3261 8.2.2.1)."""

    default_status = 416

    def __init__(self, scheme: str, *, is_request: bool | None = None) -> None:
        super().__init__(f"Unsupported URI scheme {snippet(scheme, 20)}", is_request=is_request)
        self.scheme = scheme
