"""SIP, SIPS and tel URIs: RFC 3261 section 19.1 (grammar in 25.1) and RFC 3966.

A URI keeps the text it was parsed from, so ``str(uri)`` gives back exactly the input while it is
unmodified (escapes, parameter order, case and all). URIs are immutable values: the ``with_*``
helpers return a new URI whose text is rendered from its parts. Parts keep their escapes as
written (``%40`` stays ``%40``); :func:`unescape` decodes them when a caller needs the plain text.

Equality (``==``) is structural over the parsed parts, not the RFC 3261 19.1.4 comparison rules.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Final
from urllib.parse import unquote

from teams_sbc.sip.errors import SipUriError, UnsupportedUriScheme, snippet

__all__ = [
    "SipUri",
    "TelUri",
    "Uri",
    "format_host",
    "parse_uri",
    "unescape",
]

_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*\Z")
_UNRESERVED: Final = r"A-Za-z0-9\-_.!~*'()"
_ESCAPED: Final = r"%[0-9A-Fa-f]{2}"
# RFC 3261 25.1: user = 1*( unreserved / escaped / user-unreserved )
_USER_RE: Final = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/]|{_ESCAPED})+\Z")
# password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
_PASSWORD_RE: Final = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|{_ESCAPED})*\Z")
# paramchar = param-unreserved / unreserved / escaped
_PARAM_RE: Final = re.compile(rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESCAPED})+\Z")
# hname / hvalue = *( hnv-unreserved / unreserved / escaped )
_HNV_RE: Final = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESCAPED})*\Z")
# Host names, leniently: labels of letters, digits, "-" and "_" (seen in the wild), dots between.
_HOSTNAME_RE: Final = re.compile(
    r"[A-Za-z0-9_][A-Za-z0-9\-_]*(?:\.[A-Za-z0-9_][A-Za-z0-9\-_]*)*\.?\Z"
)
_IPV6_CHARS_RE: Final = re.compile(r"[0-9A-Fa-f:.]+\Z")
_PORT_RE: Final = re.compile(r"[0-9]{1,5}\Z")
# RFC 3966: telephone-subscriber, leniently (digits, hex for local numbers, visual separators).
_TEL_NUMBER_RE: Final = re.compile(r"\+?[0-9A-Fa-f*#\-.()]+\Z")

Params = tuple[tuple[str, str | None], ...]
"""Ordered ``(name, value)`` pairs as written; ``value`` is None for a valueless one (``;lr``)."""


def unescape(text: str) -> str:
    """Decode %HH escapes (UTF-8), e.g. to compare a user part with a number plan."""
    return unquote(text, errors="surrogateescape")


def format_host(host: str) -> str:
    """``host`` as it must appear in a URI or Via: IPv6 addresses get their brackets."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def _check_host(host: str, text: str) -> None:
    """Raise unless ``host`` is a host name, an IPv4 address or an IPv6 reference."""
    if host.startswith("["):
        inner = host[1:-1] if host.endswith("]") else ""
        if not _IPV6_CHARS_RE.match(inner):
            raise SipUriError(f"Bad IPv6 reference in URI {snippet(text)}")
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise SipUriError(f"Bad IPv6 reference in URI {snippet(text)}") from None
    elif not _HOSTNAME_RE.match(host):
        raise SipUriError(f"Bad host in URI {snippet(text)}")


def _parse_port(port: str, text: str) -> int:
    if not _PORT_RE.match(port) or int(port) > 65535:
        raise SipUriError(f"Bad port in URI {snippet(text)}")
    return int(port)


def _parse_params(section: str, text: str) -> Params:
    """Split ``;a=b;lr`` (without the leading ``;``) into ordered pairs, validating each."""
    out: list[tuple[str, str | None]] = []
    for item in section.split(";"):
        name, eq, value = item.partition("=")
        if not _PARAM_RE.match(name) or (eq and value and not _PARAM_RE.match(value)):
            raise SipUriError(f"Bad parameter {snippet(item, 20)} in URI {snippet(text)}")
        out.append((name, value if eq else None))
    return tuple(out)


def _render_params(params: Params) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


def _find_param(params: Params, name: str) -> tuple[str, str | None] | None:
    """The first parameter called ``name``, in any case (RFC 3261 7.3.1, 19.1.4)."""
    lname = name.lower()
    size = len(lname)
    for pair in params:
        other = pair[0]
        # Spelled as asked matches at once; only names of the same length get lower-cased.
        if other == lname or (len(other) == size and other.lower() == lname):
            return pair
    return None


def _set_param(params: Params, name: str, value: str | None) -> Params:
    """Replace the first parameter called ``name`` (any case) in place, or append it."""
    lname = name.lower()
    out = list(params)
    for i, (n, _) in enumerate(out):
        if n.lower() == lname:
            out[i] = (n, value)
            return tuple(out)
    out.append((name, value))
    return tuple(out)


def _drop_param(params: Params, name: str) -> Params:
    lname = name.lower()
    return tuple(p for p in params if p[0].lower() != lname)


class _ParamsMixin:
    """Case-insensitive parameter look-ups (RFC 3261 7.3.1 and 19.1.4), for URIs and headers."""

    __slots__ = ()
    params: Params

    def param(self, name: str) -> str | None:
        """The value of parameter ``name``: "" when present without a value, None when absent."""
        pair = _find_param(self.params, name)
        if pair is None:
            return None
        return "" if pair[1] is None else pair[1]

    def has_param(self, name: str) -> bool:
        return _find_param(self.params, name) is not None


@dataclass(frozen=True, slots=True)
class SipUri(_ParamsMixin):
    """A ``sip:`` or ``sips:`` URI. ``scheme`` is lower case; the other parts are as written."""

    scheme: str
    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()
    _text: str | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        if self._text is None:
            object.__setattr__(self, "_text", self._render())
        assert self._text is not None
        return self._text

    def _render(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts += (":", self.password)
            parts.append("@")
        parts.append(self.host)
        if self.port is not None:
            parts += (":", str(self.port))
        parts.append(_render_params(self.params))
        if self.headers:
            parts += ("?", "&".join(f"{n}={v}" for n, v in self.headers))
        return "".join(parts)

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter, lower-cased (``udp``, ``tcp``, ``tls``...), or None."""
        value = self.param("transport")
        return value.lower() if value else None

    @property
    def lr(self) -> bool:
        """True when the URI carries ``;lr`` (loose routing, RFC 3261 16.12)."""
        return self.has_param("lr")

    @property
    def maddr(self) -> str | None:
        return self.param("maddr") or None

    @property
    def host_port(self) -> str:
        """``host`` or ``host:port`` as written in the URI."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def bare_host(self) -> str:
        """The host without IPv6 brackets: what a resolver or a socket wants."""
        return self.host[1:-1] if self.host.startswith("[") else self.host

    def with_param(self, name: str, value: str | None = None) -> SipUri:
        """A copy with parameter ``name`` set (kept in place if present, else appended)."""
        _check_param(name, value)
        return replace(self, params=_set_param(self.params, name, value), _text=None)

    def without_param(self, name: str) -> SipUri:
        return replace(self, params=_drop_param(self.params, name), _text=None)

    def with_params(self, params: Params) -> SipUri:
        """A copy whose parameters are exactly ``params``."""
        for name, value in params:
            _check_param(name, value)
        return replace(self, params=tuple(params), _text=None)

    def with_host(self, host: str, port: int | None = None) -> SipUri:
        """A copy pointing at ``host`` (IPv6 addresses are bracketed) and ``port``."""
        host = format_host(host)
        _check_host(host, host)
        return replace(self, host=host, port=port, _text=None)

    def with_port(self, port: int | None) -> SipUri:
        if port is not None and not 0 <= port <= 65535:
            raise SipUriError(f"Bad port {port}")
        return replace(self, port=port, _text=None)

    def with_user(self, user: str | None, password: str | None = None) -> SipUri:
        """A copy with another user part; pass it escaped as it must appear in the URI."""
        if user is not None and not _USER_RE.match(user):
            raise SipUriError(f"Bad user part {snippet(user)}")
        if password is not None and (user is None or not _PASSWORD_RE.match(password)):
            raise SipUriError("Bad password part")
        return replace(self, user=user, password=password, _text=None)

    def with_scheme(self, scheme: str) -> SipUri:
        scheme = scheme.lower()
        if scheme not in ("sip", "sips"):
            raise UnsupportedUriScheme(scheme)
        return replace(self, scheme=scheme, _text=None)

    def without_headers(self) -> SipUri:
        """A copy without ``?headers`` (RFC 3261 19.1.5: not allowed in a Request-URI)."""
        return replace(self, headers=(), _text=None) if self.headers else self


@dataclass(frozen=True, slots=True)
class TelUri(_ParamsMixin):
    """A ``tel:`` URI (RFC 3966): the number as written plus its parameters."""

    number: str
    params: Params = ()
    _text: str | None = field(default=None, compare=False, repr=False)

    @property
    def scheme(self) -> str:
        return "tel"

    def __str__(self) -> str:
        if self._text is None:
            object.__setattr__(self, "_text", f"tel:{self.number}{_render_params(self.params)}")
        assert self._text is not None
        return self._text

    @property
    def is_global(self) -> bool:
        """A global number (E.164, starts with ``+``); else a local one needing phone-context."""
        return self.number.startswith("+")

    @property
    def digits(self) -> str:
        """The number without visual separators: ``+1-201-555-0123`` -> ``+12015550123``."""
        return "".join(ch for ch in self.number if ch not in "-.()")

    def with_param(self, name: str, value: str | None = None) -> TelUri:
        _check_param(name, value)
        return replace(self, params=_set_param(self.params, name, value), _text=None)

    def without_param(self, name: str) -> TelUri:
        return replace(self, params=_drop_param(self.params, name), _text=None)


Uri = SipUri | TelUri


def _check_param(name: str, value: str | None) -> None:
    if not _PARAM_RE.match(name) or (value and not _PARAM_RE.match(value)):
        raise SipUriError(f"Bad URI parameter {snippet(name, 20)}")


# Parsed URIs by their text. URIs are immutable, and a proxy meets the same ones again and
# again (its own Record-Route entries in every Route, next hops, a dialog's Request-URI).
_URI_CACHE: dict[str, Uri] = {}
_URI_CACHE_MAX: Final = 1024
_CACHED_URI_MAX: Final = 256  # characters; longer URIs are parsed every time


def parse_uri(text: str) -> Uri:
    """Parse a SIP, SIPS or tel URI.

    Raises :class:`UnsupportedUriScheme` (status 416) for any other well-formed scheme and
    :class:`SipUriError` (status 400) for text that is not a URI.
    """
    uri = _URI_CACHE.get(text)
    if uri is None:
        uri = _usual_sip_uri(text) or _parse_uri_general(text)
        if len(text) <= _CACHED_URI_MAX:
            if len(_URI_CACHE) >= _URI_CACHE_MAX:
                _URI_CACHE.clear()
            _URI_CACHE[text] = uri
    return uri


_PARAM_CHARS: Final = r"A-Za-z0-9\-_.!~*'()\[\]/:&+$"
# The usual SIP URI in one match: lower-case scheme, a plain user part, a host name or IPv4
# address, a port, parameters without escapes, no headers. What it accepts the general parser
# accepts too, with the same result (test_fuzz compares them); the rest goes there.
_USUAL_SIP_URI_RE: Final = re.compile(
    r"(sips?):(?:([A-Za-z0-9\-_.!~*'()&=+$,]++)@)?"
    r"([A-Za-z0-9_][A-Za-z0-9\-_]*+(?:\.[A-Za-z0-9_][A-Za-z0-9\-_]*+)*+\.?)(?::([0-9]{1,5}+))?"
    rf"((?:;[{_PARAM_CHARS}]++(?:=[{_PARAM_CHARS}]*+)?)*+)\Z"
)


def _usual_sip_uri(text: str) -> SipUri | None:
    """``text`` parsed the quick way when it is a usual SIP URI, else None."""
    m = _USUAL_SIP_URI_RE.match(text)
    if m is None:
        return None
    scheme, user, host, port_text, param_text = m.groups()
    port = None
    if port_text is not None:
        port = int(port_text)
        if port > 65535:
            return None
    params: Params = ()
    if param_text:
        pairs = []
        for item in param_text[1:].split(";"):
            name, eq, value = item.partition("=")
            pairs.append((name, value if eq else None))
        params = tuple(pairs)
    return SipUri(scheme, host, user, None, port, params, (), text)


def _parse_uri_general(text: str) -> Uri:
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME_RE.match(scheme):
        raise SipUriError(f"Not a URI: {snippet(text)}")
    lscheme = scheme.lower()
    if lscheme in ("sip", "sips"):
        return _parse_sip(lscheme, rest, text)
    if lscheme == "tel":
        return _parse_tel(rest, text)
    raise UnsupportedUriScheme(scheme)


def _parse_sip(scheme: str, rest: str, text: str) -> SipUri:
    """``rest`` is everything after ``sip:``: [userinfo "@"] hostport params [headers]."""
    user = password = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        password = pw if colon else None
        if not _USER_RE.match(user) or (password is not None and not _PASSWORD_RE.match(password)):
            raise SipUriError(f"Bad user part in URI {snippet(text)}")
    rest, qmark, header_text = rest.partition("?")
    hostport, semi, param_text = rest.partition(";")
    port: int | None = None
    if hostport.startswith("["):
        end = hostport.find("]")
        host, after = (hostport[: end + 1], hostport[end + 1 :]) if end > 0 else (hostport, "")
        if after:
            if after[0] != ":":
                raise SipUriError(f"Bad host in URI {snippet(text)}")
            port = _parse_port(after[1:], text)
    else:
        host, colon, port_text = hostport.partition(":")
        if colon:
            port = _parse_port(port_text, text)
    _check_host(host, text)
    params = _parse_params(param_text, text) if semi else ()
    headers: tuple[tuple[str, str], ...] = ()
    if qmark:
        pairs = []
        for item in header_text.split("&"):
            name, _, value = item.partition("=")
            if not name or not _HNV_RE.match(name) or not _HNV_RE.match(value):
                raise SipUriError(f"Bad header {snippet(item, 20)} in URI {snippet(text)}")
            pairs.append((name, value))
        headers = tuple(pairs)
    return SipUri(scheme, host, user, password, port, params, headers, text)


def _parse_tel(rest: str, text: str) -> TelUri:
    number, semi, param_text = rest.partition(";")
    if not _TEL_NUMBER_RE.match(number) or number == "+":
        raise SipUriError(f"Bad telephone number in URI {snippet(text)}")
    params = _parse_params(param_text, text) if semi else ()
    return TelUri(number, params, text)
