"""SIP requests and responses: lazy parsing and lossless serialisation (RFC 3261 7, 18.3, 20).

Parsing does the least a proxy needs on every message: it splits the start line and the header
lines, maps each header name to its canonical key, checks the mandatory headers, and parses only
Call-ID, CSeq, Content-Length and the top Via. Every other value is decoded when someone asks
for it. The usual message (see :func:`_parse_usual`) takes a quick path; anything else, and
every error, takes the general one, :func:`_parse`, which gives the same result
(docs/sip-messages.md says what each step costs).

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
from teams_sbc.sip.headers import _KEY_CACHE as _KEYS
from teams_sbc.sip.headers import (
    LIST_HEADERS,
    CSeq,
    NameAddr,
    Via,
    _usual_spellings,
    _usual_top_via,
    canonical_key,
    conventional_name,
    first_value_span,
    is_token,
    parse_content_length,
    parse_cseq,
    parse_max_forwards,
    parse_name_addr,
    parse_top_via,
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
_SUPPORTED_SCHEMES: Final = frozenset({"sip", "sips", "tel"})
_URI_PREFIXES: Final = frozenset({b"sip:", b"tel:"})

_FOLD_RE: Final = re.compile(rb"[ \t]*\r\n[ \t]+")
_FOLD_STR_RE: Final = re.compile(r"[ \t]*\r\n[ \t]+")
_BLANK_LINE_RE: Final = re.compile(rb"\n\r?\n")
# "\nName:" at the start of each header line whose name is a token followed by the colon
# (RFC 3261 25.1). Never matches a continuation line or one without a colon.
_NAME_RE: Final = re.compile(rb"\n[A-Za-z0-9\-.!%*_+`'~]++:")
_TOKEN_BYTES_RE: Final = re.compile(rb"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_VERSION_RE: Final = re.compile(rb"SIP/[0-9]+\.[0-9]+\Z", re.IGNORECASE)

# b"\nVia:" -> "via", as _NAME_RE finds it. Seeded with the usual spellings, which then stay
# fast even once junk names from the network have filled it.
_NAME_CACHE: dict[bytes, str] = {
    b"\n" + name.encode() + b":": key for name, key in _usual_spellings().items()
}
_NAME_CACHE_MAX: Final = 2048
_CACHED_NAME_MAX: Final = 64  # longer names are not cached: the caches stay small
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


# On the hot paths, ``bytes.find(x) >= 0`` stands for ``x in bytes``: the ``in`` operator goes
# through the buffer protocol and takes twice as long (CPython 3.11).


def _value_of(raw: bytes) -> str:
    """The value of a raw header line: after the colon, unfolded, trimmed (RFC 3261 7.3.1)."""
    value = raw[raw.find(b":") + 1 :]
    if value.find(b"\r\n") >= 0:
        value = _FOLD_RE.sub(b" ", value)
    return value.strip(b" \t").decode("utf-8", "surrogateescape")


def _digits_of(raw: bytes) -> int:
    """The number in a header line such as ``Content-Length: 129``, or -1 if it is not plain
    digits on one line (then the caller's general parser decides, or reports the error)."""
    value = raw[raw.find(b":") + 1 :].strip(b" \t")
    # bytes.isdigit() is ASCII-only, unlike str.isdigit(); the length bounds int()'s work.
    if value.isdigit() and len(value) < 10:
        return int(value)
    return -1


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# Name as given -> (key, b"Conventional-Name: "), for the names already checked once.
_LINE_PREFIXES: dict[str, tuple[str, bytes]] = {}
_LINE_PREFIXES_MAX: Final = 1024


def _make_line(name: str, value: str) -> tuple[str, bytes]:
    """The key and raw bytes of a new line ``Name: value`` (see :meth:`Header.make`)."""
    prefix = _LINE_PREFIXES.get(name)
    if prefix is None:
        if not is_token(name.strip()):
            raise ValueError(f"bad header name {name!r}")
        prefix = (canonical_key(name), _encode(conventional_name(name) + ": "))
        if len(_LINE_PREFIXES) < _LINE_PREFIXES_MAX:
            _LINE_PREFIXES[name] = prefix
    if "\r" in value or "\n" in value:
        raise ValueError(f"header value may not contain CR or LF: {value!r}")
    return prefix[0], prefix[1] + value.strip().encode("utf-8", "surrogateescape")


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
        return cls(*_make_line(name, value))

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


# Every Headers method starts with ``_KEYS.get(name) or canonical_key(name)``: canonical_key,
# without the function call for a spelling seen before.
class Headers:
    """The ordered header fields of a message.

    Look-ups take any spelling of a name (``"Via"``, ``"v"``, ``"via"``). Changes replace whole
    lines; untouched lines keep their bytes and their place. Every change gives a new
    ``version`` and drops the values the message accessors parsed from the changed header.
    """

    __slots__ = (
        "_call_id",
        "_cseq",
        "_from",
        "_keys",
        "_raws",
        "_to",
        "_top_via",
        "_vias",
        "version",
    )

    # What the message accessors parsed (None until then), kept here so that any change to
    # the header it comes from can drop it (see _changed).
    _call_id: str | None
    _cseq: CSeq | None
    _top_via: Via | None
    _vias: list[Via] | None
    _from: NameAddr | None
    _to: NameAddr | None

    def __init__(
        self,
        items: Iterable[Header | tuple[str, str]] = (),
        *,
        _lines: tuple[list[str], list[bytes]] | None = None,
    ) -> None:
        # ``_lines`` (the parser's and copy's way in): keys and raw lines, taken as they are.
        # A keyword rather than a construction bypassing __init__, which mypyc cannot compile.
        if _lines is None:
            keys: list[str] = []
            raws: list[bytes] = []
            for item in items:
                key, raw = (item.key, item.raw) if isinstance(item, Header) else _make_line(*item)
                keys.append(key)
                raws.append(raw)
            self._keys, self._raws = keys, raws
        else:
            self._keys, self._raws = _lines
        self._call_id = self._cseq = self._top_via = self._vias = self._from = self._to = None
        self.version = next(_VERSIONS)

    @classmethod
    def _from_lists(cls, keys: list[str], raws: list[bytes]) -> Headers:
        return cls(_lines=(keys, raws))

    def copy(self) -> Headers:
        """An independent copy (the lines are shared bytes; lists are new).

        It keeps the version and the parsed values: same version, same lines, so what was
        serialised or parsed for the original is valid for the copy until either changes.
        """
        new = Headers(_lines=(self._keys.copy(), self._raws.copy()))
        new._call_id, new._cseq, new._top_via = self._call_id, self._cseq, self._top_via
        new._vias = None if self._vias is None else self._vias.copy()
        new._from, new._to = self._from, self._to
        new.version = self.version
        return new

    def _changed(self, key: str) -> None:
        """A line called ``key`` changed: new version; drop what was parsed from ``key``."""
        self.version = next(_VERSIONS)
        if key == "via":  # the proxy's own edits: Via on every message, Max-Forwards, Route...
            self._top_via = self._vias = None
        elif key == "call-id":
            self._call_id = None
        elif key == "cseq":
            self._cseq = None
        elif key == "from":
            self._from = None
        elif key == "to":
            self._to = None

    # --- reading ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[Header]:
        return map(Header, self._keys, self._raws)

    def __getitem__(self, index: int) -> Header:
        return Header(self._keys[index], self._raws[index])

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (_KEYS.get(name) or canonical_key(name)) in self._keys

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"

    def keys(self) -> list[str]:
        """The canonical key of every line, in order (duplicates included)."""
        return self._keys.copy()

    def index(self, name: str) -> int:
        """Position of the first header called ``name``, or -1."""
        key = _KEYS.get(name) or canonical_key(name)
        return self._keys.index(key) if key in self._keys else -1

    def count(self, name: str) -> int:
        return self._keys.count(_KEYS.get(name) or canonical_key(name))

    def get(self, name: str) -> str | None:
        """The value of the first header called ``name``, or None."""
        key = _KEYS.get(name) or canonical_key(name)
        keys = self._keys
        if key not in keys:
            return None
        return _value_of(self._raws[keys.index(key)])

    def get_all(self, name: str) -> list[str]:
        """The value of each header line called ``name``, in order."""
        key = _KEYS.get(name) or canonical_key(name)
        keys = self._keys
        if key not in keys:
            return []
        if keys.count(key) == 1:
            return [_value_of(self._raws[keys.index(key)])]
        return [_value_of(r) for k, r in zip(keys, self._raws, strict=True) if k == key]

    def mentions(self, name: str, text: bytes) -> bool:
        """Whether a line called ``name`` contains ``text`` anywhere (its name included): a
        quick test on the raw bytes before parsing values, e.g. for our branch in any Via."""
        key = _KEYS.get(name) or canonical_key(name)
        keys = self._keys
        if keys.count(key) == 1:  # the usual single line: no loop in Python
            return self._raws[keys.index(key)].find(text) >= 0
        return any(k == key and r.find(text) >= 0 for k, r in zip(keys, self._raws, strict=True))

    def header_lines(self, name: str) -> list[Header]:
        """Every header line called ``name`` (raw bytes included), in order."""
        key = _KEYS.get(name) or canonical_key(name)
        return [Header(k, r) for k, r in zip(self._keys, self._raws, strict=True) if k == key]

    def values(self, name: str) -> list[str]:
        """All values of ``name``, comma-split across lines for list headers (Via, Route...).

        Headers outside :data:`LIST_HEADERS` (WWW-Authenticate, Authorization, Date...) are
        never split: one value per line.
        """
        key = _KEYS.get(name) or canonical_key(name)
        lines = self.get_all(key)
        if key not in LIST_HEADERS:
            return lines
        return [v for line in lines for v in split_values(line)]

    # --- changing --------------------------------------------------------------------------

    def insert(self, where: int | str, name: str, value: str) -> None:
        """Insert a line at index ``where``, or before the first header called ``where``
        (at the end when there is none)."""
        self._insert(where, *_make_line(name, value))

    def insert_header(self, where: int | str, header: Header) -> None:
        """Insert an existing :class:`Header` (raw bytes kept), positioned as :meth:`insert`."""
        self._insert(where, header.key, header.raw)

    def _insert(self, where: int | str, key: str, raw: bytes) -> None:
        if isinstance(where, str):
            at = _KEYS.get(where) or canonical_key(where)
            index = self._keys.index(at) if at in self._keys else len(self._keys)
        else:
            index = where
        self._keys.insert(index, key)
        self._raws.insert(index, raw)
        self._changed(key)

    def append(self, name: str, value: str) -> None:
        key, raw = _make_line(name, value)
        self._keys.append(key)
        self._raws.append(raw)
        self._changed(key)

    def append_header(self, header: Header) -> None:
        self._keys.append(header.key)
        self._raws.append(header.raw)
        self._changed(header.key)

    def prepend(self, name: str, value: str) -> None:
        """Add a new topmost ``name`` line: above the existing ones, else at the very top.

        This is how a proxy pushes its Via (RFC 3261 16.6 step 8) or Record-Route (step 4).
        """
        key, raw = _make_line(name, value)
        keys = self._keys
        index = keys.index(key) if key in keys else 0
        keys.insert(index, key)
        self._raws.insert(index, raw)
        self._changed(key)

    def remove(self, name: str) -> int:
        """Remove every line called ``name``; returns how many went."""
        key = _KEYS.get(name) or canonical_key(name)
        keys = self._keys
        count = keys.count(key)
        if count == 1:
            index = keys.index(key)
            del keys[index]
            del self._raws[index]
        elif count:
            keep = [i for i, k in enumerate(keys) if k != key]
            self._keys = [keys[i] for i in keep]
            self._raws = [self._raws[i] for i in keep]
        if count:
            self._changed(key)
        return count

    def replace(self, name: str, *values: str) -> None:
        """Replace every line called ``name`` by one line per value, where the first one was
        (at the end when there was none). No values: same as :meth:`remove`."""
        key = _KEYS.get(name) or canonical_key(name)
        lines = [_make_line(name, v) for v in values]
        keys = self._keys
        if len(lines) == 1 and keys.count(key) == 1:  # one line for one (Max-Forwards)
            self._raws[keys.index(key)] = lines[0][1]
            self._changed(key)
            return
        index = keys.index(key) if key in keys else len(keys)
        self.remove(key)
        for offset, (new_key, raw) in enumerate(lines):
            self._keys.insert(index + offset, new_key)
            self._raws.insert(index + offset, raw)
        self._changed(key)

    def set(self, name: str, value: str) -> None:
        """Make ``value`` the single line called ``name``."""
        key, raw = _make_line(name, value)
        keys = self._keys
        if keys.count(key) == 1:  # one line for one, in place (Max-Forwards on every request)
            self._raws[keys.index(key)] = raw
            self._changed(key)
        else:
            self.replace(name, value)

    def remove_first_value(self, name: str) -> str | None:
        """Remove the topmost value of a list header and return it (None if there is none).

        When several values share the line (``Via: a, b``), the line is re-emitted with the
        remaining values exactly as written, under the name as written (RFC 3261 16.7 step 3:
        a proxy pops its own Via off a response; sipp's UAS joins Vias this way).
        """
        key = _KEYS.get(name) or canonical_key(name)
        keys, raws = self._keys, self._raws
        while key in keys:
            index = keys.index(key)
            raw = raws[index]
            colon = raw.find(b":")
            popped = _pop_simple_value(raw, colon)
            if popped is None:
                text = raw[colon + 1 :].decode("utf-8", "surrogateescape")
                first, rest_at = first_value_span(text)
                rest = _encode(text[rest_at:]) if rest_at < len(text) else b""
            else:
                first, rest = popped
            if rest:
                raws[index] = raw[:colon] + b": " + rest
            else:
                del keys[index]
                del raws[index]
            self._changed(key)
            if first:
                return _FOLD_STR_RE.sub(" ", first) if "\n" in first else first
        return None


def _pop_simple_value(raw: bytes, colon: int) -> tuple[str, bytes] | None:
    """The first value of a one-line list header and the bytes of the rest, the quick way.

    Only for a line without quotes, ``<``, folding or an empty first value; None otherwise,
    and then :func:`first_value_span` does it.
    """
    if raw.find(b'"') >= 0 or raw.find(b"<") >= 0 or raw.find(b"\r") >= 0:
        return None
    comma = raw.find(b",", colon)
    if comma < 0:
        first = raw[colon + 1 :].strip(b" \t")
        rest = b""
    else:
        first = raw[colon + 1 : comma].strip(b" \t")
        rest = raw[comma + 1 :].lstrip(b" \t")
    if not first:
        return None
    return first.decode("utf-8", "surrogateescape"), rest


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

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def _fix_content_length(self) -> None:
        """RFC 3261 20.14 / 18.3: make Content-Length present and equal to the body length."""
        headers = self.headers
        size = len(self._body)
        keys = headers._keys
        count = keys.count("content-length")
        if count == 1:
            raw = headers._raws[keys.index("content-length")]
            if raw == b"Content-Length: %d" % size or _digits_of(raw) == size:
                return
            value = _value_of(raw)  # folded, or zero-padded past what _digits_of reads
            if value.isascii() and value.isdigit() and (value.lstrip("0") or "0") == str(size):
                return
        if count:
            headers.replace("content-length", str(size))
        else:
            headers.append("Content-Length", str(size))

    # --- accessors ---------------------------------------------------------------------------

    def _required(self, key: str) -> str:
        """The value of the first ``key`` line (a canonical key); 400 when there is none."""
        headers = self.headers
        try:
            index = headers._keys.index(key)
        except ValueError:
            raise SipParseError(f"Missing {conventional_name(key)} header") from None
        return _value_of(headers._raws[index])

    @property
    def call_id(self) -> str:
        headers = self.headers
        value = headers._call_id
        if value is None:
            value = headers._call_id = self._required("call-id")
        return value

    @property
    def cseq(self) -> CSeq:
        headers = self.headers
        value = headers._cseq
        if value is None:
            value = headers._cseq = parse_cseq(self._required("cseq"))
        return value

    @property
    def top_via(self) -> Via:
        """The first Via value (even when several share the first Via line)."""
        headers = self.headers
        value = headers._top_via
        if value is None:
            value = headers._top_via = parse_top_via(self._required("via"))
        return value

    @property
    def vias(self) -> list[Via]:
        """Every Via value, top first."""
        headers = self.headers
        value = headers._vias
        if value is None:
            value = headers._vias = [
                v for line in headers.get_all("via") for v in parse_via_list(line)
            ]
        return value

    @property
    def from_addr(self) -> NameAddr:
        headers = self.headers
        value = headers._from
        if value is None:
            value = headers._from = parse_name_addr(self._required("from"), "From")
        return value

    @property
    def to_addr(self) -> NameAddr:
        headers = self.headers
        value = headers._to
        if value is None:
            value = headers._to = parse_name_addr(self._required("to"), "To")
        return value

    @property
    def from_tag(self) -> str | None:
        return self.from_addr.tag

    @property
    def to_tag(self) -> str | None:
        return self.to_addr.tag

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards, or None when absent (a proxy then adds :data:`DEFAULT_MAX_FORWARDS`)."""
        headers = self.headers
        try:
            raw = headers._raws[headers._keys.index("max-forwards")]
        except ValueError:
            return None
        number = _digits_of(raw)
        if 0 <= number <= 255:
            return number
        return parse_max_forwards(_value_of(raw))  # raises: too large or malformed

    @property
    def content_length(self) -> int | None:
        """The declared Content-Length, or None when absent."""
        headers = self.headers
        keys = headers._keys
        if "content-length" not in keys:
            return None
        raw = headers._raws[keys.index("content-length")]
        number = _digits_of(raw)
        return number if number >= 0 else parse_content_length(_value_of(raw))

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


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
        *,
        _checked: bool = False,
    ) -> None:
        # ``_checked``: the parser and copy() pass parts they know are valid.
        if not _checked and not is_token(method):
            raise ValueError(f"bad method {method!r}")
        self._init_common(
            headers if isinstance(headers, Headers) else Headers(headers), body, version
        )
        self._method = method
        if isinstance(uri, str):
            self._uri = uri if _checked else _check_uri_text(uri)
            self._ruri: Uri | None = None
        else:
            self._uri = _check_uri_text(str(uri))
            self._ruri = uri

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
        new = Request(
            self._method, self._uri, self.headers.copy(), self._body, self._version, _checked=True
        )
        new._start, new._raw, new._raw_version = self._start, self._raw, self._raw_version
        new._ruri = self._ruri
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
        *,
        _checked: bool = False,
    ) -> None:
        # ``_checked``: the parser and copy() pass parts they know are valid.
        if not 100 <= status <= 699:
            raise ValueError(f"bad status code {status}")
        self._init_common(
            headers if isinstance(headers, Headers) else Headers(headers), body, version
        )
        self._status = status
        if reason is None:
            reason = REASON_PHRASES.get(status, "")
        self._reason = reason if _checked else _check_reason(reason)

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
        new = Response(
            self._status, self._reason, self.headers.copy(), self._body, self._version,
            _checked=True,
        )
        new._start, new._raw, new._raw_version = self._start, self._raw, self._raw_version
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
    data: bytes | bytearray | memoryview,
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
        # A bytearray or memoryview from a transport becomes bytes.
        raw = data if isinstance(data, bytes) else bytes(data)
        usual = _parse_usual(raw, max_size, max_headers, max_line)
        return _parse(raw, max_size, max_headers, max_line) if usual is None else usual
    except SipParseError:
        raise
    except Exception as exc:
        if not _SAFETY_NET:
            raise
        raise SipParseError(f"Unparseable message ({type(exc).__name__})") from exc


# A header layout: the keys of the lines in order, and for Via, Call-ID, CSeq and
# Content-Length the index of the line and where its value starts (-1, -1 when there is no
# Content-Length). Messages from one peer come in a handful of layouts, so the checks on the
# mandatory headers are done once per layout rather than once per message.
_Layout = tuple[tuple[str, ...], int, int, int, int, int, int, int, int]
_LAYOUTS: dict[bytes, _Layout] = {}
_LAYOUTS_MAX: Final = 512
_LAYOUT_SIGNATURE_MAX: Final = 2048  # bytes of names; a Teams INVITE's are about 300


def _layout_of(names: list[bytes]) -> _Layout | None:
    """The layout of a header section whose lines start with ``names`` (``b"\\nVia:"``...).

    None unless every name is known and Via, From, To, Call-ID and CSeq are there (only Via
    repeated) with at most one Content-Length: the other cases are for :func:`_parse`.
    """
    maybe_keys = list(map(_NAME_CACHE.get, names))
    if None in maybe_keys:
        return None
    keys = cast("list[str]", maybe_keys)
    count = keys.count
    lengths = count("content-length")
    if (
        count("cseq") != 1
        or count("call-id") != 1
        or count("from") != 1
        or count("to") != 1
        or "via" not in keys
        or lengths > 1
    ):
        return None
    # A line is the name without "\n", then the colon: its value starts at len(name) - 1.
    via, call_id, cseq = keys.index("via"), keys.index("call-id"), keys.index("cseq")
    length = keys.index("content-length") if lengths else -1
    return (
        tuple(keys),
        via,
        len(names[via]) - 1,
        call_id,
        len(names[call_id]) - 1,
        cseq,
        len(names[cseq]) - 1,
        length,
        len(names[length]) - 1 if lengths else -1,
    )


def _parse_usual(
    data: bytes, max_size: int, max_headers: int, max_line: int
) -> Request | Response | None:
    """The usual message, the quick way; None for anything else, which :func:`_parse` does.

    Usual means: within the limits, CRLF line ends, no folding, each header name a token
    spelled as seen before, Via, From, To, Call-ID and CSeq present (only Via repeated), the
    usual Request-Line or Status-Line, CSeq and top Via, and at most one Content-Length, not
    more than the body. Whatever it accepts, it parses exactly as :func:`_parse` does (the
    fuzz tests compare the two); everything it declines, including every error, goes there.
    """
    sep = data.find(b"\r\n\r\n")
    if sep < 0 or len(data) > max_size:
        return None
    head = data[:sep]
    lines = head.split(b"\r\n")
    crlfs = len(lines) - 1
    if (
        crlfs > max_headers
        or len(head) > max_line  # then some line may be too long: let _parse look
        or head.count(b"\n") != crlfs
        or head.count(b"\r") != crlfs
    ):
        return None
    # One "\nName:" per header line (so no continuation lines), in a known layout.
    names = _NAME_RE.findall(head)
    if len(names) != crlfs:
        return None
    signature = b"".join(names)
    layout = _LAYOUTS.get(signature)
    if layout is None:
        layout = _layout_of(names)
        if layout is None:
            return None
        if len(signature) <= _LAYOUT_SIGNATURE_MAX:
            if len(_LAYOUTS) >= _LAYOUTS_MAX:
                _LAYOUTS.clear()
            _LAYOUTS[signature] = layout
    keys, via_at, via_off, call_id_at, call_id_off, cseq_at, cseq_off, cl_at, cl_off = layout
    start = lines[0]
    del lines[0]

    # Start line (RFC 3261 7.1, 7.2).
    method: str | None = None
    if start[:8] == b"SIP/2.0 ":
        code = start[8:11]
        if not (code.isdigit() and b"100" <= code <= b"699" and start[11:12] in (b" ", b"")):
            return None
    else:
        parts = start.split(b" ")
        method = _METHODS.get(parts[0])
        if (
            method is None
            or len(parts) != 3
            or parts[2] != b"SIP/2.0"
            or not (parts[1][:4].lower() in _URI_PREFIXES or parts[1][:5].lower() == b"sips:")
            or not parts[1].isascii()
        ):
            return None
        uri = parts[1].decode("ascii")

    # Call-ID, CSeq and the top Via (RFC 3261 8.1.1, 20.8, 20.16, 20.42).
    call_id = lines[call_id_at][call_id_off:].strip(b" \t").decode("utf-8", "surrogateescape")
    number, _, cseq_method = lines[cseq_at][cseq_off:].strip(b" \t").partition(b" ")
    cseq_method_name = _METHODS.get(cseq_method)
    if (
        not call_id
        or cseq_method_name is None
        or (method is not None and cseq_method_name != method)
        or not number.isdigit()  # bytes: ASCII digits only
        or len(number) > 9  # under 2**31 (RFC 3261 8.1.1.5)
    ):
        return None
    top_via = _usual_top_via(
        lines[via_at][via_off:].strip(b" \t").decode("utf-8", "surrogateescape")
    )
    if top_via is None:
        return None

    # Body and Content-Length (RFC 3261 18.3, 20.14).
    body_start = sep + 4
    body = data[body_start:]
    whole: bytes | None = data
    if cl_at < 0:
        whole = None  # to_bytes must add it
    else:
        digits = lines[cl_at][cl_off:].strip(b" \t")
        if not digits.isdigit() or len(digits) > 9:
            return None
        length = int(digits)
        if length != len(body):
            if length > len(body):
                return None
            body = body[:length]  # extra bytes after the body are discarded
            whole = data[: body_start + length]

    headers = Headers(_lines=(list(keys), lines))
    headers._call_id = call_id
    headers._cseq = CSeq(int(number), cseq_method_name)
    headers._top_via = top_via
    message: Request | Response
    if method is None:
        reason = start[12:].decode("utf-8", "surrogateescape")
        message = Response(int(code), reason, headers, body, SIP_VERSION, _checked=True)
    else:
        message = Request(method, uri, headers, body, SIP_VERSION, _checked=True)
    message._start = start
    message._raw = whole
    message._raw_version = headers.version
    return message


def _parse(data: bytes, max_size: int, max_headers: int, max_line: int) -> Request | Response:
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
        name = line[:colon] if colon > 0 else b""
        key = _NAME_CACHE.get(b"\n" + name + b":")
        if key is None:
            name = name.rstrip(b" \t")
            if not _TOKEN_BYTES_RE.match(name):
                what = "without a colon" if colon < 0 else "with a bad name"
                err = err or SipParseError(f"Header line {what}: {snippet(line)}")
                continue
            key = sys.intern(canonical_key(name.decode("ascii")))
            if len(_NAME_CACHE) < _NAME_CACHE_MAX and colon == len(name) <= _CACHED_NAME_MAX:
                _NAME_CACHE[b"\n" + name + b":"] = key
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
            err.partial = Request(method, uri, headers, b"", version, _checked=True)
        raise err

    request = Request(method, uri, headers, body, version, _checked=True)
    request._start = start
    request._raw = raw
    request._raw_version = headers.version
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

    reason = parts[2].decode("utf-8", "surrogateescape") if len(parts) > 2 else ""
    version = parts[0].decode("ascii")
    response = Response(int(code), reason, headers, body, version, _checked=True)
    response._start = start
    response._raw = raw
    response._raw_version = headers.version
    return response


def _cseq_of(raw: bytes) -> CSeq:
    """The CSeq of a raw line, the quick way for the usual ``CSeq: 1 INVITE``; anything else
    (odd spacing, an unknown method, folding) goes to the full parser."""
    number, _, method = raw[raw.find(b":") + 1 :].strip(b" \t").partition(b" ")
    known = _METHODS.get(method)
    # bytes.isdigit() is ASCII-only; under 10 digits is under 2**31 (RFC 3261 8.1.1.5).
    if known is not None and number.isdigit() and len(number) < 10:
        return CSeq(int(number), known)
    return parse_cseq(_value_of(raw))


def _mandatory_error(keys: list[str]) -> SipParseError:
    """What is wrong with the mandatory headers (RFC 3261 8.1.1, 20): one missing, or one of
    From, To, Call-ID and CSeq repeated."""
    missing = [key for key in _MANDATORY if key not in keys]
    if missing:
        return SipParseError(f"Missing {conventional_name(missing[0])} header")
    repeated = next(key for key in _SINGLE if keys.count(key) > 1)
    return SipParseError(f"More than one {conventional_name(repeated)} header")


def _check_headers(
    headers: Headers, data: bytes, body_start: int | None, normalised: bool, method: str | None
) -> tuple[bytes, bytes | None]:
    """Mandatory headers, single-valued ones, Call-ID, CSeq, top Via and Content-Length.

    Returns the body (truncated to Content-Length) and the bytes ``to_bytes`` may return as
    they are (None when they must be rebuilt: normalised line ends, no Content-Length).
    """
    keys, raws = headers._keys, headers._raws
    count = keys.count
    if (
        count("cseq") != 1
        or count("call-id") != 1
        or count("from") != 1
        or count("to") != 1
        or "via" not in keys
    ):
        raise _mandatory_error(keys)
    call_id = _value_of(raws[keys.index("call-id")])
    if not call_id:
        raise SipParseError("Empty Call-ID header")
    cseq = _cseq_of(raws[keys.index("cseq")])
    if method is not None and cseq.method != method:
        raise SipParseError(f"CSeq method {snippet(cseq.method, 20)} does not match {method}")
    top_via = parse_top_via(_value_of(raws[keys.index("via")]))
    headers._call_id, headers._cseq, headers._top_via = call_id, cseq, top_via

    if body_start is None:  # pragma: no cover - reported earlier as a missing blank line
        raise SipParseError("No blank line after the header section")
    body = data[body_start:]
    lengths = count("content-length")
    if not lengths:
        return body, None
    line = raws[keys.index("content-length")]
    length = _digits_of(line)
    if length < 0:
        length = parse_content_length(_value_of(line))
    if lengths > 1 and len(set(map(parse_content_length, headers.get_all("l")))) > 1:
        raise SipParseError("Conflicting Content-Length headers")
    if length > len(body):
        raise SipParseError(
            f"Content-Length {length} is more than the {len(body)} body bytes received"
        )
    if length < len(body):  # RFC 3261 18.3: extra bytes after the body are discarded
        body = body[:length]
        return body, None if normalised else data[: body_start + length]
    return body, None if normalised else data


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
    copy = _COPIED_INTO_100 if status == 100 else _COPIED_INTO_2XX if status < 300 else _COPIED
    keys: list[str] = []
    raws: list[bytes] = []
    tag_done = to_tag is None
    for key, raw in zip(src._keys, src._raws, strict=True):
        if key not in copy:
            continue
        keys.append(key)
        if key == "to" and not tag_done:
            tag_done = True
            if not _has_tag(src, raw):
                raws.append(raw.rstrip(b" \t") + _encode(f";tag={to_tag}"))
                continue
        raws.append(raw)
    for name, value in extra_headers:
        key, raw = _make_line(name, value)
        keys.append(key)
        raws.append(raw)
    if "content-length" not in keys:
        keys.append("content-length")
        raws.append(b"Content-Length: 0")
    return Response(status, reason, Headers._from_lists(keys, raws))


# RFC 3261 8.2.6.2, 12.1.1 (Record-Route into 101-299) and 8.2.6.1 (Timestamp into 100).
_COPIED: Final = frozenset({"via", "from", "to", "call-id", "cseq"})
_COPIED_INTO_2XX: Final = _COPIED | {"record-route"}
_COPIED_INTO_100: Final = _COPIED | {"timestamp"}


def _has_tag(headers: Headers, raw: bytes) -> bool:
    """Whether ``raw``, the first To line of ``headers``, has a tag."""
    if headers._to is not None:  # parsed already by to_addr or to_tag
        return headers._to.tag is not None
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
