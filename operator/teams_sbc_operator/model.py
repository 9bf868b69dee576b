"""Typed views of the custom resources, read from the bodies the API server stores.

The API server has already applied the CRD's defaults and validation (deploy/crds/), so these
views only fill in what the schema leaves to the operator (a Secret's default name, a carrier's
port) and never re-validate. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from teams_sbc.teams.config import CLOUD_PROXIES

GROUP = "sbc.teams-sbc.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

CertificateSource = Literal["secret", "cert-manager", "dev-ca"]

#: Microsoft's health dashboard warns about a certificate 30 days before it expires.
DEFAULT_WARNING_DAYS = 30


def _get(mapping: Mapping[str, Any] | None, key: str, default: Any = None) -> Any:
    if not mapping:
        return default
    value = mapping.get(key, default)
    return default if value is None else value


@dataclass(frozen=True)
class Carrier:
    address: str
    transport: Literal["udp", "tcp", "tls"]
    port: int


@dataclass(frozen=True)
class IssuerRef:
    name: str
    kind: str
    group: str


@dataclass(frozen=True)
class CertificateSpec:
    source: CertificateSource
    secret_name: str
    warning_days: int
    issuer: IssuerRef | None = None


@dataclass(frozen=True)
class Rfc2136:
    server: str
    port: int
    zone: str
    key_name: str
    algorithm: str
    secret_name: str
    secret_key: str
    ttl: int


@dataclass(frozen=True)
class SbcSpec:
    replicas: int
    image: str | None
    rtpengine_image: str | None
    teams_port: int
    carrier_port: int
    carrier_address: str | None
    host_network: bool
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]
    resources: dict[str, Any]
    service_type: str
    service_annotations: dict[str, str]
    #: SIP worker processes per pod (the SBC config's ``workers``).
    workers: int = 1


@dataclass(frozen=True)
class ProxyOverride:
    """One of Microsoft's SIP proxies with the address to reach it at instead of DNS."""

    name: str
    address: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class TeamsSpec:
    proxies: tuple[ProxyOverride, ...] = ()
    allow_sources: tuple[str, ...] | None = None
    tenant_header: str | None = None
    unknown_tenant_status: int | None = None


@dataclass(frozen=True)
class Trunk:
    """A TeamsTrunk as the operator needs it."""

    namespace: str
    name: str
    uid: str
    generation: int
    fqdn: str
    cloud: str
    public_addresses: tuple[str, ...]
    carrier: Carrier
    certificate: CertificateSpec
    dns: Rfc2136 | None
    media_port_min: int
    media_port_max: int
    sbc: SbcSpec
    teams: TeamsSpec = TeamsSpec()
    #: DNS through external-dns (a DNSEndpoint): None when not chosen, else the TTL (0: the
    #: provider's default).
    external_dns_ttl: int | None = None
    #: Named policies as the CRD spells them (camelCase), by name.
    policies: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    deleting: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def dns_mode(self) -> Literal["rfc2136", "external-dns", "none"]:
        if self.dns is not None:
            return "rfc2136"
        return "external-dns" if self.external_dns_ttl is not None else "none"

    @property
    def teams_proxies(self) -> tuple[str, ...]:
        return CLOUD_PROXIES.get(self.cloud, CLOUD_PROXIES["commercial"])

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Trunk:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        name = str(meta["name"])
        carrier = spec.get("carrier") or {}
        transport = _get(carrier, "transport", "udp")
        cert = spec.get("certificate") or {}
        issuer = cert.get("issuerRef")
        if issuer:
            source: CertificateSource = "cert-manager"
        elif cert.get("devCA"):
            source = "dev-ca"
        else:
            source = "secret"
        dns = (spec.get("dns") or {}).get("rfc2136")
        external = (spec.get("dns") or {}).get("externalDNS")
        sbc = spec.get("sbc") or {}
        service = sbc.get("service") or {}
        media = spec.get("media") or {}
        teams = spec.get("teams") or {}
        allow = teams.get("allowSources")
        return cls(
            namespace=str(meta.get("namespace") or "default"),
            name=name,
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
            fqdn=str(spec["fqdn"]),
            cloud=str(_get(spec, "cloud", "commercial")),
            public_addresses=tuple(spec.get("publicAddresses") or ()),
            carrier=Carrier(
                address=str(carrier["address"]),
                transport=transport,
                port=int(_get(carrier, "port", 5061 if transport == "tls" else 5060)),
            ),
            certificate=CertificateSpec(
                source=source,
                secret_name=str(_get(cert, "secretName", f"{name}-tls")),
                warning_days=int(_get(cert, "warningDays", DEFAULT_WARNING_DAYS)),
                issuer=IssuerRef(
                    name=str(issuer["name"]),
                    kind=str(_get(issuer, "kind", "Issuer")),
                    group=str(_get(issuer, "group", "cert-manager.io")),
                )
                if issuer
                else None,
            ),
            dns=Rfc2136(
                server=str(dns["server"]),
                port=int(_get(dns, "port", 53)),
                zone=str(dns["zone"]).rstrip("."),
                key_name=str(dns["tsigKeyName"]),
                algorithm=str(_get(dns, "tsigAlgorithm", "hmac-sha256")),
                secret_name=str(dns["tsigSecretRef"]["name"]),
                secret_key=str(_get(dns["tsigSecretRef"], "key", "secret")),
                ttl=int(_get(dns, "ttl", 300)),
            )
            if dns
            else None,
            media_port_min=int(_get(media, "portMin", 30000)),
            media_port_max=int(_get(media, "portMax", 40000)),
            sbc=SbcSpec(
                replicas=int(_get(sbc, "replicas", 2)),
                image=sbc.get("image"),
                rtpengine_image=sbc.get("rtpengineImage"),
                teams_port=int(_get(sbc, "teamsPort", 5061)),
                carrier_port=int(_get(sbc, "carrierPort", 5060)),
                carrier_address=sbc.get("carrierAddress"),
                host_network=bool(_get(sbc, "hostNetwork", False)),
                node_selector=dict(sbc.get("nodeSelector") or {}),
                tolerations=[dict(t) for t in sbc.get("tolerations") or []],
                resources={k: dict(v) for k, v in (sbc.get("resources") or {}).items()},
                service_type=str(_get(service, "type", "LoadBalancer")),
                service_annotations=dict(service.get("annotations") or {}),
                workers=int(_get(sbc, "workers", 1)),
            ),
            teams=TeamsSpec(
                proxies=tuple(
                    ProxyOverride(str(p["name"]), p.get("address"), p.get("port"))
                    for p in teams.get("proxies") or ()
                ),
                allow_sources=None if allow is None else tuple(allow),
                tenant_header=teams.get("tenantHeader"),
                unknown_tenant_status=teams.get("unknownTenantStatus"),
            ),
            policies={str(k): dict(v) for k, v in (spec.get("policies") or {}).items()},
            external_dns_ttl=None if external is None else int(external.get("ttl") or 0),
            deleting=bool(meta.get("deletionTimestamp")),
        )


@dataclass(frozen=True)
class NumberRange:
    first: str
    last: str

    def overlaps(self, other: NumberRange) -> bool:
        return len(self.first) == len(other.first) and not (
            self.last < other.first or other.last < self.first
        )


@dataclass(frozen=True)
class Tenant:
    """A TeamsTenant as the operator needs it."""

    namespace: str
    name: str
    uid: str
    generation: int
    trunk: str
    subdomain: str
    numbers: tuple[str, ...] = ()
    ranges: tuple[NumberRange, ...] = ()
    policy: str | None = None
    created: str = ""
    deleting: bool = False
    finalizers: tuple[str, ...] = ()
    resource_version: str = ""
    status: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Tenant:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        return cls(
            namespace=str(meta.get("namespace") or "default"),
            name=str(meta["name"]),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
            trunk=str(spec["trunk"]),
            subdomain=str(spec["subdomain"]),
            numbers=tuple(spec.get("numbers") or ()),
            ranges=tuple(
                NumberRange(str(r["from"]), str(r["to"])) for r in spec.get("numberRanges") or ()
            ),
            policy=spec.get("policy"),
            created=str(meta.get("creationTimestamp") or ""),
            deleting=bool(meta.get("deletionTimestamp")),
            finalizers=tuple(meta.get("finalizers") or ()),
            resource_version=str(meta.get("resourceVersion") or ""),
            status=dict(body.get("status") or {}),
        )
