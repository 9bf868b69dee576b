"""Stream framing (TCP/TLS): Content-Length framing, keep-alives, errors, bounded memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from teams_sbc.sip.framing import (
    KEEPALIVE_PING,
    PONG,
    FramerEvent,
    FramingError,
    KeepAlivePing,
    StreamFramer,
)
from teams_sbc.sip.message import Response, parse_message

VECTORS = Path(__file__).parent / "vectors"
INVITE = (VECTORS / "teams_invite.sip").read_bytes()  # 2.5 KB, far over one MTU
OPTIONS = (VECTORS / "teams_options_in.sip").read_bytes()
RINGING = (VECTORS / "compact_ringing.sip").read_bytes()  # "l: 0"
OK_200 = (VECTORS / "teams_200_multi_rr.sip").read_bytes()


def feed_all(framer: StreamFramer, chunks: list[bytes]) -> list[FramerEvent]:
    events: list[FramerEvent] = []
    for chunk in chunks:
        events += framer.feed(chunk)
    return events


def test_one_message() -> None:
    framer = StreamFramer()
    assert framer.feed(OPTIONS) == [OPTIONS]
    assert framer.buffered == 0


def test_several_messages_in_one_read() -> None:
    framer = StreamFramer()
    assert framer.feed(INVITE + OPTIONS + RINGING + OK_200) == [INVITE, OPTIONS, RINGING, OK_200]


def test_large_message_split_byte_by_byte() -> None:
    assert len(INVITE) > 1500
    framer = StreamFramer()
    events = feed_all(framer, [INVITE[i : i + 1] for i in range(len(INVITE))])
    assert events == [INVITE]
    assert parse_message(events[0]).to_bytes() == INVITE


@pytest.mark.parametrize("size", [7, 100, 1460, 4096])
def test_stream_cut_anywhere(size: int) -> None:
    stream = INVITE + OK_200 + b"\r\n\r\n" + OPTIONS + INVITE
    framer = StreamFramer()
    events = feed_all(framer, [stream[i : i + size] for i in range(0, len(stream), size)])
    assert events == [INVITE, OK_200, KEEPALIVE_PING, OPTIONS, INVITE]


def test_body_arrives_later_than_header() -> None:
    head_end = INVITE.index(b"\r\n\r\n") + 4
    framer = StreamFramer()
    assert framer.feed(INVITE[:head_end]) == []
    assert framer.buffered == head_end
    assert framer.feed(INVITE[head_end:-1]) == []
    assert framer.feed(INVITE[-1:] + OPTIONS[:10]) == [INVITE]
    assert framer.feed(OPTIONS[10:]) == [OPTIONS]


def test_double_crlf_is_a_ping() -> None:
    framer = StreamFramer()
    events = framer.feed(b"\r\n\r\n")
    assert events == [KEEPALIVE_PING]
    assert isinstance(events[0], KeepAlivePing)
    assert PONG == b"\r\n"
    assert framer.feed(b"\r\n\r\n\r\n\r\n") == [KEEPALIVE_PING, KEEPALIVE_PING]


def test_ping_split_across_reads() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n") == []
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n") == [KEEPALIVE_PING]


def test_single_crlf_is_a_pong_and_ignored() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []  # could still become a ping
    assert framer.feed(OPTIONS) == [OPTIONS]  # it was a pong (or padding before a start line)
    assert framer.feed(OPTIONS + b"\r\n" + RINGING) == [OPTIONS, RINGING]
    assert framer.buffered == 0


def test_ping_between_messages() -> None:
    framer = StreamFramer()
    assert framer.feed(OPTIONS + b"\r\n\r\n" + RINGING) == [OPTIONS, KEEPALIVE_PING, RINGING]


def test_compact_content_length_and_bare_lf() -> None:
    framer = StreamFramer()
    lf_message = b"BYE sip:b@x SIP/2.0\nl: 3\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\n\nabc"
    assert framer.feed(RINGING + lf_message + OPTIONS) == [RINGING, lf_message, OPTIONS]


def test_folded_content_length() -> None:
    folded = OPTIONS.replace(b"CONTENT-LENGTH: 0", b"Content-Length:\r\n   0")
    assert StreamFramer().feed(folded + RINGING) == [folded, RINGING]


def test_missing_content_length_closes_with_400() -> None:
    message = OPTIONS.replace(b"CONTENT-LENGTH: 0\r\n", b"")
    framer = StreamFramer()
    (event,) = framer.feed(message)
    assert isinstance(event, FramingError)
    assert event.status == 400 and event.close
    assert "Content-Length" in event.reason
    assert framer.closed
    assert framer.feed(OPTIONS) == []  # closed: nothing more
    answer = event.response
    assert answer is not None
    parsed = parse_message(answer)
    assert isinstance(parsed, Response) and parsed.status == 400
    assert parsed.call_id == "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


@pytest.mark.parametrize(
    "value",
    [
        b"Content-Length: -1",
        b"Content-Length: abc",
        b"Content-Length: 12345678901",
        b"Content-Length: 1 2",
        b"Content-Length:",
    ],
)
def test_bad_content_length_closes(value: bytes) -> None:
    framer = StreamFramer()
    (event,) = framer.feed(OPTIONS.replace(b"CONTENT-LENGTH: 0", value))
    assert isinstance(event, FramingError) and event.close and event.status == 400


def test_conflicting_content_lengths_close() -> None:
    framer = StreamFramer()
    (event,) = framer.feed(OPTIONS.replace(b"CONTENT-LENGTH: 0", b"Content-Length: 0\r\nl: 5"))
    assert isinstance(event, FramingError) and event.close


def test_header_section_too_large_closes_with_bounded_memory() -> None:
    framer = StreamFramer(max_size=4096)
    events: list[FramerEvent] = []
    for _ in range(100):
        events += framer.feed(b"X" * 1000)  # never a blank line
        assert framer.buffered <= 4096 + 1000
    assert len(events) == 1
    (event,) = events
    assert isinstance(event, FramingError) and event.status == 513 and event.close
    assert event.response is None
    assert framer.buffered == 0


def test_too_large_message_is_skipped_and_stream_goes_on() -> None:
    body = b"x" * 10000
    big = OPTIONS.replace(b"CONTENT-LENGTH: 0", f"Content-Length: {len(body)}".encode()) + body
    framer = StreamFramer(max_size=4096)
    stream = big + OPTIONS
    events = feed_all(framer, [stream[i : i + 1000] for i in range(0, len(stream), 1000)])
    assert len(events) == 2
    error, message = events
    assert isinstance(error, FramingError)
    assert error.status == 513 and not error.close
    assert message == OPTIONS
    assert not framer.closed
    answer = error.response
    assert answer is not None and answer.startswith(b"SIP/2.0 513 ")


def test_too_large_message_skipped_in_one_read() -> None:
    body = b"x" * 5000
    big = OPTIONS.replace(b"CONTENT-LENGTH: 0", f"Content-Length: {len(body)}".encode()) + body
    framer = StreamFramer(max_size=4096)
    events = framer.feed(big + OPTIONS)
    assert [type(e) for e in events] == [FramingError, bytes]
    assert events[1] == OPTIONS


def test_error_response_needs_a_request() -> None:
    framer = StreamFramer()
    (event,) = framer.feed(OK_200.replace(b"Content-Length: ", b"X-Length: "))
    assert isinstance(event, FramingError)
    assert event.response is None  # a response is never answered


def test_garbage_then_close() -> None:
    framer = StreamFramer()
    (event,) = framer.feed(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not SIP\r\n\r\n")
    assert isinstance(event, FramingError) and event.close
    assert event.response is None
