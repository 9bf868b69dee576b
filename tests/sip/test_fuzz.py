"""Property-based fuzzing of the message layer (hypothesis).

- Random bytes and mutated valid messages never raise anything but SipParseError, with the
  parser's last-resort safety net switched off so a bug shows up as itself.
- Whatever parses re-serialises to something that parses to the same bytes again.
- Generated valid messages (odd case, compact names, spacing, folding) round-trip byte for byte.
- The framer gives the same events however the stream is cut.

Runs are bounded (300 examples each) so the file takes seconds; set SIP_FUZZ_EXAMPLES to
search harder (e.g. 5000 takes a minute or two).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teams_sbc.sip import message as message_module
from teams_sbc.sip.errors import SipParseError
from teams_sbc.sip.framing import KEEPALIVE_PING, FramerEvent, StreamFramer
from teams_sbc.sip.headers import (
    COMPACT_FORMS,
    parse_cseq,
    parse_name_addr,
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
