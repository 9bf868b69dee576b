"""The RFC 3261 section 17 transaction layer, sans-IO, on a clock the caller passes in.

Four state machines (INVITE/non-INVITE x client/server), amended by RFC 6026 (the "Accepted"
states and timers L and M), written as DATA: one table per machine, mapping
``(state, event) -> Transition(next state, operations)``. Everything else in this module is the
small interpreter that runs those tables, and the timers of every transaction.
``docs/transactions.md`` draws its diagrams from the same tables
(``tools/gen_transaction_diagram.py``), so the picture cannot drift from the code.

The layer never looks inside a message. The caller (the transport glue and the proxy, our
"transaction user" or TU) extracts the few facts the RFC's rules need: the method, the status
code, the branch and sent-by of the top Via, whether the transport is reliable. Messages are
opaque objects of any type ``M`` (parsed messages, or plain bytes in the tests). The one thing
the layer must build itself, the hop-by-hop ACK for a non-2xx final response (RFC 3261
17.1.1.3), comes from a ``build_ack(response) -> message`` function the TU hands over when it
creates an INVITE client transaction.

Every entry point takes ``now`` (seconds, any monotonic origin) and returns a list of actions
(:class:`Send`, :class:`PassUp`, :class:`SendCancel`, :class:`TimedOut`,
:class:`TransportFailed`, :class:`Terminated`, :class:`Stray`). The asyncio adapter calls
:meth:`TransactionTable.advance` whenever :meth:`TransactionTable.next_deadline` is due and
re-arms a single loop timer, as aioquic does.

Timers live in two places. A live transaction (retransmitting, or waiting for a response or
an ACK) has two timer slots and at most one entry in a heap shared by all: a transaction never
runs more than a retransmission timer (A, E or G) and a lifetime timer (B, F or H) at once, and
only the earlier of the two needs to be in the heap. Stopping a timer costs nothing (the heap
entry fires early, finds nothing due and is dropped), so the common INVITE, answered well
before timer A, never touches the heap again. A transaction that only waits (RFC 6026's
Accepted, Completed, Confirmed: :func:`waiting_states`) has one timer of a length fixed per
transport, so it joins the tail of a first-in first-out queue for that length and leaves from
its head; it also drops everything its remaining rows cannot use. Those are the transactions a
busy proxy holds by the ten thousand (timers L, M and J last 64*T1 after every call set-up
and tear-down), so they are kept small.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, Generic, NamedTuple, TypeAlias, TypeVar

M = TypeVar("M")

INF = float("inf")


# --------------------------------------------------------------------------------------------
# Vocabulary: kinds, states, events, timers, operations
# --------------------------------------------------------------------------------------------


class Kind(IntEnum):
    """The four machines of RFC 3261 section 17."""

    INVITE_CLIENT = 0  # 17.1.1, RFC 6026 7.2
    NON_INVITE_CLIENT = 1  # 17.1.2
    INVITE_SERVER = 2  # 17.2.1, RFC 6026 7.1
    NON_INVITE_SERVER = 3  # 17.2.2

    @property
    def label(self) -> str:
        return _KIND_LABELS[self]


_KIND_LABELS = {
    Kind.INVITE_CLIENT: "INVITE client",
    Kind.NON_INVITE_CLIENT: "non-INVITE client",
    Kind.INVITE_SERVER: "INVITE server",
    Kind.NON_INVITE_SERVER: "non-INVITE server",
}


class State(IntEnum):
    """Transaction states. INIT is the moment before the first event (drawn as ``[*]``)."""

    INIT = 0
    CALLING = 1
    TRYING = 2
    PROCEEDING = 3
    ACCEPTED = 4
    COMPLETED = 5
    CONFIRMED = 6
    TERMINATED = 7


class Event(IntEnum):
    """What can happen to a transaction: from the network, from the TU, from the clock."""

    # From the network
    REQUEST = 0  # the request arrived (first time in INIT; afterwards a retransmission)
    ACK = 1  # an ACK matching an INVITE server transaction (RFC 3261 17.2.3)
    PROVISIONAL = 2  # a 1xx response arrived
    SUCCESS = 3  # a 2xx response arrived
    FAILURE = 4  # a 300-699 response arrived
    # From the TU
    TU_REQUEST = 5  # the TU hands over a request to send
    TU_PROVISIONAL = 6  # the TU sends a 1xx
    TU_SUCCESS = 7  # the TU sends a 2xx
    TU_FAILURE = 8  # the TU sends a 300-699
    TU_CANCEL = 9  # the TU wants the INVITE cancelled (RFC 3261 9.1)
    TRANSPORT_ERROR = 10  # the transport could not send one of our messages
    # From the clock
    TIMER_A = 11
    TIMER_B = 12
    TIMER_D = 13
    TIMER_E = 14
    TIMER_F = 15
    TIMER_G = 16
    TIMER_H = 17
    TIMER_I = 18
    TIMER_J = 19
    TIMER_K = 20
    TIMER_L = 21
    TIMER_M = 22

    @property
    def label(self) -> str:
        return _EVENT_LABELS[self]


_EVENT_LABELS = {
    Event.REQUEST: "request",
    Event.ACK: "ACK",
    Event.PROVISIONAL: "1xx",
    Event.SUCCESS: "2xx",
    Event.FAILURE: "300-699",
    Event.TU_REQUEST: "TU sends request",
    Event.TU_PROVISIONAL: "1xx from TU",
    Event.TU_SUCCESS: "2xx from TU",
    Event.TU_FAILURE: "300-699 from TU",
    Event.TU_CANCEL: "TU cancels",
    Event.TRANSPORT_ERROR: "transport error",
    **{e: f"timer {e.name[-1]}" for e in Event if e.name.startswith("TIMER_")},
}


class Timer(IntEnum):
    """RFC 3261 table 4 timers plus RFC 6026's L and M."""

    A = 0  # INVITE request retransmit interval, UDP only
    B = 1  # INVITE transaction timeout
    D = 2  # wait time for response retransmits
    E = 3  # non-INVITE request retransmit interval, UDP only
    F = 4  # non-INVITE transaction timeout
    G = 5  # INVITE response retransmit interval, UDP only
    H = 6  # wait time for ACK receipt
    I = 7  # wait time for ACK retransmits  # noqa: E741 (the RFC's name)
    J = 8  # wait time for non-INVITE request retransmits
    K = 9  # wait time for response retransmits
    L = 10  # RFC 6026: wait time for accepted INVITE request retransmits
    M = 11  # RFC 6026: wait time for retransmission of 2xx to INVITE

    @property
    def retransmits(self) -> bool:
        """A, E and G drive retransmissions; the others bound a state's lifetime."""
        return self in _RETRANSMIT_TIMERS


_RETRANSMIT_TIMERS = frozenset({Timer.A, Timer.E, Timer.G})
_TIMER_EVENT = tuple(Event[f"TIMER_{t.name}"] for t in Timer)

TIMER_PURPOSE = {
    Timer.A: "INVITE request retransmit interval (RFC 3261 17.1.1.2)",
    Timer.B: "INVITE transaction timeout (17.1.1.2), and 64*T1 after a CANCEL (9.1)",
    Timer.D: "wait time for response retransmits (17.1.1.2)",
    Timer.E: "non-INVITE request retransmit interval (17.1.2.2)",
    Timer.F: "non-INVITE transaction timeout (17.1.2.2)",
    Timer.G: "INVITE response retransmit interval (17.2.1)",
    Timer.H: "wait time for ACK receipt (17.2.1)",
    Timer.I: "wait time for ACK retransmits (17.2.1)",
    Timer.J: "wait time for non-INVITE request retransmits (17.2.2)",
    Timer.K: "wait time for response retransmits (17.1.2.2)",
    Timer.L: "wait time for accepted INVITE request retransmits (RFC 6026 7.1)",
    Timer.M: "wait time for retransmission of 2xx to INVITE (RFC 6026 7.2)",
}


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """T1, T2 and T4 of RFC 3261 17.1.1.1 and table 4; every other timer derives from them."""

    t1: float = 0.5  # RTT estimate
    t2: float = 4.0  # maximum retransmit interval for non-INVITE requests and INVITE responses
    t4: float = 5.0  # maximum duration a message will remain in the network

    def __post_init__(self) -> None:
        if not (self.t1 > 0 and self.t2 >= self.t1 and self.t4 > 0):
            raise ValueError(
                f"timers need T1 > 0, T2 >= T1 and T4 > 0 (got T1={self.t1}, T2={self.t2}, "
                f"T4={self.t4}); the RFC 3261 defaults are 0.5, 4 and 5 seconds"
            )

    def durations(self, reliable: bool) -> tuple[float | None, ...]:
        """Initial value of each timer, indexed by :class:`Timer`; None = not used.

        Table 4 of RFC 3261: A, E and G only run over unreliable transports; D, I, J and K are
        zero over reliable ones (the transport does not duplicate, so there is nothing to
        absorb). D is "at least 32 s": we take max(32 s, 64*T1), which also covers a larger T1.
        """
        t1, t4 = self.t1, self.t4
        wait = 64 * t1
        values: dict[Timer, float | None] = {
            Timer.A: t1, Timer.B: wait, Timer.D: max(32.0, wait), Timer.E: t1,
            Timer.F: wait, Timer.G: t1, Timer.H: wait, Timer.I: t4, Timer.J: wait,
            Timer.K: t4, Timer.L: wait, Timer.M: wait,
        }  # fmt: skip
        if reliable:
            values.update({Timer.A: None, Timer.E: None, Timer.G: None})
            values.update({Timer.D: 0.0, Timer.I: 0.0, Timer.J: 0.0, Timer.K: 0.0})
        return tuple(values[t] for t in Timer)


class Op(IntEnum):
    """Operations a transition performs, in the order listed in its row."""

    SEND_REQUEST = 0  # pass the TU's request to the transport
    RESEND_REQUEST = 1  # retransmit it
    SEND_RESPONSE = 2  # pass the TU's response to the transport, remember it
    RESEND_RESPONSE = 3  # retransmit the last response sent, if any
    SEND_ACK = 4  # build the ACK for this non-2xx (TU's build_ack) and send it
    RESEND_ACK = 5  # retransmit that ACK
    PASS_UP = 6  # give the message to the TU
    ABSORB = 7  # a retransmission from the peer: count it, do not pass it up
    NOTE_CANCEL = 8  # remember that the TU wants the INVITE cancelled
    CANCEL_IF_NOTED = 9  # if it does: ask the TU to send CANCEL now, start timer B (RFC 3261 9.1)
    TIMED_OUT = 10  # tell the TU the transaction failed by timeout (it makes the 408, 16.7/16.8)
    TRANSPORT_FAILED = 11  # tell the TU the transport failed

    @property
    def label(self) -> str:
        return _OP_LABELS[self]


_OP_LABELS = {
    Op.SEND_REQUEST: "send request",
    Op.RESEND_REQUEST: "resend request",
    Op.SEND_RESPONSE: "send response",
    Op.RESEND_RESPONSE: "resend last response",
    Op.SEND_ACK: "send ACK",
    Op.RESEND_ACK: "resend ACK",
    Op.PASS_UP: "pass to TU",
    Op.ABSORB: "absorb",
    Op.NOTE_CANCEL: "note CANCEL",
    Op.CANCEL_IF_NOTED: "if CANCEL noted then TU sends CANCEL, start B",
    Op.TIMED_OUT: "report timeout",
    Op.TRANSPORT_FAILED: "report transport error",
}


class TimerOp(NamedTuple):
    """Start, stop or back off one timer. ``verb`` is "start", "stop", "double" or "T2"."""

    verb: str
    timer: Timer

    @property
    def label(self) -> str:
        if self.verb == "double":
            cap = "" if self.timer is Timer.A else " (max T2)"
            return f"double {self.timer.name}{cap}"
        if self.verb == "T2":
            return f"{self.timer.name} = T2"
        return f"{self.verb} {self.timer.name}"


def start(timer: Timer) -> TimerOp:
    """Start ``timer`` with its initial value (not at all if the transport does not use it)."""
    return TimerOp("start", timer)


def stop(timer: Timer) -> TimerOp:
    """Stop ``timer`` if it runs."""
    return TimerOp("stop", timer)


def double(timer: Timer) -> TimerOp:
    """Re-arm a retransmission timer with twice its interval; E and G never exceed T2."""
    return TimerOp("double", timer)


def at_t2(timer: Timer) -> TimerOp:
    """Re-arm a retransmission timer with T2 (timer E in Proceeding, RFC 3261 17.1.2.2)."""
    return TimerOp("T2", timer)


class Transition(NamedTuple):
    next: State
    ops: tuple[Op | TimerOp, ...]


Table: TypeAlias = dict[tuple[State, Event], Transition]

S, E, T = State, Event, Timer


def _row(next_state: State, *ops: Op | TimerOp) -> Transition:
    return Transition(next_state, ops)


def _transport_errors(table: Table, *states: State) -> Table:
    """RFC 3261 17.1.1.2, 17.1.2.2, 17.2.1, 17.2.2: a transport error in any live state ends
    the transaction, and the TU is told."""
    for state in states:
        table[(state, Event.TRANSPORT_ERROR)] = _row(State.TERMINATED, Op.TRANSPORT_FAILED)
    return table


# --------------------------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------------------------

#: RFC 3261 17.1.1 (figure 5) as amended by RFC 6026 7.2 (Accepted, timer M).
INVITE_CLIENT: Table = _transport_errors({
    # 17.1.1.2: send the INVITE; A only over unreliable transports, B over any.
    (S.INIT, E.TU_REQUEST): _row(S.CALLING, Op.SEND_REQUEST, start(T.A), start(T.B)),
    # 17.1.1.2: A fires: retransmit, and double A (no cap for INVITE requests).
    (S.CALLING, E.TIMER_A): _row(S.CALLING, Op.RESEND_REQUEST, double(T.A)),
    # 17.1.1.2: B fires in Calling: the TU must act as if it received 408 (16.7/16.8).
    (S.CALLING, E.TIMER_B): _row(S.TERMINATED, Op.TIMED_OUT),
    # 17.1.1.2: a 1xx stops the retransmissions. B is stopped as well: from here the proxy's
    # timer C (16.6 step 11, 16.8) bounds the wait. 9.1: a CANCEL the TU asked for while we were
    # Calling goes out now that a provisional response has arrived.
    (S.CALLING, E.PROVISIONAL): _row(
        S.PROCEEDING, Op.PASS_UP, stop(T.A), stop(T.B), Op.CANCEL_IF_NOTED
    ),
    (S.PROCEEDING, E.PROVISIONAL): _row(S.PROCEEDING, Op.PASS_UP),
    # 17.1.1.2 + 17.1.1.3: a 300-699 is passed up and ACKed by the transaction itself; D absorbs
    # the response's retransmissions.
    (S.CALLING, E.FAILURE): _row(
        S.COMPLETED, Op.PASS_UP, Op.SEND_ACK, stop(T.A), stop(T.B), start(T.D)
    ),
    (S.PROCEEDING, E.FAILURE): _row(S.COMPLETED, Op.PASS_UP, Op.SEND_ACK, stop(T.B), start(T.D)),
    (S.COMPLETED, E.FAILURE): _row(S.COMPLETED, Op.ABSORB, Op.RESEND_ACK),
    (S.COMPLETED, E.TIMER_D): _row(S.TERMINATED),
    # RFC 6026 7.2: a 2xx moves to Accepted; every 2xx (retransmissions, other forks) is passed
    # up, so the proxy forwards each of them (RFC 3261 16.7 step 5).
    (S.CALLING, E.SUCCESS): _row(S.ACCEPTED, Op.PASS_UP, stop(T.A), stop(T.B), start(T.M)),
    (S.PROCEEDING, E.SUCCESS): _row(S.ACCEPTED, Op.PASS_UP, stop(T.B), start(T.M)),
    (S.ACCEPTED, E.SUCCESS): _row(S.ACCEPTED, Op.PASS_UP),
    (S.ACCEPTED, E.TIMER_M): _row(S.TERMINATED),
    # 9.1: no CANCEL before a provisional response; remember the wish until one arrives. Once
    # sent, "if there is no final response in 64*T1" give up: timer B serves for that wait.
    (S.CALLING, E.TU_CANCEL): _row(S.CALLING, Op.NOTE_CANCEL),
    (S.PROCEEDING, E.TU_CANCEL): _row(S.PROCEEDING, Op.NOTE_CANCEL, Op.CANCEL_IF_NOTED),
    (S.PROCEEDING, E.TIMER_B): _row(S.TERMINATED, Op.TIMED_OUT),
}, S.CALLING, S.PROCEEDING, S.COMPLETED, S.ACCEPTED)  # fmt: skip

#: RFC 3261 17.1.2 (figure 6).
NON_INVITE_CLIENT: Table = _transport_errors({
    # 17.1.2.2: send; E only over unreliable transports, F over any.
    (S.INIT, E.TU_REQUEST): _row(S.TRYING, Op.SEND_REQUEST, start(T.E), start(T.F)),
    # 17.1.2.2: E fires in Trying: retransmit, E = min(2E, T2).
    (S.TRYING, E.TIMER_E): _row(S.TRYING, Op.RESEND_REQUEST, double(T.E)),
    # 17.1.2.2: a 1xx moves to Proceeding, where E keeps firing at T2 and F keeps running.
    (S.TRYING, E.PROVISIONAL): _row(S.PROCEEDING, Op.PASS_UP),
    (S.PROCEEDING, E.PROVISIONAL): _row(S.PROCEEDING, Op.PASS_UP),
    (S.PROCEEDING, E.TIMER_E): _row(S.PROCEEDING, Op.RESEND_REQUEST, at_t2(T.E)),
    # 17.1.2.2: F fires: the TU must act as if it received 408 (16.7/16.8).
    (S.TRYING, E.TIMER_F): _row(S.TERMINATED, Op.TIMED_OUT),
    (S.PROCEEDING, E.TIMER_F): _row(S.TERMINATED, Op.TIMED_OUT),
    # 17.1.2.2: a final response (200-699) is passed up; K absorbs its retransmissions.
    (S.TRYING, E.SUCCESS): _row(S.COMPLETED, Op.PASS_UP, stop(T.E), stop(T.F), start(T.K)),
    (S.TRYING, E.FAILURE): _row(S.COMPLETED, Op.PASS_UP, stop(T.E), stop(T.F), start(T.K)),
    (S.PROCEEDING, E.SUCCESS): _row(S.COMPLETED, Op.PASS_UP, stop(T.E), stop(T.F), start(T.K)),
    (S.PROCEEDING, E.FAILURE): _row(S.COMPLETED, Op.PASS_UP, stop(T.E), stop(T.F), start(T.K)),
    (S.COMPLETED, E.SUCCESS): _row(S.COMPLETED, Op.ABSORB),
    (S.COMPLETED, E.FAILURE): _row(S.COMPLETED, Op.ABSORB),
    (S.COMPLETED, E.TIMER_K): _row(S.TERMINATED),
}, S.TRYING, S.PROCEEDING, S.COMPLETED)  # fmt: skip

#: RFC 3261 17.2.1 (figure 7) as amended by RFC 6026 7.1 (Accepted, timer L).
INVITE_SERVER: Table = _transport_errors({
    # 17.2.1: a new INVITE enters Proceeding and goes to the TU. The 100 Trying is the TU's to
    # send (a proxy sends it at once, 16.2); the machine sends whatever 1xx the TU gives it.
    (S.INIT, E.REQUEST): _row(S.PROCEEDING, Op.PASS_UP),
    # 17.2.1: a retransmitted INVITE gets the most recent provisional response again.
    (S.PROCEEDING, E.REQUEST): _row(S.PROCEEDING, Op.ABSORB, Op.RESEND_RESPONSE),
    (S.PROCEEDING, E.TU_PROVISIONAL): _row(S.PROCEEDING, Op.SEND_RESPONSE),
    # RFC 6026 7.1: a 2xx moves to Accepted (not Terminated): INVITE retransmissions are absorbed
    # for timer L, and further 2xx from the TU (forwarded retransmissions, other forks) are sent.
    (S.PROCEEDING, E.TU_SUCCESS): _row(S.ACCEPTED, Op.SEND_RESPONSE, start(T.L)),
    (S.ACCEPTED, E.REQUEST): _row(S.ACCEPTED, Op.ABSORB),
    (S.ACCEPTED, E.TU_SUCCESS): _row(S.ACCEPTED, Op.SEND_RESPONSE),
    # RFC 6026 8.7: an ACK that matches in Accepted goes to the TU (the proxy forwards it).
    (S.ACCEPTED, E.ACK): _row(S.ACCEPTED, Op.PASS_UP),
    (S.ACCEPTED, E.TIMER_L): _row(S.TERMINATED),
    # 17.2.1: a 300-699 moves to Completed; G retransmits it over UDP, H waits for the ACK.
    (S.PROCEEDING, E.TU_FAILURE): _row(S.COMPLETED, Op.SEND_RESPONSE, start(T.G), start(T.H)),
    (S.COMPLETED, E.REQUEST): _row(S.COMPLETED, Op.ABSORB, Op.RESEND_RESPONSE),
    (S.COMPLETED, E.TIMER_G): _row(S.COMPLETED, Op.RESEND_RESPONSE, double(T.G)),
    # 17.2.1: no ACK before H: the TU is told the transaction failed.
    (S.COMPLETED, E.TIMER_H): _row(S.TERMINATED, Op.TIMED_OUT),
    # 17.2.1: the ACK is absorbed here (hop by hop, never forwarded); I absorbs its copies.
    (S.COMPLETED, E.ACK): _row(S.CONFIRMED, stop(T.G), stop(T.H), start(T.I)),
    (S.CONFIRMED, E.ACK): _row(S.CONFIRMED, Op.ABSORB),
    (S.CONFIRMED, E.REQUEST): _row(S.CONFIRMED, Op.ABSORB),
    (S.CONFIRMED, E.TIMER_I): _row(S.TERMINATED),
}, S.PROCEEDING, S.ACCEPTED, S.COMPLETED, S.CONFIRMED)  # fmt: skip

#: RFC 3261 17.2.2 (figure 8).
NON_INVITE_SERVER: Table = _transport_errors({
    # 17.2.2: a new request enters Trying and goes to the TU.
    (S.INIT, E.REQUEST): _row(S.TRYING, Op.PASS_UP),
    # 17.2.2: retransmissions in Trying are discarded: there is nothing to answer them with.
    (S.TRYING, E.REQUEST): _row(S.TRYING, Op.ABSORB),
    (S.TRYING, E.TU_PROVISIONAL): _row(S.PROCEEDING, Op.SEND_RESPONSE),
    (S.PROCEEDING, E.TU_PROVISIONAL): _row(S.PROCEEDING, Op.SEND_RESPONSE),
    (S.PROCEEDING, E.REQUEST): _row(S.PROCEEDING, Op.ABSORB, Op.RESEND_RESPONSE),
    # 17.2.2: a final response moves to Completed; J absorbs request retransmissions.
    (S.TRYING, E.TU_SUCCESS): _row(S.COMPLETED, Op.SEND_RESPONSE, start(T.J)),
    (S.TRYING, E.TU_FAILURE): _row(S.COMPLETED, Op.SEND_RESPONSE, start(T.J)),
    (S.PROCEEDING, E.TU_SUCCESS): _row(S.COMPLETED, Op.SEND_RESPONSE, start(T.J)),
    (S.PROCEEDING, E.TU_FAILURE): _row(S.COMPLETED, Op.SEND_RESPONSE, start(T.J)),
    (S.COMPLETED, E.REQUEST): _row(S.COMPLETED, Op.ABSORB, Op.RESEND_RESPONSE),
    (S.COMPLETED, E.TIMER_J): _row(S.TERMINATED),
}, S.TRYING, S.PROCEEDING, S.COMPLETED)  # fmt: skip

#: Every machine's table, for the interpreter and the diagram generator.
MACHINES: dict[Kind, Table] = {
    Kind.INVITE_CLIENT: INVITE_CLIENT,
    Kind.NON_INVITE_CLIENT: NON_INVITE_CLIENT,
    Kind.INVITE_SERVER: INVITE_SERVER,
    Kind.NON_INVITE_SERVER: NON_INVITE_SERVER,
}

del S, E, T  # the short names are only for the tables above



# --------------------------------------------------------------------------------------------
# Waiting states: derived from the tables
# --------------------------------------------------------------------------------------------

#: Operations that need what a transaction lets go of once it only waits: its request, its
#: ACK builder, its CANCEL flags.
_LIVE_OPS = frozenset(
    {Op.SEND_REQUEST, Op.RESEND_REQUEST, Op.SEND_ACK, Op.NOTE_CANCEL, Op.CANCEL_IF_NOTED}
)


def waiting_states(table: Table) -> dict[State, Timer]:
    """The states of a machine in which a transaction only waits, with the timer it waits on.

    A state qualifies when every row entering it (from another state) starts the same single
    lifetime timer, and its own rows start, stop or back off no timer, need nothing but the
    last message sent, and lead nowhere but back to it or to Terminated. The timer then has the
    same length for every transaction of a machine and transport, so these transactions wait in
    first-in first-out queues, one per length, instead of the heap (see :class:`_Queue`); and
    they drop everything but their key, state, context and (where a row resends it) the last
    message. With RFC 3261 and 6026 that is: INVITE client Completed (D) and Accepted (M),
    non-INVITE client Completed (K), INVITE server Accepted (L) and Confirmed (I), non-INVITE
    server Completed (J): the states that thousands of finished calls sit in.
    """
    waits: dict[State, Timer] = {}
    states = {row.next for row in table.values()} - {State.INIT, State.TERMINATED}
    for state in states:
        own = [row for (s, _), row in table.items() if s is state]
        if any(row.next not in (state, State.TERMINATED) for row in own):
            continue
        if any(isinstance(op, TimerOp) or op in _LIVE_OPS for row in own for op in row.ops):
            continue
        started = {
            op.timer
            for (s, _), row in table.items()
            if row.next is state and s is not state
            for op in row.ops
            if isinstance(op, TimerOp) and op.verb == "start"
        }
        if len(started) != 1:
            continue
        (timer,) = started
        if not timer.retransmits and (state, _TIMER_EVENT[timer]) in table:
            waits[state] = timer
    return waits


def _resends(table: Table, state: State) -> bool:
    """Whether a row of ``state`` sends the last message again (so it must be kept)."""
    resend = (Op.RESEND_RESPONSE, Op.RESEND_ACK)
    return any(op in resend for (s, _), row in table.items() if s is state for op in row.ops)


# --------------------------------------------------------------------------------------------
# Transactions and the actions they produce
# --------------------------------------------------------------------------------------------


class Transaction(Generic[M]):
    """One transaction. The caller reads it; only the :class:`TransactionTable` changes it.

    ``context`` is the caller's: the transport glue or the proxy attaches whatever it needs to
    act on this transaction's actions (the peer or connection to send to, the proxy's response
    context), and may replace it at any time. The layer never reads it.

    Compact by design, because most transactions of a busy proxy only wait: for timers L, M and
    J (64*T1 = 32 s each) after every call set-up and tear-down. What a live transaction needs
    on top (its request, ACK builder, timers, CANCEL flags) is a separate part, dropped when it
    enters a waiting state (:func:`waiting_states`). A waiting transaction is these six slots,
    its key and its place in the table's dict and in one timer queue.
    """

    __slots__ = ("_live", "_phase", "_since", "context", "key", "last")

    def __init__(self, key: str, phase: _Phase, live: _Live[M], context: Any) -> None:
        #: The matching key: ``"METHOD SENT-BY BRANCH"`` (server, RFC 3261 17.2.3) or
        #: ``"METHOD BRANCH"`` (client, 17.1.3). One string: cheaper than a tuple and its parts.
        self.key = key
        self._phase = phase  # kind, state and transport: where the transaction's rows are
        self._live: _Live[M] | None = live  # None once it only waits, or has terminated
        self.context = context
        #: Server: the last response sent. INVITE client: the ACK it sent for a non-2xx. Kept
        #: while waiting only where a row resends it, and then as the bytes the table's
        #: ``serialise`` made of it, if given.
        self.last: M | bytes | None = None
        self._since = 0.0  # when it began waiting: its timer fires ``queue.duration`` later

    @property
    def kind(self) -> Kind:
        return self._phase.kind

    @property
    def state(self) -> State:
        return self._phase.state

    @property
    def reliable(self) -> bool:
        """Whether the transport is reliable (TCP, TLS): no retransmissions, zero D, I, J, K."""
        return self._phase.reliable

    @property
    def branch(self) -> str:
        """The branch the transaction was created with (the last part of its key)."""
        return self.key.split(" ", 1 if self._phase.kind <= Kind.NON_INVITE_CLIENT else 2)[-1]

    @property
    def request(self) -> M | None:
        """The request that created the transaction (the one a client retransmits); None once
        the transaction only waits (Accepted, Completed, Confirmed) and will not need it."""
        live = self._live
        return None if live is None else live.request

    @property
    def cancel_noted(self) -> bool:
        """The TU asked to cancel this INVITE (while it is still pending)."""
        live = self._live
        return live is not None and live.cancel_noted

    @property
    def cancel_sent(self) -> bool:
        """... and was told to send the CANCEL (:class:`SendCancel`)."""
        live = self._live
        return live is not None and live.cancel_sent

    @property
    def timers(self) -> dict[Timer, float]:
        """Running timers and their deadlines (for tests and debugging)."""
        live = self._live
        if live is None:
            phase = self._phase
            if phase.queue is None or phase.wait_timer is None:
                return {}  # terminated
            return {phase.wait_timer: self._since + phase.queue.duration}
        running: dict[Timer, float] = {}
        if live.retx is not None:
            running[live.retx] = live.retx_at
        if live.life is not None:
            running[live.life] = live.life_at
        return running

    def __repr__(self) -> str:
        return f"<Transaction {self.kind.label} {self.state.name} {self.key}>"


class _Live(Generic[M]):
    """What a transaction needs until it only waits: dropped as it enters a waiting state."""

    __slots__ = (
        "build_ack",
        "cancel_noted",
        "cancel_sent",
        "heap_at",
        "heap_seq",
        "life",
        "life_at",
        "request",
        "retx",
        "retx_at",
        "retx_interval",
    )

    def __init__(self, request: M, build_ack: Callable[[M], M] | None) -> None:
        self.request: M | None = request
        self.build_ack = build_ack
        # Two timer slots: retransmission (A/E/G) and lifetime (B/D/F/H/I/J/K/L/M).
        self.retx: Timer | None = None
        self.retx_at = INF
        self.retx_interval = 0.0
        self.life: Timer | None = None
        self.life_at = INF
        #: Deadline of this transaction's live entry in the table's heap (INF: none).
        self.heap_at = INF
        self.heap_seq = -1  # its sequence number: the entry is live iff the numbers match
        #: The TU asked to cancel this INVITE; ``cancel_sent`` once it was told to send CANCEL.
        self.cancel_noted = False
        self.cancel_sent = False

    def take_retx(self) -> Timer:
        """The retransmission timer that fired, its slot now empty (its deadline kept).

        A method rather than ``live.retx = None`` in the caller: there mypy would take
        ``live.retx`` to stay None across the step that may re-arm it, and mypyc checks that.
        """
        timer = self.retx
        assert timer is not None
        self.retx = None
        return timer


# The actions are plain classes with __slots__ rather than dataclasses: mypyc cannot compile
# a generic dataclass (see docs/performance.md).
class _Action:
    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()  # for __repr__

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({fields})"


class Send(_Action, Generic[M]):
    """Pass ``message`` to the transport for this transaction (to ``txn.context``'s peer).

    ``retransmission`` is True when the transaction itself repeats a message (timers A, E, G,
    or answering a retransmitted request), so metrics can count retransmissions.
    """

    __slots__ = ("message", "retransmission", "txn")
    _fields = ("message", "retransmission", "txn")

    def __init__(self, txn: Transaction[M], message: M | bytes, retransmission: bool) -> None:
        self.txn = txn
        self.message = message  # bytes: a waiting transaction's repeat, as serialise made it
        self.retransmission = retransmission


class PassUp(_Action, Generic[M]):
    """Give ``message`` to the TU: a new request, a response, or an ACK in Accepted."""

    __slots__ = ("message", "txn")
    _fields = ("message", "txn")

    def __init__(self, txn: Transaction[M], message: M) -> None:
        self.txn = txn
        self.message = message


class SendCancel(_Action, Generic[M]):
    """The TU must now send a CANCEL for ``txn.request`` as its own transaction (RFC 3261 9.1)."""

    __slots__ = ("txn",)
    _fields = ("txn",)

    def __init__(self, txn: Transaction[M]) -> None:
        self.txn = txn


class TimedOut(_Action, Generic[M]):
    """The transaction failed by timeout. For a client transaction the TU acts as if it had
    received a 408 (RFC 3261 16.7 step 2, 16.8); for a server one (timer H) the ACK never came."""

    __slots__ = ("timer", "txn")
    _fields = ("timer", "txn")

    def __init__(self, txn: Transaction[M], timer: Timer) -> None:
        self.txn = txn
        self.timer = timer


class TransportFailed(_Action, Generic[M]):
    """The transport could not send this transaction's message; the transaction is over."""

    __slots__ = ("txn",)
    _fields = ("txn",)

    def __init__(self, txn: Transaction[M]) -> None:
        self.txn = txn


class Terminated(_Action, Generic[M]):
    """The transaction reached Terminated and left the table. Always its last action."""

    __slots__ = ("txn",)
    _fields = ("txn",)

    def __init__(self, txn: Transaction[M]) -> None:
        self.txn = txn


class Stray(_Action, Generic[M]):
    """A message no transaction owns: a response to nothing we have (a proxy forwards it
    statelessly, RFC 3261 16.7), or an ACK matching no INVITE server transaction (the ACK for a
    2xx, its own transaction, 17.2.3; a proxy forwards it statelessly too)."""

    __slots__ = ("message",)
    _fields = ("message",)

    def __init__(self, message: M) -> None:
        self.message = message


Action: TypeAlias = (
    Send[M] | PassUp[M] | SendCancel[M] | TimedOut[M] | TransportFailed[M] | Terminated[M]
    | Stray[M]
)  # fmt: skip


@dataclass(slots=True)
class Stats:
    """Counters since the table was created, for metrics."""

    created: int = 0
    terminated: int = 0
    timeouts: int = 0
    transport_failures: int = 0
    retransmissions_sent: int = 0  # requests, responses and ACKs we repeated
    retransmissions_absorbed: int = 0  # copies from peers that a transaction swallowed
    strays: int = 0  # responses and ACKs that matched no transaction
    ignored: int = 0  # events a state has no transition for (late, out of order, misuse)


# --------------------------------------------------------------------------------------------
# The interpreter: tables compiled to phases (kind x state x transport) with one row per event
# --------------------------------------------------------------------------------------------

_Out: TypeAlias = list[Any]
_Handler: TypeAlias = Callable[["TransactionTable[Any]", Transaction[Any], Any, float, _Out], None]


def _send_request(tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float,
                  out: _Out) -> None:
    assert txn._live is not None  # _LIVE_OPS never run in a waiting state
    out.append(Send(txn, txn._live.request, False))


def _resend_request(tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float,
                    out: _Out) -> None:
    assert txn._live is not None
    tbl.stats.retransmissions_sent += 1
    out.append(Send(txn, txn._live.request, True))


def _send_response(tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float,
                   out: _Out) -> None:
    if txn._live is not None:  # a waiting transaction (Accepted) never resends it
        txn.last = msg
    out.append(Send(txn, msg, False))


def _resend_last(tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float,
                 out: _Out) -> None:
    # The last response (server) or the ACK (INVITE client); nothing yet means nothing to repeat.
    if txn.last is not None:
        tbl.stats.retransmissions_sent += 1
        out.append(Send(txn, txn.last, True))


def _send_ack(tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float,
              out: _Out) -> None:
    live = txn._live
    assert live is not None and live.build_ack is not None  # required for INVITE clients
    ack = live.build_ack(msg)
    txn.last = ack
    out.append(Send(txn, ack, False))


def _pass_up(tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float,
             out: _Out) -> None:
    out.append(PassUp(txn, msg))


def _absorb(tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float,
            out: _Out) -> None:
    tbl.stats.retransmissions_absorbed += 1


def _note_cancel(tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float,
                 out: _Out) -> None:
    assert txn._live is not None
    txn._live.cancel_noted = True


def _cancel_if_noted(tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float,
                     out: _Out) -> None:
    live = txn._live
    assert live is not None
    if live.cancel_noted and not live.cancel_sent:
        live.cancel_sent = True
        out.append(SendCancel(txn))
        delay = txn._phase.durations[Timer.B]
        assert delay is not None  # B runs over every transport
        live.life = Timer.B
        live.life_at = now + delay


def _timed_out(tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float,
               out: _Out) -> None:
    tbl.stats.timeouts += 1
    out.append(TimedOut(txn, msg))  # for timer events, ``msg`` is the timer that fired


def _transport_failed(tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float,
                      out: _Out) -> None:
    tbl.stats.transport_failures += 1
    out.append(TransportFailed(txn))


_OP_HANDLERS: dict[Op, _Handler] = {
    Op.SEND_REQUEST: _send_request,
    Op.RESEND_REQUEST: _resend_request,
    Op.SEND_RESPONSE: _send_response,
    Op.RESEND_RESPONSE: _resend_last,
    Op.SEND_ACK: _send_ack,
    Op.RESEND_ACK: _resend_last,
    Op.PASS_UP: _pass_up,
    Op.ABSORB: _absorb,
    Op.NOTE_CANCEL: _note_cancel,
    Op.CANCEL_IF_NOTED: _cancel_if_noted,
    Op.TIMED_OUT: _timed_out,
    Op.TRANSPORT_FAILED: _transport_failed,
}


def _timer_handler(op: TimerOp, durations: tuple[float | None, ...], t2: float) -> _Handler | None:
    """The handler of one timer operation for one transport (None: nothing to do there)."""
    timer = op.timer
    delay = durations[timer]
    cap = INF if timer is Timer.A else t2  # 17.1.1.2: A doubles forever; E, G stop at T2
    to_t2 = op.verb == "T2"

    def start_retx(tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float,
                   out: _Out) -> None:
        live = txn._live
        assert live is not None and delay is not None
        live.retx = timer
        live.retx_interval = delay
        live.retx_at = now + delay

    def start_life(tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float,
                   out: _Out) -> None:
        live = txn._live
        assert live is not None and delay is not None
        live.life = timer
        live.life_at = now + delay

    def stop_timer(tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float,
                   out: _Out) -> None:
        live = txn._live
        assert live is not None
        if live.retx is timer:
            live.retx = None
            live.retx_at = INF
        elif live.life is timer:
            live.life = None
            live.life_at = INF

    def rearm(tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float,
              out: _Out) -> None:
        # Only on the timer's own firing: ``retx_at`` still holds the deadline that fired, so the
        # schedule stays exact (T1, 3T1, 7T1, ...) even when the event loop runs a little late.
        live = txn._live
        assert live is not None
        interval = t2 if to_t2 else min(live.retx_interval * 2, cap)
        at = live.retx_at + interval
        live.retx = timer
        live.retx_interval = interval
        live.retx_at = at if at > now else now + interval

    if op.verb == "start":
        if delay is None:  # a retransmission timer over a reliable transport: not used
            return None
        return start_retx if timer.retransmits else start_life
    if op.verb == "stop":
        return stop_timer
    return rearm


class _Queue:
    """The transactions waiting on timers of one length, oldest first.

    Every timer that ends a waiting state (D, I, J, K, L, M) has a length fixed by the
    configuration and the transport, and starts when the transaction enters the state, so
    each queue's deadlines come in the order the transactions join it (``now`` never goes
    back): appending and popping from the left replace heap pushes and pops. A transaction
    that terminates early (transport error) stays in its queue until its deadline, and is
    skipped then.
    """

    __slots__ = ("duration", "txns")

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.txns: deque[Transaction[Any]] = deque()


class _Phase:
    """One state of one machine over one kind of transport, with its compiled rows.

    ``rows[event]`` is the transition (or None). For a waiting state, ``wait_timer`` is the
    timer it waits on and ``queue`` where (None: a zero-length timer over a reliable
    transport, which fires as the state is entered).
    """

    __slots__ = (
        "durations",
        "keeps_last",
        "kind",
        "queue",
        "reliable",
        "rows",
        "state",
        "wait_event",
        "wait_timer",
    )

    def __init__(
        self,
        kind: Kind,
        state: State,
        reliable: bool,
        durations: tuple[float | None, ...],
        wait_timer: Timer | None,
        queue: _Queue | None,
        keeps_last: bool,
    ) -> None:
        self.kind = kind
        self.state = state
        self.reliable = reliable
        self.durations = durations
        self.wait_timer = wait_timer
        self.wait_event = None if wait_timer is None else _TIMER_EVENT[wait_timer]
        self.queue = queue
        self.keeps_last = keeps_last
        self.rows: tuple[_Row | None, ...] = ()


class _Row:
    """A compiled transition: the next phase and one handler per operation."""

    __slots__ = ("handlers", "next", "terminal", "waits")

    def __init__(self, next_phase: _Phase, handlers: tuple[_Handler, ...], waits: bool) -> None:
        self.next = next_phase
        self.handlers = handlers
        self.terminal = next_phase.state is State.TERMINATED
        #: Entering a waiting state: the transaction drops its live part and joins a queue.
        self.waits = waits


def _compile(timers: TimerConfig, queues: dict[float, _Queue]) -> dict[tuple[Kind, bool], _Phase]:
    """Every machine over both kinds of transport, as phases; returns each one's INIT phase.

    A row entering a waiting state keeps no timer operations: leaving the live part behind
    stops A, B, E or F, and the queue is the timer it starts.
    """
    initial: dict[tuple[Kind, bool], _Phase] = {}
    for kind, table in MACHINES.items():
        waits = waiting_states(table)
        for reliable in (False, True):
            durations = timers.durations(reliable)
            phases: dict[State, _Phase] = {}
            for state in State:
                timer = waits.get(state)
                queue = None
                if timer is not None:
                    length = durations[timer]
                    assert length is not None  # lifetime timers run over every transport
                    if length > 0:
                        queue = queues.setdefault(length, _Queue(length))
                keeps = timer is not None and _resends(table, state)
                phases[state] = _Phase(kind, state, reliable, durations, timer, queue, keeps)
            rows: dict[State, list[_Row | None]] = {s: [None] * len(Event) for s in State}
            for (state, event), (next_state, ops) in table.items():
                entering = next_state in waits and next_state is not state
                handlers: list[_Handler] = []
                for op in ops:
                    if isinstance(op, TimerOp):
                        handler = None if entering else _timer_handler(op, durations, timers.t2)
                    else:
                        handler = _OP_HANDLERS[op]
                    if handler is not None:
                        handlers.append(handler)
                rows[state][event] = _Row(phases[next_state], tuple(handlers), entering)
            for state, phase in phases.items():
                phase.rows = tuple(rows[state])
            initial[(kind, reliable)] = phases[State.INIT]
    return initial


# --------------------------------------------------------------------------------------------
# The table of transactions
# --------------------------------------------------------------------------------------------

_TERMINATED = State.TERMINATED
_REQUEST = Event.REQUEST
_ACK = Event.ACK
_TU_REQUEST = Event.TU_REQUEST
_TU_CANCEL = Event.TU_CANCEL
_TRANSPORT_ERROR = Event.TRANSPORT_ERROR
_NON_INVITE_CLIENT = Kind.NON_INVITE_CLIENT
# Indexed by status // 100: 1xx, 2xx, then 3xx-6xx alike (RFC 3261 17.1.1.2, 17.2.1).
_RESPONSE_EVENT = (None, Event.PROVISIONAL, Event.SUCCESS, *[Event.FAILURE] * 4)
_TU_RESPONSE_EVENT = (None, Event.TU_PROVISIONAL, Event.TU_SUCCESS, *[Event.TU_FAILURE] * 4)
_COMPACT_MIN = 1024  # dead heap entries tolerated before we consider compacting


class TransactionTable(Generic[M]):
    """All transactions of one SIP process, their matching keys and their timers.

    Server transactions are keyed per RFC 3261 17.2.3 by (branch, sent-by, method), where an ACK
    looks for the INVITE and a CANCEL is a transaction of its own. Client transactions are keyed
    per 17.1.3 by (branch, CSeq method). The branch is whatever string the caller uses to
    identify the transaction: the top Via's branch for RFC 3261 peers (magic cookie
    ``z9hG4bK``); for RFC 2543 peers, a key the caller derives per 17.2.3's fallback rules.
    Methods and sent-by values never contain a space (they are tokens and host:port), which
    keeps the one-string keys unambiguous whatever the branch holds.

    Timers: live transactions (those retransmitting or waiting for a response) share one heap;
    waiting ones sit in one first-in first-out queue per timer length (:class:`_Queue`).
    ``now`` must never go back from one call to the next (a monotonic clock); if it did, a
    waiting transaction could end late behind one queued before it, never early.
    """

    def __init__(
        self, timers: TimerConfig | None = None, *, serialise: Callable[[M], bytes] | None = None
    ) -> None:
        """``serialise(message) -> bytes``, if given, is how the TU sends a message: a
        transaction that only waits keeps its last message (the one it may repeat) as those
        bytes, and :class:`Send` carries them, instead of the message object."""
        self.timers = timers or TimerConfig()
        self._serialise = serialise
        self.stats = Stats()
        queues: dict[float, _Queue] = {}
        self._initial = _compile(self.timers, queues)
        self._queues = tuple(queues.values())
        self._servers: dict[str, Transaction[M]] = {}
        self._clients: dict[str, Transaction[M]] = {}
        self._counts = [0, 0, 0, 0]  # per Kind
        # Heap of (deadline, sequence, transaction) for live transactions. An entry is live
        # while its sequence equals the transaction's ``heap_seq``; the others are dead and
        # skipped (lazy cancellation).
        self._heap: list[tuple[float, int, Transaction[M]]] = []
        self._seq = itertools.count()
        self._dead = 0
        #: No live deadline is earlier than this (see next_deadline): every timer set lowers
        #: it, advance() makes it exact again.
        self._earliest = INF

    # ---- client side (RFC 3261 17.1) -----------------------------------------------------

    def send_request(
        self,
        request: M,
        *,
        method: str,
        branch: str,
        reliable: bool,
        now: float,
        context: Any = None,
        build_ack: Callable[[M], M] | None = None,
    ) -> tuple[Transaction[M], list[Action[M]]]:
        """Start a client transaction for ``request`` (the TU is done building it).

        ``build_ack(response)`` is required for an INVITE: the transaction ACKs non-2xx final
        responses itself (17.1.1.3). An ACK is never a client transaction: the TU sends the ACK
        for a 2xx (or a proxy forwards it) straight to the transport.
        """
        if method == "ACK":
            raise ValueError("an ACK is not a transaction: send it without the transaction layer")
        invite = method == "INVITE"
        if invite and build_ack is None:
            raise ValueError("an INVITE client transaction needs build_ack (RFC 3261 17.1.1.3)")
        key = f"{method} {branch}"
        if key in self._clients:
            raise ValueError(
                f"a client transaction {method} {branch!r} exists already: branches must be unique"
            )
        kind = Kind.INVITE_CLIENT if invite else Kind.NON_INVITE_CLIENT
        txn = self._new(kind, key, request, reliable, context, build_ack)
        self._clients[key] = txn
        out: list[Action[M]] = []
        self._run(txn, _TU_REQUEST, None, now, out)
        return txn, out

    def receive_response(
        self, response: M, *, status: int, method: str, branch: str, now: float
    ) -> list[Action[M]]:
        """A response arrived; ``method`` is its CSeq method, ``branch`` its top Via's."""
        out: list[Action[M]] = []
        txn = self._clients.get(f"{method} {branch}")
        if txn is None or not 100 <= status < 700:
            self.stats.strays += 1
            out.append(Stray(response))
        else:
            event = _RESPONSE_EVENT[status // 100]
            assert event is not None
            self._run(txn, event, response, now, out)
        return out

    def cancel(self, txn: Transaction[M], *, now: float) -> list[Action[M]]:
        """The TU wants this INVITE client transaction cancelled (RFC 3261 9.1, 16.10).

        The answer is a :class:`SendCancel` as soon as a provisional response has arrived
        (at once if one has); nothing for non-INVITE or finished transactions.
        """
        out: list[Action[M]] = []
        self._run(txn, _TU_CANCEL, None, now, out)
        return out

    # ---- server side (RFC 3261 17.2) -----------------------------------------------------

    def receive_request(
        self,
        request: M,
        *,
        method: str,
        branch: str,
        sent_by: str,
        reliable: bool,
        now: float,
        context: Any = None,
    ) -> list[Action[M]]:
        """A request arrived. A new one starts a server transaction and is passed up; a
        retransmission is absorbed (the last response goes out again); an ACK goes to the INVITE
        transaction it matches, or comes back as :class:`Stray` (the ACK for a 2xx).

        ``branch`` and ``sent_by`` come from the top Via; ``sent_by`` is compared as given, so
        the caller normalises it (lower-case host, default port filled in).
        """
        out: list[Action[M]] = []
        if method == "ACK":
            txn = self._servers.get(f"INVITE {sent_by} {branch}")
            if txn is None:
                self.stats.strays += 1
                out.append(Stray(request))
            else:
                self._run(txn, _ACK, request, now, out)
            return out
        key = f"{method} {sent_by} {branch}"
        txn = self._servers.get(key)
        if txn is None:
            kind = Kind.INVITE_SERVER if method == "INVITE" else Kind.NON_INVITE_SERVER
            txn = self._new(kind, key, request, reliable, context, None)
            self._servers[key] = txn
        self._run(txn, _REQUEST, request, now, out)
        return out

    def respond(
        self, txn: Transaction[M], response: M, *, status: int, now: float
    ) -> list[Action[M]]:
        """The TU sends ``response`` (with this status code) on server transaction ``txn``."""
        if not 100 <= status < 700:
            raise ValueError(f"status {status} is not a SIP status code (100-699)")
        event = _TU_RESPONSE_EVENT[status // 100]
        assert event is not None
        out: list[Action[M]] = []
        self._run(txn, event, response, now, out)
        return out

    def invite_for_cancel(self, cancel: Transaction[M]) -> Transaction[M] | None:
        """The INVITE server transaction a CANCEL server transaction cancels (RFC 3261 9.2:
        matched as in 17.2.3, except for the method), if it is still there."""
        _, sent_by_and_branch = cancel.key.split(" ", 1)
        return self._servers.get("INVITE " + sent_by_and_branch)

    # ---- both sides ------------------------------------------------------------------------

    def transport_error(self, txn: Transaction[M], *, now: float) -> list[Action[M]]:
        """The transport could not send a message of ``txn`` (17.1.4, 17.2.4)."""
        out: list[Action[M]] = []
        self._run(txn, _TRANSPORT_ERROR, None, now, out)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`advance` has work next (possibly early, never late); None: no timers.

        Cheap, for a driver that asks after every message: no deadline is looked up here. It
        is the exact one :meth:`advance` worked out last, lowered by every timer set since.
        A timer stopped since (the usual INVITE, answered well before timer A) leaves it early:
        the driver's wake-up then finds nothing due, and advance works out the exact one again.
        """
        at = self._earliest
        return None if at == INF else at

    def _exact_deadline(self) -> float:
        """The earliest live deadline (INF: none), dropping what can no longer fire on the way."""
        heap = self._heap
        while heap and not _heap_entry_live(heap[0]):
            heapq.heappop(heap)  # dead entries at the top would wake the loop for nothing
            self._dead -= 1
        deadline = heap[0][0] if heap else INF
        for queue in self._queues:
            waiting = queue.txns
            while waiting and waiting[0]._phase.state is _TERMINATED:
                waiting.popleft()  # ended early (transport error): nothing to fire
            if waiting:
                deadline = min(deadline, waiting[0]._since + queue.duration)
        return deadline

    def advance(self, now: float) -> list[Action[M]]:
        """Fire every timer due at ``now``, in deadline order."""
        out: list[Action[M]] = []
        heap = self._heap
        queues = self._queues
        while True:
            # The earliest deadline: the heap's top or the head of one of the few queues.
            at = heap[0][0] if heap else INF
            source: _Queue | None = None
            for queue in queues:
                waiting = queue.txns
                if waiting:
                    head = waiting[0]._since + queue.duration
                    if head < at:
                        at = head
                        source = queue
            if at > now:
                self._earliest = self._exact_deadline()
                return out
            if source is None:
                _, seq, txn = heapq.heappop(heap)
                live = txn._live
                if live is None or seq != live.heap_seq:
                    self._dead -= 1
                    continue
                live.heap_at = INF
                live.heap_seq = -1
                self._settle(txn, live, now, out)
            else:
                txn = source.txns.popleft()
                phase = txn._phase
                if phase.state is not _TERMINATED:
                    assert phase.wait_event is not None
                    self._step(txn, phase.wait_event, phase.wait_timer, now, out)

    def __len__(self) -> int:
        return len(self._servers) + len(self._clients)

    def counts(self) -> dict[Kind, int]:
        """Transactions in the table, by kind (for the transactions gauge)."""
        return {kind: self._counts[kind] for kind in Kind}

    def heap_size(self) -> int:
        """Timer entries, in the heap and the waiting queues, dead ones included (to check they
        stay bounded)."""
        return len(self._heap) + sum(len(queue.txns) for queue in self._queues)

    # ---- internals -------------------------------------------------------------------------

    def _new(
        self,
        kind: Kind,
        key: str,
        request: M,
        reliable: bool,
        context: Any,
        build_ack: Callable[[M], M] | None,
    ) -> Transaction[M]:
        txn = Transaction(key, self._initial[(kind, reliable)], _Live(request, build_ack), context)
        self._counts[kind] += 1
        self.stats.created += 1
        return txn

    def _run(self, txn: Transaction[M], event: Event, msg: Any, now: float,
             out: list[Action[M]]) -> None:
        """Apply one event, then fire whatever became due (zero-length timers) and reschedule.

        The common case (nothing due, heap entry already early enough) is kept inline: this is
        the path every message takes.
        """
        row = txn._phase.rows[event]
        if row is None:
            self.stats.ignored += 1
            return
        txn._phase = row.next
        for handler in row.handlers:
            handler(self, txn, msg, now, out)
        if row.terminal:
            self._terminate(txn, out)
            return
        if row.waits:
            self._wait(txn, now, out)
            return
        live = txn._live
        if live is None:
            return  # a waiting transaction that absorbed or resent something: it waits on
        life_at = live.life_at
        retx_at = live.retx_at
        at = life_at if life_at < retx_at else retx_at
        if at <= now:
            self._settle(txn, live, now, out)
        elif at < live.heap_at:
            self._push(txn, live, at)

    def _step(self, txn: Transaction[M], event: Event, msg: Any, now: float,
              out: list[Action[M]]) -> None:
        """Apply one timer event; the caller reschedules."""
        row = txn._phase.rows[event]
        if row is None:
            self.stats.ignored += 1
            return
        txn._phase = row.next
        for handler in row.handlers:
            handler(self, txn, msg, now, out)
        if row.terminal:
            self._terminate(txn, out)
        elif row.waits:
            self._wait(txn, now, out)

    def _settle(self, txn: Transaction[M], live: _Live[M], now: float,
                out: list[Action[M]]) -> None:
        """Fire the transaction's due timers (lifetime first on a tie: once B, F or H is due,
        retransmitting is pointless), then make sure the heap holds its next deadline."""
        while txn._live is live:  # until it terminates or only waits
            life_at = live.life_at
            retx_at = live.retx_at
            if life_at <= now and life_at <= retx_at:
                timer = live.life
                live.life = None
                live.life_at = INF
                assert timer is not None
                self._step(txn, _TIMER_EVENT[timer], timer, now, out)
            elif retx_at <= now:
                timer = live.take_retx()  # the row's double/T2 re-arms it (reads retx_at)
                self._step(txn, _TIMER_EVENT[timer], timer, now, out)
                if live.retx is None:
                    live.retx_at = INF
            else:
                at = life_at if life_at < retx_at else retx_at
                if at < live.heap_at:
                    self._push(txn, live, at)
                return

    def _push(self, txn: Transaction[M], live: _Live[M], at: float) -> None:
        """Make ``at`` the transaction's heap entry; an existing later entry becomes dead."""
        if live.heap_at != INF:
            self._dead += 1
        live.heap_at = at
        live.heap_seq = seq = next(self._seq)
        heapq.heappush(self._heap, (at, seq, txn))
        self._earliest = min(self._earliest, at)

    def _drop_live(self, txn: Transaction[M]) -> None:
        """The transaction no longer needs its live part; its heap entry, if any, is dead."""
        live = txn._live
        if live is None:
            return
        txn._live = None
        if live.heap_at != INF:
            self._dead += 1
            if self._dead > _COMPACT_MIN and self._dead * 2 > len(self._heap):
                self._compact()

    def _wait(self, txn: Transaction[M], now: float, out: list[Action[M]]) -> None:
        """The transaction entered a waiting state: keep only what its rows there use, and
        queue it for the state's timer (which fires at once when zero-length)."""
        self._drop_live(txn)
        phase = txn._phase
        last = txn.last
        if not phase.keeps_last:
            txn.last = None  # e.g. INVITE server Accepted absorbs without answering (RFC 6026)
        elif last is not None and self._serialise is not None and type(last) is not bytes:
            txn.last = self._serialise(last)  # type: ignore[arg-type]  # not bytes: an M
        queue = phase.queue
        if queue is None:  # D, I, J or K over a reliable transport
            assert phase.wait_event is not None
            self._step(txn, phase.wait_event, phase.wait_timer, now, out)
        else:
            txn._since = now
            queue.txns.append(txn)
            at = now + queue.duration
            self._earliest = min(self._earliest, at)

    def _terminate(self, txn: Transaction[M], out: list[Action[M]]) -> None:
        kind = txn._phase.kind
        if kind <= _NON_INVITE_CLIENT:
            del self._clients[txn.key]
        else:
            del self._servers[txn.key]
        self._counts[kind] -= 1
        self.stats.terminated += 1
        self._drop_live(txn)
        out.append(Terminated(txn))

    def _compact(self) -> None:
        """Drop dead heap entries once they are the majority: memory stays proportional to the
        live transactions even when most end long before their first timer would fire."""
        # In place: advance() may be iterating over this very list.
        self._heap[:] = [entry for entry in self._heap if _heap_entry_live(entry)]
        heapq.heapify(self._heap)
        self._dead = 0


def _heap_entry_live(entry: tuple[float, int, Transaction[Any]]) -> bool:
    live = entry[2]._live
    return live is not None and live.heap_seq == entry[1]
