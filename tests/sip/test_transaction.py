"""The RFC 3261 section 17 transaction machines, on a virtual clock (no sleeps, no sockets).

Messages are plain bytes: the transaction layer never looks inside them. Each test drives one
machine through its states with the events a peer and the TU would produce, and asserts the
actions that come out, with the exact time of every retransmission and timeout.
"""

from __future__ import annotations

import gc
import importlib.util
import itertools
import tracemalloc
import weakref
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import pytest

from teams_sbc.sip.transaction import (
    MACHINES,
    Action,
    Event,
    Kind,
    Op,
    PassUp,
    Send,
    SendCancel,
    State,
    Stray,
    Terminated,
    TimedOut,
    Timer,
    TimerConfig,
    TimerOp,
    Transaction,
    TransactionTable,
    TransportFailed,
    waiting_states,
)

ROOT = Path(__file__).resolve().parents[2]
T1, T2, T4 = 0.5, 4.0, 5.0
BRANCH = "z9hG4bK-1"
SENT_BY = "192.0.2.10:5060"

Summary = tuple[object, ...]


def ack_for(response: bytes) -> bytes:
    """The TU's ACK builder (RFC 3261 17.1.1.3); here just recognisable bytes."""
    return b"ACK/" + response


def summary(action: Action[bytes]) -> Summary:
    """An action as a short tuple, so a whole exchange reads as one list in an assertion."""
    if isinstance(action, Send):
        return ("retransmit" if action.retransmission else "send", action.message)
    if isinstance(action, PassUp):
        return ("up", action.message)
    if isinstance(action, SendCancel):
        return ("cancel",)
    if isinstance(action, TimedOut):
        return ("timeout", action.timer.name)
    if isinstance(action, TransportFailed):
        return ("transport failed",)
    if isinstance(action, Terminated):
        return ("terminated",)
    assert isinstance(action, Stray)
    return ("stray", action.message)


def state(txn: Transaction[bytes]) -> State:
    """The transaction's state, read through a call so type checkers do not narrow it."""
    return txn.state


def summarise(actions: list[Action[bytes]]) -> list[Summary]:
    return [summary(a) for a in actions]


class Clock:
    """Drives a table the way the asyncio adapter does: sleep until next_deadline(), advance."""

    def __init__(self, table: TransactionTable[bytes]) -> None:
        self.table = table
        self.now = 0.0

    def run(self, until: float) -> list[tuple[float, Summary]]:
        """Fire every timer due up to ``until``; return (time, action) for each action."""
        fired: list[tuple[float, Summary]] = []
        while (deadline := self.table.next_deadline()) is not None and deadline <= until:
            self.now = max(self.now, deadline)
            fired += [(self.now, summary(a)) for a in self.table.advance(self.now)]
        self.now = until
        return fired


@pytest.fixture
def table() -> TransactionTable[bytes]:
    return TransactionTable[bytes](TimerConfig(t1=T1, t2=T2, t4=T4))


@pytest.fixture
def clock(table: TransactionTable[bytes]) -> Clock:
    return Clock(table)


def invite_client(
    table: TransactionTable[bytes], *, reliable: bool = False, now: float = 0.0
) -> tuple[Transaction[bytes], list[Summary]]:
    txn, out = table.send_request(
        b"INVITE", method="INVITE", branch=BRANCH, reliable=reliable, now=now, build_ack=ack_for
    )
    return txn, summarise(out)


def response(
    table: TransactionTable[bytes],
    status: int,
    method: str = "INVITE",
    now: float = 0.0,
    body: bytes | None = None,
) -> list[Summary]:
    msg = body if body is not None else str(status).encode()
    return summarise(
        table.receive_response(msg, status=status, method=method, branch=BRANCH, now=now)
    )


def request(
    table: TransactionTable[bytes],
    method: str,
    *,
    reliable: bool = False,
    now: float = 0.0,
    branch: str = BRANCH,
) -> list[Summary]:
    return summarise(
        table.receive_request(
            method.encode(),
            method=method,
            branch=branch,
            sent_by=SENT_BY,
            reliable=reliable,
            now=now,
        )
    )


def server_txn(
    table: TransactionTable[bytes], method: str, *, reliable: bool = False, now: float = 0.0
) -> Transaction[bytes]:
    out = table.receive_request(
        method.encode(), method=method, branch=BRANCH, sent_by=SENT_BY, reliable=reliable, now=now
    )
    assert summarise(out) == [("up", method.encode())]
    first = out[0]
    assert isinstance(first, PassUp)
    return first.txn


def respond(
    table: TransactionTable[bytes], txn: Transaction[bytes], status: int, now: float = 0.0
) -> list[Summary]:
    return summarise(table.respond(txn, str(status).encode(), status=status, now=now))


def retransmission_times(fired: list[tuple[float, Summary]]) -> list[float]:
    return [t for t, (what, *_) in fired if what == "retransmit"]


# ------------------------------------------------------------------------------------------
# INVITE client (RFC 3261 17.1.1, RFC 6026 7.2)
# ------------------------------------------------------------------------------------------


def test_invite_client_retransmits_on_timer_a_doubling_until_timer_b(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    txn, out = invite_client(table)
    assert out == [("send", b"INVITE")]
    assert state(txn) is State.CALLING
    fired = clock.run(100.0)
    # A: T1, then 2T1, 4T1, ... with no cap (17.1.1.2); B at 64*T1 = 32 s ends it.
    assert retransmission_times(fired) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert fired[-2:] == [(32.0, ("timeout", "B")), (32.0, ("terminated",))]
    assert state(txn) is State.TERMINATED
    assert len(table) == 0
    assert table.stats.retransmissions_sent == 6
    assert table.stats.timeouts == 1


def test_invite_client_over_tcp_does_not_retransmit_but_times_out(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    txn, _ = invite_client(table, reliable=True)
    assert txn.timers == {Timer.B: 32.0}
    assert clock.run(100.0) == [(32.0, ("timeout", "B")), (32.0, ("terminated",))]


def test_invite_client_provisional_stops_retransmissions_and_each_is_passed_up(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    txn, _ = invite_client(table)
    assert clock.run(0.6) == [(0.5, ("retransmit", b"INVITE"))]
    assert response(table, 100, now=0.6) == [("up", b"100")]
    assert state(txn) is State.PROCEEDING
    assert txn.timers == {}  # neither A nor B: the proxy's timer C governs Proceeding (16.8)
    assert response(table, 180, now=1.0, body=b"180 tag=a") == [("up", b"180 tag=a")]
    assert response(table, 183, now=1.1, body=b"183 tag=b") == [("up", b"183 tag=b")]
    assert clock.run(200.0) == []
    assert state(txn) is State.PROCEEDING


def test_invite_client_acks_a_failure_itself_and_absorbs_its_retransmissions_for_timer_d(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    txn, _ = invite_client(table)
    response(table, 180, now=0.1)
    assert response(table, 486, now=2.0) == [("up", b"486"), ("send", b"ACK/486")]
    assert state(txn) is State.COMPLETED
    assert txn.last == b"ACK/486"
    # A retransmitted 486 is not passed up again; the ACK is repeated (17.1.1.2).
    assert response(table, 486, now=3.0) == [("retransmit", b"ACK/486")]
    assert table.stats.retransmissions_absorbed == 1
    # Timer D: 32 s over UDP.
    assert clock.run(100.0) == [(34.0, ("terminated",))]
    assert len(table) == 0


def test_invite_client_failure_straight_from_calling(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    invite_client(table)
    assert response(table, 503, now=0.2) == [("up", b"503"), ("send", b"ACK/503")]
    assert clock.run(100.0) == [(32.2, ("terminated",))]  # no A retransmission: A was stopped


def test_invite_client_timer_d_is_zero_over_tcp(table: TransactionTable[bytes]) -> None:
    txn, _ = invite_client(table, reliable=True)
    assert response(table, 404, now=1.0) == [("up", b"404"), ("send", b"ACK/404"), ("terminated",)]
    assert state(txn) is State.TERMINATED
    assert len(table) == 0
    assert table.next_deadline() is None or table.advance(1000.0) == []


def test_invite_client_accepted_passes_every_2xx_up_until_timer_m(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    txn, _ = invite_client(table)
    response(table, 180, now=0.1)
    assert response(table, 200, now=5.0, body=b"200 tag=a") == [("up", b"200 tag=a")]
    assert state(txn) is State.ACCEPTED
    assert txn.timers == {Timer.M: 5.0 + 64 * T1}
    # RFC 6026 7.2: retransmissions and 2xx from other forks all go up, for the proxy to forward.
    assert response(table, 200, now=5.5, body=b"200 tag=a") == [("up", b"200 tag=a")]
    assert response(table, 200, now=6.0, body=b"200 tag=b") == [("up", b"200 tag=b")]
    # A late non-2xx or 1xx has no transition in Accepted: ignored, counted.
    assert response(table, 486, now=6.5) == []
    assert table.stats.ignored == 1
    assert clock.run(100.0) == [(37.0, ("terminated",))]


def test_invite_client_2xx_straight_from_calling_over_tcp_still_waits_timer_m(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    txn, _ = invite_client(table, reliable=True)
    assert response(table, 200, now=1.0) == [("up", b"200")]
    assert txn.timers == {Timer.M: 33.0}  # M is 64*T1 over any transport
    assert clock.run(100.0) == [(33.0, ("terminated",))]


def test_invite_client_cancel_waits_for_a_provisional_response(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    txn, _ = invite_client(table)
    # RFC 3261 9.1: no CANCEL before a provisional response; the wish is noted.
    assert summarise(table.cancel(txn, now=0.2)) == []
    assert txn.cancel_noted and not txn.cancel_sent
    assert clock.run(0.6) == [(0.5, ("retransmit", b"INVITE"))]  # still Calling
    assert response(table, 180, now=0.7) == [("up", b"180"), ("cancel",)]
    assert txn.cancel_sent
    # The callee answers the CANCEL's effect with 487: ACKed like any failure.
    assert response(table, 487, now=0.9) == [("up", b"487"), ("send", b"ACK/487")]
    assert clock.run(100.0) == [(32.9, ("terminated",))]


def test_invite_client_cancel_in_proceeding_gives_up_after_64_t1_without_final(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    txn, _ = invite_client(table)
    response(table, 183, now=0.1)
    assert summarise(table.cancel(txn, now=10.0)) == [("cancel",)]
    assert summarise(table.cancel(txn, now=11.0)) == []  # one CANCEL per INVITE
    assert txn.timers == {Timer.B: 42.0}
    assert clock.run(100.0) == [(42.0, ("timeout", "B")), (42.0, ("terminated",))]


def test_cancel_after_final_or_on_non_invite_does_nothing(table: TransactionTable[bytes]) -> None:
    txn, _ = invite_client(table)
    response(table, 200, now=0.1)
    assert summarise(table.cancel(txn, now=0.2)) == []
    options, _ = table.send_request(
        b"OPTIONS", method="OPTIONS", branch="z9hG4bK-o", reliable=False, now=0.0
    )
    assert summarise(table.cancel(options, now=0.2)) == []
    assert not options.cancel_noted


# ------------------------------------------------------------------------------------------
# Non-INVITE client (RFC 3261 17.1.2)
# ------------------------------------------------------------------------------------------


def non_invite_client(
    table: TransactionTable[bytes], *, reliable: bool = False, method: str = "OPTIONS"
) -> Transaction[bytes]:
    txn, out = table.send_request(
        method.encode(), method=method, branch=BRANCH, reliable=reliable, now=0.0
    )
    assert summarise(out) == [("send", method.encode())]
    assert state(txn) is State.TRYING
    return txn


def test_non_invite_client_timer_e_doubles_up_to_t2_until_timer_f(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    non_invite_client(table)
    fired = clock.run(100.0)
    # E: T1, 2T1, 4T1, then T2 every time (17.1.2.2); F at 64*T1.
    assert retransmission_times(fired) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert fired[-2:] == [(32.0, ("timeout", "F")), (32.0, ("terminated",))]
    assert len(table) == 0


def test_non_invite_client_retransmits_every_t2_in_proceeding(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    txn = non_invite_client(table, method="BYE")
    assert response(table, 100, method="BYE", now=0.2) == [("up", b"100")]
    assert state(txn) is State.PROCEEDING
    fired = clock.run(100.0)
    # Proceeding: E fires at its pending deadline, then every T2; F still bounds it.
    assert retransmission_times(fired) == [0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5]
    assert fired[-2:] == [(32.0, ("timeout", "F")), (32.0, ("terminated",))]


def test_non_invite_client_final_response_then_timer_k_absorbs_copies(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    txn = non_invite_client(table)
    assert clock.run(0.5) == [(0.5, ("retransmit", b"OPTIONS"))]
    assert response(table, 180, method="OPTIONS", now=0.6) == [("up", b"180")]
    assert response(table, 200, method="OPTIONS", now=1.0) == [("up", b"200")]
    assert state(txn) is State.COMPLETED
    assert txn.timers == {Timer.K: 1.0 + T4}
    assert response(table, 200, method="OPTIONS", now=2.0) == []  # absorbed
    assert table.stats.retransmissions_absorbed == 1
    assert clock.run(100.0) == [(6.0, ("terminated",))]


def test_non_invite_client_failure_from_trying(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    non_invite_client(table)
    assert response(table, 403, method="OPTIONS", now=0.1) == [("up", b"403")]
    assert clock.run(100.0) == [(5.1, ("terminated",))]


def test_non_invite_client_over_tcp_no_e_and_k_is_zero(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    txn = non_invite_client(table, reliable=True)
    assert txn.timers == {Timer.F: 32.0}
    assert response(table, 200, method="OPTIONS", now=1.0) == [("up", b"200"), ("terminated",)]
    assert clock.run(100.0) == []
    assert len(table) == 0


def test_non_invite_client_over_tcp_times_out_with_timer_f(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    non_invite_client(table, reliable=True)
    assert clock.run(100.0) == [(32.0, ("timeout", "F")), (32.0, ("terminated",))]


# ------------------------------------------------------------------------------------------
# INVITE server (RFC 3261 17.2.1, RFC 6026 7.1)
# ------------------------------------------------------------------------------------------


def test_invite_server_tu_sends_100_and_retransmitted_invite_gets_latest_provisional(
    table: TransactionTable[bytes],
) -> None:
    txn = server_txn(table, "INVITE")
    assert state(txn) is State.PROCEEDING
    # Before the TU answered anything, a retransmission is absorbed silently.
    assert request(table, "INVITE", now=0.05) == []
    # The proxy sends 100 at once (RFC 3261 16.2); the machine sends what the TU gives it.
    assert respond(table, txn, 100, now=0.1) == [("send", b"100")]
    assert request(table, "INVITE", now=0.5) == [("retransmit", b"100")]
    assert respond(table, txn, 180, now=1.0) == [("send", b"180")]
    assert request(table, "INVITE", now=1.5) == [("retransmit", b"180")]
    assert state(txn) is State.PROCEEDING
    assert table.stats.retransmissions_absorbed == 3
    assert table.stats.retransmissions_sent == 2


def test_invite_server_failure_retransmitted_on_timer_g_capped_at_t2_until_timer_h(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    txn = server_txn(table, "INVITE")
    respond(table, txn, 100)
    assert respond(table, txn, 486, now=1.0) == [("send", b"486")]
    assert state(txn) is State.COMPLETED
    fired = clock.run(100.0)
    offsets = [t - 1.0 for t in retransmission_times(fired)]
    assert offsets == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    # H: no ACK in 64*T1; the TU is told (17.2.1).
    assert fired[-2:] == [(33.0, ("timeout", "H")), (33.0, ("terminated",))]
    assert len(table) == 0


def test_invite_server_ack_confirms_then_timer_i_absorbs_ack_copies(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    txn = server_txn(table, "INVITE")
    respond(table, txn, 100)
    respond(table, txn, 404, now=1.0)
    # A retransmitted INVITE in Completed gets the final response again.
    assert request(table, "INVITE", now=1.2) == [("retransmit", b"404")]
    assert clock.run(1.6) == [(1.5, ("retransmit", b"404"))]
    # The ACK is absorbed by the transaction (hop by hop): not passed up.
    assert request(table, "ACK", now=1.6) == []
    assert state(txn) is State.CONFIRMED
    assert txn.timers == {Timer.I: 1.6 + T4}
    assert request(table, "ACK", now=2.0) == []
    assert request(table, "INVITE", now=2.1) == []
    assert clock.run(100.0) == [(6.6, ("terminated",))]


def test_invite_server_over_tcp_no_g_and_i_is_zero(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    txn = server_txn(table, "INVITE", reliable=True)
    respond(table, txn, 100)
    respond(table, txn, 603, now=1.0)
    assert txn.timers == {Timer.H: 33.0}  # H over any transport, G only over UDP
    assert request(table, "ACK", reliable=True, now=1.1) == [("terminated",)]
    assert clock.run(100.0) == []
    assert len(table) == 0


def test_invite_server_over_tcp_times_out_on_h_without_ack(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    txn = server_txn(table, "INVITE", reliable=True)
    respond(table, txn, 500, now=2.0)
    assert clock.run(100.0) == [(34.0, ("timeout", "H")), (34.0, ("terminated",))]


def test_invite_server_accepted_absorbs_invites_sends_2xx_passes_ack_until_timer_l(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    txn = server_txn(table, "INVITE")
    respond(table, txn, 100)
    assert respond(table, txn, 200, now=3.0) == [("send", b"200")]
    assert state(txn) is State.ACCEPTED
    assert txn.timers == {Timer.L: 35.0}
    # RFC 6026 7.1: INVITE retransmissions are absorbed, with nothing sent (the 2xx
    # retransmissions come from the UAS, through the proxy, as TU sends).
    assert request(table, "INVITE", now=3.5) == []
    assert respond(table, txn, 200, now=4.0) == [("send", b"200")]
    # A 2xx from another fork is sent too.
    assert summarise(table.respond(txn, b"200 tag=b", status=200, now=4.1)) == [
        ("send", b"200 tag=b")
    ]
    # An ACK matching in Accepted is the TU's (RFC 6026 8.7).
    assert request(table, "ACK", now=4.5) == [("up", b"ACK")]
    # 1xx or non-2xx after a 2xx: no transition.
    assert respond(table, txn, 180, now=4.6) == []
    assert respond(table, txn, 486, now=4.7) == []
    assert clock.run(100.0) == [(35.0, ("terminated",))]


# ------------------------------------------------------------------------------------------
# Non-INVITE server (RFC 3261 17.2.2)
# ------------------------------------------------------------------------------------------


def test_non_invite_server_through_every_state_with_timer_j(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    txn = server_txn(table, "BYE")
    assert state(txn) is State.TRYING
    assert request(table, "BYE", now=0.5) == []  # Trying: discarded, nothing to resend
    assert respond(table, txn, 100, now=0.6) == [("send", b"100")]
    assert state(txn) is State.PROCEEDING
    assert request(table, "BYE", now=1.0) == [("retransmit", b"100")]
    assert respond(table, txn, 200, now=2.0) == [("send", b"200")]
    assert state(txn) is State.COMPLETED
    assert txn.timers == {Timer.J: 2.0 + 64 * T1}
    assert request(table, "BYE", now=3.0) == [("retransmit", b"200")]
    assert respond(table, txn, 500, now=3.5) == []  # one final response only
    assert clock.run(100.0) == [(34.0, ("terminated",))]
    assert len(table) == 0


def test_non_invite_server_over_tcp_terminates_with_the_final_response(
    table: TransactionTable[bytes],
) -> None:
    txn = server_txn(table, "OPTIONS", reliable=True)
    assert respond(table, txn, 200, now=0.1) == [("send", b"200"), ("terminated",)]
    assert len(table) == 0
    # A retransmission after that starts a new transaction (over TCP the peer never resends).
    assert request(table, "OPTIONS", reliable=True, now=0.2) == [("up", b"OPTIONS")]


# ------------------------------------------------------------------------------------------
# Matching, CANCEL, strays (RFC 3261 9.1, 9.2, 17.1.3, 17.2.3)
# ------------------------------------------------------------------------------------------


def test_cancel_is_its_own_server_transaction_and_finds_its_invite(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    invite = server_txn(table, "INVITE")
    respond(table, invite, 100)
    cancel = server_txn(table, "CANCEL", now=1.0)  # same branch and sent-by as the INVITE
    assert cancel is not invite
    assert cancel.kind is Kind.NON_INVITE_SERVER
    assert table.invite_for_cancel(cancel) is invite
    assert table.counts()[Kind.INVITE_SERVER] == 1
    assert table.counts()[Kind.NON_INVITE_SERVER] == 1
    # The proxy answers the CANCEL 200 and the INVITE 487 (16.10); each on its own transaction.
    assert respond(table, cancel, 200, now=1.0) == [("send", b"200")]
    assert respond(table, invite, 487, now=1.1) == [("send", b"487")]
    assert request(table, "ACK", now=1.2) == []
    assert state(invite) is State.CONFIRMED
    clock.run(100.0)
    assert len(table) == 0
    assert table.invite_for_cancel(cancel) is None


def test_cancel_matching_needs_the_same_branch_and_sent_by(table: TransactionTable[bytes]) -> None:
    server_txn(table, "INVITE")
    out = table.receive_request(
        b"CANCEL",
        method="CANCEL",
        branch=BRANCH,
        sent_by="198.51.100.1:5060",
        reliable=False,
        now=0.1,
    )
    first = out[0]
    assert isinstance(first, PassUp)
    assert table.invite_for_cancel(first.txn) is None


def test_client_invite_and_its_cancel_are_two_transactions_on_one_branch(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    invite, _ = invite_client(table)
    response(table, 180, now=0.1)
    assert summarise(table.cancel(invite, now=1.0)) == [("cancel",)]
    cancel, out = table.send_request(
        b"CANCEL", method="CANCEL", branch=BRANCH, reliable=False, now=1.0
    )
    assert summarise(out) == [("send", b"CANCEL")]
    # Responses find their transaction by CSeq method (17.1.3).
    assert response(table, 200, method="CANCEL", now=1.1) == [("up", b"200")]
    assert state(cancel) is State.COMPLETED
    assert state(invite) is State.PROCEEDING
    assert response(table, 487, now=1.2) == [("up", b"487"), ("send", b"ACK/487")]
    assert state(invite) is State.COMPLETED
    clock.run(100.0)
    assert len(table) == 0


def test_unmatched_responses_and_acks_are_strays(table: TransactionTable[bytes]) -> None:
    assert response(table, 200, now=0.0) == [("stray", b"200")]
    # The ACK for a 2xx carries a new branch (RFC 3261 17.2.3): no server transaction.
    assert request(table, "ACK", branch="z9hG4bK-other") == [("stray", b"ACK")]
    invite_client(table)
    assert summarise(
        table.receive_response(b"200", status=200, method="INVITE", branch="z9hG4bK-nope", now=0.1)
    ) == [("stray", b"200")]
    assert response(table, 99, now=0.1) == [("stray", b"99")]  # not a status code
    assert table.stats.strays == 4
    assert len(table) == 1


def test_tu_misuse_raises_value_error(table: TransactionTable[bytes]) -> None:
    with pytest.raises(ValueError, match="not a transaction"):
        table.send_request(b"ACK", method="ACK", branch="b1", reliable=False, now=0.0)
    with pytest.raises(ValueError, match="build_ack"):
        table.send_request(b"INVITE", method="INVITE", branch="b2", reliable=False, now=0.0)
    table.send_request(b"BYE", method="BYE", branch="b3", reliable=False, now=0.0)
    with pytest.raises(ValueError, match="exists already"):
        table.send_request(b"BYE", method="BYE", branch="b3", reliable=False, now=0.0)
    txn = server_txn(table, "INVITE")
    with pytest.raises(ValueError, match="status"):
        table.respond(txn, b"x", status=700, now=0.0)


def test_events_a_state_has_no_transition_for_are_ignored(table: TransactionTable[bytes]) -> None:
    txn = server_txn(table, "INVITE")
    # A response arriving for a server transaction, or TU events on a client one: no rows.
    client, _ = invite_client(table)
    assert respond(table, client, 200) == []
    assert summarise(table.cancel(txn, now=0.0)) == []
    assert table.stats.ignored == 2
    assert state(client) is State.CALLING
    assert state(txn) is State.PROCEEDING


# ------------------------------------------------------------------------------------------
# Transport errors (RFC 3261 17.1.1.2, 17.1.2.2, 17.2.1, 17.2.2)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
def test_transport_error_terminates_with_notification(
    table: TransactionTable[bytes], clock: Clock, kind: Kind
) -> None:
    if kind is Kind.INVITE_CLIENT:
        txn, _ = invite_client(table)
    elif kind is Kind.NON_INVITE_CLIENT:
        txn = non_invite_client(table)
    else:
        txn = server_txn(table, "INVITE" if kind is Kind.INVITE_SERVER else "BYE")
        respond(table, txn, 100)
    assert summarise(table.transport_error(txn, now=0.2)) == [
        ("transport failed",),
        ("terminated",),
    ]
    assert state(txn) is State.TERMINATED
    assert len(table) == 0
    assert table.stats.transport_failures == 1
    assert clock.run(100.0) == []  # its timers died with it
    # Anything after that is ignored.
    assert summarise(table.transport_error(txn, now=0.3)) == []


def test_transport_error_in_completed_server_state(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    txn = server_txn(table, "INVITE")
    respond(table, txn, 486)
    clock.run(0.5)
    assert summarise(table.transport_error(txn, now=0.5)) == [
        ("transport failed",),
        ("terminated",),
    ]
    assert clock.run(100.0) == []


# ------------------------------------------------------------------------------------------
# Timers: configuration, late loops, the shared heap
# ------------------------------------------------------------------------------------------


def test_configurable_t1_t2_t4() -> None:
    table = TransactionTable[bytes](TimerConfig(t1=0.25, t2=1.0, t4=2.0))
    clock = Clock(table)
    table.send_request(b"MESSAGE", method="MESSAGE", branch="b", reliable=False, now=0.0)
    fired = clock.run(100.0)
    # E: 0.25, 0.5, then capped at T2 = 1 s; F at 64*T1 = 16 s.
    expected = [0.25, 0.75, *[1.75 + i for i in range(15)]]
    assert retransmission_times(fired) == expected
    assert fired[-2][0] == 16.0
    # Timer D never drops below 32 s; K and I follow T4.
    udp = table.timers.durations(False)
    assert (udp[Timer.D], udp[Timer.K], udp[Timer.I]) == (32.0, 2.0, 2.0)
    assert TimerConfig(t1=1.0).durations(False)[Timer.D] == 64.0


def test_timer_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="T2 >= T1"):
        TimerConfig(t1=5.0, t2=4.0)


def test_a_late_event_loop_gets_one_retransmission_not_a_burst(
    table: TransactionTable[bytes],
) -> None:
    invite_client(table)
    # The loop wakes up at 2.0 instead of 0.5: A fired once, and is re-armed from now.
    assert summarise(table.advance(2.0)) == [("retransmit", b"INVITE")]
    assert table.next_deadline() == 3.0
    assert summarise(table.advance(3.0)) == [("retransmit", b"INVITE")]
    assert table.next_deadline() == 5.0


def test_next_deadline_is_none_when_idle_and_skips_cancelled_timers(
    table: TransactionTable[bytes],
) -> None:
    assert table.next_deadline() is None
    assert table.advance(10.0) == []
    invite_client(table, reliable=True)  # only B, at 32
    assert table.next_deadline() == 32.0
    response(table, 180, now=1.0)  # B stopped: the heap entry at 32 is stale but harmless
    assert summarise(table.advance(32.0)) == []
    assert table.next_deadline() is None


def test_ten_thousand_transactions_leave_nothing_behind(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    """Every kind, both transports, every ending: after the timers ran, the table is empty."""
    endings = itertools.cycle(range(6))
    for i in range(10_000):
        now = i * 0.001
        clock.run(now)
        branch = f"z9hG4bK-{i}"
        reliable = i % 2 == 0
        ending = next(endings)
        if ending == 0:  # proxied INVITE answered 200
            out = table.receive_request(
                b"INVITE",
                method="INVITE",
                branch=branch,
                sent_by=SENT_BY,
                reliable=reliable,
                now=now,
            )
            server = out[0].txn  # type: ignore[union-attr]
            table.respond(server, b"100", status=100, now=now)
            table.send_request(
                b"INVITE",
                method="INVITE",
                branch=branch + "c",
                reliable=reliable,
                now=now,
                build_ack=ack_for,
            )
            table.receive_response(
                b"180", status=180, method="INVITE", branch=branch + "c", now=now
            )
            table.respond(server, b"180", status=180, now=now)
            table.receive_response(
                b"200", status=200, method="INVITE", branch=branch + "c", now=now
            )
            table.respond(server, b"200", status=200, now=now)
        elif ending == 1:  # INVITE rejected, ACKed
            out = table.receive_request(
                b"INVITE",
                method="INVITE",
                branch=branch,
                sent_by=SENT_BY,
                reliable=reliable,
                now=now,
            )
            server = out[0].txn  # type: ignore[union-attr]
            table.respond(server, b"486", status=486, now=now)
            table.receive_request(
                b"ACK", method="ACK", branch=branch, sent_by=SENT_BY, reliable=reliable, now=now
            )
        elif ending == 2:  # INVITE client that never hears back
            table.send_request(
                b"INVITE",
                method="INVITE",
                branch=branch,
                reliable=reliable,
                now=now,
                build_ack=ack_for,
            )
        elif ending == 3:  # OPTIONS answered
            table.send_request(
                b"OPTIONS", method="OPTIONS", branch=branch, reliable=reliable, now=now
            )
            table.receive_response(b"200", status=200, method="OPTIONS", branch=branch, now=now)
        elif ending == 4:  # BYE received and answered
            out = table.receive_request(
                b"BYE", method="BYE", branch=branch, sent_by=SENT_BY, reliable=reliable, now=now
            )
            table.respond(out[0].txn, b"200", status=200, now=now)  # type: ignore[union-attr]
        else:  # INVITE client with a transport error
            txn, _ = table.send_request(
                b"INVITE",
                method="INVITE",
                branch=branch,
                reliable=reliable,
                now=now,
                build_ack=ack_for,
            )
            table.transport_error(txn, now=now)
    assert len(table) > 0
    clock.run(1000.0)
    assert len(table) == 0
    assert table.counts() == dict.fromkeys(Kind, 0)
    assert table.next_deadline() is None
    assert table.heap_size() == 0
    assert table.stats.created == table.stats.terminated


def test_heap_stays_proportional_to_live_transactions(table: TransactionTable[bytes]) -> None:
    """Short TCP transactions each leave a 32 s timer F entry behind; compaction drops them."""
    for i in range(50_000):
        branch = f"z9hG4bK-{i}"
        table.send_request(b"OPTIONS", method="OPTIONS", branch=branch, reliable=True, now=0.0)
        table.receive_response(b"200", status=200, method="OPTIONS", branch=branch, now=0.0)
    assert len(table) == 0
    assert table.heap_size() <= 2 * 1024 + 2


# ------------------------------------------------------------------------------------------
# The tables themselves, and the docs drawn from them
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
def test_every_timer_started_in_a_state_has_a_transition_there(kind: Kind) -> None:
    """A timer that fires in a state without a row would be silently lost."""
    table = MACHINES[kind]
    running: dict[State, set[Timer]] = {}
    for (_, _event), (next_state, ops) in table.items():
        for op in ops:
            if isinstance(op, TimerOp) and op.verb == "start":
                running.setdefault(next_state, set()).add(op.timer)
            if op is Op.CANCEL_IF_NOTED:
                running.setdefault(next_state, set()).add(Timer.B)
    for state, timers in running.items():
        for timer in timers:
            assert (state, Event[f"TIMER_{timer.name}"]) in table, (state, timer)


@pytest.mark.parametrize("kind", list(Kind))
def test_every_live_state_is_reachable_ends_and_handles_transport_errors(kind: Kind) -> None:
    table = MACHINES[kind]
    states = {s for s, _ in table} | {n for n, _ in table.values()}
    reachable = {State.INIT}
    while True:
        more = {n for (s, _), (n, _) in table.items() if s in reachable} - reachable
        if not more:
            break
        reachable |= more
    assert reachable == states
    assert State.TERMINATED in states
    for state in states - {State.INIT, State.TERMINATED}:
        assert (state, Event.TRANSPORT_ERROR) in table


def _load_generator() -> ModuleType:
    path = ROOT / "tools" / "gen_transaction_diagram.py"
    spec = importlib.util.spec_from_file_location("gen_transaction_diagram", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_diagrams_match_the_tables() -> None:
    generator = _load_generator()
    doc = ROOT / "docs" / "transactions.md"
    current = doc.read_text(encoding="utf-8")
    assert generator.update(current) == current, (
        "docs/transactions.md is out of date: run `uv run python tools/gen_transaction_diagram.py`"
    )
    arrows = [line for line in current.splitlines() if " --> " in line]
    assert len(arrows) == sum(len(table) + 1 for table in MACHINES.values())  # + "--> [*]"


def test_docs_check_notices_a_changed_table(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = _load_generator()
    current = (ROOT / "docs" / "transactions.md").read_text(encoding="utf-8")
    changed = dict(MACHINES[Kind.NON_INVITE_SERVER])
    del changed[(State.TRYING, Event.REQUEST)]
    monkeypatch.setitem(generator.MACHINES, Kind.NON_INVITE_SERVER, changed)
    assert generator.update(current) != current


# ------------------------------------------------------------------------------------------
# Waiting transactions keep only what a retransmission needs
# ------------------------------------------------------------------------------------------


class Wire:
    """A message object as the TU has them; ``serialise`` turns it into what goes on the wire."""

    def __init__(self, text: bytes) -> None:
        self.text = text


def test_a_waiting_server_transaction_keeps_the_sent_bytes_only() -> None:
    table: TransactionTable[object] = TransactionTable(
        serialise=lambda m: b"wire:" + m.text if isinstance(m, Wire) else b"?"
    )
    out = table.receive_request(
        Wire(b"BYE"), method="BYE", branch=BRANCH, sent_by=SENT_BY, reliable=False, now=0.0
    )
    first = out[0]
    assert isinstance(first, PassUp)
    txn = first.txn
    sent = table.respond(txn, Wire(b"200"), status=200, now=1.0)
    assert [type(a.message) for a in sent if isinstance(a, Send)] == [Wire]  # sent as given
    assert txn.state is State.COMPLETED
    assert txn.request is None and txn.last == b"wire:200"
    again = table.receive_request(
        Wire(b"BYE"), method="BYE", branch=BRANCH, sent_by=SENT_BY, reliable=False, now=2.0
    )
    assert [(a.message, a.retransmission) for a in again if isinstance(a, Send)] == [
        (b"wire:200", True)
    ]


def test_without_serialise_a_waiting_transaction_keeps_the_message(
    table: TransactionTable[bytes],
) -> None:
    txn = server_txn(table, "BYE")
    respond(table, txn, 200, now=1.0)
    assert txn.request is None and txn.last == b"200"


# ------------------------------------------------------------------------------------------
# The compact waiting states: what a proxied call leaves behind for timers L, M, J and K
# ------------------------------------------------------------------------------------------


def test_waiting_states_are_derived_from_the_tables() -> None:
    """The states a transaction only waits in, and the timer it waits on (docs/transactions.md):
    RFC 6026's Accepted states, and the Completed/Confirmed states that absorb copies."""
    assert {kind: waiting_states(MACHINES[kind]) for kind in Kind} == {
        Kind.INVITE_CLIENT: {State.COMPLETED: Timer.D, State.ACCEPTED: Timer.M},
        Kind.NON_INVITE_CLIENT: {State.COMPLETED: Timer.K},
        Kind.INVITE_SERVER: {State.ACCEPTED: Timer.L, State.CONFIRMED: Timer.I},
        Kind.NON_INVITE_SERVER: {State.COMPLETED: Timer.J},
    }


class Msg:
    """A message object the TU would have; ``made`` has a weak reference to each one made, to
    see whether anything still holds them."""

    made: ClassVar[list[weakref.ref[Msg]]] = []

    def __init__(self, text: str) -> None:
        self.text = text
        Msg.made.append(weakref.ref(self))

    def __repr__(self) -> str:
        return f"Msg({self.text!r})"


def wire(msg: object) -> bytes:
    return f"wire:{msg.text}".encode() if isinstance(msg, Msg) else b"?"


UPSTREAM = "z9hG4bK-up"  # the caller's branches (INVITE, then BYE)
DOWNSTREAM = "z9hG4bKts-down"  # ours towards the callee


class Call:
    """A proxied call through one table, the way the proxy drives it: INVITE in, forwarded, 200
    back and forwarded; later BYE in, forwarded, 200 back and forwarded. Messages are
    :class:`Msg` objects and the table serialises with :func:`wire`, like the proxy."""

    def __init__(self, table: TransactionTable[Msg], n: int = 0) -> None:
        self.table = table
        self.n = n

    def up(self, what: str) -> str:
        return f"{UPSTREAM}-{what}-{self.n}"

    def down(self, what: str) -> str:
        return f"{DOWNSTREAM}-{what}-{self.n}"

    def set_up(self, now: float) -> tuple[Transaction[Msg], Transaction[Msg]]:
        t = self.table
        out = t.receive_request(
            Msg("INVITE"), method="INVITE", branch=self.up("i"), sent_by=SENT_BY,
            reliable=False, now=now,
        )  # fmt: skip
        server = out[0].txn  # type: ignore[union-attr]
        t.respond(server, Msg("100"), status=100, now=now)
        client, _ = t.send_request(
            Msg("INVITE fwd"), method="INVITE", branch=self.down("i"), reliable=False, now=now,
            build_ack=lambda r: Msg("ACK"),
        )  # fmt: skip
        t.receive_response(Msg("180"), status=180, method="INVITE", branch=self.down("i"), now=now)
        t.respond(server, Msg("180"), status=180, now=now)
        t.receive_response(Msg("200"), status=200, method="INVITE", branch=self.down("i"), now=now)
        t.respond(server, Msg("200"), status=200, now=now)
        return server, client

    def tear_down(self, now: float) -> tuple[Transaction[Msg], Transaction[Msg]]:
        t = self.table
        out = t.receive_request(
            Msg("BYE"), method="BYE", branch=self.up("b"), sent_by=SENT_BY, reliable=False,
            now=now,
        )  # fmt: skip
        server = out[0].txn  # type: ignore[union-attr]
        client, _ = t.send_request(
            Msg("BYE fwd"), method="BYE", branch=self.down("b"), reliable=False, now=now
        )
        t.receive_response(Msg("200 BYE"), status=200, method="BYE", branch=self.down("b"), now=now)
        t.respond(server, Msg("200 BYE"), status=200, now=now)
        return server, client


def test_a_finished_call_waits_compactly_and_each_timer_ends_it_exactly_on_time() -> None:
    table = TransactionTable[Msg](TimerConfig(t1=T1, t2=T2, t4=T4), serialise=wire)
    call = Call(table)
    invite_server, invite_client = call.set_up(now=1.0)
    bye_server, bye_client = call.tear_down(now=11.0)
    # Each only waits now, holding no request, and the last message only where a row resends it.
    expected = {
        invite_server: (State.ACCEPTED, {Timer.L: 33.0}, None),  # RFC 6026 7.1: absorb only
        invite_client: (State.ACCEPTED, {Timer.M: 33.0}, None),
        bye_server: (State.COMPLETED, {Timer.J: 43.0}, b"wire:200 BYE"),  # as it went out
        bye_client: (State.COMPLETED, {Timer.K: 16.0}, None),
    }
    for txn, (st, timers, last) in expected.items():
        assert (txn.state, txn.timers, txn.request, txn.last) == (st, timers, None, last), txn
    assert len(table) == 4 and table.heap_size() == 4 + 2  # 4 queue entries, 2 dead A/E entries

    # L: a retransmitted INVITE is absorbed, nothing sent, nothing passed up.
    again = table.receive_request(
        Msg("INVITE"), method="INVITE", branch=call.up("i"), sent_by=SENT_BY, reliable=False,
        now=32.9,
    )  # fmt: skip
    assert again == []
    # M: a 2xx retransmission from downstream goes up; the TU sends it through the server side.
    up = table.receive_response(
        Msg("200 again"), status=200, method="INVITE", branch=call.down("i"), now=32.9
    )
    assert [(type(a), a.txn) for a in up] == [(PassUp, invite_client)]  # type: ignore[union-attr]
    forwarded = up[0].message  # type: ignore[union-attr]
    assert isinstance(forwarded, Msg)
    sent = table.respond(invite_server, forwarded, status=200, now=32.9)
    assert [(type(a), a.txn, a.message) for a in sent] == [  # type: ignore[union-attr]
        (Send, invite_server, forwarded)
    ]
    assert invite_server.last is None  # and nothing of it is kept
    # J: a retransmitted BYE is answered from the kept bytes.
    bye_again = table.receive_request(
        Msg("BYE"), method="BYE", branch=call.up("b"), sent_by=SENT_BY, reliable=False, now=15.9
    )
    assert [(a.message, a.retransmission) for a in bye_again] == [  # type: ignore[union-attr]
        (b"wire:200 BYE", True)
    ]
    # K: a retransmitted 200 for the BYE is absorbed.
    absorbed = table.stats.retransmissions_absorbed
    assert table.receive_response(
        Msg("200 BYE"), status=200, method="BYE", branch=call.down("b"), now=15.9
    ) == []
    assert table.stats.retransmissions_absorbed == absorbed + 1

    # Exactly on time: nothing a hair before each deadline, the transaction at it.
    def ends(at: float) -> list[Transaction[Msg]]:
        assert table.advance(at - 1e-9) == []
        assert table.next_deadline() == at
        done = table.advance(at)
        assert all(type(a) is Terminated for a in done)
        return [a.txn for a in done]  # type: ignore[union-attr]

    assert ends(16.0) == [bye_client]
    assert ends(33.0) == [invite_client, invite_server]  # joined in that order, same deadline
    assert ends(43.0) == [bye_server]
    assert table.next_deadline() is None and len(table) == 0 and table.heap_size() == 0
    # After L, the same INVITE is a new transaction (RFC 6026 7.1: L is for retransmissions).
    late = table.receive_request(
        Msg("INVITE"), method="INVITE", branch=call.up("i"), sent_by=SENT_BY, reliable=False,
        now=43.0,
    )  # fmt: skip
    assert [type(a) for a in late] == [PassUp]


def test_a_waiting_transaction_lets_go_of_every_message_object() -> None:
    table = TransactionTable[Msg](TimerConfig(t1=T1, t2=T2, t4=T4), serialise=wire)
    Msg.made.clear()
    call = Call(table)
    call.set_up(now=0.0)
    call.tear_down(now=1.0)
    gc.collect()
    assert len(Msg.made) == 11  # INVITE, 100, INVITE fwd, 180 x2, 200 x2, BYE, BYE fwd, 200 x2
    assert [ref() for ref in Msg.made] == [None] * 11  # only bytes are kept (the BYE's 200)
    assert len(table) == 4


def test_waiting_timers_and_heap_timers_fire_in_deadline_order_when_the_loop_is_late(
    table: TransactionTable[bytes],
) -> None:
    bye, _ = table.send_request(b"BYE", method="BYE", branch="z9hG4bK-b", reliable=False, now=0.0)
    table.receive_response(b"200", status=200, method="BYE", branch="z9hG4bK-b", now=0.1)  # K 5.1
    invite, _ = table.send_request(
        b"INVITE", method="INVITE", branch="z9hG4bK-i", reliable=True, now=0.0, build_ack=ack_for
    )  # B at 32, in the heap
    out = table.receive_request(
        b"BYE", method="BYE", branch="z9hG4bK-s", sent_by=SENT_BY, reliable=False, now=1.0
    )
    server = out[0].txn  # type: ignore[union-attr]
    table.respond(server, b"200", status=200, now=1.0)  # J at 33
    fired = table.advance(100.0)
    assert [(summary(a), a.txn) for a in fired] == [  # type: ignore[union-attr]
        (("terminated",), bye),
        (("timeout", "B"), invite),
        (("terminated",), invite),
        (("terminated",), server),
    ]


def test_a_waiting_transaction_ended_by_a_transport_error_leaves_its_successor_alone(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    first = server_txn(table, "INVITE", now=0.0)
    respond(table, first, 200, now=0.0)  # Accepted, L at 32
    assert summarise(table.transport_error(first, now=1.0)) == [
        ("transport failed",),
        ("terminated",),
    ]
    # The same INVITE again is a new transaction; it is accepted later, so its L is later.
    second = server_txn(table, "INVITE", now=2.0)
    respond(table, second, 200, now=3.0)
    assert second is not first and second.timers == {Timer.L: 35.0}
    assert clock.run(34.0) == []  # the first one's old deadline passes: nothing, nobody ends
    assert state(second) is State.ACCEPTED and request(table, "INVITE", now=34.0) == []
    assert clock.run(100.0) == [(35.0, ("terminated",))]
    assert table.heap_size() == 0


def test_over_tcp_the_zero_length_waits_end_at_once_and_l_m_still_run(
    table: TransactionTable[bytes], clock: Clock
) -> None:
    """Timers D, I, J and K are zero over reliable transports; L and M are 64*T1 everywhere."""
    server = server_txn(table, "BYE", reliable=True)
    assert respond(table, server, 200, now=1.0) == [("send", b"200"), ("terminated",)]
    invite = server_txn(table, "INVITE", reliable=True, now=1.0)
    respond(table, invite, 200, now=2.0)
    assert invite.timers == {Timer.L: 34.0}
    assert clock.run(100.0) == [(34.0, ("terminated",))]


def test_the_branch_of_a_transaction_is_what_it_was_created_with(
    table: TransactionTable[bytes],
) -> None:
    client, _ = invite_client(table)
    assert client.branch == BRANCH
    odd = "z9hG4bK with spaces"  # a branch is opaque to the table: even a quoted one matches
    txn = table.receive_request(
        b"BYE", method="BYE", branch=odd, sent_by=SENT_BY, reliable=False, now=0.0
    )[0].txn  # type: ignore[union-attr]
    assert txn.branch == odd
    assert request(table, "BYE", branch=odd) == []  # matched: a retransmission
    assert request(table, "BYE", branch="z9hG4bK") != []  # not a prefix match


def test_memory_held_per_waiting_transaction_is_bounded() -> None:
    """20,000 finished calls (80,000 waiting transactions): the table's own share of the memory
    (the bytes a BYE's answer is resent from aside) stays under 300 B per transaction. It was
    about 640 B before waiting transactions dropped their live part."""
    table = TransactionTable[Msg](TimerConfig(t1=T1, t2=T2, t4=T4), serialise=wire)
    calls = 20_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(calls):
            now = n * 0.0002  # 5,000 calls/s: all still waiting at the end
            call = Call(table, n)
            call.set_up(now)
            call.tear_down(now)
        Msg.made.clear()  # (the test's own weak references)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(table) == 4 * calls
    kept_bytes = calls * (33 + len(b"wire:200 BYE"))  # the BYE server's last response
    per_txn = (held - kept_bytes) / (4 * calls)
    assert per_txn < 300, f"{per_txn:.0f} B per waiting transaction"
    table.advance(1000.0)
    assert len(table) == 0 and table.heap_size() == 0
