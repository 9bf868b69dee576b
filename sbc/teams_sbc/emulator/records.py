"""What the emulator reports: per call (state, ladder, violations, media counts), per OPTIONS
exchange, per proxy. Plain dataclasses, JSON-ready through :func:`as_dict`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

#: to-teams: the SBC called the emulator; from-teams: the emulator called the SBC.
CallDirection = Literal["to-teams", "from-teams"]

CallState = Literal[
    "calling",  # INVITE sent or received, no provisional yet
    "ringing",  # 180 sent or received
    "early",  # 183 with SDP, early media
    "answered",  # 200 sent or received, ACK outstanding
    "confirmed",  # ACK done: the call is up
    "ended",  # BYE done after a confirmed call
    "rejected",  # final non-2xx response
    "cancelled",  # CANCEL before the answer (487)
    "failed",  # the call went wrong: see CallRecord.failure
]


@dataclass
class LadderEntry:
    """One line of a call's ladder: a message sent (``->``) or received (``<-``) by the
    emulator, or a note (``!!``) on what it did with one."""

    at: float  # seconds since the call began
    arrow: Literal["->", "<-", "!!"]
    proxy: str
    text: str
    message: str = ""  # the whole message as it crossed the wire (sent or received)

    def render(self, full: bool = False) -> str:
        line = f"{self.at:7.3f}s {self.proxy:>5} {self.arrow} {self.text}"
        if full and self.message:
            body = self.message.replace("\r\n", "\n").rstrip("\n")
            line += "\n" + "\n".join("          | " + row for row in body.split("\n"))
        return line


@dataclass
class MediaStats:
    """SRTP on one call, as the emulator's media endpoint counted it."""

    local: str = ""  # ip:port of the emulator's socket
    remote: str = ""  # where it sent to (from the SBC's SDP)
    payload_type: int | None = None
    sent: int = 0  # SRTP packets sent
    received: int = 0  # datagrams received on the socket
    decrypted: int = 0  # ... that authenticated and decrypted with the SBC's key
    rtcp: int = 0  # ... that were (S)RTCP on the muxed port
    auth_failures: int = 0  # ... that did not authenticate or decrypt
    payload_ok: int = 0  # decrypted packets carrying the emulator's test pattern intact
    payload_other: int = 0  # decrypted packets with any other payload (real audio, silence)
    from_addresses: list[str] = field(default_factory=list)


@dataclass
class CallRecord:
    """One call, either direction: what happened, in order, and whether it was right."""

    call_id: str
    direction: CallDirection
    number: str
    trunk: str  # the SBC FQDN (Contact/Record-Route from the SBC, or the target we called)
    proxy: str  # which of the emulator's proxies carried it
    started: float  # monotonic clock of the emulator
    state: CallState = "calling"
    final_status: int | None = None
    answered_tag: str | None = None  # the To-tag of the 200
    provisional_tags: list[str] = field(default_factory=list)
    failure: str | None = None
    ended_by: Literal["emulator", "sbc"] | None = None
    end_reason: str | None = None
    violations: list[str] = field(default_factory=list)
    acks_ignored: int = 0
    invite_bytes: int = 0
    session_expires: int | None = None
    refreshes: int = 0
    hold_direction: str = "sendrecv"
    ladder: list[LadderEntry] = field(default_factory=list)
    media: MediaStats | None = None

    @property
    def ok(self) -> bool:
        """Established and confirmed (or ended after that) with no rule broken."""
        return (
            self.state in ("confirmed", "ended")
            and self.failure is None
            and not self.violations
        )

    def ladder_text(self, full: bool = False) -> str:
        """One line per message or note; ``full`` adds each message as it was on the wire."""
        return "\n".join(entry.render(full) for entry in self.ladder)


@dataclass
class OptionsResult:
    """One OPTIONS the emulator sent to an SBC FQDN, and the answer."""

    proxy: str
    fqdn: str
    sent_at: float
    status: int | None = None
    rtt: float | None = None
    contact: str | None = None
    allow: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class ProxyStats:
    """Counters of one proxy."""

    connections: int = 0
    handshake_failures: int = 0
    requests: int = 0
    options_received: int = 0
    options_answered_ok: int = 0
    invites_received: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    failure_mode_hits: int = 0
    last_handshake_error: str | None = None


def as_dict(value: Any) -> Any:
    """A dataclass (or list/dict of them) as plain JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: as_dict(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, CallRecord):
            out["ok"] = value.ok
        return out
    if isinstance(value, list | tuple):
        return [as_dict(v) for v in value]
    if isinstance(value, dict):
        return {str(k): as_dict(v) for k, v in value.items()}
    return value
