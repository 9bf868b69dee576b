"""The media section of the config file (``media:`` in ``SbcConfig``): which rtpengine instances
anchor calls, how we talk to them, and which listeners face Teams. It follows config.py's style
(unknown keys refused, frozen, every field described for the generated docs/config.md).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from teams_sbc.configfile import StrictModel

#: Every SDES suite rtpengine 10.5 offers by default (its offer towards SRTP lists all twelve).
RTPENGINE_SDES_SUITES = (
    "AEAD_AES_256_GCM",
    "AEAD_AES_128_GCM",
    "AES_256_CM_HMAC_SHA1_80",
    "AES_256_CM_HMAC_SHA1_32",
    "AES_192_CM_HMAC_SHA1_80",
    "AES_192_CM_HMAC_SHA1_32",
    "AES_CM_128_HMAC_SHA1_80",
    "AES_CM_128_HMAC_SHA1_32",
    "F8_128_HMAC_SHA1_80",
    "F8_128_HMAC_SHA1_32",
    "NULL_HMAC_SHA1_80",
    "NULL_HMAC_SHA1_32",
)

#: What Teams gets: AES_CM_128_HMAC_SHA1_80 (Microsoft's requirement), _32 accepted.
TEAMS_SDES_SUITES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")

#: A token travels as a SIP URI parameter value (RFC 3261 `token` characters, kept short).
_TOKEN = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into (host, port); the host must be an IP address."""
    match = re.fullmatch(r"\[(?P<v6>[^\]]+)\]:(?P<p6>\d+)|(?P<v4>[^:\[\]]+):(?P<p4>\d+)", value)
    if match is None:
        raise ValueError(f"expected host:port or [v6]:port, got {value!r}")
    host = match.group("v6") or match.group("v4")
    port = int(match.group("p6") or match.group("p4"))
    ipaddress.ip_address(host)  # raises ValueError with the reason
    if not 1 <= port <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host, port


def derived_token(address: str) -> str:
    """A short token every replica derives alike from the same configured address."""
    return "r" + hashlib.sha256(address.encode()).hexdigest()[:8]


class RtpengineInstance(StrictModel):
    """One rtpengine daemon reachable over the ng protocol (UDP)."""

    address: str = Field(
        description="ng control address, `host:port` or `[v6]:port` (rtpengine's --listen-ng). "
        "Every SBC replica must reach it at this address for calls to survive a replica's loss."
    )
    token: str | None = Field(
        default=None,
        description="Short stable name carried in Record-Route so any replica sends a call's "
        "later commands to this instance; default: derived from `address`. Letters, digits, "
        "`_.-`, at most 32.",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)
        return value

    @field_validator("token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is not None and not _TOKEN.match(value):
            raise ValueError("token: 1-32 of letters, digits, '_', '.', '-'")
        return value

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_address(self.address)

    @property
    def identity(self) -> str:
        return self.token or derived_token(self.address)


class MediaConfig(StrictModel):
    """rtpengine anchors the media of every call with SDP: SRTP (SDES) towards the listeners in
    `teams_listeners`, plain RTP towards every other listener (docs/media.md)."""

    rtpengines: list[RtpengineInstance] = Field(
        min_length=1, description="The rtpengine instances new calls are spread over."
    )
    selection: Literal["least-loaded", "round-robin"] = Field(
        default="least-loaded",
        description="How a new call picks an instance among those up: fewest sessions (from "
        "rtpengine's `statistics`) or in turn.",
    )
    retransmit_intervals: list[float] = Field(
        default=[0.5, 1.0, 2.0],
        min_length=1,
        description="Seconds to wait after each transmission of an ng command before sending "
        "it again with the same cookie; after the last one the command fails (default: sent at "
        "0, 0.5 and 1.5 s, failed at 3.5 s).",
    )
    ping_interval: float = Field(
        default=5.0, gt=0, description="Seconds between health pings to each instance."
    )
    ping_timeout: float = Field(
        default=1.0, gt=0, description="Seconds a health ping waits for `pong` (one attempt)."
    )
    teams_listeners: list[str] = Field(
        default_factory=list,
        description="Names of the listeners that face Teams: SDP sent out of them gets "
        "RTP/SAVP with SDES keys. SDP sent out of any other listener (the carrier side) gets "
        "plain RTP/AVP. Empty: the `teams` section's `teams_listener`, if there is one.",
    )
    retry_after: int = Field(
        default=10,
        ge=0,
        le=3600,
        description="Seconds in the Retry-After of the 503 a new call gets when no rtpengine "
        "can anchor it.",
    )
    dialog_audit_interval: float = Field(
        default=60.0,
        gt=0,
        description="How often the SBC asks rtpengine whether a call it remembers (for the "
        "media-timeout BYEs) still exists, so calls ended through another replica are "
        "forgotten.",
    )
    bypass: bool = Field(
        default=False,
        description="Media bypass (Microsoft's term): Teams clients send media to rtpengine "
        "directly, found by ICE, instead of through Microsoft's media processors. rtpengine is "
        "then ICE-lite towards Teams (`a=ice-lite`, one IPv4 host candidate: rtpengine's "
        "advertised address, which Teams clients must reach; RTCP muxed on the RTP port) and "
        "answers Teams' connectivity checks; the Teams trunk must have media bypass enabled "
        "too. Off: Teams' media processors talk to the address in `c=`, no ICE.",
    )
    teams_sdes_suites: list[str] = Field(
        default=list(TEAMS_SDES_SUITES),
        min_length=1,
        description="SDES crypto suites offered to and accepted from Teams; rtpengine's other "
        "suites are dropped.",
    )

    @field_validator("retransmit_intervals")
    @classmethod
    def _intervals(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value):
            raise ValueError("retransmit intervals must be positive")
        return value

    @field_validator("teams_sdes_suites")
    @classmethod
    def _suites(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in RTPENGINE_SDES_SUITES]
        if unknown:
            raise ValueError(
                f"unknown SDES suites {unknown}; rtpengine has {RTPENGINE_SDES_SUITES}"
            )
        return value

    @property
    def command_deadline(self) -> float:
        """How long the SIP core waits for any ng command before giving up on it: the
        client's whole retransmission schedule plus a second."""
        return sum(self.retransmit_intervals) + 1.0

    @model_validator(mode="after")
    def _unique(self) -> MediaConfig:
        tokens = [i.identity for i in self.rtpengines]
        if len(set(tokens)) != len(tokens):
            raise ValueError("rtpengine tokens (and addresses) must be unique")
        return self
