"""Micro-benchmark of the SIP message layer: messages per second on one core.

    uv run python bench/parse_bench.py [--seconds S]

For the recorded test vectors (a sipp INVITE and 200 OK, a Teams INVITE) it measures how many
messages per second one core can:

- parse (``parse_message``);
- parse and read what the transaction layer reads on every message (top Via branch, CSeq,
  Call-ID, From tag);
- parse, push our Via (a proxy forwarding a request) or pop it (a response), serialise;
- copy a parsed request, push our Via, serialise (the forward path without the parse);
- cut it out of a TCP/TLS byte stream (``StreamFramer``).

Each figure is per CPU second of this process (other programs on the machine distort it
less than wall time) and the best of many short rounds: this machine's speed swings 2-3x
from one second to the next, and the best round is the one least disturbed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from teams_sbc.sip.framing import StreamFramer
from teams_sbc.sip.message import Request, Response, parse_message

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "sip" / "vectors"
OUR_VIA = "SIP/2.0/TLS sbc1.contoso.com:5061;branch=z9hG4bK-bench-1"
ROUND = 0.05  # seconds of CPU per round


def rate(work: Callable[[], object], seconds: float) -> float:
    """Calls per CPU second of ``work``: the best of the rounds that fit in ``seconds``."""
    best = 0.0
    batch = 200
    spent = 0.0
    while spent < seconds:
        calls = 0
        start = time.process_time()
        while True:
            for _ in range(batch):
                work()
            calls += batch
            now = time.process_time()
            if now - start >= ROUND:
                break
        spent += now - start
        best = max(best, calls / (now - start))
    return best


def parse_only(data: bytes) -> Callable[[], object]:
    return lambda: parse_message(data)


def parse_and_read(data: bytes) -> Callable[[], object]:
    """Parse plus what the transaction layer reads on every message."""

    def work() -> object:
        msg = parse_message(data)
        return (msg.top_via.branch, msg.cseq, msg.call_id, msg.from_tag)

    return work


def push_via_and_serialise(data: bytes) -> Callable[[], object]:
    """Parse, push our Via (a proxy forwarding a request), serialise."""

    def work() -> object:
        msg = parse_message(data)
        msg.headers.prepend("Via", OUR_VIA)
        return msg.to_bytes()

    return work


def reserialise_after_push(data: bytes) -> Callable[[], object]:
    """Without the parse: copy a parsed request, push our Via, serialise (the forward path)."""
    parsed = parse_message(data)
    assert isinstance(parsed, Request)

    def work() -> object:
        msg = parsed.copy()
        msg.headers.prepend("Via", OUR_VIA)
        return msg.to_bytes()

    return work


def pop_via_and_serialise(data: bytes) -> Callable[[], object]:
    """Parse, pop our Via (a proxy forwarding a response), serialise."""

    def work() -> object:
        msg = parse_message(data)
        msg.headers.remove_first_value("via")
        return msg.to_bytes()

    return work


def frame(data: bytes) -> Callable[[], object]:
    """Cut the message out of a stream read that holds exactly it (TCP/TLS)."""
    framer = StreamFramer()
    return lambda: framer.feed(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU time per figure")
    args = parser.parse_args()
    cases = [
        ("Teams INVITE", "teams_invite.sip"),
        ("sipp INVITE", "sipp_uac_invite.sip"),
        ("sipp 200 OK", "sipp_uas_200.sip"),
    ]
    for label, name in cases:
        data = (VECTORS / name).read_bytes()
        msg = parse_message(data)
        assert msg.to_bytes() == data
        print(f"{label} ({len(data)} bytes, {len(msg.headers)} headers)")
        print(f"  parse:                      {rate(parse_only(data), args.seconds):>9,.0f} /s")
        print(f"  parse + Via/CSeq/tags read: {rate(parse_and_read(data), args.seconds):>9,.0f} /s")
        if isinstance(msg, Request):
            figure = rate(push_via_and_serialise(data), args.seconds)
            print(f"  parse + push Via + bytes:   {figure:>9,.0f} /s")
            figure = rate(reserialise_after_push(data), args.seconds)
            print(f"  copy + push Via + bytes:    {figure:>9,.0f} /s")
        elif isinstance(msg, Response):
            figure = rate(pop_via_and_serialise(data), args.seconds)
            print(f"  parse + pop Via + bytes:    {figure:>9,.0f} /s")
        print(f"  frame from a stream:        {rate(frame(data), args.seconds):>9,.0f} /s")


if __name__ == "__main__":
    main()
