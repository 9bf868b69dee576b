"""The demo's calls: both directions, both tenants, at once; and what each side saw of them.

A call succeeded when both ends say so and media crossed rtpengine both ways:

- Teams' side (the emulator's :class:`~teams_sbc.emulator.CallRecord`): the call was confirmed
  and ended by a BYE, no rule of Microsoft's broken (``ok``);
- the carrier's side (sipp): its call ran to the end (placed: 200, ACK, BYE answered 200;
  answered: ACK and BYE received, BYE answered);
- media: SRTP from rtpengine that decrypted with the key of the SBC's SDP reached Teams, the
  carrier's own audio among it, and Teams' own packets (its test pattern) came back intact
  through the carrier's echo, which proves rtpengine decrypted them into plain RTP for the
  carrier and encrypted them again; at most ``MAX_LOSS_PCT`` of them lost on the way, and no
  packet at Teams failing SRTP authentication.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from teams_sbc.demo.bed import HOLD_SECONDS, TENANTS, Bed, DemoTenant
from teams_sbc.demo.carrier import Sipp, Traced, start_call

if TYPE_CHECKING:
    from teams_sbc.emulator import CallRecord, LadderEntry

Direction = Literal["to-teams", "from-teams"]

#: How long one call may take from start to the end of its BYE.
CALL_TIMEOUT = 30.0

#: A call whose round trip lost more of Teams' packets than this (percent) failed: its audio
#: broke off. On loopback the only loss expected is what Teams sends with its 183 before the SBC
#: has handed rtpengine Teams' key (1 packet of 50 on an idle machine; a few more on a busy one).
MAX_LOSS_PCT = 20


@dataclass(frozen=True)
class PlannedCall:
    index: int
    direction: Direction
    tenant: DemoTenant

    @property
    def caller(self) -> str:
        return (
            self.tenant.carrier_number if self.direction == "to-teams" else self.tenant.teams_caller
        )

    @property
    def called(self) -> str:
        return (
            self.tenant.teams_user if self.direction == "to-teams" else self.tenant.carrier_number
        )

    @property
    def title(self) -> str:
        way = "carrier -> Teams" if self.direction == "to-teams" else "Teams -> carrier"
        who = f"{self.caller} calls {self.called}"
        return f"call {self.index}: {way}, tenant {self.tenant.name}, {who}"


def plan() -> list[PlannedCall]:
    """Both directions for both tenants."""
    calls: list[PlannedCall] = []
    directions: tuple[Direction, ...] = ("to-teams", "from-teams")
    for direction in directions:
        for tenant in TENANTS:
            calls.append(PlannedCall(len(calls) + 1, direction, tenant))
    return calls


@dataclass
class CallResult:
    """One call as both ends saw it."""

    planned: PlannedCall
    call_id: str | None = None
    teams: CallRecord | None = None
    carrier: list[Traced] = field(default_factory=list)
    carrier_exit: int | None = None
    problems: list[str] = field(default_factory=list)
    stray: list[LadderEntry] = field(default_factory=list)  # the emulator's, for this Call-ID

    @property
    def media_sent(self) -> int:
        media = self.teams.media if self.teams is not None else None
        return media.sent if media is not None else 0

    @property
    def media_to_teams(self) -> int:
        media = self.teams.media if self.teams is not None else None
        return media.decrypted if media is not None else 0

    @property
    def media_from_teams(self) -> int:
        media = self.teams.media if self.teams is not None else None
        return media.payload_ok if media is not None else 0

    @property
    def media_carrier_audio(self) -> int:
        """Decrypted packets at Teams that were not its own pattern: the carrier's tone."""
        media = self.teams.media if self.teams is not None else None
        return media.payload_other if media is not None else 0

    @property
    def media_auth_failures(self) -> int:
        media = self.teams.media if self.teams is not None else None
        return media.auth_failures if media is not None else 0

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Running:
    planned: PlannedCall
    sipp: Sipp | None = None
    call_id: str | None = None


def run_calls(bed: Bed, say: Any) -> list[CallResult]:
    """Place every planned call at once, wait until each has ended, and judge it."""
    running: list[_Running] = []
    for planned in plan():
        item = _Running(planned)
        if planned.direction == "to-teams":
            item.sipp = start_call(
                bed.children, bed.work, bed.carrier_target, name=f"call-{planned.index}",
                called=planned.called, caller=planned.caller,
                hold_ms=int(HOLD_SECONDS * 1000), timeout=CALL_TIMEOUT / 2,
            )  # fmt: skip
        else:
            item.call_id = bed.emulator.place_call(
                planned.called, caller=planned.caller, caller_name=f"{planned.tenant.name} user",
                trunk=planned.tenant.fqdn, hangup_after=HOLD_SECONDS,
                answer_timeout=CALL_TIMEOUT / 2,
            )  # fmt: skip
        running.append(item)
    say(f"{len(running)} calls placed; each stays up {HOLD_SECONDS:g}s with media both ways")
    _wait_all(bed, running)
    time.sleep(0.5)  # the last echoed packets
    return [_judge(bed, item) for item in running]


def _done(bed: Bed, item: _Running) -> bool:
    from teams_sbc.emulator import FINAL_STATES

    if item.sipp is not None:
        return not item.sipp.child.alive()
    assert item.call_id is not None
    if bed.emulator.call(item.call_id).state not in FINAL_STATES:
        return False
    # the carrier has answered the BYE (or never saw the call)
    assert bed.carrier is not None
    messages = bed.carrier.messages(item.call_id)
    return not messages or any(m.direction == "sent" and m.cseq_method == "BYE" for m in messages)


def _wait_all(bed: Bed, running: list[_Running]) -> None:
    deadline = time.monotonic() + CALL_TIMEOUT
    while time.monotonic() < deadline:
        if all(_done(bed, item) for item in running):
            return
        time.sleep(0.1)
    for item in running:
        if item.sipp is not None and item.sipp.child.alive():
            item.sipp.child.stop(grace=1.0)


def _call_id_of(sipp: Sipp) -> str | None:
    for message in sipp.messages():
        if message.direction == "sent" and message.method == "INVITE":
            return message.call_id
    return None


def _judge(bed: Bed, item: _Running) -> CallResult:
    result = CallResult(item.planned)
    if item.sipp is not None:
        result.carrier_exit = item.sipp.child.popen.returncode
        result.call_id = _call_id_of(item.sipp)
        result.carrier = item.sipp.messages(result.call_id) if result.call_id else []
    else:
        result.call_id = item.call_id
        assert bed.carrier is not None
        result.carrier = bed.carrier.messages(item.call_id)
    if result.call_id is not None:
        records = [c for c in bed.emulator.calls() if c.call_id == result.call_id]
        result.teams = records[0] if records else None
        result.stray = bed.emulator.do(lambda e: _stray_of(e, result.call_id))
    result.problems = _problems(result)
    return result


def _stray_of(emulator: Any, call_id: str) -> list[LadderEntry]:
    """The emulator's notes on messages of this call it refused before a call existed."""
    found: list[LadderEntry] = []
    entries = list(emulator.core.stray)
    for index, entry in enumerate(entries):
        if call_id in entry.message:
            found.append(entry)
            follow = entries[index + 1] if index + 1 < len(entries) else None
            if follow is not None and follow.arrow == "!!":
                found.append(follow)
    return found


def _final_to_carrier(messages: list[Traced]) -> Traced | None:
    finals = [
        m for m in messages
        if m.direction == "received" and m.cseq_method == "INVITE" and (m.status or 0) >= 200
    ]  # fmt: skip
    return finals[-1] if finals else None


def _problems(result: CallResult) -> list[str]:
    """Why the call did not succeed, each reason once, Teams' (the emulator's) first: it says
    which of Microsoft's rules the SBC broke."""
    planned, record, carrier = result.planned, result.teams, result.carrier
    if planned.direction == "to-teams" and result.call_id is None:
        return [f"the carrier's sipp sent no INVITE (exit {result.carrier_exit}; see its log)"]
    if record is None:
        if planned.direction == "from-teams":
            return ["the emulator has no record of the call it placed"]
        final = _final_to_carrier(carrier)
        answer = final.summary() if final is not None else "no final response"
        notes = [e.text for e in result.stray if e.arrow == "!!"]
        refused = f" ({'; '.join(notes)})" if notes else ""
        return [f"Teams (the emulator) never took the call{refused}; the carrier got {answer}"]
    problems = _teams_problems(record)
    if problems:
        return problems
    if planned.direction == "to-teams":
        if result.carrier_exit != 0:
            problems.append(_carrier_failure(carrier, result.carrier_exit))
    elif not any(m.method == "INVITE" for m in carrier):
        problems.append("the carrier never received the call")
    else:
        got = {m.method for m in carrier if m.direction == "received"}
        problems += [f"the carrier received no {m}" for m in ("ACK", "BYE") if m not in got]
    return problems + _media_problems(result)


def _carrier_failure(carrier: list[Traced], code: int | None) -> str:
    final = _final_to_carrier(carrier)
    if final is not None and (final.status or 0) >= 300:
        return f"the carrier's call was refused: {final.summary()}"
    return f"the carrier's sipp reports the call failed (exit {code}; see its log)"


def _teams_problems(record: CallRecord) -> list[str]:
    problems = [f"Teams (the emulator) says the SBC broke a rule: {v}" for v in record.violations]
    if record.state == "rejected":
        notes = [e.text for e in record.ladder if e.arrow == "!!"]
        problems.append(
            f"Teams (the emulator) answered {record.final_status}"
            + (f": {'; '.join(notes)}" if notes else "")
        )
    elif record.failure and record.failure not in record.violations:
        problems.append(f"Teams (the emulator): {record.failure}")
    if record.state == "cancelled":
        problems.append("cancelled before it was answered")
    elif record.state not in ("ended", "failed", "rejected"):
        problems.append(f"did not end in time (Teams side still {record.state})")
    elif record.state != "ended" and not problems:
        problems.append(f"ended as {record.state}")
    return problems


def _media_problems(result: CallResult) -> list[str]:
    problems: list[str] = []
    if result.media_to_teams == 0:
        problems.append("no SRTP from rtpengine decrypted at Teams")
    elif result.media_carrier_audio == 0:
        problems.append("none of the carrier's audio reached Teams (only Teams' own echo did)")
    sent, back = result.media_sent, result.media_from_teams
    if back == 0:
        problems.append(f"none of the {sent} packets Teams sent came back through the carrier")
    elif sent and 100 * (sent - back) > MAX_LOSS_PCT * sent:
        problems.append(
            f"{sent - back} of the {sent} packets Teams sent did not come back through the "
            f"carrier ({100 * (sent - back) / sent:.0f}% lost, more than {MAX_LOSS_PCT}%)"
        )
    if result.media_auth_failures:
        problems.append(f"{result.media_auth_failures} packets at Teams failed SRTP authentication")
    return problems


def emulator_clock_offset(bed: Bed) -> float:
    """Wall-clock time minus the emulator's loop clock (its ladders are on the latter)."""

    def offset(_emulator: Any) -> float:
        return time.time() - asyncio.get_running_loop().time()

    return float(bed.emulator.do(offset))

