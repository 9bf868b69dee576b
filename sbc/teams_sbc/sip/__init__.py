"""The SIP message layer of the sans-IO core: parse, inspect, change and serialise messages.

- :mod:`.message`: :func:`parse_message`, :class:`Request`, :class:`Response`, :class:`Headers`,
  :func:`make_response`, :func:`error_response`.
- :mod:`.headers`: header names and value parsers (Via, name-addr, CSeq...).
- :mod:`.uri`: SIP, SIPS and tel URIs.
- :mod:`.framing`: cutting TCP/TLS streams into messages, keep-alive pings.
- :mod:`.errors`: :class:`SipParseError` and its kin.

No I/O, clocks or asyncio here.
"""

from teams_sbc.sip.errors import (
    MessageTooLarge,
    SipError,
    SipParseError,
    SipUriError,
    UnsupportedUriScheme,
    VersionNotSupported,
)
from teams_sbc.sip.framing import (
    KEEPALIVE_PING,
    PONG,
    FramerEvent,
    FramingError,
    KeepAlivePing,
    StreamFramer,
)
from teams_sbc.sip.headers import CSeq, NameAddr, Via, parse_name_addr, parse_via
from teams_sbc.sip.message import (
    DEFAULT_MAX_FORWARDS,
    Header,
    Headers,
    Message,
    Request,
    Response,
    error_response,
    make_response,
    parse_message,
)
from teams_sbc.sip.uri import SipUri, TelUri, Uri, parse_uri

__all__ = [
    "DEFAULT_MAX_FORWARDS",
    "KEEPALIVE_PING",
    "PONG",
    "CSeq",
    "FramerEvent",
    "FramingError",
    "Header",
    "Headers",
    "KeepAlivePing",
    "Message",
    "MessageTooLarge",
    "NameAddr",
    "Request",
    "Response",
    "SipError",
    "SipParseError",
    "SipUri",
    "SipUriError",
    "StreamFramer",
    "TelUri",
    "UnsupportedUriScheme",
    "Uri",
    "VersionNotSupported",
    "Via",
    "error_response",
    "make_response",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
]
