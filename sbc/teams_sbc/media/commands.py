"""What the sans-IO SIP core asks of rtpengine, and what it is told back.

The core cannot wait for rtpengine: it queues a :class:`MediaCommand` (with an id) in
``Proxy.media_commands`` and parks the SIP message that needs the answer. The driver
(:mod:`teams_sbc.media.driver`) runs the command on the relay and hands the outcome back as a
:class:`MediaResult` through ``Proxy.media_done(id, result, now)``; the core then goes on with
the message. Plain frozen data, no I/O: the SIP core imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from teams_sbc.media.legs import Leg


class Op(StrEnum):
    """The ng commands the SIP core issues."""

    OFFER = "offer"  # an INVITE or re-INVITE with SDP
    ANSWER = "answer"  # a 183 or 2xx with SDP
    DELETE = "delete"  # BYE, failed INVITE (CANCEL, timeout, rejection)
    QUERY = "query"  # is a remembered call still there? (the dialog audit)
    #: A new call without SDP (a delayed offer): which instance will anchor it, chosen when
    #: the INVITE passes so its token rides in our Record-Route; no ng command is sent.
    PICK = "pick"


class Failure(StrEnum):
    """Why a command did not succeed, in the terms the SIP core acts on."""

    UNAVAILABLE = "unavailable"  # no rtpengine up, or no answer: 503 for new calls
    REFUSED = "refused"  # rtpengine answered `result: error` (reason says why)
    UNKNOWN_RELAY = "unknown-relay"  # the dialog names a token this SBC has not configured
    ERROR = "error"  # anything else (a bug): logged with its traceback by the driver


@dataclass(frozen=True, slots=True)
class MediaCommand:
    """One ng command for the driver to run.

    ``relay`` is the token of the instance the call is stuck to (from the dialog's
    Record-Route), or None for a new call: the driver picks one. ``towards`` is the leg the
    rewritten SDP goes to (docs/media.md, "Who offers what").
    """

    id: int
    op: Op
    call_id: str
    from_tag: str
    relay: str | None = None
    to_tag: str | None = None
    sdp: str | None = None
    towards: Leg | None = None


@dataclass(frozen=True, slots=True)
class MediaResult:
    """The outcome of a command: the SDP to send on (offer, answer), the instance that ran it,
    or why it failed."""

    sdp: str | None = None
    relay: str | None = None
    failure: Failure | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.failure is None


__all__ = ["Failure", "MediaCommand", "MediaResult", "Op"]
