"""Header names and the parsers of the header values a proxy needs (RFC 3261 sections 7.3, 20, 25).

Names: compact forms and case-insensitivity are folded into one canonical lower-case key
(``"v"``, ``"VIA"`` -> ``"via"``); :func:`conventional_name` gives the spelling used when the
core writes a header itself (``Call-ID``, ``CSeq``, ``WWW-Authenticate``).

Values: parsed on demand only, into small immutable objects that keep the text they came from:
:class:`Via`, :class:`NameAddr` (From, To, Contact, Route, Record-Route...), :class:`CSeq`. Every
parser raises :class:`SipParseError` (status 400) with a reason naming the header.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from teams_sbc.sip.errors import SipParseError, snippet
from teams_sbc.sip.uri import (
    Params,
    Uri,
    _drop_param,
    _ParamsMixin,
    _set_param,
    parse_uri,
)

__all__ = [
    "COMPACT_FORMS",
    "LIST_HEADERS",
    "CSeq",
    "NameAddr",
    "Via",
    "canonical_key",
    "conventional_name",
    "parse_content_length",
    "parse_cseq",
    "parse_max_forwards",
    "parse_name_addr",
    "parse_name_addr_list",
    "parse_top_via",
    "parse_via",
    "parse_via_list",
    "split_values",
]

# --------------------------------------------------------------------------------------------
# Names

#: Compact forms -> canonical key. RFC 3261 7.3.3 (i m e l c f s k t v), RFC 6665 (o u),
#: RFC 3515 (r), RFC 3892 (b), RFC 4028 (x), RFC 3841 (a j d), RFC 4474 (y n).
COMPACT_FORMS: Final[dict[str, str]] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "y": "identity",
    "n": "identity-info",
}

# Spellings that simple capitalisation of each dash-separated word gets wrong.
_SPECIAL_NAMES: Final[dict[str, str]] = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
    "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match",
    "min-se": "Min-SE",
    "content-id": "Content-ID",
    "session-id": "Session-ID",
    "p-dcs-osps": "P-DCS-OSPS",
}

#: Headers whose values are comma-separated lists (RFC 3261 7.3.1 and the header's own grammar).
#: Everything else is returned whole by ``Headers.values``: above all the ones whose grammar
#: contains commas that do not separate values (WWW-Authenticate, Authorization, Date...).
LIST_HEADERS: Final = frozenset(
    {
        "accept",
        "accept-contact",
        "accept-encoding",
        "accept-language",
        "alert-info",
        "allow",
        "allow-events",
        "call-info",
        "contact",
        "content-encoding",
        "content-language",
        "error-info",
        "history-info",
        "in-reply-to",
        "p-asserted-identity",
        "p-associated-uri",
        "p-preferred-identity",
        "path",
        "proxy-require",
        "reason",
        "record-route",
        "reject-contact",
        "request-disposition",
        "require",
        "route",
        "security-client",
        "security-server",
        "security-verify",
        "service-route",
        "supported",
        "unsupported",
        "via",
        "warning",
    }
)

_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
#: Name as given -> canonical key. Seeded with the usual spellings (see the end of this
#: section) so that they stay fast even once junk names from the network have filled it.
_KEY_CACHE: dict[str, str] = {}
_KEY_CACHE_MAX: Final = 1024
_CACHED_NAME_MAX: Final = 64  # longer names are not cached: the caches stay small


def is_token(text: str) -> bool:
    """RFC 3261 25.1 ``token``: what header names, methods and parameter names are made of."""
    return _TOKEN_RE.match(text) is not None


def canonical_key(name: str) -> str:
    """The canonical lower-case long-form key of header ``name`` (``"v"`` -> ``"via"``)."""
    key = _KEY_CACHE.get(name)
    if key is None:
        key = name.strip().lower()
        key = COMPACT_FORMS.get(key, key)
        if len(_KEY_CACHE) < _KEY_CACHE_MAX and len(name) <= _CACHED_NAME_MAX:
            _KEY_CACHE[name] = key
    return key


_KNOWN_KEYS: Final = (
    LIST_HEADERS
    | set(COMPACT_FORMS.values())
    | {
        "authentication-info",
        "authorization",
        "content-disposition",
        "cseq",
        "date",
        "diversion",
        "expires",
        "max-forwards",
        "min-expires",
        "organization",
        "priority",
        "privacy",
        "proxy-authenticate",
        "proxy-authorization",
        "replaces",
        "reply-to",
        "retry-after",
        "server",
        "timestamp",
        "user-agent",
    }
)


def conventional_name(name: str) -> str:
    """How the core spells a header it writes: the long form, capitalised by convention.

    Known headers and compact forms get the usual spelling (``Call-ID``, ``CSeq``, ``Via``).
    An unknown name is kept as given when it has upper-case letters (``X-MS-Foo``), else it is
    capitalised word by word.
    """
    spelled = _SPELLING_CACHE.get(name)
    if spelled is None:
        key = canonical_key(name)
        given = name.strip()
        spelled = _SPECIAL_NAMES.get(key)
        if spelled is None:
            if key in _KNOWN_KEYS or given.islower() or len(given) == 1:
                spelled = "-".join(part.capitalize() for part in key.split("-"))
            else:
                spelled = given
        if len(_SPELLING_CACHE) < _KEY_CACHE_MAX and len(name) <= _CACHED_NAME_MAX:
            _SPELLING_CACHE[name] = spelled
    return spelled


_SPELLING_CACHE: dict[str, str] = {}


def _usual_spellings() -> dict[str, str]:
    """Each known header's usual spellings -> its key: ``via``, ``Via``, ``VIA``, ``v``, ``V``.

    The caches of header names (here and in :mod:`.message`) start with these.
    """
    out: dict[str, str] = {}
    for key in sorted(_KNOWN_KEYS | set(_SPECIAL_NAMES)):
        for spelled in (key, key.upper(), conventional_name(key)):
            out[spelled] = key
    for compact, key in COMPACT_FORMS.items():
        out[compact] = out[compact.upper()] = key
    return out


_KEY_CACHE.update(_usual_spellings())


# --------------------------------------------------------------------------------------------
# Comma-separated values

# One list element: quoted strings (with \-escapes) and <...> are opaque, a bare comma ends it.
# Possessive quantifiers: a long element must never make the engine backtrack.
_ITEM_RE: Final = re.compile(r'(?:"(?:[^"\\]|\\[\s\S])*+(?:"|\\?\Z)|<[^>]*+>?|[^,"<]++)++')
_WS: Final = " \t\r\n"


def split_values(value: str) -> list[str]:
    """Split a list header's value at the commas that separate elements (RFC 3261 7.3.1).

    Commas inside quoted strings or ``<...>`` do not split; empty elements are dropped.
    """
    if '"' not in value and "<" not in value:
        return [item for part in value.split(",") if (item := part.strip(_WS))]
    return [item for m in _ITEM_RE.finditer(value) if (item := m.group().strip(_WS))]


def first_value_span(value: str) -> tuple[str, int]:
    """The first non-empty element of a list value and where the rest begins (len if none)."""
    simple = '"' not in value and "<" not in value
    pos, size = 0, len(value)
    while True:
        if simple:
            end = value.find(",", pos)
            end = size if end < 0 else end
        else:
            m = _ITEM_RE.match(value, pos)
            end = pos if m is None else m.end()
        item = value[pos:end].strip(_WS)
        rest = end + 1 if end < size else size
        while rest < size and value[rest] in _WS:
            rest += 1
        if item or rest >= size:
            return item, rest
        pos = rest


# --------------------------------------------------------------------------------------------
# Header parameters: *( SEMI generic-param ), generic-param = token [ EQUAL gen-value ]

_HPARAM_RE: Final = re.compile(
    r"[ \t]*;[ \t]*([A-Za-z0-9\-.!%*_+`\'~]+)"
    r'(?:[ \t]*=[ \t]*("(?:[^"\\]|\\[\s\S])*"|[^\s;,"]+))?[ \t]*'
)


def parse_header_params(text: str, what: str) -> Params:
    """Parse ``;a=b ;c ;d="q"`` into ordered pairs; values stay as written (quotes included)."""
    out: list[tuple[str, str | None]] = []
    pos, end = 0, len(text)
    match = _HPARAM_RE.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            if not text[pos:].strip(" \t"):
                break
            raise SipParseError(f"Bad parameter {snippet(text[pos:], 20)} in {what} header")
        out.append((m.group(1), m.group(2)))
        pos = m.end()
    return tuple(out)


def _render_params(params: Params) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


_PLAIN_VALUE_RE: Final = re.compile(r'[^\s;,"<>]+\Z')
_QUOTED_VALUE_RE: Final = re.compile(r'"(?:[^"\\\r\n]|\\[^\r\n])*"\Z')


def _check_new_param(name: str, value: str | None) -> None:
    """Refuse a parameter that would corrupt the header when rendered (or inject one)."""
    if not is_token(name):
        raise ValueError(f"bad header parameter name {name!r}")
    if value is not None and not (_PLAIN_VALUE_RE.match(value) or _QUOTED_VALUE_RE.match(value)):
        raise ValueError(f"bad header parameter value {name}={value!r}")


# --------------------------------------------------------------------------------------------
# Via (RFC 3261 20.42), sent-protocol with optional LWS around the slashes (RFC 3261 25.1 SLASH)

_SIP_2_0: Final = "SIP/2.0"
_VIA_RE: Final = re.compile(
    r"[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*/[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)"
    r"[ \t]*/[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-_.]+)(?:[ \t]*:[ \t]*([0-9]{1,5}))?"
)


class Via(_ParamsMixin):
    """One Via value (immutable). ``transport`` is upper-cased; everything else is as written.

    ``param("rport")`` is ``""`` for a bare ``;rport`` (RFC 3581 request) and the port once a
    server filled it in; :attr:`rport` gives the filled-in number. ``str()`` is the text as
    written while unmodified. A plain slotted class rather than a frozen dataclass: one is
    built for nearly every message, and this is three times cheaper.
    """

    __slots__ = ("_text", "host", "params", "port", "protocol", "transport")

    def __init__(
        self,
        protocol: str,
        transport: str,
        host: str,
        port: int | None = None,
        params: Params = (),
        text: str | None = None,
    ) -> None:
        self.protocol = protocol
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params
        self._text = text

    def _fields(self) -> tuple[str, str, str, int | None, Params]:
        return (self.protocol, self.transport, self.host, self.port, self.params)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Via) and other._fields() == self._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"Via({str(self)!r})"

    def __str__(self) -> str:
        if self._text is None:
            port = "" if self.port is None else f":{self.port}"
            params = _render_params(self.params)
            self._text = f"{self.protocol}/{self.transport} {self.host}{port}{params}"
        return self._text

    @property
    def branch(self) -> str | None:
        for name, value in self.params:  # param("branch"), inlined: read on every message
            if name == "branch" or (len(name) == 6 and name.lower() == "branch"):
                return value or None
        return None

    @property
    def received(self) -> str | None:
        return self.param("received") or None

    @property
    def rport(self) -> int | None:
        """The ``rport`` value a server filled in, or None (absent or requested only)."""
        value = self.param("rport")
        if value and value.isascii() and value.isdigit() and len(value) <= 5:
            return int(value)
        return None

    @property
    def bare_host(self) -> str:
        return self.host[1:-1] if self.host.startswith("[") else self.host

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def with_param(self, name: str, value: str | None = None) -> Via:
        """A copy with ``name`` set in place (or appended), e.g. ``received`` and ``rport``."""
        _check_new_param(name, value)
        params = _set_param(self.params, name, value)
        return Via(self.protocol, self.transport, self.host, self.port, params)

    def without_param(self, name: str) -> Via:
        params = _drop_param(self.params, name)
        return Via(self.protocol, self.transport, self.host, self.port, params)


# The usual parameter list: ";name=value" and ";name" with no spaces or quotes.
_SIMPLE_PARAMS_RE: Final = re.compile(r"(?:;[A-Za-z0-9\-.!%*_+`'~]+(?:=[^\s;,\"=]+)?)*\Z")


def _split_simple_params(text: str) -> Params:
    """Split parameters that matched :data:`_SIMPLE_PARAMS_RE` (``;a=1;b``)."""
    text = text[1:]
    if ";" not in text:  # the usual single parameter (a Via's branch, a To's tag)
        name, eq, value = text.partition("=")
        return ((name, value if eq else None),)
    out: list[tuple[str, str | None]] = []
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        out.append((name, value if eq else None))
    return tuple(out)


# The characters of a parameter value on the quick paths: a token's, and a host's (the colons
# and brackets of an IPv6 reference), as RFC 3261 25.1's gen-value allows them. Named as they
# are rather than as "not a separator": a positive class of ASCII characters matches faster,
# and anything else (quoted strings, escapes, non-ASCII) is the general parsers' to judge.
_USUAL_VALUE_CHARS: Final = r"A-Za-z0-9\-.!%*_+`'~:\[\]"
# The usual Via value in one match: SIP/2.0, an upper-case transport, one space, host[:port]
# and simple parameters. What these accept, the general parser accepts too, with the same
# result (test_fuzz compares the two); anything else goes to the general one.
_USUAL_VIA: Final = (
    r"SIP/2\.0/(UDP|TCP|TLS|SCTP|WSS|WS) ([A-Za-z0-9\-_.]++|\[[0-9A-Fa-f:.]++\])"
    rf"(?::([0-9]{{1,5}}+))?((?:;[A-Za-z0-9\-.!%*_+`'~]++(?:=[{_USUAL_VALUE_CHARS}]++)?)*+)"
    r"[ \t]*+"
)
_USUAL_VIA_RE: Final = re.compile(_USUAL_VIA + r"\Z")
# The first of several Vias on one line (``a, b``), or the only one.
_USUAL_TOP_VIA_RE: Final = re.compile(_USUAL_VIA + r"(?:,|\Z)")


def _usual_via(m: re.Match[str], value: str) -> Via | None:
    """The Via that a ``_USUAL_*VIA_RE`` match found in ``value``; None if its port is out of
    range (the general parser then says so)."""
    transport, host, port, params = m.groups()
    port_no = None
    if port is not None:
        port_no = int(port)
        if port_no > 65535:
            return None
    text = value[: m.end(4)]
    return Via(
        _SIP_2_0, transport, host, port_no, _split_simple_params(params) if params else (), text
    )


def _usual_top_via(value: str) -> Via | None:
    """The first Via of a header value when it has the usual shape, else None."""
    m = _USUAL_TOP_VIA_RE.match(value)
    return None if m is None else _usual_via(m, value)


def parse_top_via(value: str) -> Via:
    """The first Via in a Via header value, which may hold several (``a, b``)."""
    via = _usual_top_via(value)
    return _parse_top_via_general(value) if via is None else via


def _parse_top_via_general(value: str) -> Via:
    if "," in value:
        values = split_values(value)
        if not values:
            raise SipParseError("Empty Via header")
        value = values[0]
    return _parse_via_general(value)


def parse_via(value: str) -> Via:
    """Parse one Via value (no commas): ``SIP/2.0/UDP host:port;branch=...``."""
    m = _USUAL_VIA_RE.match(value)
    via = None if m is None else _usual_via(m, value)
    return _parse_via_general(value) if via is None else via


def _parse_via_general(value: str) -> Via:
    m = _VIA_RE.match(value)
    if m is None:
        raise SipParseError(f"Malformed Via header {snippet(value)}")
    name, version, transport, host, port = m.groups()
    port_no = None
    if port is not None:
        port_no = int(port)
        if port_no > 65535:
            raise SipParseError(f"Bad port in Via header {snippet(value)}")
    rest = value[m.end() :]
    if not rest:
        params: Params = ()
    elif _SIMPLE_PARAMS_RE.match(rest):
        params = _split_simple_params(rest)
    else:
        params = parse_header_params(rest, "Via")
    text = value.strip(" \t")
    protocol = _SIP_2_0 if name == "SIP" and version == "2.0" else f"{name}/{version}"
    return Via(protocol, transport.upper(), host, port_no, params, text)


def parse_via_list(value: str) -> list[Via]:
    """Every Via in one header value (sipp joins them with commas)."""
    return [parse_via(v) for v in split_values(value)]


# --------------------------------------------------------------------------------------------
# name-addr / addr-spec (RFC 3261 20.10, 20.20, 20.39, 25.1)

_QUOTED_RE: Final = re.compile(r'"((?:[^"\\]|\\[\s\S])*)"')
_UNESCAPE_RE: Final = re.compile(r"\\([\s\S])")
_BAD_DISPLAY_RE: Final = re.compile(r'[>";,]')
_BAD_URI_RE: Final = re.compile(r'[\s<>"]')


class NameAddr(_ParamsMixin):
    """``"Display" <uri>;params`` or ``uri;params`` (then the params are the header's).

    Immutable. ``display_name`` is unquoted and unescaped; ``uri_text`` is the URI as written;
    :attr:`uri` parses it on first use. ``str()`` gives back the text as written while
    unmodified; the ``with_*`` helpers keep the display name and URI text as written.
    """

    __slots__ = ("_head", "_text", "_uri", "display_name", "params", "uri_text")

    def __init__(
        self,
        uri_text: str,
        display_name: str | None = None,
        params: Params = (),
        *,
        head: str | None = None,
        text: str | None = None,
    ) -> None:
        self.uri_text = uri_text
        self.display_name = display_name
        self.params = params
        self._head = head
        self._text = text
        self._uri: Uri | None = None

    def _fields(self) -> tuple[str, str | None, Params]:
        return (self.uri_text, self.display_name, self.params)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NameAddr) and other._fields() == self._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"NameAddr({str(self)!r})"

    def __str__(self) -> str:
        if self._text is None:
            self._text = self._render_head() + _render_params(self.params)
        return self._text

    def _render_head(self) -> str:
        if self._head is not None:
            return self._head
        if self.display_name is None:
            return f"<{self.uri_text}>"
        quoted = self.display_name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{quoted}" <{self.uri_text}>'

    @property
    def uri(self) -> Uri:
        """The parsed URI (raises SipParseError / UnsupportedUriScheme when it does not parse)."""
        if self._uri is None:
            self._uri = parse_uri(self.uri_text)
        return self._uri

    @property
    def tag(self) -> str | None:
        for name, value in self.params:  # param("tag"), inlined: read on most messages
            if name == "tag" or (len(name) == 3 and name.lower() == "tag"):
                return value or None
        return None

    def with_param(self, name: str, value: str | None = None) -> NameAddr:
        """A copy with a header parameter set; the display name and URI keep their text."""
        _check_new_param(name, value)
        params = _set_param(self.params, name, value)
        return NameAddr(self.uri_text, self.display_name, params, head=self._render_head())

    def with_tag(self, tag: str) -> NameAddr:
        return self.with_param("tag", tag)

    def without_param(self, name: str) -> NameAddr:
        params = _drop_param(self.params, name)
        return NameAddr(self.uri_text, self.display_name, params, head=self._render_head())

    def with_uri(self, uri: Uri | str) -> NameAddr:
        """A copy pointing at another URI, always written in ``<>`` (RFC 3261 20.10)."""
        text = str(uri)
        if not text or any(ch in text for ch in " \t\r\n<>"):
            raise ValueError(f"bad URI {text!r}")
        return NameAddr(text, self.display_name, self.params)


# The usual name-addr in one match: an optional display name (tokens separated by single
# spaces, or a quoted string without escapes), at most one space, <URI>, simple parameters;
# or a bare addr-spec with simple parameters. It accepts only what the general parser
# accepts, with the same result (test_fuzz compares the two).
_TOKEN_CHARS: Final = r"A-Za-z0-9\-.!%*_+`'~"
# The characters of a SIP URI (RFC 3261 25.1: unreserved, escaped, and the reserved ones its
# user, host, parameters and headers use), for the URI in angle brackets.
_USUAL_URI_CHARS: Final = r"A-Za-z0-9\-_.!~*'()%&=+$,;?/:@\[\]"
_USUAL_NAME_ADDR_RE: Final = re.compile(
    rf"(?:(?:([{_TOKEN_CHARS}]++(?: [{_TOKEN_CHARS}]++)*+) ?|\"([^\"\\\r\n]*+)\" ?)?"
    rf"<([{_USUAL_URI_CHARS}]++)>|([^\s<>\";,]++))"
    rf"((?:;[{_TOKEN_CHARS}]++(?:=[{_USUAL_VALUE_CHARS}]++)?)*+)\Z"
)


def parse_name_addr(value: str, what: str = "name-addr") -> NameAddr:
    """Parse a name-addr or addr-spec with header parameters (From, To, Contact, Route...)."""
    text = value.strip(" \t\r\n")
    m = _USUAL_NAME_ADDR_RE.match(text)
    if m is None:
        return _parse_name_addr_general(text, what)
    name, quoted, bracketed, bare, param_text = m.groups()
    if bracketed is None:
        uri, head = bare, bare
    else:
        uri, head = bracketed, text[: m.end(3) + 1]
    if ":" not in uri:
        return _parse_name_addr_general(text, what)  # it raises
    params = _split_simple_params(param_text) if param_text else ()
    return NameAddr(uri, quoted if name is None else name, params, head=head, text=text)


def _parse_name_addr_general(text: str, what: str) -> NameAddr:
    display: str | None = None
    if text.startswith('"'):
        m = _QUOTED_RE.match(text)
        if m is None:
            raise SipParseError(f"Unterminated quoted display name in {what} header")
        display = _UNESCAPE_RE.sub(r"\1", m.group(1))
        lt = len(text) - len(text[m.end() :].lstrip(" \t\r\n"))
        if not text.startswith("<", lt):
            raise SipParseError(f"Missing <URI> after display name in {what} header")
    else:
        lt = text.find("<")
        if lt > 0:
            display = " ".join(text[:lt].split()) or None
            if display is not None and _BAD_DISPLAY_RE.search(display):
                raise SipParseError(f"Bad display name in {what} header {snippet(text)}")
    if lt >= 0:
        gt = text.find(">", lt)
        if gt < 0:
            raise SipParseError(f"Missing '>' in {what} header {snippet(text)}")
        uri_text, head, rest = text[lt + 1 : gt], text[: gt + 1], text[gt + 1 :]
    else:
        semi = text.find(";")
        uri_text, rest = (text, "") if semi < 0 else (text[:semi], text[semi:])
        uri_text = uri_text.rstrip(" \t")
        head = uri_text
    if ":" not in uri_text or _BAD_URI_RE.search(uri_text):
        raise SipParseError(f"Bad URI in {what} header {snippet(text)}")
    if not rest:
        params: Params = ()
    elif _SIMPLE_PARAMS_RE.match(rest):
        params = _split_simple_params(rest)
    else:
        params = parse_header_params(rest, what)
    return NameAddr(uri_text, display, params, head=head, text=text)


def parse_name_addr_list(value: str, what: str = "name-addr") -> list[NameAddr]:
    """Every element of a list header made of name-addrs (Route, Record-Route, Contact)."""
    return [parse_name_addr(v, what) for v in split_values(value)]


# --------------------------------------------------------------------------------------------
# Numbers

_CSEQ_RE: Final = re.compile(r"[ \t]*([0-9]{1,10})[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*\Z")
_DIGITS_RE: Final = re.compile(r"[ \t]*([0-9]{1,10})[ \t]*\Z")


class CSeq(NamedTuple):
    """CSeq (RFC 3261 20.16): the sequence number and the method."""

    number: int
    method: str


def parse_cseq(value: str) -> CSeq:
    """Parse ``4711 INVITE``; the number must be below 2**31 (RFC 3261 8.1.1.5)."""
    m = _CSEQ_RE.match(value)
    if m is None or int(m.group(1)) >= 2**31:
        raise SipParseError(f"Malformed CSeq header {snippet(value)}")
    return CSeq(int(m.group(1)), m.group(2))


def parse_content_length(value: str) -> int:
    m = _DIGITS_RE.match(value)
    if m is None:
        raise SipParseError(f"Malformed Content-Length header {snippet(value)}")
    return int(m.group(1))


def parse_max_forwards(value: str) -> int:
    """Max-Forwards (RFC 3261 20.22): 1*DIGIT; values above 255 are refused as malformed."""
    m = _DIGITS_RE.match(value)
    if m is None or int(m.group(1)) > 255:
        raise SipParseError(f"Malformed Max-Forwards header {snippet(value)}")
    return int(m.group(1))
