"""What each call leg gets from rtpengine: the ng flags of every offer and answer, by the leg the
rewritten SDP goes to, and the SDP edits rtpengine 10.5 cannot make (docs/media.md gives the
reason for each flag, with the rtpengine and Microsoft facts behind it).

The rule is one question: *towards whom does this SDP go?* An ``offer`` command carries the
flags of the leg receiving the offer, an ``answer`` command those of the leg receiving the
answer (the original offerer). So a carrier-to-Teams call sends ``offer`` with
:data:`Leg.TEAMS` flags on the INVITE and ``answer`` with :data:`Leg.CARRIER` flags on the 200,
and a re-INVITE from either side does the same by its own direction.

Pure functions: they build dictionaries and strings, and never talk to rtpengine.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from teams_sbc.media.config import RTPENGINE_SDES_SUITES, TEAMS_SDES_SUITES, MediaConfig
from teams_sbc.media.sdp import hold_as_inactive, strip_attributes


class Leg(StrEnum):
    TEAMS = "teams"
    CARRIER = "carrier"


#: Microsoft's private ICE candidate attributes, which rtpengine's ``ICE: remove`` leaves in.
MICROSOFT_ICE_ATTRIBUTES = ("x-candidate-ipv6", "x-candidate")


@dataclass(frozen=True)
class MediaPolicy:
    """The per-trunk choices that change the flags."""

    bypass: bool = False  # media bypass: rtpengine is ICE-lite with one candidate towards Teams
    teams_suites: tuple[str, ...] = TEAMS_SDES_SUITES

    @classmethod
    def from_config(cls, config: MediaConfig, *, bypass: bool | None = None) -> MediaPolicy:
        """The media section's choices; ``bypass`` overrides ``media.bypass`` (for a caller
        that decides per call, such as a tenant's own setting)."""
        return cls(
            bypass=config.bypass if bypass is None else bypass,
            teams_suites=tuple(config.teams_sdes_suites),
        )

    def dropped_suites(self) -> list[str]:
        """rtpengine 10.5 has no ``only-<suite>``: name every other suite as ``no-<suite>``."""
        return [f"no-{suite}" for suite in RTPENGINE_SDES_SUITES if suite not in self.teams_suites]


def leg_flags(towards: Leg, policy: MediaPolicy, *, offer: bool) -> dict[str, Any]:
    """The ng keys for an SDP going to ``towards``, in an ``offer`` or an ``answer`` command."""
    flags = _teams_flags(policy, offer) if towards is Leg.TEAMS else _carrier_flags(policy, offer)
    # Common to both legs: the SDP's addresses are where media comes from (the SBC sends no
    # `received from`), and our o= line names rtpengine, not the far side (topology hiding).
    flags["flags"] = ["trust-address"]
    if offer and not (policy.bypass and towards is Leg.CARRIER):
        # The offerer's ICE is refused: ICE=remove alone still has rtpengine send STUN checks
        # to the offerer's candidates (seen with Teams' offers on 10.5). Only a bypass call
        # from Teams keeps ICE with Teams.
        flags["flags"].append("reject-ICE")
    flags["replace"] = ["origin", "zero-address"] if towards is Leg.TEAMS else ["origin"]
    return flags


def _teams_flags(policy: MediaPolicy, offer: bool) -> dict[str, Any]:
    flags: dict[str, Any] = {
        "transport-protocol": "RTP/SAVP",  # Teams requires SRTP with SDES
        "DTLS": "off",  # else rtpengine adds a DTLS fingerprint and prefers DTLS-SRTP
        "SDES": policy.dropped_suites(),  # else 12 suites; Teams uses AES_CM_128_HMAC_SHA1_80
        "ICE": "force" if policy.bypass else "remove",
    }
    if offer and policy.bypass:
        # Media bypass (Microsoft's "Direct Routing - media protocols"): the SBC is ICE-lite
        # and "must offer only one candidate", IPv4. `require` muxes RTCP onto the RTP port
        # (a=rtcp names that port, as in Microsoft's own example offer), so rtpengine writes
        # one candidate, not one per component; every Teams endpoint muxes.
        flags["rtcp-mux"] = ["require"]
        flags["ICE-lite"] = "forward"  # we are ICE-lite towards the offer's receiver
    elif offer:
        flags["rtcp-mux"] = ["offer"]  # Teams accepts rtcp-mux; a=rtcp stays as the fallback
    return flags


def _carrier_flags(policy: MediaPolicy, offer: bool) -> dict[str, Any]:
    flags: dict[str, Any] = {
        "transport-protocol": "RTP/AVP",  # carriers send plain RTP
        "ICE": "remove",  # Teams' candidates mean nothing on the carrier side
        "DTLS": "off",  # never answer Teams with DTLS-SRTP either
        "SDES": policy.dropped_suites(),  # only these suites are accepted from Teams' offer
    }
    if offer:
        flags["rtcp-mux"] = ["demux"]  # separate RTCP port to the carrier, mux kept with Teams
        if policy.bypass:
            flags["ICE-lite"] = "backward"  # ICE-lite towards Teams, who sent this offer
    return flags


def offer_params(
    *,
    call_id: str,
    from_tag: str,
    sdp: str,
    towards: Leg,
    policy: MediaPolicy,
    to_tag: str | None = None,
    via_branch: str | None = None,
) -> dict[str, Any]:
    """The ``offer`` for an INVITE or re-INVITE with SDP (tags from that request's From/To)."""
    params: dict[str, Any] = {"call-id": call_id, "from-tag": from_tag, "sdp": sdp}
    if to_tag:
        params["to-tag"] = to_tag
    if via_branch:
        params["via-branch"] = via_branch
    return {**params, **leg_flags(towards, policy, offer=True)}


def answer_params(
    *,
    call_id: str,
    from_tag: str,
    to_tag: str,
    sdp: str,
    towards: Leg,
    policy: MediaPolicy,
    via_branch: str | None = None,
) -> dict[str, Any]:
    """The ``answer`` for a 183/200 with SDP (tags from the response's From/To)."""
    params: dict[str, Any] = {
        "call-id": call_id,
        "from-tag": from_tag,
        "to-tag": to_tag,
        "sdp": sdp,
    }
    if via_branch:
        params["via-branch"] = via_branch
    return {**params, **leg_flags(towards, policy, offer=False)}


def delete_params(*, call_id: str, from_tag: str, to_tag: str | None = None) -> dict[str, Any]:
    """``delete`` for BYE, CANCEL, a failed INVITE or a transaction timeout."""
    params: dict[str, Any] = {"call-id": call_id, "from-tag": from_tag}
    if to_tag:
        params["to-tag"] = to_tag
    return params


def finish_sdp(sdp: str, towards: Leg) -> str:
    """The edits after rtpengine: hold as ``a=inactive`` to Teams, no Microsoft candidates to
    the carrier."""
    if towards is Leg.TEAMS:
        return hold_as_inactive(sdp)
    return strip_attributes(sdp, MICROSOFT_ICE_ATTRIBUTES)
