"""SIP requests and responses: lazy parsing and lossless serialisation (RFC 3261 7, 18.3, 20).

Parsing does the least a proxy needs on every message: it splits the start line and the header
lines, maps each header name to its canonical key, checks the mandatory headers, and parses only
CSeq, Content-Length and the top Via. Every other value is decoded when someone asks for it.

Each header line is kept as the bytes it arrived as, in order. Serialising emits those bytes for
every header nobody changed, so an unmodified message re-serialises to the same bytes, and a
forwarded message differs from the received one only where the proxy changed it. Two deliberate
exceptions, both about RFC conformance of what we send:

- Line endings: RFC 3261 7 requires CRLF. A header section that uses bare LF is accepted and
  normalised to CRLF on parsing (the body is never touched); re-serialising such a message gives
  the CRLF form, which then round-trips exactly.
- Content-Length: ``to_bytes()`` always emits a correct one (RFC 3261 20.14 makes it mandatory
  on streams, and a request may move from UDP to TCP): it is appended when missing and rewritten
  when the body changed.
"""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Final, cast

from teams_sbc.sip.errors import (
    MessageTooLarge,
    SipParseError,
    UnsupportedUriScheme,
    VersionNotSupported,
    snippet,
)
from teams_sbc.sip.headers import (
    LIST_HEADERS,
    CSeq,
    NameAddr,
    Via,
    canonical_key,
    conventional_name,
    first_value_span,
    is_token,
    parse_content_length,
    parse_cseq,
    parse_max_forwards,
    parse_name_addr,
    parse_via,
    parse_via_list,
    split_values,
)
from teams_sbc.sip.uri import Uri, parse_uri

__all__ = [
    "DEFAULT_MAX_FORWARDS",
    "REASON_PHRASES",
    "Header",
    "Headers",
    "Message",
    "Request",
    "Response",
    "error_response",
    "make_response",
    "parse_message",
]

#: RFC 3261 16.6 step 3: the Max-Forwards a proxy adds when a request has none.
DEFAULT_MAX_FORWARDS: Final = 70
#: Largest message accepted by default: the largest UDP payload.
DEFAULT_MAX_SIZE: Final = 65535
#: Bounds on the header section, so no input costs unbounded work or memory.
DEFAULT_MAX_HEADERS: Final = 128
DEFAULT_MAX_LINE: Final = 8192

SIP_VERSION: Final = "SIP/2.0"
_MANDATORY: Final = ("via", "from", "to", "call-id", "cseq")  # RFC 3261 8.1.1
_SINGLE: Final = ("from", "to", "call-id", "cseq")  # must not repeat (RFC 3261 20)
_SPELLING: Final = {"from": "From", "to": "To"}
_SUPPORTED_SCHEMES: Final = frozenset({"sip", "sips", "tel"})
_URI_PREFIXES: Final = frozenset({b"sip:", b"tel:"})

_FOLD_RE: Final = re.compile(rb"[ \t]*\r\n[ \t]+")
_FOLD_STR_RE: Final = re.compile(r"[ \t]*\r\n[ \t]+")
_BLANK_LINE_RE: Final = re.compile(rb"\n\r?\n")
# "\nName:" at the start of each header line; never matches a continuation or colon-less line.
_NAME_RE: Final = re.compile(rb"\n([^:\r\n \t][^:\r\n]*:)")
_TOKEN_BYTES_RE: Final = re.compile(rb"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_VERSION_RE: Final = re.compile(rb"SIP/[0-9]+\.[0-9]+\Z", re.IGNORECASE)

# b"Via:" -> "via": the name slice includes the colon so a line without one never hits.
_NAME_CACHE: dict[bytes, str] = {}
_NAME_CACHE_MAX: Final = 2048
_METHODS: Final[dict[bytes, str]] = {
    m.encode(): sys.intern(m)
    for m in (
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "REGISTER",
        "PRACK",
        "SUBSCRIBE",
        "NOTIFY",
        "PUBLISH",
        "INFO",
        "REFER",
        "MESSAGE",
        "UPDATE",
    )
}

_METHOD_NAMES: Final = {m: m for m in _METHODS.values()}

#: Default reason phrases (RFC 3261 21 and the extensions a Teams SBC meets).
REASON_PHRASES: Final[dict[int, str]] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


def _value_of(raw: bytes) -> str:
    """The value of a raw header line: after the colon, unfolded, trimmed (RFC 3261 7.3.1)."""
    value = raw[raw.find(b":") + 1 :]
    if b"\r\n" in value:
        value = _FOLD_RE.sub(b" ", value)
    return value.strip(b" \t").decode("utf-8", "surrogateescape")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class Header:
    """One header field: its canonical ``key`` and the ``raw`` bytes of its line(s), no CRLF.

    ``name`` (as written, possibly compact) and ``value`` (unfolded) are decoded on demand.
    Headers are immutable; :class:`Headers` replaces them when they change.
    """

    __slots__ = ("_value", "key", "raw")

    def __init__(self, key: str, raw: bytes) -> None:
        self.key = key
        self.raw = raw
        self._value: str | None = None

    @classmethod
    def make(cls, name: str, value: str) -> Header:
        """A new header line ``Name: value``, the name spelled conventionally.

        Refuses names that are not tokens and values containing CR or LF (header injection).
        """
        if not is_token(name.strip()):
            raise ValueError(f"bad header name {name!r}")
        if "\r" in value or "\n" in value:
            raise ValueError(f"header value may not contain CR or LF: {value!r}")
        return cls(canonical_key(name), _encode(f"{conventional_name(name)}: {value.strip()}"))

    @property
    def name(self) -> str:
        """The name as written on the wire (``v``, ``VIA``, ``Via``...)."""
        return self.raw[: self.raw.find(b":")].rstrip(b" \t").decode("ascii", "replace")

    @property
    def value(self) -> str:
        if self._value is None:
            self._value = _value_of(self.raw)
        return self._value

    def __repr__(self) -> str:
        return f"Header({self.key!r}, {self.raw!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Header) and other.key == self.key and other.raw == self.raw

    def __hash__(self) -> int:
        return hash((self.key, self.raw))


# Header versions are unique across all Headers objects, so a message's cached bytes can never
# be mistaken for those of another Headers object assigned to it.
_VERSIONS: Final = itertools.count(1)


class Headers:
    """The ordered header fields of a message.

    Look-ups take any spelling of a name (``"Via"``, ``"v"``, ``"via"``). Changes replace whole
    lines; untouched lines keep their bytes and their place. Every change gives a new
    ``version`` and clears the parsed-value cache that the message accessors use.
    """

    __slots__ = ("_cache", "_keys", "_raws", "version")

    def __init__(self, items: Iterable[Header | tuple[str, str]] = ()) -> None:
        self._keys: list[str] = []
        self._raws: list[bytes] = []
        self._cache: dict[str, object] = {}
        self.version = next(_VERSIONS)
        for item in items:
            header = item if isinstance(item, Header) else Header.make(*item)
            self._keys.append(header.key)
            self._raws.append(header.raw)

    @classmethod
    def _from_lists(cls, keys: list[str], raws: list[bytes]) -> Headers:
        headers = cls.__new__(cls)
        headers._keys = keys
        headers._raws = raws
        headers._cache = {}
        headers.version = next(_VERSIONS)
        return headers

    def copy(self) -> Headers:
        """An independent copy (the lines are shared bytes; lists and cache are new).

        It keeps the version: same version, same lines, so a serialisation cached for the
        original is valid for the copy until either changes.
        """
        new = Headers._from_lists(self._keys.copy(), self._raws.copy())
        new._cache = self._cache.copy()
        new.version = self.version
        return new

    def _changed(self) -> None:
        self.version = next(_VERSIONS)
        self._cache.clear()

    # --- reading ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[Header]:
        return map(Header, self._keys, self._raws)

    def __getitem__(self, index: int) -> Header:
        return Header(self._keys[index], self._raws[index])

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and canonical_key(name) in self._keys

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"

    def keys(self) -> list[str]:
        """The canonical key of every line, in order (duplicates included)."""
        return self._keys.copy()

    def index(self, name: str) -> int:
        """Position of the first header called ``name``, or -1."""
        key = canonical_key(name)
        return self._keys.index(key) if key in self._keys else -1

    def count(self, name: str) -> int:
        return self._keys.count(canonical_key(name))

    def get(self, name: str) -> str | None:
        """The value of the first header called ``name``, or None."""
        key = canonical_key(name)
        if key not in self._keys:
            return None
        return _value_of(self._raws[self._keys.index(key)])

    def get_all(self, name: str) -> list[str]:
        """The value of each header line called ``name``, in order."""
        key = canonical_key(name)
        return [_value_of(r) for k, r in zip(self._keys, self._raws, strict=True) if k == key]

    def header_lines(self, name: str) -> list[Header]:
        """Every header line called ``name`` (raw bytes included), in order."""
        key = canonical_key(name)
        return [Header(k, r) for k, r in zip(self._keys, self._raws, strict=True) if k == key]

    def values(self, name: str) -> list[str]:
        """All values of ``name``, comma-split across lines for list headers (Via, Route...).

        Headers outside :data:`LIST_HEADERS` (WWW-Authenticate, Authorization, Date...) are
        never split: one value per line.
        """
        key = canonical_key(name)
        lines = self.get_all(key)
        if key not in LIST_HEADERS:
            return lines
        return [v for line in lines for v in split_values(line)]

    # --- changing --------------------------------------------------------------------------

    def insert(self, where: int | str, name: str, value: str) -> None:
        """Insert a line at index ``where``, or before the first header called ``where``
        (at the end when there is none)."""
        header = Header.make(name, value)
        self.insert_header(where, header)

    def insert_header(self, where: int | str, header: Header) -> None:
        """Insert an existing :class:`Header` (raw bytes kept), positioned as :meth:`insert`."""
        if isinstance(where, str):
            key = canonical_key(where)
            index = self._keys.index(key) if key in self._keys else len(self._keys)
        else:
            index = where
        self._keys.insert(index, header.key)
        self._raws.insert(index, header.raw)
        self._changed()

    def append(self, name: str, value: str) -> None:
        self.append_header(Header.make(name, value))

    def append_header(self, header: Header) -> None:
        self._keys.append(header.key)
        self._raws.append(header.raw)
        self._changed()

    def prepend(self, name: str, value: str) -> None:
        """Add a new topmost ``name`` line: above the existing ones, else at the very top.

        This is how a proxy pushes its Via (RFC 3261 16.6 step 8) or Record-Route (step 4).
        """
        header = Header.make(name, value)
        index = self._keys.index(header.key) if header.key in self._keys else 0
        self._keys.insert(index, header.key)
        self._raws.insert(index, header.raw)
        self._changed()

    def remove(self, name: str) -> int:
        """Remove every line called ``name``; returns how many went."""
        key = canonical_key(name)
        count = self._keys.count(key)
        if count:
            keep = [i for i, k in enumerate(self._keys) if k != key]
            self._keys = [self._keys[i] for i in keep]
            self._raws = [self._raws[i] for i in keep]
            self._changed()
        return count

    def replace(self, name: str, *values: str) -> None:
        """Replace every line called ``name`` by one line per value, where the first one was
        (at the end when there was none). No values: same as :meth:`remove`."""
        key = canonical_key(name)
        new = [Header.make(name, v) for v in values]
        index = self._keys.index(key) if key in self._keys else len(self._keys)
        self.remove(key)
        for offset, header in enumerate(new):
            self._keys.insert(index + offset, header.key)
            self._raws.insert(index + offset, header.raw)
        self._changed()

    def set(self, name: str, value: str) -> None:
        """Make ``value`` the single line called ``name``."""
        self.replace(name, value)

    def remove_first_value(self, name: str) -> str | None:
        """Remove the topmost value of a list header and return it (None if there is none).

        When several values share the line (``Via: a, b``), the line is re-emitted with the
        remaining values exactly as written, under the name as written (RFC 3261 16.7 step 3:
        a proxy pops its own Via off a response; sipp's UAS joins Vias this way).
        """
        key = canonical_key(name)
        while key in self._keys:
            index = self._keys.index(key)
            raw = self._raws[index]
            colon = raw.find(b":")
            text = raw[colon + 1 :].decode("utf-8", "surrogateescape")
            first, rest_at = first_value_span(text)
            if rest_at >= len(text):
                del self._keys[index]
                del self._raws[index]
            else:
                self._raws[index] = raw[:colon] + b": " + _encode(text[rest_at:])
            self._changed()
            if first:
                return _FOLD_STR_RE.sub(" ", first)
        return None


class Message:
    """What requests and responses share: version, headers, body and the cached accessors.

    The accessors parse on first use and cache in the headers' cache, which any header change
    clears. They raise :class:`SipParseError` (400) when the header is missing or malformed.
    """

    __slots__ = ("_body", "_raw", "_raw_version", "_start", "_version", "headers")

    headers: Headers
    _body: bytes
    _version: str
    _start: bytes | None
    _raw: bytes | None
    _raw_version: int

    def _init_common(self, headers: Headers, body: bytes, version: str) -> None:
        self.headers = headers
        self._body = body
        self._version = version
        self._start = None
        self._raw = None
        self._raw_version = -1

    # --- start line and body ---------------------------------------------------------------

    @property
    def version(self) -> str:
        return self._version

    @version.setter
    def version(self, value: str) -> None:
        self._version = value
        self._start = self._raw = None

    @property
    def body(self) -> bytes:
        return self._body

    @body.setter
    def body(self, value: bytes) -> None:
        self._body = bytes(value)
        self._raw = None

    def _start_line(self) -> bytes:
        raise NotImplementedError

    # --- serialising -----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The message on the wire: untouched lines as received, a correct Content-Length.

        The result is cached until something changes, so retransmissions cost nothing.
        """
        raw = self._raw
        if raw is not None and self._raw_version == self.headers.version:
            return raw
        self._fix_content_length()
        start = self._start
        if start is None:
            start = self._start = self._start_line()
        raws = self.headers._raws
        out = b"".join((start, b"\r\n", b"\r\n".join(raws), b"\r\n\r\n", self._body))
        self._raw = out
        self._raw_version = self.headers.version
        return out

    __bytes__ = to_bytes

    def _fix_content_length(self) -> None:
        """RFC 3261 20.14 / 18.3: make Content-Length present and equal to the body length."""
        headers = self.headers
        size = len(self._body)
        keys = headers._keys
        if "content-length" in keys:
            if keys.count("content-length") == 1:
                value = _value_of(headers._raws[keys.index("content-length")])
                if value.isascii() and value.isdigit() and int(value) == size:
                    return
            headers.replace("content-length", str(size))
        else:
            headers.append("Content-Length", str(size))

    # --- accessors ---------------------------------------------------------------------------

    def _required(self, key: str) -> str:
        value = self.headers.get(key)
        if value is None:
            raise SipParseError(f"Missing {conventional_name(key)} header")
        return value

    @property
    def call_id(self) -> str:
        cache = self.headers._cache
        value = cache.get("call_id")
        if value is None:
            value = cache["call_id"] = self._required("call-id")
        assert isinstance(value, str)
        return value

    @property
    def cseq(self) -> CSeq:
        cache = self.headers._cache
        value = cache.get("cseq")
        if value is None:
            value = cache["cseq"] = parse_cseq(self._required("cseq"))
        assert isinstance(value, CSeq)
        return value

    @property
    def top_via(self) -> Via:
        """The first Via value (even when several share the first Via line)."""
        cache = self.headers._cache
        value = cache.get("top_via")
        if value is None:
            value = cache["top_via"] = _top_via(self._required("via"))
        assert isinstance(value, Via)
        return value

    @property
    def vias(self) -> list[Via]:
        """Every Via value, top first."""
        cache = self.headers._cache
        value = cache.get("vias")
        if value is None:
            value = cache["vias"] = [
                v for line in self.headers.get_all("via") for v in parse_via_list(line)
            ]
        assert isinstance(value, list)
        return value

    def _name_addr(self, key: str) -> NameAddr:
        cache = self.headers._cache
        value = cache.get(key)
        if value is None:
            value = cache[key] = parse_name_addr(self._required(key), _SPELLING[key])
        assert isinstance(value, NameAddr)
        return value

    @property
    def from_addr(self) -> NameAddr:
        return self._name_addr("from")

    @property
    def to_addr(self) -> NameAddr:
        return self._name_addr("to")

    @property
    def from_tag(self) -> str | None:
        return self._name_addr("from").tag

    @property
    def to_tag(self) -> str | None:
        return self._name_addr("to").tag

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards, or None when absent (a proxy then adds :data:`DEFAULT_MAX_FORWARDS`)."""
        value = self.headers.get("max-forwards")
        return None if value is None else parse_max_forwards(value)

    @property
    def content_length(self) -> int | None:
        """The declared Content-Length, or None when absent."""
        value = self.headers.get("content-length")
        return None if value is None else parse_content_length(value)

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


def _top_via(value: str) -> Via:
    if "," in value:
        values = split_values(value)
        if not values:
            raise SipParseError("Empty Via header")
        value = values[0]
    return parse_via(value)


class Request(Message):
    """A SIP request. ``uri`` is the Request-URI text; :attr:`ruri` is it parsed (cached).

    Built directly, ``headers`` is used as given when it is a :class:`Headers` (not copied), and
    otherwise made from ``Header`` objects or ``(name, value)`` pairs.
    """

    __slots__ = ("_method", "_ruri", "_uri")

    def __init__(
        self,
        method: str,
        uri: str | Uri,
        headers: Headers | Iterable[Header | tuple[str, str]] = (),
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        if not is_token(method):
            raise ValueError(f"bad method {method!r}")
        self._init_common(
            headers if isinstance(headers, Headers) else Headers(headers), body, version
        )
        self._method = method
        self._uri = _check_uri_text(str(uri))
        self._ruri: Uri | None = None if isinstance(uri, str) else uri

    @property
    def method(self) -> str:
        return self._method

    @method.setter
    def method(self, value: str) -> None:
        if not is_token(value):
            raise ValueError(f"bad method {value!r}")
        self._method = value
        self._start = self._raw = None

    @property
    def uri(self) -> str:
        return self._uri

    @uri.setter
    def uri(self, value: str) -> None:
        self._uri = _check_uri_text(value)
        self._ruri = None
        self._start = self._raw = None

    @property
    def ruri(self) -> Uri:
        """The parsed Request-URI; raises SipParseError (or UnsupportedUriScheme, 416)."""
        if self._ruri is None:
            self._ruri = parse_uri(self._uri)
        return self._ruri

    @ruri.setter
    def ruri(self, value: Uri) -> None:
        self.uri = str(value)
        self._ruri = value

    def _start_line(self) -> bytes:
        return _encode(f"{self._method} {self._uri} {self._version}")

    def copy(self) -> Request:
        """An independent copy, e.g. the one a proxy forwards (RFC 3261 16.6 step 1)."""
        new = Request.__new__(Request)
        new.headers = self.headers.copy()
        new._body, new._version, new._start = self._body, self._version, self._start
        new._raw, new._raw_version = self._raw, self._raw_version
        new._method, new._uri, new._ruri = self._method, self._uri, self._ruri
        return new

    def __repr__(self) -> str:
        return f"<Request {self._method} {self._uri}>"


class Response(Message):
    """A SIP response."""

    __slots__ = ("_reason", "_status")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Headers | Iterable[Header | tuple[str, str]] = (),
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        if not 100 <= status <= 699:
            raise ValueError(f"bad status code {status}")
        self._init_common(
            headers if isinstance(headers, Headers) else Headers(headers), body, version
        )
        self._status = status
        self._reason = _check_reason(REASON_PHRASES.get(status, "") if reason is None else reason)

    @property
    def status(self) -> int:
        return self._status

    @status.setter
    def status(self, value: int) -> None:
        if not 100 <= value <= 699:
            raise ValueError(f"bad status code {value}")
        self._status = value
        self._start = self._raw = None

    @property
    def reason(self) -> str:
        return self._reason

    @reason.setter
    def reason(self, value: str) -> None:
        self._reason = _check_reason(value)
        self._start = self._raw = None

    def _start_line(self) -> bytes:
        return _encode(f"{self._version} {self._status} {self._reason}")

    def copy(self) -> Response:
        new = Response.__new__(Response)
        new.headers = self.headers.copy()
        new._body, new._version, new._start = self._body, self._version, self._start
        new._raw, new._raw_version = self._raw, self._raw_version
        new._status, new._reason = self._status, self._reason
        return new

    def __repr__(self) -> str:
        return f"<Response {self._status} {self._reason}>"


def _check_uri_text(text: str) -> str:
    if not text or any(ch in text for ch in " \t\r\n"):
        raise ValueError(f"bad Request-URI {text!r}")
    return text


def _check_reason(text: str) -> str:
    if "\r" in text or "\n" in text:
        raise ValueError(f"reason phrase may not contain CR or LF: {text!r}")
    return text


# ------------------------------------------------------------------------------------------------
# Parsing

#: Set False by the fuzz tests so a bug surfaces as itself instead of as a SipParseError.
_SAFETY_NET = True


def parse_message(
    data: bytes,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    max_headers: int = DEFAULT_MAX_HEADERS,
    max_line: int = DEFAULT_MAX_LINE,
) -> Request | Response:
    """Parse one complete message (a datagram, or a frame from :mod:`framing`).

    Raises :class:`SipParseError` and nothing else. For a request, the error's ``partial``
    holds whatever headers did parse, so the caller can answer it (:func:`error_response`).
    A body longer than Content-Length is truncated (RFC 3261 18.3); a shorter one is an error.

    Limits (each 513 when exceeded): ``max_size`` bytes in all, ``max_headers`` physical header
    lines (continuation lines count), ``max_line`` bytes in one header field.
    """
    try:
        return _parse(data, max_size, max_headers, max_line)
    except SipParseError:
        raise
    except Exception as exc:
        if not _SAFETY_NET:
            raise
        raise SipParseError(f"Unparseable message ({type(exc).__name__})") from exc


def _parse(data: bytes, max_size: int, max_headers: int, max_line: int) -> Request | Response:
    if type(data) is not bytes:  # a bytearray or memoryview from a transport
        data = bytes(data)
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")  # RFC 3261 7.5: CRLFs before the start line are ignored
    if not data:
        raise SipParseError("Empty message")
    err: SipParseError | None = None
    if len(data) > max_size:
        err = MessageTooLarge(f"Message of {len(data)} bytes is over the limit of {max_size}")

    # Header section and body. Fast path: CRLF throughout the header section.
    sep = data.find(b"\r\n\r\n")
    head = data[:sep] if sep >= 0 else data
    lines = head.split(b"\r\n")
    crlfs = len(lines) - 1
    normalised = sep < 0 or head.count(b"\n") != crlfs or head.count(b"\r") != crlfs
    if normalised:
        head, body_start, lenient_err = _split_lenient(data)
        err = err or lenient_err
        lines = head.split(b"\r\n")
    else:
        body_start = sep + 4
    start = lines[0]
    hlines = lines[1:]
    if len(hlines) > max_headers:
        err = err or MessageTooLarge(f"More than {max_headers} header lines")
        del hlines[max_headers:]
    if len(head) > max_line and any(len(line) > max_line for line in hlines):
        err = err or MessageTooLarge(f"A header field is longer than {max_line} bytes")
        hlines = [line for line in hlines if len(line) <= max_line]

    # Header names -> canonical keys. Fast path: one name per line (so no folding), each one
    # spelled as seen before; then it is one dict look-up per line, all in C.
    names = _NAME_RE.findall(head)
    maybe_keys = list(map(_NAME_CACHE.get, names)) if len(names) == len(hlines) else [None]
    if None in maybe_keys:
        keys, hlines, name_err = _slow_names(hlines)
        err = err or name_err
    else:
        keys = cast("list[str]", maybe_keys)

    # Start line.
    if start[:4].upper() == b"SIP/":
        return _finish_response(start, keys, hlines, data, body_start, normalised, err)
    return _finish_request(start, keys, hlines, data, body_start, normalised, err)


def _split_lenient(data: bytes) -> tuple[bytes, int | None, SipParseError | None]:
    """Header section of a message whose lines end in bare LF (or that has no blank line).

    Returns the header section normalised to CRLF, where the body starts (None when there is
    no blank line), and the error found, if any.
    """
    err: SipParseError | None = None
    m = _BLANK_LINE_RE.search(data)
    if m is None:
        head, body_start = data.rstrip(b"\r\n"), None
        err = SipParseError("No blank line after the header section")
    else:
        head, body_start = data[: m.start()], m.end()
        if head.endswith(b"\r"):
            head = head[:-1]
    head = head.replace(b"\r\n", b"\n")
    if b"\r" in head:
        err = err or SipParseError("Bare CR in the header section")
        head = head.replace(b"\r", b"\n")
    return head.replace(b"\n", b"\r\n"), body_start, err


def _unfold(lines: list[bytes]) -> tuple[list[bytes], SipParseError | None]:
    """Join continuation lines (leading SP/HTAB) to the line they continue (RFC 3261 7.3.1).

    The raw bytes keep the CRLF and the whitespace, so the line serialises as received.
    """
    groups: list[list[bytes]] = []
    err = None
    for line in lines:
        if line[:1] not in (b" ", b"\t"):
            groups.append([line])
        elif groups:
            groups[-1].append(line)
        else:
            err = SipParseError("Whitespace at the start of the first header line")
    return [b"\r\n".join(group) for group in groups], err


def _slow_names(lines: list[bytes]) -> tuple[list[str], list[bytes], SipParseError | None]:
    """Unfold, then work out each line's key; drop (and report) lines that are not headers."""
    err = None
    if any(line[:1] in (b" ", b"\t") for line in lines):
        lines, err = _unfold(lines)
    out_keys: list[str] = []
    out_lines: list[bytes] = []
    for line in lines:
        colon = line.find(b":")
        key = _NAME_CACHE.get(line[: colon + 1])
        if key is None:
            name = line[:colon].rstrip(b" \t") if colon > 0 else b""
            if not _TOKEN_BYTES_RE.match(name):
                what = "without a colon" if colon < 0 else "with a bad name"
                err = err or SipParseError(f"Header line {what}: {snippet(line)}")
                continue
            key = sys.intern(canonical_key(name.decode("ascii")))
            if len(_NAME_CACHE) < _NAME_CACHE_MAX:
                _NAME_CACHE[line[: colon + 1]] = key
        out_keys.append(key)
        out_lines.append(line)
    return out_keys, out_lines, err


def _finish_request(
    start: bytes,
    keys: list[str],
    hlines: list[bytes],
    data: bytes,
    body_start: int | None,
    normalised: bool,
    err: SipParseError | None,
) -> Request:
    parts = start.split(b" ")
    if (
        len(parts) == 3
        and parts[2] == b"SIP/2.0"
        and parts[0] in _METHODS
        and (parts[1][:4].lower() in _URI_PREFIXES or parts[1][:5].lower() == b"sips:")
        and parts[1].isascii()
    ):
        method, uri, version = _METHODS[parts[0]], parts[1].decode("ascii"), SIP_VERSION
    else:
        method, uri, version, line_err = _odd_request_line(start)
        err = err or line_err

    headers = Headers._from_lists(keys, hlines)
    body, raw = b"", None
    if err is None:
        try:
            body, raw = _check_headers(headers, data, body_start, normalised, method)
        except SipParseError as exc:
            err = exc
    if err is not None:
        # A recognisable method makes it a request worth answering (with what parsed).
        err.is_request = True if method != "?" else None
        if err.is_request:
            partial = Request.__new__(Request)
            partial._init_common(headers, b"", version)
            partial._method, partial._uri, partial._ruri = method, uri, None
            err.partial = partial
        raise err

    request = Request.__new__(Request)
    request.headers = headers
    request._body = body
    request._version = version
    request._start = start
    request._raw = raw
    request._raw_version = headers.version
    request._method = method
    request._uri = uri
    request._ruri = None
    return request


def _odd_request_line(start: bytes) -> tuple[str, str, str, SipParseError | None]:
    """Method, URI and version of a Request-Line off the fast path, and what is wrong with it.

    RFC 3261 7.1: ``Method SP Request-URI SP SIP-Version``, single spaces; the version is
    case-insensitive. 505 for another version, 416 for a scheme other than sip, sips, tel.
    """
    parts = start.split(b" ")
    method = _METHODS.get(parts[0])
    if method is None:
        method = parts[0].decode("ascii") if _TOKEN_BYTES_RE.match(parts[0]) else "?"
    uri = parts[1].decode("ascii", "replace") if len(parts) > 1 and parts[1] else "?"
    version = parts[-1].decode("ascii", "replace")
    err: SipParseError | None = None
    if len(parts) != 3 or method == "?" or uri == "?" or "\ufffd" in uri:
        shape = "Method SP Request-URI SP SIP-Version, single spaces"
        err = SipParseError(f"Malformed Request-Line (expected {shape}): {snippet(start)}")
    elif parts[2].upper() != b"SIP/2.0":
        if _VERSION_RE.match(parts[2]):
            err = VersionNotSupported(f"SIP version {snippet(version)} is not supported")
        else:
            err = SipParseError(f"Malformed SIP version {snippet(version)}")
    else:
        scheme, colon, _ = uri.partition(":")
        if scheme.lower() not in _SUPPORTED_SCHEMES:
            if colon and is_token(scheme) and scheme[:1].isalpha():
                err = UnsupportedUriScheme(scheme)
            else:
                err = SipParseError(f"Malformed Request-URI {snippet(uri)}")
    return method, uri, version, err


def _finish_response(
    start: bytes,
    keys: list[str],
    hlines: list[bytes],
    data: bytes,
    body_start: int | None,
    normalised: bool,
    err: SipParseError | None,
) -> Response:
    parts = start.split(b" ", 2)
    code = parts[1] if len(parts) > 1 else b""
    if err is None:
        if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
            err = SipParseError(f"Malformed Status-Line {snippet(start)}")
        elif parts[0].upper() != b"SIP/2.0":
            err = VersionNotSupported(f"SIP version {snippet(parts[0])} is not supported")
    headers = Headers._from_lists(keys, hlines)
    body, raw = b"", None
    if err is None:
        try:
            body, raw = _check_headers(headers, data, body_start, normalised, None)
        except SipParseError as exc:
            err = exc
    if err is not None:
        err.is_request = False
        raise err

    response = Response.__new__(Response)
    response.headers = headers
    response._body = body
    response._version = parts[0].decode("ascii")
    response._start = start
    response._raw = raw
    response._raw_version = headers.version
    response._status = int(code)
    response._reason = parts[2].decode("utf-8", "surrogateescape") if len(parts) > 2 else ""
    return response


def _fast_cseq(value: str) -> CSeq:
    """CSeq the quick way for the usual ``1 INVITE``; anything else goes to the full parser."""
    number, space, method = value.partition(" ")
    # isascii first: str.isdigit() and isalpha() also accept non-ASCII digits and letters.
    if (
        space
        and len(number) < 10
        and number.isascii()
        and number.isdigit()
        and method.isascii()
        and method.isalpha()
    ):
        return CSeq(int(number), _METHOD_NAMES.get(method, method))
    return parse_cseq(value)


def _check_headers(
    headers: Headers, data: bytes, body_start: int | None, normalised: bool, method: str | None
) -> tuple[bytes, bytes | None]:
    """Mandatory headers, single-valued ones, CSeq, top Via and Content-Length.

    Returns the body (truncated to Content-Length) and the bytes ``to_bytes`` may return as
    they are (None when they must be rebuilt: normalised line ends, no Content-Length).
    """
    keys, raws = headers._keys, headers._raws
    try:
        via_at, call_id_at, cseq_at = keys.index("via"), keys.index("call-id"), keys.index("cseq")
        keys.index("from")
        keys.index("to")
    except ValueError:
        missing = next(key for key in _MANDATORY if key not in keys)
        raise SipParseError(f"Missing {conventional_name(missing)} header") from None
    count = keys.count
    if count("from") + count("to") + count("call-id") + count("cseq") != 4:
        repeated = next(key for key in _SINGLE if count(key) > 1)
        raise SipParseError(f"More than one {conventional_name(repeated)} header")
    call_id = _value_of(raws[call_id_at])
    if not call_id:
        raise SipParseError("Empty Call-ID header")
    cseq = _fast_cseq(_value_of(raws[cseq_at]))
    if method is not None and cseq.method != method:
        raise SipParseError(f"CSeq method {snippet(cseq.method, 20)} does not match {method}")
    top_via = _top_via(_value_of(raws[via_at]))
    cache = headers._cache
    cache["call_id"] = call_id
    cache["cseq"] = cseq
    cache["top_via"] = top_via

    if body_start is None:  # pragma: no cover - reported earlier as a missing blank line
        raise SipParseError("No blank line after the header section")
    body = data[body_start:]
    raw: bytes | None = None if normalised else data
    if "content-length" not in keys:
        return body, None
    line = raws[keys.index("content-length")]
    digits = line[line.find(b":") + 1 :].strip(b" \t")
    if digits.isdigit() and len(digits) < 10:
        length = int(digits)
    else:
        length = parse_content_length(_value_of(line))
    if count("content-length") > 1:
        lengths = {parse_content_length(v) for v in headers.get_all("content-length")}
        if len(lengths) > 1:
            raise SipParseError("Conflicting Content-Length headers")
    if length > len(body):
        raise SipParseError(
            f"Content-Length {length} is more than the {len(body)} body bytes received"
        )
    if length < len(body):  # RFC 3261 18.3: extra bytes after the body are discarded
        body = body[:length]
        raw = None if raw is None else data[: body_start + length]
    return body, raw


# ------------------------------------------------------------------------------------------------
# Building responses


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """A response to ``request`` built as RFC 3261 8.2.6.2 says, with Content-Length: 0.

    Via (every line, in order), From, To, Call-ID and CSeq are copied byte for byte; ``to_tag``
    is added to To unless it already has a tag. Record-Route is copied into 101-299 responses
    (RFC 3261 12.1.1) and Timestamp into 100 Trying (RFC 3261 8.2.6.1).
    """
    src = request.headers
    copy = {"via", "from", "to", "call-id", "cseq"}
    if 100 < status < 300:
        copy.add("record-route")
    if status == 100:
        copy.add("timestamp")
    headers = Headers._from_lists([], [])
    tag_done = to_tag is None
    for key, raw in zip(src._keys, src._raws, strict=True):
        if key not in copy:
            continue
        line = raw
        if key == "to" and not tag_done:
            tag_done = True
            if not _has_tag(raw):
                line = raw.rstrip(b" \t") + _encode(f";tag={to_tag}")
        headers._keys.append(key)
        headers._raws.append(line)
    for name, value in extra_headers:
        headers.append(name, value)
    if "content-length" not in headers._keys:
        headers.append("Content-Length", "0")
    return Response(status, reason, headers)


def _has_tag(raw: bytes) -> bool:
    try:
        return parse_name_addr(_value_of(raw), "To").tag is not None
    except SipParseError:
        return b"tag=" in raw.lower()


def error_response(exc: SipParseError, *, warning_agent: str | None = None) -> Response | None:
    """The answer to a request that failed to parse, or None when there must be none.

    None for responses, for ACK (never answered) and when the request lacks what a response
    needs (Via, From, To, Call-ID, CSeq). The reason phrase says what was wrong; with
    ``warning_agent`` (our host name) a ``Warning: 399`` header repeats it (RFC 3261 20.43).
    """
    request = exc.partial
    if not exc.is_request or request is None or request.method == "ACK":
        return None
    if any(key not in request.headers._keys for key in _MANDATORY):
        return None
    extra: list[tuple[str, str]] = []
    if warning_agent:
        extra.append(("Warning", f'399 {warning_agent} "{exc.reason}"'))
    return make_response(request, exc.status, exc.reason, extra_headers=extra)
