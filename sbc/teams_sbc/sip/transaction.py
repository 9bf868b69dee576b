"""The RFC 3261 section 17 transaction layer, sans-IO, on a clock the caller passes in.

Four state machines (INVITE/non-INVITE x client/server), amended by RFC 6026 (the "Accepted"
states and timers L and M), written as DATA: one table per machine, mapping
``(state, event) -> Transition(next state, operations)``. Everything else in this module is the
small interpreter that runs those tables, and one timer heap shared by every transaction.
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

Why two timer slots per transaction and at most one live heap entry: a transaction never runs more
than a retransmission timer (A, E or G) and a lifetime timer (B, D, F, H, I, J, K, L or M) at
once, and only the earlier of the two needs to be in the heap. Stopping a timer costs nothing
(the heap entry fires early, finds nothing due and is dropped), so the common INVITE, answered
well before timer A, never touches the heap again until it ends.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Generic, NamedTuple, TypeAlias, TypeVar

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
# Transactions and the actions they produce
# --------------------------------------------------------------------------------------------


class Transaction(Generic[M]):
    """One transaction. The caller reads it; only the :class:`TransactionTable` changes it.

    ``context`` is the caller's: the transport glue or the proxy attaches whatever it needs to
    act on this transaction's actions (the peer or connection to send to, the proxy's response
    context). The layer never reads it.
    """

    __slots__ = (
        "_build_ack",
        "_heap_at",
        "_heap_seq",
        "_life",
        "_life_at",
        "_machine",
        "_retx",
        "_retx_at",
        "_retx_interval",
        "cancel_noted",
        "cancel_sent",
        "context",
        "key",
        "kind",
        "last",
        "reliable",
        "request",
        "state",
    )

    def __init__(
        self,
        kind: Kind,
        key: tuple[str, ...],
        request: M,
        reliable: bool,
        context: Any,
        machine: _Machine,
        build_ack: Callable[[M], M] | None,
    ) -> None:
        self.kind = kind
        self.key = key
        self.state = State.INIT
        #: The request that created the transaction (the one a client retransmits); None once
        #: the transaction only waits (Accepted, Completed, Confirmed) and will not need it.
        self.request: M | None = request
        #: Server: the last response sent. INVITE client: the ACK it sent for a non-2xx. Once
        #: the transaction only waits, the bytes the table's ``serialise`` made of it, if given.
        self.last: M | bytes | None = None
        self.reliable = reliable
        self.context = context
        #: The TU asked to cancel this INVITE; ``cancel_sent`` once it was told to send CANCEL.
        self.cancel_noted = False
        self.cancel_sent = False
        self._build_ack = build_ack
        self._machine = machine
        # Two timer slots: retransmission (A/E/G) and lifetime (B/D/F/H/I/J/K/L/M).
        self._retx: Timer | None = None
        self._retx_at = INF
        self._retx_interval = 0.0
        self._life: Timer | None = None
        self._life_at = INF
        #: Deadline of this transaction's live entry in the table's heap (INF: none).
        self._heap_at = INF
        self._heap_seq = -1  # its sequence number: the entry is live iff the numbers match

    @property
    def timers(self) -> dict[Timer, float]:
        """Running timers and their deadlines (for tests and debugging)."""
        running: dict[Timer, float] = {}
        if self._retx is not None:
            running[self._retx] = self._retx_at
        if self._life is not None:
            running[self._life] = self._life_at
        return running

    def __repr__(self) -> str:
        return f"<Transaction {self.kind.label} {self.state.name} {self.key}>"


@dataclass(slots=True, eq=False)
class Send(Generic[M]):
    """Pass ``message`` to the transport for this transaction (to ``txn.context``'s peer).

    ``retransmission`` is True when the transaction itself repeats a message (timers A, E, G,
    or answering a retransmitted request), so metrics can count retransmissions.
    """

    txn: Transaction[M]
    message: M | bytes  # bytes: a waiting transaction's repeat, as the TU's serialise made it
    retransmission: bool


@dataclass(slots=True, eq=False)
class PassUp(Generic[M]):
    """Give ``message`` to the TU: a new request, a response, or an ACK in Accepted."""

    txn: Transaction[M]
    message: M


@dataclass(slots=True, eq=False)
class SendCancel(Generic[M]):
    """The TU must now send a CANCEL for ``txn.request`` as its own transaction (RFC 3261 9.1)."""

    txn: Transaction[M]


@dataclass(slots=True, eq=False)
class TimedOut(Generic[M]):
    """The transaction failed by timeout. For a client transaction the TU acts as if it had
    received a 408 (RFC 3261 16.7 step 2, 16.8); for a server one (timer H) the ACK never came."""

    txn: Transaction[M]
    timer: Timer


@dataclass(slots=True, eq=False)
class TransportFailed(Generic[M]):
    """The transport could not send this transaction's message; the transaction is over."""

    txn: Transaction[M]


@dataclass(slots=True, eq=False)
class Terminated(Generic[M]):
    """The transaction reached Terminated and left the table. Always its last action."""

    txn: Transaction[M]


@dataclass(slots=True, eq=False)
class Stray(Generic[M]):
    """A message no transaction owns: a response to nothing we have (a proxy forwards it
    statelessly, RFC 3261 16.7), or an ACK matching no INVITE server transaction (the ACK for a
    2xx, its own transaction, 17.2.3; a proxy forwards it statelessly too)."""

    message: M


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
# The interpreter: tables compiled to handler tuples, indexed [state][event]
# --------------------------------------------------------------------------------------------

_Out: TypeAlias = list[Any]
_Handler: TypeAlias = Callable[["TransactionTable[Any]", Transaction[Any], Any, float, _Out], None]


def _send_request(
    tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float, out: _Out
) -> None:
    out.append(Send(txn, txn.request, False))


def _resend_request(
    tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float, out: _Out
) -> None:
    tbl.stats.retransmissions_sent += 1
    out.append(Send(txn, txn.request, True))


def _send_response(
    tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float, out: _Out
) -> None:
    txn.last = msg
    out.append(Send(txn, msg, False))


def _resend_last(
    tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float, out: _Out
) -> None:
    # The last response (server) or the ACK (INVITE client); nothing yet means nothing to repeat.
    if txn.last is not None:
        tbl.stats.retransmissions_sent += 1
        out.append(Send(txn, txn.last, True))


def _send_ack(
    tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float, out: _Out
) -> None:
    assert txn._build_ack is not None  # required at creation for INVITE clients
    ack = txn._build_ack(msg)
    txn.last = ack
    out.append(Send(txn, ack, False))


def _pass_up(
    tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float, out: _Out
) -> None:
    out.append(PassUp(txn, msg))


def _absorb(
    tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float, out: _Out
) -> None:
    tbl.stats.retransmissions_absorbed += 1


def _note_cancel(
    tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float, out: _Out
) -> None:
    txn.cancel_noted = True


def _cancel_if_noted(
    tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float, out: _Out
) -> None:
    if txn.cancel_noted and not txn.cancel_sent:
        txn.cancel_sent = True
        out.append(SendCancel(txn))
        _start_life(tbl, txn, Timer.B, now)


def _timed_out(
    tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float, out: _Out
) -> None:
    tbl.stats.timeouts += 1
    out.append(TimedOut(txn, msg))  # for timer events, ``msg`` is the timer that fired


def _transport_failed(
    tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float, out: _Out
) -> None:
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


def _start_life(
    tbl: TransactionTable[Any], txn: Transaction[Any], timer: Timer, now: float
) -> None:
    # The durations live in the table, by transport reliability: one slot less per transaction.
    delay = tbl._durations[txn.reliable][timer]
    assert delay is not None  # lifetime timers run over every transport
    txn._life = timer
    txn._life_at = now + delay


def _timer_handler(op: TimerOp, t2: float) -> _Handler:
    """One handler per timer operation of the tables, built once per TransactionTable config."""
    timer = op.timer
    cap = INF if timer is Timer.A else t2  # 17.1.1.2: A doubles forever; E, G stop at T2
    to_t2 = op.verb == "T2"

    def start_retx(
        tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float, out: _Out
    ) -> None:
        delay = tbl._durations[txn.reliable][timer]
        if delay is not None:  # None: reliable transport, no retransmissions
            txn._retx = timer
            txn._retx_interval = delay
            txn._retx_at = now + delay

    def start_life(
        tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float, out: _Out
    ) -> None:
        _start_life(tbl, txn, timer, now)

    def stop_timer(
        tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float, out: _Out
    ) -> None:
        if txn._retx is timer:
            txn._retx = None
            txn._retx_at = INF
        elif txn._life is timer:
            txn._life = None
            txn._life_at = INF

    def rearm(
        tbl: TransactionTable[Any], txn: Transaction[Any], msg: Any, now: float, out: _Out
    ) -> None:
        # Only on the timer's own firing: ``_retx_at`` still holds the deadline that fired, so the
        # schedule stays exact (T1, 3T1, 7T1, ...) even when the event loop runs a little late.
        interval = t2 if to_t2 else min(txn._retx_interval * 2, cap)
        at = txn._retx_at + interval
        txn._retx = timer
        txn._retx_interval = interval
        txn._retx_at = at if at > now else now + interval

    if op.verb == "start":
        return start_retx if timer.retransmits else start_life
    if op.verb == "stop":
        return stop_timer
    return rearm


class _Row:
    """A compiled transition: the next state and one handler per operation."""

    __slots__ = ("handlers", "next", "release", "terminal")

    def __init__(self, next_state: State, handlers: tuple[_Handler, ...]) -> None:
        self.next = next_state
        self.handlers = handlers
        self.terminal = next_state is State.TERMINATED
        #: Entering a state that only waits (for retransmissions to absorb, an ACK, a timer):
        #: the request is never sent or read again, so the transaction lets go of it.
        self.release = next_state in _WAITING_STATES


_Machine: TypeAlias = tuple[tuple[_Row | None, ...], ...]  # [state][event]

_WAITING_STATES = frozenset({State.ACCEPTED, State.COMPLETED, State.CONFIRMED})


def _release(txn: Transaction[Any], state: State, serialise: Callable[[Any], bytes] | None) -> None:
    """Drop what a waiting transaction no longer needs, so thousands of them (timers J, L and M
    last 64*T1) hold little memory: the request and the ACK builder always; in Accepted also
    the last response, since RFC 6026 absorbs INVITE retransmissions there without answering.
    Elsewhere the last message is only ever sent again: with the TU's ``serialise`` it is kept
    as its bytes alone (bytes already are)."""
    txn.request = None
    txn._build_ack = None
    if state is State.ACCEPTED:
        txn.last = None
    elif serialise is not None:
        last = txn.last
        if last is not None and type(last) is not bytes:
            txn.last = serialise(last)


def _compile(table: Table, t2: float) -> _Machine:
    rows: list[list[_Row | None]] = [[None] * len(Event) for _ in State]
    for (state, event), (next_state, ops) in table.items():
        handlers = tuple(
            _timer_handler(op, t2) if isinstance(op, TimerOp) else _OP_HANDLERS[op] for op in ops
        )
        rows[state][event] = _Row(next_state, handlers)
    return tuple(tuple(r) for r in rows)


# T2 is the only configuration the compiled rows depend on; the default set is shared, and a
# table with another T2 recompiles its own (see TransactionTable.__init__).
_COMPILED: dict[Kind, _Machine] = {
    kind: _compile(table, TimerConfig().t2) for kind, table in MACHINES.items()
}


# --------------------------------------------------------------------------------------------
# The table of transactions
# --------------------------------------------------------------------------------------------

_TERMINATED = State.TERMINATED
_REQUEST = Event.REQUEST
_ACK = Event.ACK
_TU_REQUEST = Event.TU_REQUEST
_TU_CANCEL = Event.TU_CANCEL
_TRANSPORT_ERROR = Event.TRANSPORT_ERROR
# Indexed by status // 100: 1xx, 2xx, then 3xx-6xx alike (RFC 3261 17.1.1.2, 17.2.1).
_RESPONSE_EVENT = (None, Event.PROVISIONAL, Event.SUCCESS, *[Event.FAILURE] * 4)
_TU_RESPONSE_EVENT = (None, Event.TU_PROVISIONAL, Event.TU_SUCCESS, *[Event.TU_FAILURE] * 4)
_COMPACT_MIN = 1024  # dead heap entries tolerated before we consider compacting


class TransactionTable(Generic[M]):
    """All transactions of one SIP process, their matching keys and one timer heap.

    Server transactions are keyed per RFC 3261 17.2.3 by (branch, sent-by, method), where an ACK
    looks for the INVITE and a CANCEL is a transaction of its own. Client transactions are keyed
    per 17.1.3 by (branch, CSeq method). The branch is whatever string the caller uses to
    identify the transaction: the top Via's branch for RFC 3261 peers (magic cookie
    ``z9hG4bK``); for RFC 2543 peers, a key the caller derives per 17.2.3's fallback rules.
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
        self._durations = (self.timers.durations(False), self.timers.durations(True))
        self._machines: dict[Kind, _Machine] = (
            _COMPILED
            if self.timers.t2 == TimerConfig().t2
            else {kind: _compile(table, self.timers.t2) for kind, table in MACHINES.items()}
        )
        self._servers: dict[tuple[str, ...], Transaction[M]] = {}
        self._clients: dict[tuple[str, ...], Transaction[M]] = {}
        self._live = [0, 0, 0, 0]  # per Kind
        # Heap of (deadline, sequence, transaction). An entry is live while its deadline equals
        # the transaction's ``_heap_seq``; the others are dead and skipped (lazy cancellation).
        self._heap: list[tuple[float, int, Transaction[M]]] = []
        self._seq = itertools.count()
        self._dead = 0

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
        key = (branch, method)
        if key in self._clients:
            raise ValueError(f"a client transaction {key} exists already: branches must be unique")
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
        txn = self._clients.get((branch, method))
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
            txn = self._servers.get((branch, sent_by, "INVITE"))
            if txn is None:
                self.stats.strays += 1
                out.append(Stray(request))
            else:
                self._run(txn, _ACK, request, now, out)
            return out
        key = (branch, sent_by, method)
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
        branch, sent_by, _ = cancel.key
        return self._servers.get((branch, sent_by, "INVITE"))

    # ---- both sides ------------------------------------------------------------------------

    def transport_error(self, txn: Transaction[M], *, now: float) -> list[Action[M]]:
        """The transport could not send a message of ``txn`` (17.1.4, 17.2.4)."""
        out: list[Action[M]] = []
        self._run(txn, _TRANSPORT_ERROR, None, now, out)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`advance` has work next (possibly early, never late); None: no timers."""
        heap = self._heap
        while heap and heap[0][1] != heap[0][2]._heap_seq:
            heapq.heappop(heap)  # dead entries at the top would wake the loop for nothing
            self._dead -= 1
        return heap[0][0] if heap else None

    def advance(self, now: float) -> list[Action[M]]:
        """Fire every timer due at ``now``, in deadline order."""
        out: list[Action[M]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, seq, txn = heapq.heappop(heap)
            if seq != txn._heap_seq:
                self._dead -= 1
                continue
            txn._heap_at = INF
            txn._heap_seq = -1
            self._settle(txn, now, out)
        return out

    def __len__(self) -> int:
        return len(self._servers) + len(self._clients)

    def counts(self) -> dict[Kind, int]:
        """Transactions in the table, by kind (for the transactions gauge)."""
        return {kind: self._live[kind] for kind in Kind}

    def heap_size(self) -> int:
        """Entries in the timer heap, dead ones included (to check it stays bounded)."""
        return len(self._heap)

    # ---- internals -------------------------------------------------------------------------

    def _new(
        self,
        kind: Kind,
        key: tuple[str, ...],
        request: M,
        reliable: bool,
        context: Any,
        build_ack: Callable[[M], M] | None,
    ) -> Transaction[M]:
        txn = Transaction(kind, key, request, reliable, context, self._machines[kind], build_ack)
        self._live[kind] += 1
        self.stats.created += 1
        return txn

    def _run(
        self, txn: Transaction[M], event: Event, msg: Any, now: float, out: list[Action[M]]
    ) -> None:
        """Apply one event, then fire whatever became due (zero-length timers) and reschedule.

        The common case (nothing due, heap entry already early enough) is kept inline: this is
        the path every message takes.
        """
        row = txn._machine[txn.state][event]
        if row is None:
            self.stats.ignored += 1
            return
        txn.state = row.next
        for handler in row.handlers:
            handler(self, txn, msg, now, out)
        if row.terminal:
            self._terminate(txn, out)
            return
        if row.release:
            _release(txn, row.next, self._serialise)
        life_at = txn._life_at
        retx_at = txn._retx_at
        at = life_at if life_at < retx_at else retx_at
        if at <= now:
            self._settle(txn, now, out)
        elif at < txn._heap_at:
            self._push(txn, at)

    def _step(
        self, txn: Transaction[M], event: Event, msg: Any, now: float, out: list[Action[M]]
    ) -> None:
        row = txn._machine[txn.state][event]
        if row is None:
            self.stats.ignored += 1
            return
        txn.state = row.next
        for handler in row.handlers:
            handler(self, txn, msg, now, out)
        if row.terminal:
            self._terminate(txn, out)
        elif row.release:
            _release(txn, row.next, self._serialise)

    def _settle(self, txn: Transaction[M], now: float, out: list[Action[M]]) -> None:
        """Fire the transaction's due timers (lifetime first on a tie: once B, F or H is due,
        retransmitting is pointless), then make sure the heap holds its next deadline."""
        while txn.state is not _TERMINATED:
            life_at = txn._life_at
            retx_at = txn._retx_at
            if life_at <= now and life_at <= retx_at:
                timer = txn._life
                txn._life = None
                txn._life_at = INF
                assert timer is not None
                self._step(txn, _TIMER_EVENT[timer], timer, now, out)
            elif retx_at <= now:
                timer = txn._retx
                txn._retx = None  # the row's double/T2 re-arms it, reading the fired deadline
                assert timer is not None
                self._step(txn, _TIMER_EVENT[timer], timer, now, out)
                if txn._retx is None:
                    txn._retx_at = INF
            else:
                at = life_at if life_at < retx_at else retx_at
                if at < txn._heap_at:
                    self._push(txn, at)
                return

    def _push(self, txn: Transaction[M], at: float) -> None:
        """Make ``at`` the transaction's heap entry; an existing later entry becomes dead."""
        if txn._heap_at != INF:
            self._dead += 1
        txn._heap_at = at
        txn._heap_seq = seq = next(self._seq)
        heapq.heappush(self._heap, (at, seq, txn))

    def _terminate(self, txn: Transaction[M], out: list[Action[M]]) -> None:
        if txn.kind <= Kind.NON_INVITE_CLIENT:
            del self._clients[txn.key]
        else:
            del self._servers[txn.key]
        self._live[txn.kind] -= 1
        self.stats.terminated += 1
        txn._retx = txn._life = None
        txn._retx_at = txn._life_at = INF
        if txn._heap_at != INF:
            txn._heap_at = INF
            txn._heap_seq = -1
            self._dead += 1
            if self._dead > _COMPACT_MIN and self._dead * 2 > len(self._heap):
                self._compact()
        out.append(Terminated(txn))

    def _compact(self) -> None:
        """Drop dead heap entries once they are the majority: memory stays proportional to the
        live transactions even when most end long before their first timer would fire."""
        # In place: advance() may be iterating over this very list.
        self._heap[:] = [entry for entry in self._heap if entry[1] == entry[2]._heap_seq]
        heapq.heapify(self._heap)
        self._dead = 0
