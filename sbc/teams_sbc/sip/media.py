"""The proxy's media bookkeeping, sans-IO: what it remembers while rtpengine works on a call.

The proxy (:mod:`teams_sbc.sip.proxy`) drives rtpengine through commands it queues and results
the driver feeds back (:mod:`teams_sbc.media.commands`); this module holds the state that
travels between the two halves, and the few pure helpers around it:

- :class:`Pending`: a command in flight and the continuation that resumes the parked message.
- :class:`MediaState`: one forwarded INVITE (or re-INVITE) whose SDP went through rtpengine: the
  instance it is stuck to, which leg each direction faces, the responses waiting their turn.
- :class:`Dialog`: a confirmed call this SBC process anchored, with what it needs to send both
  parties a BYE when rtpengine reports a media timeout (route set, targets, tags, CSeq).

Where a dialog lives (docs/media.md, "Media timeout"): routing needs no dialog state (the
Record-Route carries the listener and the rtpengine token), but a BYE the SBC originates does.
The process that forwarded the INVITE sent rtpengine its ``offer`` and saw the 2xx, and that is
the address rtpengine's timeout callback goes to (``--b2b-url`` with ``%%``): so that process
keeps the :class:`Dialog`. In-dialog requests it routes keep the record current; one that went
through another replica is noticed by the periodic audit (rtpengine no longer knows the call).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from teams_sbc.media.commands import MediaCommand, MediaResult
from teams_sbc.media.legs import Leg
from teams_sbc.sip.message import Message, Response
from teams_sbc.sip.transaction import Transaction

#: The Record-Route parameter that names the rtpengine instance a call is stuck to.
TOKEN_PARAM = "rtpe"
_TOKEN_MARK = f";{TOKEN_PARAM}="
#: RFC 3326 Reason of the BYEs sent when rtpengine saw no media for its timeout: Q.850 cause
#: 102, "recovery on timer expiry", the cause PSTN equipment expects for a timer-driven release.
MEDIA_TIMEOUT_REASON = 'Q.850;cause=102;text="media timeout"'
#: Rewritten answers remembered per INVITE, so 2xx retransmissions need no new command.
_ANSWERS_KEPT = 8


def sdp_of(msg: Message) -> str | None:
    """The message's SDP body, or None (no body, another content type, not text)."""
    body = msg.body
    if not body:
        return None
    ctype = msg.content_type
    if ctype is None or ctype.split(";", 1)[0].strip().lower() != "application/sdp":
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def token_in(route: str) -> str | None:
    """The rtpengine token in one Route or Record-Route value of ours, if it carries one."""
    at = route.find(_TOKEN_MARK)
    if at < 0:
        return None
    start = at + len(_TOKEN_MARK)
    end = start
    while end < len(route) and route[end] not in ";>,? \t":
        end += 1
    return route[start:end] or None


def with_token(rr: str, token: str | None) -> str:
    """One of our Record-Route values (``<sip:...;lr>``) with the token parameter added."""
    if not token:
        return rr
    return f"{rr[:-1]}{_TOKEN_MARK}{token}>"


@dataclass(slots=True, eq=False)
class Pending:
    """A command the driver is running and the continuation of the message it holds."""

    command: MediaCommand
    resume: Callable[[MediaResult, float], None]
    #: A server transaction still waiting on this command: answered 500 if resuming fails.
    txn: Transaction[Message] | None = None
    #: The message it holds no longer goes on (a CANCEL came): an offer that succeeds late is
    #: deleted instead.
    cancelled: bool = False
    #: A new call's offer: if it succeeds after all (late, or cancelled), its session is
    #: deleted, or rtpengine would keep it.
    initial: bool = False


@dataclass(slots=True, eq=False)
class MediaState:
    """One forwarded INVITE whose offer went through rtpengine."""

    call_id: str
    from_tag: str  # the INVITE's From tag: rtpengine's from-tag for its answer
    initial: bool  # a new call (no To tag): its failure deletes the session
    offer_towards: Leg  # the leg the INVITE went out to
    answer_towards: Leg  # the leg it came from, which gets the answer
    relay: str | None = None  # the instance's token, once the offer has run
    #: No SDP in the INVITE (a delayed offer, RFC 3261 13.2.1): the offer comes in the 18x/2xx
    #: (an ng `offer` from the callee's side) and the answer in the ACK (`answer`).
    delayed: bool = False
    offered: bool = True  # rtpengine was sent an offer for it (a delayed one: not yet)
    # From the INVITE, for the dialog record: the caller's From, Contact and CSeq.
    caller_from: str = ""
    caller_target: str = ""
    caller_cseq: int = 0
    busy: bool = False  # a response is with rtpengine; others wait in `queue`, in order
    queue: deque[tuple[Transaction[Message], Response]] = field(default_factory=deque)
    answers: dict[tuple[str | None, str], str] = field(default_factory=dict)
    remembered: set[str] = field(default_factory=set)  # To tags with a Dialog

    def remember_answer(self, key: tuple[str | None, str], sdp: str) -> None:
        if len(self.answers) >= _ANSWERS_KEPT:
            self.answers.pop(next(iter(self.answers)))
        self.answers[key] = sdp


@dataclass(slots=True, eq=False)
class Dialog:
    """A confirmed call whose media this process anchored: enough to BYE both parties.

    ``record_route`` is the 2xx's Record-Route list, top first (the callee's route set; the
    caller's is its reverse). CSeq numbers are the highest seen from each party.
    """

    call_id: str
    caller_tag: str
    callee_tag: str
    caller_from: str  # the INVITE's From header value (with the caller's tag)
    callee_to: str  # the 2xx's To header value (with the callee's tag)
    caller_target: str  # the caller's Contact URI
    callee_target: str  # the callee's Contact URI
    record_route: tuple[str, ...]
    caller_cseq: int
    callee_cseq: int
    relay: str | None

    def matches(self, from_tag: str | None, to_tag: str | None) -> bool:
        """rtpengine names a dialog by its two tags, in either order (or by its Call-ID)."""
        if from_tag is None:
            return True
        tags = {self.caller_tag, self.callee_tag}
        return from_tag in tags and (to_tag is None or to_tag in tags)


__all__ = [
    "MEDIA_TIMEOUT_REASON",
    "TOKEN_PARAM",
    "Dialog",
    "MediaState",
    "Pending",
    "sdp_of",
    "token_in",
    "with_token",
]
