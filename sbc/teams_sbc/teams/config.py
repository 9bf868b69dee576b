"""The `teams` section of the config file: the Teams Direct Routing edge.

Hooked into ``SbcConfig`` as the optional ``teams`` field; follows config.py's style (unknown
keys refused, frozen, every field described for the generated docs/config.md). This module does
not import ``teams_sbc.config``: the references to listeners are checked by ``SbcConfig``.

Facts behind the defaults: Microsoft's "Plan Direct Routing" and "Direct Routing - SIP protocol"
pages as summarised in ../shared/docs/teams-direct-routing.md, and the seed article "Making
OpenSIPS work as MS Teams SBC" (docs/policies.md names the source of each policy).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from teams_sbc.configfile import StrictModel

Cloud = Literal["commercial", "gcch", "dod"]

#: Microsoft's SIP proxies per cloud, in failover order ("Plan Direct Routing": sip, sip2, sip3
#: for Office 365; one FQDN each for GCC High and DoD).
CLOUD_PROXIES: dict[str, tuple[str, ...]] = {
    "commercial": (
        "sip.pstnhub.microsoft.com",
        "sip2.pstnhub.microsoft.com",
        "sip3.pstnhub.microsoft.com",
    ),
    "gcch": ("sip.pstnhub.gov.teams.microsoft.us",),
    "dod": ("sip.pstnhub.dod.teams.microsoft.us",),
}

#: The source ranges Microsoft's SIP proxies connect from, per cloud ("Plan Direct Routing",
#: SIP signaling: FQDNs and IP ranges). 52.120.0.0/14 contains the 52.122.0.0/15 that newer
#: versions of the page list.
CLOUD_SOURCE_RANGES: dict[str, tuple[str, ...]] = {
    "commercial": ("52.112.0.0/14", "52.120.0.0/14"),
    "gcch": ("52.127.88.0/21",),
    "dod": ("52.127.64.0/21",),
}

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_FQDN = re.compile(rf"^(?:{_LABEL}\.)+{_LABEL}$")
_E164 = re.compile(r"^\+[1-9][0-9]{0,14}$")
_DIGITS = re.compile(r"^[0-9]{1,4}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!%*_+`'~.-]+$")
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def check_fqdn(value: str) -> str:
    """A host name in lower case without the root dot; ValueError if it is not an FQDN."""
    value = value.lower().rstrip(".")
    if not _FQDN.match(value) or len(value) > 253:
        raise ValueError(f"not a fully qualified domain name: {value!r}")
    return value


def _ip(value: str) -> str:
    ipaddress.ip_address(value)  # raises ValueError with the reason
    return value


class MicrosoftProxy(StrictModel):
    """One of Microsoft's SIP proxies: its name, and optionally where that name really is."""

    name: str = Field(
        description="Its FQDN. Always the name in what the SBC sends (Request-URI, To, TLS SNI) "
        "and the name Microsoft's certificate is checked against."
    )
    address: str | None = Field(
        default=None,
        description="IP address to connect to instead of resolving `name` (tests, the demo and "
        "a carrier's staging point this at the Teams emulator). Default: DNS (or `hosts`).",
    )
    port: int = Field(default=5061, ge=1, le=65535, description="TLS port to connect to.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_fqdn(value)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return None if value is None else _ip(value)


class NumberRules(StrictModel):
    """How national and international dialling formats become E.164 with `+`."""

    country_code: str | None = Field(
        default=None,
        description="Country calling code without `+` (e.g. `49`), used for numbers in "
        "national format. Without it, only numbers already international become E.164.",
    )
    national_prefix: str = Field(
        default="0", description="Trunk prefix of national numbers (e.g. `0` in 030 1234)."
    )
    international_prefix: str = Field(
        default="00", description="International call prefix (e.g. `00`, or `011` in NANP)."
    )

    @field_validator("country_code")
    @classmethod
    def _cc(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[1-9][0-9]{0,2}", value):
            raise ValueError("country_code: 1-3 digits, no '+', not starting with 0")
        return value

    @field_validator("national_prefix", "international_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _DIGITS.match(value):
            raise ValueError("a dialling prefix is 1-4 digits")
        return value


class Policy(StrictModel):
    """A named set of Teams normalisations; every default is stated and sourced in
    docs/policies.md."""

    refer: Literal["strip", "pass"] = Field(
        default="strip",
        description="REFER in the Allow header sent to Teams: `strip` removes it so Teams handles "
        "transfers itself (seed: REFER handling); `pass` leaves Allow as the carrier sent it.",
    )
    e164: bool = Field(
        default=True,
        description="Rewrite numbers towards Teams (Request-URI, To, From, P-Asserted-Identity) "
        "to E.164 with `+` and `;user=phone` (Microsoft: SIP protocol, numbers in E.164).",
    )
    numbers: NumberRules = Field(
        default_factory=NumberRules, description="Country rules used by `e164`."
    )
    pai_to_from: bool = Field(
        default=False,
        description="Towards Teams, copy the user part of P-Asserted-Identity into From when "
        "they differ (Teams shows From as the caller ID).",
    )
    early_media_183_to_180: bool = Field(
        default=False,
        description="Towards the carrier, turn Teams' 183 with SDP into a 180 without SDP, so "
        "the carrier keeps its own ringback (Teams' early media is often silence).",
    )
    hold_inactive: bool = Field(
        default=True,
        description="Towards Teams, signal hold as `a=inactive` (and a real address in c=): "
        "Teams does not understand sendonly/recvonly holds or `c=0.0.0.0`.",
    )
    busy_cause_17: bool = Field(
        default=True,
        description="Towards the carrier, a 486 from Teams carries Q.850 cause 17 (user busy): "
        "Teams' own Q.850 cause replaced, or `Reason: Q.850;cause=17` added.",
    )
    identify: bool = Field(
        default=True,
        description="Add `X-MS-SBC: teams-sbc/<edition>/<version>` and User-Agent (requests) or "
        "Server (responses) to everything sent towards Teams.",
    )
    ack_repair: bool = Field(
        default=True,
        description="When the carrier ACKs a 2xx with a provisional response's To-tag (seed: "
        "the value of the To-tag), send Teams the ACK with the 2xx's To-tag; counted and logged.",
    )
    trim_large_sdp: bool = Field(
        default=True,
        description="When a message from Teams is over 1,300 bytes and the carrier takes only "
        "UDP, drop ICE candidates and the codecs not in `carrier_codecs` before sending; "
        "false sends it whole (the network may fragment it).",
    )
    carrier_codecs: list[str] = Field(
        default=["PCMU", "PCMA", "G722", "G729", "telephone-event", "CN"],
        description="Codecs (SDP encoding names) the carrier takes: what `trim_large_sdp` "
        "keeps of Teams' offer (SILK and the rest go).",
    )


class CarrierTrunk(StrictModel):
    """Where calls from Teams go: the carrier's trunk or PBX."""

    next_hop: str = Field(
        description="SIP URI of the carrier's next hop, e.g. `sip:192.0.2.10:5060` or "
        "`sip:sbc.carrier.example;transport=tcp`; a name is looked up in `hosts`, then DNS."
    )
    tcp_allowed: bool = Field(
        default=True,
        description="The carrier accepts TCP on the same address: requests over 1,300 bytes "
        "for a UDP next hop go over TCP (RFC 3261 18.1.1). False: they are trimmed by the "
        "tenant's policy (`trim_large_sdp`).",
    )

    @field_validator("next_hop")
    @classmethod
    def _uri(cls, value: str) -> str:
        if not re.match(r"^sips?:", value):
            raise ValueError("next_hop must be a sip: URI")
        return value


class Tenant(StrictModel):
    """One Microsoft 365 customer served by this trunk (Microsoft: "Configure an SBC for
    multiple tenants"): a subdomain of the base FQDN and the numbers it owns."""

    name: str = Field(
        description="Name in logs, metrics and the `tenant_header` (lower case, digits, `-`)."
    )
    label: str | None = Field(
        default=None,
        description="Subdomain label: the tenant's FQDN is `<label>.<base fqdn>`. Default: `name`.",
    )
    fqdn: str | None = Field(
        default=None,
        description="The tenant's FQDN when it is not `<label>.<base fqdn>` (set `label` or "
        "`fqdn`, not both).",
    )
    numbers: list[str] = Field(
        default_factory=list,
        description="Numbers routed to this tenant's Teams users, E.164 with `+`: a prefix "
        "(`+4930123`) or an inclusive range of equal length (`+4930123100-+4930123199`). The "
        "longest (most specific) match over all tenants wins.",
    )
    policy: str = Field(
        default="default", description="Name of the policy (in `policies`) for its calls."
    )
    carrier_next_hop: str | None = Field(
        default=None,
        description="SIP URI of this tenant's own carrier next hop (a PBX per tenant); default: "
        "`carrier.next_hop`.",
    )
    cert_file: str | None = Field(
        default=None,
        description="PEM chain of a certificate of the tenant's own, given to TLS clients that "
        "ask for the tenant's FQDN by SNI. Default: the Teams listener's (a wildcard for "
        "`*.<base fqdn>`, as Microsoft's carrier model expects). Connections the SBC opens to "
        "Microsoft always present the listener's certificate.",
    )
    key_file: str | None = Field(default=None, description="The key of `cert_file`.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("tenant name: lower-case letters, digits and '-', at most 63")
        return value

    @field_validator("label")
    @classmethod
    def _label(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError("label: one DNS label (lower-case letters, digits, '-')")
        return value

    @field_validator("fqdn")
    @classmethod
    def _fqdn(cls, value: str | None) -> str | None:
        return None if value is None else check_fqdn(value)

    @field_validator("numbers")
    @classmethod
    def _numbers(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_number_spec(item)
        return value

    @field_validator("carrier_next_hop")
    @classmethod
    def _next_hop(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^sips?:", value):
            raise ValueError("carrier_next_hop must be a sip: URI")
        return value

    @model_validator(mode="after")
    def _one_name(self) -> Tenant:
        if self.label is not None and self.fqdn is not None:
            raise ValueError("set label or fqdn, not both")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    def fqdn_under(self, base: str) -> str:
        """The tenant's FQDN given the trunk's base FQDN."""
        return self.fqdn or f"{self.label or self.name}.{base}"


def parse_number_spec(spec: str) -> tuple[str, str]:
    """A tenant's number entry as an inclusive (low, high) pair of E.164 strings.

    A prefix ``+4930`` is ``("+4930", "+4930")`` (matched by prefix); a range
    ``+4930100-+4930199`` must have bounds of the same length, low <= high."""
    if "-" in spec:
        low, _, high = spec.partition("-")
        for part in (low, high):
            if not _E164.match(part):
                raise ValueError(f"number range bound {part!r} is not E.164 with '+'")
        if len(low) != len(high) or low > high:
            raise ValueError(f"number range {spec!r}: bounds of equal length, low first")
        return low, high
    if not _E164.match(spec):
        raise ValueError(f"number {spec!r} is not an E.164 prefix with '+' (e.g. +4930123)")
    return spec, spec


class TeamsConfig(StrictModel):
    """The Teams Direct Routing edge: Microsoft's cloud, the trunk's FQDN, its tenants, the
    carrier it connects them to, and the policies applied on the way."""

    fqdn: str = Field(
        description="The trunk's base FQDN (the carrier's SBC name in Teams), e.g. "
        "`sbc.carrier.example`. In OPTIONS Contact, and in Contact and Record-Route towards "
        "Teams for calls without a tenant; must be covered by the Teams listener's certificate."
    )
    cloud: Cloud = Field(
        default="commercial",
        description="Microsoft cloud: `commercial` (sip, sip2, sip3.pstnhub.microsoft.com), "
        "`gcch` (sip.pstnhub.gov.teams.microsoft.us), `dod` "
        "(sip.pstnhub.dod.teams.microsoft.us).",
    )
    proxies: list[MicrosoftProxy] = Field(
        default_factory=list,
        description="Microsoft's SIP proxies in failover order, with optional address overrides; "
        "empty means the cloud's proxies, resolved by DNS, port 5061.",
    )
    teams_listener: str = Field(
        description="Name of the TLS listener facing Microsoft (its `tls.ca_file` is the trust "
        "bundle Microsoft's certificates are checked against)."
    )
    carrier_listener: str = Field(
        description="Name of the listener facing the carrier; its advertised address is the "
        "inside entry of the Record-Route pair."
    )
    carrier: CarrierTrunk = Field(description="The carrier's trunk or PBX.")
    options_interval: float = Field(
        default=60.0,
        gt=0,
        description="Seconds between OPTIONS keepalives to each Microsoft proxy (Microsoft: "
        "about every 60 s). With `workers: N` each worker probes every proxy at this interval in "
        "its own slot, so a proxy gets N OPTIONS per interval, evenly spaced "
        "(docs/architecture.md, \"Worker processes\").",
    )
    options_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds an OPTIONS may go unanswered before its proxy is marked down.",
    )
    failover_timeout: float = Field(
        default=4.0,
        gt=0,
        description="Seconds a new INVITE to a Microsoft proxy may go without any response "
        "before the next proxy is tried.",
    )
    retry_after_max: float = Field(
        default=300.0,
        ge=0,
        description="Longest a 503's Retry-After keeps a proxy out of the failover order.",
    )
    tenants: list[Tenant] = Field(
        default_factory=list,
        description="Tenants (carrier model). Empty: a single-tenant trunk named by `fqdn`.",
    )
    tenant_header: str | None = Field(
        default=None,
        description="Header from the carrier whose value names the tenant (its name or FQDN) of "
        "a call to Teams; checked before the called number. Default: by number only.",
    )
    unknown_tenant_status: Literal[403, 404] = Field(
        default=404,
        description="Response to a call whose tenant or number is unknown (with a Reason "
        "phrase saying which); logged.",
    )
    policies: dict[str, Policy] = Field(
        default_factory=dict,
        description="Named policies; a `default` entry replaces the built-in defaults, which "
        "apply to tenants naming no policy.",
    )
    allow_sources: list[str] | None = Field(
        default=None,
        description="Networks (CIDR) allowed to connect to the Teams listener; connections from "
        "elsewhere are closed before TLS and counted. Default: the cloud's ranges; `[]` allows "
        "any source.",
    )
    edition: str = Field(
        default="community", description="Edition in `X-MS-SBC: teams-sbc/<edition>/<version>`."
    )

    @field_validator("fqdn")
    @classmethod
    def _base(cls, value: str) -> str:
        return check_fqdn(value)

    @field_validator("allow_sources")
    @classmethod
    def _networks(cls, value: list[str] | None) -> list[str] | None:
        for item in value or []:
            ipaddress.ip_network(item, strict=False)
        return value

    @field_validator("tenant_header")
    @classmethod
    def _header(cls, value: str | None) -> str | None:
        if value is not None and not _HEADER_NAME.match(value):
            raise ValueError(f"not a SIP header name: {value!r}")
        return value

    @field_validator("edition")
    @classmethod
    def _edition(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,32}", value):
            raise ValueError("edition: 1-32 letters, digits, '.', '_', '-'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TeamsConfig:
        names = [p.name for p in self.proxies]
        if len(names) != len(set(names)):
            raise ValueError(f"proxy names must be unique, got {names}")
        tenants = [t.name for t in self.tenants]
        if len(tenants) != len(set(tenants)):
            raise ValueError(f"tenant names must be unique, got {tenants}")
        fqdns = [t.fqdn_under(self.fqdn) for t in self.tenants]
        if len(fqdns) != len(set(fqdns)) or self.fqdn in fqdns:
            raise ValueError(f"tenant FQDNs must be unique and differ from the base, got {fqdns}")
        specs: dict[str, str] = {}
        for tenant in self.tenants:
            if tenant.policy != "default" and tenant.policy not in self.policies:
                raise ValueError(f"tenant {tenant.name!r} names unknown policy {tenant.policy!r}")
            for spec in tenant.numbers:
                other = specs.setdefault(spec, tenant.name)
                if other != tenant.name:
                    raise ValueError(
                        f"number {spec} belongs to tenants {other!r} and {tenant.name!r}"
                    )
        return self

    # -- derived values ------------------------------------------------------------------------

    def microsoft_proxies(self) -> tuple[MicrosoftProxy, ...]:
        """The proxies in failover order: as configured, or the cloud's."""
        if self.proxies:
            return tuple(self.proxies)
        return tuple(MicrosoftProxy(name=name) for name in CLOUD_PROXIES[self.cloud])

    def source_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The allow-list of the Teams listener; empty allows any source."""
        ranges = (
            CLOUD_SOURCE_RANGES[self.cloud] if self.allow_sources is None else (self.allow_sources)
        )
        return tuple(ipaddress.ip_network(r, strict=False) for r in ranges)

    def policy(self, name: str) -> Policy:
        """A named policy; `default` is the built-in one unless `policies` replaces it."""
        if name in self.policies:
            return self.policies[name]
        if name == "default":
            return _DEFAULT_POLICY
        raise KeyError(name)


_DEFAULT_POLICY = Policy()
