"""How many proxied transactions per second the transaction layer alone sustains.

    uv run python bench/transaction_bench.py [--pairs N] [--rate CPS] [--tcp]

One "pair" is what a stateful proxy does for one INVITE: a server transaction (INVITE in, 100
and 180 and 200 out) and a client transaction (INVITE out, 180 and 200 in, one 2xx
retransmission passed up and forwarded), plus the end-to-end ACK arriving as a stray, then
both transactions through timers L and M to Terminated. A "call" adds the BYE pair (non-INVITE
server and client). Arrivals are spread on a virtual clock at ``--rate`` per second so the
timer heap holds as many live transactions as a real proxy at that rate would. The figure is
the best of ``--repeat`` runs, in CPU time of this process (the machine is shared with other
work; CPU time is steadier than wall time). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import time

from teams_sbc.sip.transaction import TransactionTable

SENT_BY = "192.0.2.1:5060"


def _ack(response: bytes) -> bytes:
    return b"ACK"


def invite_pairs(pairs: int, rate: float, reliable: bool, with_bye: bool) -> float:
    """Run ``pairs`` proxied INVITE (and BYE) transactions; return the wall time in seconds."""
    table: TransactionTable[bytes] = TransactionTable()
    invite, trying, ringing, ok, ack, bye = b"INVITE", b"100", b"180", b"200", b"ACK", b"BYE"
    deadline = table.next_deadline()
    started = time.process_time()
    for i in range(pairs):
        now = i / rate
        if deadline is not None and deadline <= now:
            table.advance(now)
        up = table.receive_request(invite, method="INVITE", branch=f"z9hG4bKs{i}",
                                   sent_by=SENT_BY, reliable=reliable, now=now)
        server = up[0].txn  # type: ignore[union-attr]
        table.respond(server, trying, status=100, now=now)
        branch = f"z9hG4bKc{i}"
        table.send_request(invite, method="INVITE", branch=branch, reliable=reliable, now=now,
                           build_ack=_ack)
        table.receive_response(ringing, status=180, method="INVITE", branch=branch, now=now)
        table.respond(server, ringing, status=180, now=now)
        table.receive_response(ok, status=200, method="INVITE", branch=branch, now=now)
        table.respond(server, ok, status=200, now=now)
        table.receive_response(ok, status=200, method="INVITE", branch=branch, now=now)
        table.respond(server, ok, status=200, now=now)
        table.receive_request(ack, method="ACK", branch=f"z9hG4bKa{i}", sent_by=SENT_BY,
                              reliable=reliable, now=now)
        if with_bye:
            up = table.receive_request(bye, method="BYE", branch=f"z9hG4bKb{i}",
                                       sent_by=SENT_BY, reliable=reliable, now=now)
            bye_server = up[0].txn  # type: ignore[union-attr]
            table.send_request(bye, method="BYE", branch=f"z9hG4bKd{i}", reliable=reliable,
                               now=now)
            table.receive_response(ok, status=200, method="BYE", branch=f"z9hG4bKd{i}",
                                   now=now)
            table.respond(bye_server, ok, status=200, now=now)
        deadline = table.next_deadline()
    table.advance(pairs / rate + 3600.0)
    elapsed = time.process_time() - started
    assert len(table) == 0, "transactions left behind"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=5_000.0, help="virtual arrivals per second")
    parser.add_argument("--tcp", action="store_true", help="reliable transport (no A/E/G)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best one counts")
    args = parser.parse_args()
    invite_only = min(
        invite_pairs(args.pairs, args.rate, args.tcp, with_bye=False) for _ in range(args.repeat)
    )
    calls = min(
        invite_pairs(args.pairs, args.rate, args.tcp, with_bye=True) for _ in range(args.repeat)
    )
    result = {
        "transport": "tcp" if args.tcp else "udp",
        "pairs": args.pairs,
        "invite_pairs_per_s": round(args.pairs / invite_only),
        "calls_per_s": round(args.pairs / calls),
        "us_per_invite_pair": round(invite_only / args.pairs * 1e6, 2),
    }
    print(f"INVITE server+client pairs to Terminated: {result['invite_pairs_per_s']}/s; "
          f"calls (INVITE + BYE pairs): {result['calls_per_s']}/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
