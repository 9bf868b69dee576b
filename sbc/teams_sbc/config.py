"""The SBC's configuration file: its schema is defined once, here, and documented in docs/config.md.

`teams-sbc run --config FILE` reads it; the operator renders the same model into each pod's
ConfigMap. Unknown keys are refused (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from teams_sbc.configfile import StrictModel, read_yaml, validate
from teams_sbc.media.config import MediaConfig
from teams_sbc.teams.config import TeamsConfig

Transport = Literal["udp", "tcp", "tls"]


class ConfigError(Exception):
    """The config file is missing, not YAML, or does not match the schema; says where and why."""


#: Microsoft's TLS 1.2 cipher suites for Direct Routing (ECDHE-RSA with AES-GCM or AES-CBC-SHA2),
#: in OpenSSL's names; TLS 1.3 suites are OpenSSL's defaults.
MICROSOFT_CIPHERS = (
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-RSA-AES256-SHA384:ECDHE-RSA-AES128-SHA256"
)


class Tls(StrictModel):
    """Certificate, trust and protocol settings of a TLS listener (server and client side)."""

    cert_file: str = Field(description="PEM file: our certificate followed by its chain.")
    key_file: str = Field(description="PEM file: the certificate's private key.")
    ca_file: str | None = Field(
        default=None, description="PEM trust bundle used to verify the peer's certificate."
    )
    verify_peer: bool = Field(
        default=True,
        description="Demand and verify the peer's certificate (mutual TLS). Needs `ca_file`.",
    )
    ciphers: str = Field(
        default=MICROSOFT_CIPHERS, description="TLS 1.2 cipher suites (OpenSSL syntax)."
    )
    min_version: Literal["1.2", "1.3"] = Field(default="1.2", description="Lowest TLS version.")

    @model_validator(mode="after")
    def _trust(self) -> Tls:
        if self.verify_peer and not self.ca_file:
            raise ValueError("verify_peer needs ca_file (the trust bundle)")
        return self


class Listener(StrictModel):
    """One SIP listening socket."""

    name: str = Field(description="Name used in logs and metrics, e.g. 'carrier' or 'teams'.")
    transport: Transport = Field(description="udp, tcp or tls.")
    host: str = Field(description="Local IPv4 or IPv6 address to bind.")
    port: int = Field(ge=1, le=65535, description="Local port to bind.")
    advertise: str | None = Field(
        default=None,
        description="Host (address or FQDN) put in Via and Record-Route for this listener; "
        "defaults to `host`.",
    )

    tls: Tls | None = Field(default=None, description="Required for transport tls.")

    @model_validator(mode="after")
    def _tls_settings(self) -> Listener:
        if (self.transport == "tls") != (self.tls is not None):
            raise ValueError("tls settings go with transport tls, and only with it")
        return self

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        import ipaddress

        try:
            ipaddress.ip_address(value)
        except ValueError as exc:
            raise ValueError(f"host must be an IP address to bind, got {value!r}") from exc
        return value

    @property
    def advertised_host(self) -> str:
        return self.advertise or self.host


class Route(StrictModel):
    """Where requests that are not routed by a Route header or a foreign Request-URI go."""

    name: str = Field(description="Name used in logs and metrics.")
    from_listeners: list[str] = Field(
        default_factory=list,
        description="Requests that arrived on these listeners take this route; empty means any.",
    )
    next_hop: str = Field(
        description="SIP URI of the next hop, e.g. `sip:192.0.2.10:5060;transport=tcp`. "
        "Its host is an IP address or a name in `hosts`."
    )
    listener: str | None = Field(
        default=None,
        description="Listener to send from; default: the first whose transport matches.",
    )
    large_over_tcp: bool = Field(
        default=True,
        description="Send requests over 1,300 bytes to a UDP next hop over TCP instead "
        "(RFC 3261 18.1.1). Set false for a peer that does not take TCP.",
    )


class Http(StrictModel):
    """Health (/healthz, /readyz) and Prometheus (/metrics) endpoints."""

    host: str = Field(default="127.0.0.1", description="Address the HTTP endpoints bind.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port; 0 picks a free one.")


class Timers(StrictModel):
    """RFC 3261 timer values (section 17 and table 4)."""

    t1_ms: int = Field(default=500, ge=10, description="T1, the RTT estimate.")
    t2_ms: int = Field(
        default=4000, ge=10, description="T2, the longest non-INVITE retransmit interval."
    )
    t4_ms: int = Field(
        default=5000, ge=10, description="T4, how long a message may stay in the network."
    )


class Logging(StrictModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")
    format: Literal["json", "text"] = Field(default="json", description="json: one object a line.")


class PodStatus(StrictModel):
    """In Kubernetes, the SBC writes its Microsoft proxies' OPTIONS state into an annotation on
    its own Pod (``sbc.teams-sbc.io/teams-proxies``), which the operator reads for the trunk's
    TeamsReachable condition (docs/operator.md). Active only with a Teams edge and the env
    ``POD_NAME`` and ``POD_NAMESPACE`` set (the downward API); outside a pod it does nothing."""

    enabled: bool = Field(default=True, description="Write the annotation (when in a pod).")
    min_interval_seconds: float = Field(
        default=5.0,
        ge=0,
        description="At most one write in this many seconds: a flapping proxy costs the API "
        "server one patch per interval, carrying the latest state.",
    )
    refresh_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Rewrite the unchanged state this often, so its `at` time tells a live "
        "report from a stale one.",
    )


class SbcConfig(StrictModel):
    """The whole file."""

    listeners: list[Listener] = Field(min_length=1, description="SIP sockets to listen on.")
    http: Http = Field(default_factory=Http)
    timers: Timers = Field(default_factory=Timers)
    logging: Logging = Field(default_factory=Logging)
    max_message_size: int = Field(
        default=65535, ge=1500, le=1048576, description="Larger messages get 513 (or are dropped)."
    )
    routes: list[Route] = Field(
        default_factory=list,
        description="Static routes, first match wins. Without one, requests for the SBC's own "
        "address that it does not answer itself get 404.",
    )
    hosts: dict[str, str] = Field(
        default_factory=dict,
        description="Names resolved to fixed IP addresses (checked before DNS).",
    )
    record_route: bool = Field(
        default=True,
        description="Insert Record-Route in dialog-creating requests (two when crossing "
        "listeners, with r2=on), so in-dialog requests come back through the SBC.",
    )
    server_header: str = Field(
        default="teams-sbc", description="Product token sent in Server and User-Agent."
    )
    tls_reload_seconds: float = Field(
        default=10.0, gt=0, description="How often certificate files are checked for renewal."
    )
    config_reload_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How often the config file is checked for changes (SIGHUP checks at once); "
        "0: only on SIGHUP. Tenants, numbers, policies, the carrier trunk, routes and hosts "
        "are applied without a restart; other changes are logged and wait for one "
        "(docs/operator.md, 'Config reload').",
    )
    drain_seconds: float = Field(
        default=32.0, ge=0, description="On SIGTERM, how long open transactions may take to finish."
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="SIP worker processes (Linux). 1: one process does everything. More: a "
        "supervisor starts this many, each bound to every listener with SO_REUSEPORT so the "
        "kernel spreads flows among them, restarts any that dies, and serves the HTTP endpoints "
        "for all. Each worker also sends its UDP requests from a port of its own, named in its "
        "Via, so their responses come back to it. All traffic from one source address and port "
        "reaches one worker (docs/architecture.md, 'Worker processes').",
    )
    teams: TeamsConfig | None = Field(
        default=None,
        description="The Teams Direct Routing edge (docs/policies.md); without it the SBC is a "
        "plain SIP proxy between its listeners.",
    )
    media: MediaConfig | None = Field(
        default=None,
        description="rtpengine anchors the media of every call (docs/media.md); without this "
        "section SDP passes through untouched.",
    )
    pod_status: PodStatus = Field(default_factory=PodStatus)

    @field_validator("listeners")
    @classmethod
    def _unique_names(cls, value: list[Listener]) -> list[Listener]:
        names = [listener.name for listener in value]
        if len(names) != len(set(names)):
            raise ValueError(f"listener names must be unique, got {names}")
        return value

    @model_validator(mode="after")
    def _references(self) -> SbcConfig:
        names = {listener.name for listener in self.listeners}
        for route in self.routes:
            unknown = [n for n in [*route.from_listeners, route.listener] if n and n not in names]
            if unknown:
                raise ValueError(f"route {route.name!r} names unknown listeners {unknown}")
        if self.teams is not None:
            by_name = {listener.name: listener for listener in self.listeners}
            teams = by_name.get(self.teams.teams_listener)
            if teams is None or teams.tls is None:
                raise ValueError(
                    f"teams.teams_listener {self.teams.teams_listener!r} must name a tls listener"
                )
            if not teams.tls.verify_peer:
                raise ValueError("the Teams listener needs tls.verify_peer (mutual TLS)")
            if self.teams.carrier_listener not in by_name:
                raise ValueError(
                    f"teams.carrier_listener {self.teams.carrier_listener!r} is not a listener"
                )
            if self.teams.carrier_listener == self.teams.teams_listener:
                raise ValueError("teams.carrier_listener and teams.teams_listener must differ")
        return self

    @model_validator(mode="after")
    def _media_references(self) -> SbcConfig:
        if self.media is None:
            return self
        names = {listener.name for listener in self.listeners}
        unknown = [n for n in self.media.teams_listeners if n not in names]
        if unknown:
            raise ValueError(f"media.teams_listeners names unknown listeners {unknown}")
        if not self.record_route:
            raise ValueError(
                "media needs record_route: true (the BYE that frees a call's media, and the "
                "rtpengine a call sticks to, come back along the Record-Route)"
            )
        return self


def load_config(path: str | Path) -> SbcConfig:
    """Read and validate a config file; any problem becomes one ConfigError naming the key."""
    path = Path(path)
    return parse_config(read_yaml(path, ConfigError, "config file "), source=str(path))


def parse_config(raw: object, source: str = "<config>") -> SbcConfig:
    return validate(SbcConfig, raw, source, ConfigError)
