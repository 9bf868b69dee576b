"""What the demo prints: a short ladder of each call (the carrier's side from sipp's trace, the
Teams side from the emulator's record, merged by time), then the summary as one JSON line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from teams_sbc.demo.calls import CallResult

#: Width of the "who -> whom" column of a ladder line.
_WHO = 27


@dataclass(frozen=True)
class _Line:
    at: float  # wall clock
    side: int  # 0 carrier, 1 Teams (ties: the carrier's first, as the SBC sits between)
    who: str
    text: str
    message: str


def _lines(result: CallResult, offset: float) -> list[_Line]:
    lines = [
        _Line(
            m.at, 0, "carrier --> SBC" if m.direction == "sent" else "carrier <-- SBC",
            m.summary(), m.text,
        )
        for m in result.carrier
    ]  # fmt: skip
    record = result.teams
    if record is not None:
        for entry in record.ladder:
            at = record.started + entry.at + offset
            proxy = f"{entry.proxy:<4}"
            if entry.arrow == "<-":
                who = f"{'':12}SBC --> {proxy}"
            elif entry.arrow == "->":
                who = f"{'':12}SBC <-- {proxy}"
            else:
                who = f"{'':20}{proxy} !!"
            lines.append(_Line(at, 1, who, entry.text, entry.message))
    for entry in result.stray:  # refused before the emulator made it a call: no time of its own
        who = f"{'':20}{entry.proxy:<4} " + ("!!" if entry.arrow == "!!" else entry.arrow)
        lines.append(_Line(float("inf"), 1, who, entry.text, entry.message))
    lines.sort(key=lambda line: (line.at, line.side))
    return lines


def ladder(result: CallResult, offset: float, *, full: bool = False) -> str:
    """The call's title, its ladder, its media counts and its verdict."""
    planned = result.planned
    via = f" via {result.teams.proxy}" if result.teams is not None else ""
    out = [f"--- {planned.title}{via} (Call-ID {result.call_id or '-'})"]
    lines = _lines(result, offset)
    start = next((line.at for line in lines if line.at != float("inf")), 0.0)
    for line in lines:
        when = "       " if line.at == float("inf") else f"{line.at - start:7.3f}"
        out.append(f"{when}s  {line.who:<{_WHO}} {line.text}")
        if full and line.message:
            body = line.message.replace("\r\n", "\n").rstrip("\n")
            out.extend(f"{'':10}| {row}" for row in body.split("\n"))
    media = result.teams.media if result.teams is not None else None
    if media is not None:
        out.append(
            f"  media: Teams sent {media.sent} SRTP packets, {media.payload_ok} came back intact "
            f"through the carrier's RTP echo; Teams decrypted {media.decrypted} from rtpengine, "
            f"{media.payload_other} of them the carrier's tone ({media.auth_failures} failed "
            "authentication)"
        )
    if result.ok:
        out.append("  => ok")
    else:
        out.append("  => FAILED: " + "; ".join(result.problems))
    return "\n".join(out)


def media_totals(results: list[CallResult]) -> dict[str, Any]:
    """The media figures of the JSON line (docs/demo.md says what each counts)."""
    sent = sum(r.media_sent for r in results)
    back = sum(r.media_from_teams for r in results)
    loss = round(100.0 * (sent - back) / sent, 2) if sent else 100.0
    return {
        "media_packets_to_teams": sum(r.media_to_teams for r in results),
        "media_packets_from_teams": back,
        "media_packets_sent_by_teams": sent,
        "media_carrier_audio_to_teams": sum(r.media_carrier_audio for r in results),
        "media_loss_pct": max(loss, 0.0),
        "media_auth_failures": sum(r.media_auth_failures for r in results),
    }
