"""The ng protocol core on a virtual clock: cookies, retransmission times, answers by cookie."""

from __future__ import annotations

import itertools

import bencode
import pytest

from teams_sbc.media.errors import NgError, NgProtocolError
from teams_sbc.media.ng import (
    NgCore,
    RetrySchedule,
    decode_reply,
    encode_request,
    raise_for_result,
)


def core(schedule: RetrySchedule | None = None) -> NgCore:
    counter = itertools.count(1)

    def numbered() -> bytes:
        return f"c{next(counter)}".encode()

    return NgCore(schedule, new_cookie=numbered)


def reply_to(datagram: bytes, body: dict[str, object]) -> bytes:
    cookie, _, _ = datagram.partition(b" ")
    encoded: bytes = bencode.bencode(body)
    return cookie + b" " + encoded


def test_request_is_cookie_space_bencoded_dict_with_command() -> None:
    wire = encode_request(b"abc123", "offer", {"call-id": "x", "sdp": "v=0", "to-tag": None})

    cookie, _, body = wire.partition(b" ")
    assert cookie == b"abc123"
    assert bencode.bdecode(body) == {"call-id": "x", "command": "offer", "sdp": "v=0"}


@pytest.mark.parametrize("cookie", [b"", b"a b"])
def test_cookie_must_be_non_empty_without_space(cookie: bytes) -> None:
    with pytest.raises(ValueError, match="cookie"):
        encode_request(cookie, "ping", {})


def test_reply_with_unsorted_keys_decodes_to_plain_dicts() -> None:
    # rtpengine does not sort its dictionary keys; a strict decoder would refuse this.
    datagram = b"k1 d6:result2:ok5:callsl1:be1:ad1:z1:11:y1:2ee"

    cookie, body = decode_reply(datagram)

    assert cookie == b"k1"
    assert body == {"result": "ok", "calls": ["b"], "a": {"z": "1", "y": "2"}}
    assert type(body["a"]) is dict


@pytest.mark.parametrize("datagram", [b"nocookie", b" d6:result2:oke", b"k1 garbage", b"k1 i3e"])
def test_malformed_replies_are_refused(datagram: bytes) -> None:
    with pytest.raises(NgProtocolError):
        decode_reply(datagram)


def test_error_result_raises_with_rtpengine_reason() -> None:
    with pytest.raises(NgError) as info:
        raise_for_result("answer", {"result": "error", "error-reason": "Unknown call-id"}, "r1")

    assert info.value.reason == "Unknown call-id"
    assert info.value.command == "answer"
    assert "Unknown call-id" in str(info.value)
    raise_for_result("ping", {"result": "pong"})  # no error: nothing raised


def test_retransmits_same_datagram_on_schedule_then_expires() -> None:
    ng = core(RetrySchedule((0.5, 1.0, 2.0)))
    cookie = ng.request("offer", {"call-id": "a"}, now=100.0)
    first = ng.datagrams_to_send()
    assert len(first) == 1 and first[0].startswith(cookie + b" ")

    sent_at = [100.0]
    now = 100.0
    expired = []
    while (deadline := ng.next_deadline()) is not None:
        now = deadline
        expired += ng.handle_timer(now)
        sent_at += [now] * len(again := ng.datagrams_to_send())
        assert all(d == first[0] for d in again)  # the SAME cookie and body

    assert sent_at == [100.0, 100.5, 101.5]
    assert [(e.cookie, e.command, e.waited, e.attempts) for e in expired] == [
        (cookie, "offer", 3.5, 3)
    ]
    assert ng.in_flight == 0
    assert (ng.counters.sent, ng.counters.retransmitted, ng.counters.expired) == (1, 2, 1)


def test_each_command_gets_a_fresh_cookie() -> None:
    ng = core()
    a = ng.request("ping", {}, now=0.0)
    b = ng.request("ping", {}, now=0.0)

    assert a != b
    assert [d.partition(b" ")[0] for d in ng.datagrams_to_send()] == [a, b]


def test_a_repeated_cookie_from_the_factory_is_not_reused_while_in_flight() -> None:
    values = iter([b"same", b"same", b"other"])
    ng = NgCore(new_cookie=lambda: next(values))

    assert ng.request("ping", {}, now=0.0) == b"same"
    assert ng.request("ping", {}, now=0.0) == b"other"


def test_answers_match_by_cookie_in_any_order_and_late_duplicates_are_ignored() -> None:
    ng = core()
    a = ng.request("offer", {"call-id": "a"}, now=0.0)
    b = ng.request("offer", {"call-id": "b"}, now=0.0)
    da, db = ng.datagrams_to_send()

    got_b = ng.receive(reply_to(db, {"result": "ok", "sdp": "B"}), now=0.004)
    got_a = ng.receive(reply_to(da, {"result": "ok", "sdp": "A"}), now=0.010)
    duplicate = ng.receive(reply_to(da, {"result": "ok", "sdp": "A"}), now=0.011)

    assert got_b is not None and (got_b.cookie, got_b.body["sdp"]) == (b, "B")
    assert got_a is not None and (got_a.cookie, got_a.body["sdp"]) == (a, "A")
    assert got_a.elapsed == pytest.approx(0.010)
    assert duplicate is None
    assert ng.counters.stray == 1
    assert ng.next_deadline() is None  # nothing left to retransmit


def test_answer_after_retransmission_counts_attempts_and_stops_the_schedule() -> None:
    ng = core(RetrySchedule((0.5, 1.0)))
    ng.request("delete", {"call-id": "a"}, now=0.0)
    (datagram,) = ng.datagrams_to_send()
    assert ng.handle_timer(0.5) == []
    assert ng.datagrams_to_send() == [datagram]

    reply = ng.receive(reply_to(datagram, {"result": "ok"}), now=0.7)

    assert reply is not None and reply.attempts == 2
    assert ng.handle_timer(10.0) == [] and ng.datagrams_to_send() == []


def test_late_timer_keeps_the_schedule_anchored_to_due_times() -> None:
    ng = core(RetrySchedule((0.5, 1.0, 2.0)))
    ng.request("ping", {}, now=0.0)
    ng.datagrams_to_send()

    ng.handle_timer(0.9)  # woke up 0.4 s late

    assert ng.next_deadline() == pytest.approx(1.5)


def test_malformed_and_unknown_datagrams_are_counted_and_dropped() -> None:
    ng = core()
    ng.request("ping", {}, now=0.0)

    assert ng.receive(b"junk", now=0.1) is None
    assert ng.receive(b"zzz d6:result4:ponge", now=0.1) is None

    assert (ng.counters.malformed, ng.counters.stray, ng.in_flight) == (1, 1, 1)


def test_cancelled_command_is_not_retransmitted() -> None:
    ng = core()
    cookie = ng.request("ping", {}, now=0.0)
    ng.datagrams_to_send()

    ng.cancel(cookie)

    assert ng.next_deadline() is None
    assert ng.handle_timer(100.0) == [] and ng.datagrams_to_send() == []


def test_per_command_schedule_overrides_the_default() -> None:
    ng = core(RetrySchedule((0.5, 1.0, 2.0)))
    ng.request("ping", {}, now=0.0, schedule=RetrySchedule((0.25,)))
    ng.datagrams_to_send()

    (expired,) = ng.handle_timer(0.25)

    assert (expired.waited, expired.attempts) == (0.25, 1)


@pytest.mark.parametrize("intervals", [(), (0.5, 0.0), (-1.0,)])
def test_schedule_must_be_positive(intervals: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        RetrySchedule(intervals)
