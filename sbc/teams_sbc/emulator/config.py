"""What the Teams emulator is told: its proxies, certificates, the SBC it talks to, and how its
users behave. One schema for the Python API, the pytest fixture and ``teams-sbc emulate-teams
--config FILE`` (unknown keys refused, every field described, as the SBC's own config).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from teams_sbc.config import MICROSOFT_CIPHERS
from teams_sbc.configfile import StrictModel, read_yaml, validate

#: How one proxy can be told to fail (docs/emulator.md, "Failing a proxy").
FailureMode = Literal["none", "refuse", "503", "silent"]

#: What a Teams user does with a call from the SBC.
Behaviour = Literal["answer", "busy", "decline", "no-answer", "not-found"]

#: Microsoft's three commercial SIP proxies (Direct Routing, "Plan Direct Routing").
COMMERCIAL_PROXIES = (
    ("sip", "sip.pstnhub.microsoft.com"),
    ("sip2", "sip2.pstnhub.microsoft.com"),
    ("sip3", "sip3.pstnhub.microsoft.com"),
)

_HOST_PORT = re.compile(r"^(?P<host>[^:\[\]]+|\[[^\]]+\])(?::(?P<port>\d{1,5}))?$")


class EmulatorConfigError(Exception):
    """The emulator's config is missing, not YAML, or does not match the schema."""


def parse_host_port(value: str, default_port: int | None = None) -> tuple[str, int | None]:
    """``ip``, ``ip:port`` or ``[v6]:port`` into (ip, port or ``default_port``)."""
    match = _HOST_PORT.match(value.strip())
    if match is None:
        raise ValueError(f"expected ip or ip:port, got {value!r}")
    host = match["host"].strip("[]")
    ipaddress.ip_address(host)
    port = int(match["port"]) if match["port"] else default_port
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host, port


class ProxyConfig(StrictModel):
    """One of Microsoft's SIP proxies, played by one TLS listener."""

    name: str = Field(description="Short name used in results and logs: sip, sip2 or sip3.")
    fqdn: str = Field(
        description="The proxy's name: in its certificate, Record-Route, From of its OPTIONS."
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address the listener binds and outbound connections and media leave from; "
        "distinct loopback addresses (127.0.0.2, ...) make the proxies look like distinct hosts.",
    )
    port: int = Field(default=0, ge=0, le=65535, description="TLS port; 0 picks a free one.")
    failure: FailureMode = Field(
        default="none",
        description="none; refuse (listener closed, connections refused); 503 (every request "
        "answered 503 with Retry-After); silent (connections accepted, nothing answered).",
    )

    @field_validator("host")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value


class UserConfig(StrictModel):
    """A Teams user reachable on a number, and what it does with calls."""

    number: str = Field(description="E.164 number with +, e.g. +14255550123.")
    behaviour: Behaviour = Field(default="answer", description="What the user does with a call.")

    @field_validator("number")
    @classmethod
    def _e164(cls, value: str) -> str:
        if not re.fullmatch(r"\+[1-9][0-9]{1,14}", value):
            raise ValueError(f"number must be E.164 with a leading +, got {value!r}")
        return value


class Timing(StrictModel):
    """How the emulator paces a call it answers, and its SIP timers."""

    t1: float = Field(default=0.5, gt=0, description="RFC 3261 T1 in seconds (64*T1 = timer B/H).")
    t2: float = Field(default=4.0, gt=0, description="RFC 3261 T2 in seconds.")
    ring_after: float = Field(
        default=0.05, ge=0, description="Seconds from INVITE to the forked 180s."
    )
    progress_after: float = Field(
        default=0.1, ge=0, description="Seconds from INVITE to the 183 with SDP."
    )
    answer_after: float = Field(default=0.3, ge=0, description="Seconds from INVITE to the 200.")
    no_answer_after: float = Field(
        default=30.0, gt=0, description="A no-answer user gives up (480) after this many seconds."
    )
    ack_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a 2xx is retransmitted waiting for its ACK before the call is torn "
        "down with BYE; default 64*T1 (RFC 3261 13.3.1.4).",
    )
    min_se: int = Field(
        default=90,
        ge=1,
        description="Min-SE in seconds (RFC 4028): a smaller Session-Expires gets 422. 90 is the "
        "RFC's floor; tests lower it to see a session expire.",
    )
    session_expires: int = Field(
        default=1800, ge=1, description="Session-Expires the emulator offers in its INVITEs."
    )

    @property
    def ack_wait(self) -> float:
        return self.ack_timeout if self.ack_timeout is not None else 64 * self.t1


class MediaSettings(StrictModel):
    """The SRTP media the emulator sends on each call."""

    ptime_ms: int = Field(default=20, ge=10, le=100, description="Packet interval.")
    packets: int | None = Field(
        default=50,
        ge=0,
        description="SRTP packets the emulator sends per call (from the first SDP answer on); "
        "null sends for as long as the call lasts.",
    )


class EmulatorConfig(StrictModel):
    """The whole emulator."""

    proxies: list[ProxyConfig] = Field(
        default_factory=lambda: [ProxyConfig(name=n, fqdn=f) for n, f in COMMERCIAL_PROXIES],
        min_length=1,
        description="The proxies played at once (default: sip, sip2 and sip3 of the commercial "
        "cloud, all on 127.0.0.1 with free ports).",
    )
    cert_file: str = Field(
        description="PEM: the emulator's certificate (CN sip.pstnhub.microsoft.com, SANs of "
        "every proxy) and its chain; presented as server and as client."
    )
    key_file: str = Field(description="PEM: its private key.")
    ca_file: str = Field(
        description="PEM trust bundle the SBC's certificate must chain to (both directions)."
    )
    ciphers: str = Field(
        default=MICROSOFT_CIPHERS, description="TLS 1.2 cipher suites (OpenSSL syntax)."
    )
    max_tls_version: Literal["1.2", "1.3"] = Field(
        default="1.3", description="Highest TLS version offered; 1.2 is always the lowest."
    )
    trunks: list[str] = Field(
        default_factory=list,
        description="SBC FQDNs configured as trunks, as in the Teams admin centre; '*.base' "
        "stands for every tenant subdomain of a carrier's base domain. Empty: any FQDN the "
        "certificate covers is accepted.",
    )
    require_cn: bool = Field(
        default=True,
        description="Refuse (403) requests from a certificate without a Common Name, even when "
        "its SANs cover the FQDN (a field report of Microsoft's behaviour).",
    )
    sbc_address: str | None = Field(
        default=None,
        description="ip or ip:port where the SBC's Teams listener is; the emulator's own "
        "requests go there for any trunk name (SNI and certificate check keep the name).",
    )
    hosts: dict[str, str] = Field(
        default_factory=dict,
        description="Per-name overrides: SBC FQDN -> ip or ip:port (port default: the URI's).",
    )
    users: list[UserConfig] = Field(
        default_factory=list,
        description="Teams users by number. Empty: every E.164 number answers.",
    )
    unknown_numbers: Literal["answer", "not-found"] = Field(
        default="not-found",
        description="What a number absent from `users` gets when `users` is not empty.",
    )
    forks: int = Field(
        default=2,
        ge=1,
        le=8,
        description="Devices a call to a user rings: one 180 each, each with its own To-tag; "
        "the 183 comes from the first, the 200 from the last.",
    )
    strict_hold: bool = Field(
        default=True,
        description="Answer 488 to a re-INVITE that signals hold with sendonly, recvonly or "
        "c=0.0.0.0: Teams understands hold only as a=inactive.",
    )
    options_interval: float = Field(
        default=60.0,
        gt=0,
        description="Seconds between the emulator's own OPTIONS to an SBC FQDN (per proxy); "
        "the first goes out after the SBC's first good OPTIONS.",
    )
    timing: Timing = Field(
        default_factory=Timing, description="SIP timers and the pace of answered calls."
    )
    media: MediaSettings = Field(
        default_factory=MediaSettings, description="The SRTP the emulator sends on calls."
    )
    user_agent: str = Field(
        default="Microsoft.PSTNHub.SIPProxy v.2024.11.26.1 i.EMUL.1 (teams-sbc emulator)",
        description="User-Agent and Server of everything the emulator sends.",
    )

    @field_validator("sbc_address")
    @classmethod
    def _sbc_address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_host_port(value)
        return value

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: dict[str, str]) -> dict[str, str]:
        for target in value.values():
            parse_host_port(target)
        return {name.lower(): target for name, target in value.items()}

    @field_validator("trunks")
    @classmethod
    def _trunks(cls, value: list[str]) -> list[str]:
        for name in value:
            bare = name[2:] if name.startswith("*.") else name
            if not re.fullmatch(r"(?:[A-Za-z0-9-]+\.)+[A-Za-z0-9-]+", bare):
                raise ValueError(f"trunk {name!r} is not an FQDN or *.base")
        return [name.lower() for name in value]

    @model_validator(mode="after")
    def _unique(self) -> EmulatorConfig:
        names = [p.name for p in self.proxies]
        if len(set(names)) != len(names):
            raise ValueError(f"proxy names must be unique, got {names}")
        return self

    def proxy(self, name: str) -> ProxyConfig:
        for proxy in self.proxies:
            if proxy.name == name:
                return proxy
        raise KeyError(f"no proxy named {name!r} (have {[p.name for p in self.proxies]})")


def load_emulator_config(path: str | Path) -> EmulatorConfig:
    path = Path(path)
    return parse_emulator_config(read_yaml(path, EmulatorConfigError), source=str(path))


def parse_emulator_config(raw: object, source: str = "<emulator config>") -> EmulatorConfig:
    return validate(EmulatorConfig, raw, source, EmulatorConfigError)
