"""Property-based fuzzing of the message layer (hypothesis).

- Random bytes and mutated valid messages never raise anything but SipParseError, with the
  parser's last-resort safety net switched off so a bug shows up as itself.
- Whatever parses re-serialises to something that parses to the same bytes again.
- Generated valid messages (odd case, compact names, spacing, folding) round-trip byte for byte.
- The framer gives the same events however the stream is cut.
- The quick paths (the usual message, the usual Via and name-addr) give exactly what the
  general parsers give, whenever they accept their input.

Runs are bounded (300 examples each) so the file takes seconds; set SIP_FUZZ_EXAMPLES to
search harder (e.g. 5000 takes a minute or two).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teams_sbc.sip import headers as headers_module
from teams_sbc.sip import message as message_module
from teams_sbc.sip import uri as uri_module
from teams_sbc.sip.errors import SipParseError
from teams_sbc.sip.framing import KEEPALIVE_PING, FramerEvent, StreamFramer
from teams_sbc.sip.headers import (
    COMPACT_FORMS,
    NameAddr,
    parse_cseq,
    parse_name_addr,
    parse_top_via,
    parse_via,
    split_values,
)
from teams_sbc.sip.message import Request, Response, parse_message
from teams_sbc.sip.uri import parse_uri

VECTORS = sorted((Path(__file__).parent / "vectors").glob("**/*.sip"))
SAMPLES = [p.read_bytes() for p in VECTORS]

FUZZ = settings(
    max_examples=int(os.environ.get("SIP_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)


@contextmanager
def no_safety_net() -> Iterator[None]:
    """Let unexpected exceptions out of parse_message so the fuzzer sees real bugs."""
    saved = message_module._SAFETY_NET
    message_module._SAFETY_NET = False
    try:
        yield
    finally:
        message_module._SAFETY_NET = saved


def exercise(msg: Request | Response) -> None:
    """Read everything a proxy might read; only SipParseError may come out."""
    readers = [
        lambda: msg.call_id,
        lambda: msg.cseq,
        lambda: msg.top_via,
        lambda: msg.vias,
        lambda: msg.from_addr.uri,
        lambda: msg.to_addr.uri,
        lambda: msg.from_tag,
        lambda: msg.to_tag,
        lambda: msg.max_forwards,
        lambda: msg.content_length,
    ]
    if isinstance(msg, Request):
        readers.append(lambda: msg.ruri)
    for read in readers:
        with contextlib.suppress(SipParseError):
            read()
    for header in msg.headers:
        msg.headers.values(header.key)
        assert header.name
        assert isinstance(header.value, str)


def check_parse(data: bytes) -> None:
    """The core property: SipParseError or a message that re-serialises stably."""
    with no_safety_net():
        try:
            msg = parse_message(data)
        except SipParseError as exc:
            assert exc.status in (400, 416, 505, 513)
            assert "\r" not in exc.reason and "\n" not in exc.reason
            return
        exercise(msg)
        wire = msg.to_bytes()
        again = parse_message(wire)
        assert again.to_bytes() == wire


# --- random and mutated input ---------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes(data: bytes) -> None:
    check_parse(data)


INTERESTING = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n ",
    b"\r\n\r\n",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b'"',
    b"\\",
    b"<",
    b">",
    b"=",
    b"@",
    b"[",
    b"]",
    b"%",
    b"/",
    b"0",
    b"9999999999999999999999",
    b"\x00",
    b"\xff",
    b"\xc3\xa9",
    b"\xc2\xb2",  # superscript two: str.isdigit() says True, int() refuses it
    b"\xd9\xa1",  # Arabic-Indic digit one: int() takes it, SIP must not
    b"SIP/2.0",
    b"Content-Length: 10\r\n",
    b"l:",
    b"v: ",
]


# Mostly small edits, so that a good share of the mutants still parse and get exercised.
MUTATIONS = ["insert"] * 3 + ["replace"] * 3 + ["delete"] * 2 + ["duplicate"] * 2 + ["truncate"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(MUTATIONS))
        pos = draw(st.integers(0, len(data)))
        if op == "insert":
            data[pos:pos] = draw(st.sampled_from(INTERESTING))
        elif op == "replace" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "duplicate":
            start = data.rfind(b"\n", 0, pos) + 1
            end = data.find(b"\n", pos)
            if end > start:
                data[end + 1 : end + 1] = data[start : end + 1]
        else:
            del data[pos:]
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_messages(data: bytes) -> None:
    check_parse(data)


@FUZZ
@given(mutated(), st.integers(1, 4096))
def test_mutated_messages_with_small_limits(data: bytes, limit: int) -> None:
    with no_safety_net():
        try:
            msg = parse_message(
                data, max_size=limit, max_headers=limit // 64 + 1, max_line=limit // 4 + 1
            )
        except SipParseError:
            return
    assert len(data.lstrip(b"\r\n")) <= limit
    exercise(msg)


# --- header value parsers and URIs ----------------------------------------------------------

SIPISH = st.text(
    alphabet=st.sampled_from([*'abcAZ09:;,=@<>"\\ \t/.[]%?&+-_~*!()', "é"]), max_size=80
)


@FUZZ
@given(SIPISH)
def test_value_parsers_only_raise_parse_errors(text: str) -> None:
    split_values(text)
    for parser in (parse_via, parse_name_addr, parse_cseq, parse_uri):
        with contextlib.suppress(SipParseError):
            parser(text)


@FUZZ
@given(SIPISH)
def test_uri_round_trip(text: str) -> None:
    candidate = "sip:" + text
    try:
        uri = parse_uri(candidate)
    except SipParseError:
        return
    assert str(uri) == candidate
    assert parse_uri(str(uri)) == uri


# --- generated valid messages ----------------------------------------------------------------

TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
    min_size=1,
    max_size=12,
)
VALUE_CHARS = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30
)
SPACES = st.sampled_from(["", " ", "  ", "\t", " \t "])


def odd_case(draw: st.DrawFn, name: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.upper() if f else c.lower() for c, f in zip(name, flips, strict=True))


def spelling(draw: st.DrawFn, long: str, compact: str | None) -> str:
    """A header name as a peer might write it: any case, compact form when there is one."""
    if compact is not None and draw(st.booleans()):
        return odd_case(draw, compact)
    return odd_case(draw, long)


def line(draw: st.DrawFn, name: str, value: str) -> str:
    """``name: value`` with odd spacing, sometimes folded at a space of the value."""
    text = f"{name}{draw(SPACES)}:{draw(SPACES)}{value}"
    if " " in value and draw(st.booleans()):
        cut = value.index(" ")
        fold = "\r\n" + draw(st.sampled_from([" ", "\t", "   "]))
        text = f"{name}:{value[:cut]}{fold}{value[cut + 1 :]}"
    return text


COMPACT_OF = {long: short for short, long in COMPACT_FORMS.items()}


@st.composite
def valid_messages(draw: st.DrawFn) -> bytes:
    def hdr(long: str, value: str) -> str:
        return line(draw, spelling(draw, long, COMPACT_OF.get(long.lower())), value)

    method = draw(st.sampled_from(["INVITE", "OPTIONS", "BYE", "REGISTER", "MESSAGE", "FOO"]))
    host = draw(
        st.sampled_from(["192.0.2.1", "[2001:db8::1]", "sbc.example.com", "h-1.example.net."])
    )
    port = draw(st.sampled_from(["", ":5060", ":5061"]))
    branch = "z9hG4bK" + draw(TOKEN)
    vias = [f"SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP', 'tls']))} {host}{port};branch={branch}"]
    vias += [f"SIP/2.0/UDP 10.0.0.{i};branch=z9hG4bK{i}" for i in range(draw(st.integers(0, 3)))]
    joined = draw(st.booleans())
    headers: list[str] = []
    if joined:
        headers.append(hdr("Via", ", ".join(vias)))
    else:
        headers += [hdr("Via", v) for v in vias]
    display = draw(st.sampled_from(["", '"A \\"B\\" C" ', "Alice ", '"" ']))
    headers.append(hdr("From", f"{display}<sip:a@{host}>;tag={draw(TOKEN)}"))
    headers.append(
        hdr("To", draw(st.sampled_from([f"<sip:b@{host}>", f"sip:b@{host}", "<tel:+1555>;tag=x"])))
    )
    headers.append(hdr("Call-ID", draw(VALUE_CHARS)))
    headers.append(hdr("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"))
    if draw(st.booleans()):
        headers.append(hdr("Max-Forwards", str(draw(st.integers(0, 255)))))
    extra = draw(st.lists(st.tuples(TOKEN, VALUE_CHARS, st.booleans()), max_size=6))
    for name, value, spaced in extra:
        headers.append(line(draw, "X-" + name, value + (" and more" if spaced else "")))
    headers = draw(st.permutations(headers))
    body = draw(st.binary(max_size=300))
    headers.append(hdr("Content-Length", str(len(body))))
    if draw(st.booleans()):
        start = f"{method} sip:b@{host}{port};transport=tcp SIP/2.0"
    else:
        reason = draw(st.sampled_from(["OK", "", "Élan vital", "Busy Here"]))
        start = f"SIP/2.0 {draw(st.integers(100, 699))} {reason}"
    return ("\r\n".join([start, *headers]) + "\r\n\r\n").encode() + body


@FUZZ
@given(valid_messages())
def test_valid_messages_round_trip_exactly(data: bytes) -> None:
    with no_safety_net():
        msg = parse_message(data)
    assert msg.to_bytes() == data
    assert msg.top_via.branch
    assert msg.from_tag
    exercise(msg)


@FUZZ
@given(valid_messages(), st.data())
def test_edits_keep_other_lines(data: bytes, choices: st.DataObject) -> None:
    msg = parse_message(data)
    before = [h.raw for h in msg.headers]
    msg.headers.prepend("Via", "SIP/2.0/UDP proxy.example;branch=z9hG4bKnew")
    popped = msg.headers.remove_first_value("via")
    assert popped == "SIP/2.0/UDP proxy.example;branch=z9hG4bKnew"
    assert msg.to_bytes() == data
    if len(msg.vias) > 1 and choices.draw(st.booleans()):
        msg.headers.remove_first_value("v")
        after = [h.raw for h in msg.headers]
        assert len(after) in (len(before), len(before) - 1)
        reparsed = parse_message(msg.to_bytes())
        assert [h.raw for h in reparsed.headers] == after


# --- framing ---------------------------------------------------------------------------------

# Every valid vector that declares its length, as a stream peer must.
STREAM_ITEMS = [
    data
    for data in (p.read_bytes() for p in sorted((Path(__file__).parent / "vectors").glob("*.sip")))
    if parse_message(data).content_length is not None
]


@FUZZ
@given(
    st.lists(st.sampled_from([*STREAM_ITEMS, b"\r\n\r\n"]), min_size=1, max_size=8),
    st.lists(st.integers(1, 4000), max_size=20),
)
def test_framer_is_independent_of_read_boundaries(items: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(items)
    expected: list[FramerEvent] = [
        KEEPALIVE_PING if item == b"\r\n\r\n" else item for item in items
    ]
    assert StreamFramer().feed(stream) == expected
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    framer = StreamFramer()
    events: list[FramerEvent] = []
    for start, end in itertools.pairwise(points):
        events += framer.feed(stream[start:end])
    assert events == expected
    assert framer.buffered == 0


@FUZZ
@given(st.lists(st.binary(max_size=600), max_size=12), st.integers(512, 8192))
def test_framer_bounded_on_garbage(chunks: list[bytes], limit: int) -> None:
    framer = StreamFramer(max_size=limit)
    for chunk in chunks:
        framer.feed(chunk)
        assert framer.buffered <= limit + 600


@FUZZ
@given(st.lists(mutated(), min_size=1, max_size=4), st.lists(st.integers(1, 3000), max_size=8))
def test_framer_on_mutated_streams(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"\r\n\r\n".join(messages)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    framer = StreamFramer(max_size=8192)
    for start, end in itertools.pairwise(points):
        for event in framer.feed(stream[start:end]):
            if isinstance(event, bytes):
                check_parse(event)
            else:
                assert event == KEEPALIVE_PING or event.status in (400, 513)
        assert framer.buffered <= 8192 + 3000


# --- the quick paths agree with the general parsers -------------------------------------------


def same_message(quick: Request | Response, general: Request | Response) -> None:
    """Everything a caller can see, and the parse-time caches, are equal."""
    assert type(quick) is type(general)
    assert quick.headers._keys == general.headers._keys
    assert quick.headers._raws == general.headers._raws
    assert quick.body == general.body
    assert quick.version == general.version
    assert quick._start == general._start
    assert quick._raw == general._raw
    if isinstance(quick, Request):
        assert isinstance(general, Request)
        assert (quick.method, quick.uri) == (general.method, general.uri)
    else:
        assert isinstance(general, Response)
        assert (quick.status, quick.reason) == (general.status, general.reason)
    for entry in ("_call_id", "_cseq", "_top_via"):
        assert getattr(quick.headers, entry) == getattr(general.headers, entry)
    assert str(quick.top_via) == str(general.top_via)
    assert quick.to_bytes() == general.to_bytes()


def check_quick_path(data: bytes, limits: tuple[int, int, int] = (65535, 128, 8192)) -> bool:
    """The usual-message path either declines or gives what the general path gives.

    Returns whether it accepted, so tests can check that it was exercised at all.
    """
    with no_safety_net():
        try:
            general = message_module._parse(data, *limits)
        except SipParseError:
            general = None
        quick = message_module._parse_usual(data, *limits)
    if quick is None:
        return False
    assert general is not None, "the quick path accepted a message the general one refuses"
    same_message(quick, general)
    return True


def test_quick_path_takes_the_usual_vectors() -> None:
    taken = {
        p.name for p in VECTORS if p.parent.name == "vectors" and check_quick_path(p.read_bytes())
    }
    assert {"sipp_uac_invite.sip", "sipp_uas_200.sip", "teams_invite.sip"} <= taken


@FUZZ
@given(valid_messages())
def test_quick_path_agrees_on_valid_messages(data: bytes) -> None:
    check_quick_path(data)


@FUZZ
@given(mutated(), st.integers(1, 4096))
def test_quick_path_agrees_on_mutated_messages(data: bytes, limit: int) -> None:
    check_quick_path(data)
    check_quick_path(data, (limit, limit // 64 + 1, limit // 4 + 1))


def same_value(quick: Callable[[str], object], general: Callable[[str], object], text: str) -> None:
    """Both parsers raise SipParseError, or both give equal objects with the same text."""
    results: list[object] = []
    for parser in (quick, general):
        try:
            results.append(parser(text))
        except SipParseError:
            results.append(None)
    got, expected = results
    assert got == expected
    assert str(got) == str(expected)
    if isinstance(got, NameAddr) and isinstance(expected, NameAddr):
        assert got.display_name == expected.display_name
        assert got._render_head() == expected._render_head()


def mostly(usual: str, *odd: str) -> st.SearchStrategy[str]:
    """``usual`` three times in four, else one of the ``odd`` variants."""
    return st.one_of(st.just(usual), st.just(usual), st.just(usual), st.sampled_from(odd))


PARAM = st.sampled_from(
    [";branch=z9hG4bK1", ";rport", ";rport=5060", ";received=192.0.2.1", ";lr", ";tag=a1"] * 3
    + [";x=<a>", ';x="q"', "; x=1", ";x =1", ";=1", ";", ";a=b=c", ";x=a,b", ";é=1"]
)  # fmt: skip
HOST = mostly("192.0.2.1", "[2001:db8::1]", "h-1.example.", "a_b", "[::1", "é", "a b", "")
PORT = st.sampled_from(["", ":5060", ":65535", ":65536", ":99999", ":123456", ": 5060", ":x"])
VIA_LIKE = st.builds(
    "".join,
    st.tuples(
        mostly("SIP/2.0/", "SIP/2.0 /", "sip/2.0/", "SIP/3.0/", " SIP/2.0/", "SIP/2.0"),
        mostly("UDP", "TCP", "TLS", "tls", "WS", "WSS", "SCTP", "XYZ", ""),
        mostly(" ", "  ", "\t", ""),
        HOST,
        PORT,
        st.lists(PARAM, max_size=4).map("".join),
        mostly("", " ", "\t ", ",", " , SIP/2.0/UDP b", ",,", "x", ", ", ";"),
    ),
)


@FUZZ
@given(st.one_of(VIA_LIKE, SIPISH))
def test_quick_via_agrees(text: str) -> None:
    same_value(parse_via, headers_module._parse_via_general, text)
    same_value(parse_top_via, headers_module._parse_top_via_general, text)


DISPLAYS = ["Alice ", "", "Alice  ", "Alice Teams ", '"A" ', "A<", "a,b ", " ", "\u00e9 "]
DISPLAYS += ['"A"<', '"" ', '"a\\"b" ', '"a\\\\" ', '"\u00e9 x"  ', '"a', "Alice Teams<"]
DISPLAYS += ['"A" x ', '"<" ', "A\tB "]
URIS = ["sip:a@b.example", "tel:+1555", "sip:a@b;lr", "nouri", "", "sip:a b", "sip:<", "a:b"]
PARAMS = ["", ";tag=1", ";tag=1;lr", ";tag", "; tag=1", ";tag=a b", ";=1", ";tag=<x>", ";tag=1,"]


def test_quick_name_addr_agrees_on_every_combination() -> None:
    def general(value: str) -> NameAddr:
        return headers_module._parse_name_addr_general(value.strip(" \t\r\n"), "To")

    def quick(value: str) -> NameAddr:
        return parse_name_addr(value, "To")

    shapes = itertools.product(DISPLAYS, ["<", ""], URIS, [">", "", ">>"], PARAMS, ["", " ", ","])
    for parts in shapes:
        same_value(quick, general, "".join(parts))


NAME_ADDR_LIKE = st.builds(
    "".join,
    st.tuples(
        mostly(DISPLAYS[0], *DISPLAYS[1:]),
        mostly("<", ""),
        mostly(URIS[0], *URIS[1:]),
        mostly(">", "", ">>"),
        st.lists(PARAM, max_size=3).map("".join),
        mostly("", " ", "\r\n", ","),
    ),
)


@FUZZ
@given(st.one_of(NAME_ADDR_LIKE, SIPISH))
def test_quick_name_addr_agrees(text: str) -> None:
    def general(value: str) -> NameAddr:
        return headers_module._parse_name_addr_general(value.strip(" \t\r\n"), "To")

    same_value(lambda value: parse_name_addr(value, "To"), general, text)


Knob = Callable[..., str]


def usual_message(knob: Knob, response: bool, body: bytes) -> bytes:
    """A message shaped like sipp's and Teams'. ``knob(usual, *odd)`` picks each part: the
    usual text, or one of the odd variants next to it (the quick path's edge cases)."""
    method = knob("INVITE", "BYE", "ACK", "OPTIONS", "FOO", "invite")
    if response:
        code = knob("200", "100", "699", "099", "700", "2000", "20x", "180", "")
        reason = knob(" OK", "", " ", " \u00c9lan", "  OK", "\tOK")
        start = knob(f"SIP/2.0 {code}{reason}", f"sip/2.0 {code}{reason}", f"SIP/2.0  {code}")
    else:
        uri = knob("sip:b@192.0.2.2:5060", "SIPS:b@h", "tel:+1", "http://x", "sip:a\x01", "")
        start = knob(f"{method} {uri} SIP/2.0", f"{method}  {uri} SIP/2.0", f"{method} {uri}")
    via = "".join(
        [
            knob("SIP/2.0/", "SIP/2.0 /", "sip/2.0/", "SIP/3.0/", "SIP/2.0"),
            knob("UDP", "TLS", "tls", "WSS", "XYZ", ""),
            knob(" ", "  ", "\t", ""),
            knob("192.0.2.1", "[2001:db8::1]", "h-1.example.", "[::1", "a b", ""),
            knob(":5060", "", ":65535", ":65536", ":123456", ": 5060"),
            knob(";branch=z9hG4bK1", ";rport;branch=z9hG4bK1", "", ";x=<a>", ";=1", ";"),
            knob("", " ", ", SIP/2.0/UDP b", ",,", "x", ","),
        ]
    )
    name_addr = "".join(
        [
            knob("Alice ", "", "Alice Teams<", '"A" ', '"A"<', '"" ', '"a\\"b" ', "A  ", "a,b "),
            knob("<sip:a@b.example>", "sip:a@b.example", "<nouri>", "<sip:a b>", "<sip:a"),
            knob(";tag=1", "", ";tag=1;x", "; tag=1", ";tag=a,b"),
        ]
    )
    number = knob("1", "0", "999999999", "1000000000", "9999999999", "x", " 1", "1 ")
    size = str(len(body))
    length = knob(size, "0", str(len(body) + 1), " 3 ", "x", "0" * 9 + size, "0" * 10 + size, "")
    headers = [
        ("Via", via),
        ("From", name_addr),
        ("To", knob("<sip:b@h>", "b <sip:b@h>;tag=2", "x")),
        ("Call-ID", knob("a84b4c76e66710@pc33", "", " ", "\u00e9", "a\rb", "a\nb", "a\r\n b")),
        ("CSeq", f"{number}{knob(' ', '  ', chr(9))}{knob(method, 'BYE', 'FOO', '')}"),
        ("Max-Forwards", "70"),
        ("Content-Length", length),
    ]
    for name, value in headers[:]:
        if knob("", "again") == "again":
            headers.append((name, value))  # repeated (Content-Length: the same value)
        if knob("", "drop") == "drop":
            headers.remove((name, value))
    lines = [f"{knob(n, n.lower(), n + ' ', 'X-' + n, n[0])}: {value}" for n, value in headers]
    extra = ["Content-Length: 1", "l: " + size, "v: SIP/2.0/UDP h", "i: x", " folded", "NoColon"]
    lines.insert(len(lines) // 2, knob("Subject: hi", *extra, "Subject:", "Subject : hi"))
    lines.append(knob("User-Agent: x", *extra))
    return ("\r\n".join([start, *lines]) + knob("\r\n\r\n", "\n\n", "\r\n")).encode() + body


def odd_one_out(response: bool, body: bytes) -> Iterator[bytes]:
    """:func:`usual_message` with each odd variant of each part in turn, the rest usual."""
    sizes: list[int] = []

    def survey(usual: str, *odd: str) -> str:
        sizes.append(len(odd))
        return usual

    usual_message(survey, response, body)
    for position, size in enumerate(sizes):
        for variant in range(size):
            calls = itertools.count()

            def knob(usual: str, *odd: str, at: int = position, pick: int = variant) -> str:
                return odd[pick] if next(calls) == at else usual  # noqa: B023

            yield usual_message(knob, response, body)


@pytest.mark.parametrize("response", [False, True])
def test_quick_path_agrees_on_each_odd_part(response: bool) -> None:
    messages = list(odd_one_out(response, b"v=0\r\n"))
    accepted = sum(check_quick_path(data) for data in messages)
    for data in messages:  # and each limit just reached
        for limits in ((len(data) - 1, 128, 8192), (65535, 8, 8192), (65535, 128, 40)):
            check_quick_path(data, limits)
    assert len(messages) > 100
    assert 10 < accepted < len(messages)


URI_LIKE = st.builds(
    "".join,
    st.tuples(
        mostly("sip:", "sips:", "SIP:", "tel:", "sip", "http:"),
        mostly("alice@", "", "a%40b@", "a;b@", "a:pw@", "@", "a@b@", "+1-555@", "\u00e9@"),
        mostly("example.com", "192.0.2.1", "[2001:db8::1]", "a_b.", "-a", "a..b", ""),
        mostly(":5060", "", ":65535", ":65536", ":123456", ":", ":x"),
        st.lists(
            st.sampled_from([";lr", ";transport=tls", ";user=phone", ";x=", ";=x", ";", ";a%41"]),
            max_size=3,
        ).map("".join),
        mostly("", "?h=v", "?", " ", ">"),
    ),
)


@FUZZ
@given(st.one_of(URI_LIKE, SIPISH))
def test_quick_uri_agrees(text: str) -> None:
    quick = uri_module._usual_sip_uri(text)
    if quick is not None:
        general = uri_module._parse_uri_general(text)
        assert quick == general
        assert str(quick) == str(general) == text
        assert parse_uri(text) == general


@st.composite
def usual_messages(draw: st.DrawFn) -> bytes:
    """:func:`usual_message` with one or two parts odd, and another body."""
    twists = set(draw(st.lists(st.integers(0, 50), max_size=2)))
    count = itertools.count()

    def knob(usual: str, *odd: str) -> str:
        return draw(st.sampled_from(odd)) if next(count) in twists and odd else usual

    return usual_message(knob, draw(st.booleans()), draw(st.binary(max_size=40)))


@FUZZ
@given(usual_messages())
def test_quick_path_agrees_on_usual_messages(data: bytes) -> None:
    check_quick_path(data)
