"""ACK repair: the ACK Teams gets carries the To-tag of the 2xx it acknowledges.

The seed article, "The value of the To-tag": Teams forks a call to every device of the user, so
its 180s, its 183 and its 200 carry different To-tags; "the correct one is the one that was in
the 200 OK. I have seen a case where voipswitch was sending the wrong To-tag in its ACK. It was
actually using the tag from the first 180 Ringing." Teams ignores such an ACK and drops the call
(teams-direct-routing.md: after about 4 s or 30 s).

So, for calls from the carrier, the proxy notes each 2xx it passes to the carrier (and the
tags of the provisionals); when the carrier's ACK for that INVITE names a tag that is not a
2xx's, the ACK sent on to Teams gets the 2xx's tag and its Contact as Request-URI (RFC 3261
13.2.2.4, 12.1.2: the 2xx sets the dialog's remote target). Per process, short-lived (until the
ACK is due at the latest, 64*T1), bounded; no clock here, ``now`` comes in.

With ``workers: N`` the tags live in the worker that forwarded the INVITE (Teams' responses come
back on its own TLS connection), but the carrier's ACK is a new transaction sent to our
Record-Route: it reaches the same worker only if it comes from the INVITE's source address and
port (the kernel's SO_REUSEPORT hash of the flow). A carrier that sends it from another port
(another node of its cluster, a socket per transaction), or a worker restarted meanwhile (the
hash moves flows), puts it on a worker without the tags. So the worker marks the Record-Route
entry facing the carrier with its index (:data:`WORKER_PARAM`, :func:`mark_worker`); the
carrier's ACK carries it back in its Route, and a worker that gets an ACK marked with another
worker's index passes it, unchanged, to that worker's own UDP port (:func:`worker_in`). Only for
a UDP carrier listener: workers have their own ports only there (a TCP carrier sends the ACK on
the INVITE's connection in practice, which one worker owns). docs/architecture.md, "The Teams
edge with workers".
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from teams_sbc.sip.headers import parse_name_addr
from teams_sbc.sip.message import Request, Response

#: The Record-Route parameter naming the worker that forwarded a call's INVITE to Teams.
WORKER_PARAM = "sbcw"
_WORKER_MARK = f";{WORKER_PARAM}="

#: An INVITE is known by its Call-ID, From tag and CSeq number.
Key = tuple[str, str, int]


@dataclass(slots=True)
class _Answered:
    expires: float
    ok_tags: list[str] = field(default_factory=list)  # 2xx To-tags, first first
    ok_contact: str | None = None
    early_tags: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Repair:
    """What was changed in one ACK, for the log."""

    call_id: str
    wrong_tag: str | None
    right_tag: str
    was_provisional: bool


class AckRepair:
    """The To-tags of INVITE responses passed to the carrier, for repairing its ACK."""

    def __init__(self, lifetime: float, limit: int = 100_000) -> None:
        self.lifetime = lifetime
        self.limit = limit
        self._calls: OrderedDict[Key, _Answered] = OrderedDict()
        self.repairs = 0

    def __len__(self) -> int:
        return len(self._calls)

    @staticmethod
    def _key(msg: Request | Response) -> Key | None:
        tag = msg.from_tag
        if tag is None:
            return None
        return (msg.call_id, tag, msg.cseq.number)

    def _expire(self, now: float) -> None:
        calls = self._calls
        while calls:
            key, entry = next(iter(calls.items()))
            if entry.expires > now and len(calls) <= self.limit:
                break
            del calls[key]

    def note_response(self, resp: Response, now: float) -> None:
        """A response to an INVITE (from Teams) on its way to the carrier."""
        status = resp.status
        tag = resp.to_tag
        if status <= 100 or status >= 300 or tag is None or resp.cseq.method != "INVITE":
            return
        key = self._key(resp)
        if key is None:
            return
        self._expire(now)
        entry = self._calls.get(key)
        if entry is None:
            entry = self._calls[key] = _Answered(now + self.lifetime)
        if status < 200:
            entry.early_tags.add(tag)
            return
        entry.expires = now + self.lifetime
        self._calls.move_to_end(key)
        if tag not in entry.ok_tags:
            entry.ok_tags.append(tag)
        if entry.ok_contact is None:
            contacts = resp.headers.values("contact")
            if contacts:
                entry.ok_contact = parse_name_addr(contacts[0], "Contact").uri_text

    def repair(self, ack: Request, now: float) -> Repair | None:
        """Fix an ACK from the carrier in place if it names the wrong To-tag."""
        key = self._key(ack)
        if key is None:
            return None
        self._expire(now)
        entry = self._calls.get(key)
        if entry is None or not entry.ok_tags:
            return None
        wrong = ack.to_tag
        if wrong in entry.ok_tags:
            return None
        right = entry.ok_tags[0]
        ack.headers.set("To", str(ack.to_addr.with_tag(right)))
        if entry.ok_contact is not None and ack.uri != entry.ok_contact:
            ack.uri = entry.ok_contact
        self.repairs += 1
        return Repair(ack.call_id, wrong, right, wrong in entry.early_tags)


def mark_worker(msg: Request, index: int, worker: int) -> None:
    """Put ``;sbcw=<worker>`` in the ``index``-th Record-Route entry (one of those we just
    inserted, ``<sip:...;lr>``); the others keep their bytes."""
    values = msg.headers.values("record-route")
    if index >= len(values) or not values[index].endswith(">"):
        return
    values[index] = f"{values[index][:-1]}{_WORKER_MARK}{worker}>"
    ours, rest = values[: index + 1], values[index + 1 :]
    msg.headers.replace("record-route", *ours, *([", ".join(rest)] if rest else []))


def worker_in(routes: list[str]) -> int | None:
    """The worker index our Route entry carries, if one does."""
    for route in routes:
        at = route.find(_WORKER_MARK)
        if at < 0:
            continue
        digits = ""
        for char in route[at + len(_WORKER_MARK) :]:
            if not char.isdigit():
                break
            digits += char
        if digits:
            return int(digits)
    return None
