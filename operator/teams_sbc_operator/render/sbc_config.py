"""The SBC's config file, rendered from a TeamsTrunk and its tenants in the format
``teams-sbc run`` reads (:class:`teams_sbc.config.SbcConfig` with its ``teams`` section,
docs/config.md): the operator invents no second format. The renderer's tests validate what it
renders with :func:`teams_sbc.config.parse_config`, and so does every pass before it is applied.

Paths are where :mod:`.workload` mounts things in the pod.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from teams_sbc_operator.model import Trunk
from teams_sbc_operator.render.tenants import TenantPlan

CONFIG_DIR = "/etc/teams-sbc/config"
CONFIG_FILE = "sbc.yaml"
TLS_DIR = "/etc/teams-sbc/tls"
#: Microsoft's SIP proxies present certificates from public roots (DigiCert); the image's system
#: bundle holds them.
TRUST_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
HTTP_PORT = 8080
#: How long open transactions may finish after SIGTERM (the SBC's drain_seconds).
DRAIN_SECONDS = 32

#: The CRD's policy fields (camelCase, Kubernetes style) and the config's (snake_case).
POLICY_FIELDS = {
    "refer": "refer",
    "e164": "e164",
    "paiToFrom": "pai_to_from",
    "earlyMedia183To180": "early_media_183_to_180",
    "holdInactive": "hold_inactive",
    "busyCause17": "busy_cause_17",
    "identify": "identify",
    "ackRepair": "ack_repair",
    "trimLargeSdp": "trim_large_sdp",
}
NUMBER_FIELDS = {
    "countryCode": "country_code",
    "nationalPrefix": "national_prefix",
    "internationalPrefix": "international_prefix",
}
#: The config's tenant names: one DNS label (a TeamsTenant's name may hold dots).
_TENANT_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def carrier_uri(trunk: Trunk) -> str:
    c = trunk.carrier
    return f"sip:{_uri_host(c.address)}:{c.port};transport={c.transport}"


def render_policy(policy: Mapping[str, Any]) -> dict[str, Any]:
    out = {POLICY_FIELDS[k]: v for k, v in policy.items() if k in POLICY_FIELDS}
    numbers = policy.get("numbers") or {}
    if numbers:
        out["numbers"] = {NUMBER_FIELDS[k]: v for k, v in numbers.items() if k in NUMBER_FIELDS}
    return out


def render_tenants(tenants: Sequence[TenantPlan]) -> list[dict[str, Any]]:
    """The ``teams.tenants`` list: named after the TeamsTenant (its subdomain where the name
    is not a DNS label, or is taken), the subdomain as label, the numbers it keeps."""
    out: list[dict[str, Any]] = []
    used: set[str] = set()
    for plan in sorted(tenants, key=lambda p: p.tenant.subdomain):
        t = plan.tenant
        name = t.name if _TENANT_NAME.match(t.name) and t.name not in used else t.subdomain
        if name in used:  # a subdomain equal to another tenant's name
            name = f"{t.subdomain}-{len(used)}"
        used.add(name)
        entry: dict[str, Any] = {"name": name, "label": t.subdomain}
        numbers = [*plan.numbers, *(f"{r.first}-{r.last}" for r in plan.ranges)]
        if numbers:
            entry["numbers"] = numbers
        if t.policy and t.policy != "default":
            entry["policy"] = t.policy
        out.append(entry)
    return out


def render_sbc_config(
    trunk: Trunk, tenants: Sequence[TenantPlan], carrier_address: str | None = None
) -> dict[str, Any]:
    """The config as a mapping (what the ConfigMap's ``sbc.yaml`` holds): the Teams listener
    (mutual TLS with the trunk's certificate, advertised as the base FQDN), the carrier
    listener (advertised as ``carrier_address``: the address the carrier sends to), and the
    ``teams`` section with Microsoft's proxies, the carrier's next hop, the tenants and the
    policies."""
    tls = {
        "cert_file": f"{TLS_DIR}/tls.crt",
        "key_file": f"{TLS_DIR}/tls.key",
        "ca_file": TRUST_BUNDLE,
        "verify_peer": True,
    }
    carrier_listener: dict[str, Any] = {
        "name": "carrier",
        "transport": trunk.carrier.transport,
        "host": "0.0.0.0",
        "port": trunk.sbc.carrier_port,
    }
    advertise = trunk.sbc.carrier_address or carrier_address
    if advertise:
        carrier_listener["advertise"] = advertise
    if trunk.carrier.transport == "tls":
        # The carrier side: our certificate as server and client, no client certificate asked.
        carrier_listener["tls"] = {
            "cert_file": f"{TLS_DIR}/tls.crt",
            "key_file": f"{TLS_DIR}/tls.key",
            "verify_peer": False,
        }
    teams: dict[str, Any] = {
        "fqdn": trunk.fqdn,
        "cloud": trunk.cloud,
        "teams_listener": "teams",
        "carrier_listener": "carrier",
        "carrier": {"next_hop": carrier_uri(trunk)},
        "tenants": render_tenants(tenants),
    }
    if trunk.teams.proxies:
        teams["proxies"] = [
            {
                k: v
                for k, v in (("name", p.name), ("address", p.address), ("port", p.port))
                if v is not None
            }
            for p in trunk.teams.proxies
        ]
    if trunk.teams.allow_sources is not None:
        teams["allow_sources"] = list(trunk.teams.allow_sources)
    if trunk.teams.tenant_header:
        teams["tenant_header"] = trunk.teams.tenant_header
    if trunk.teams.unknown_tenant_status:
        teams["unknown_tenant_status"] = trunk.teams.unknown_tenant_status
    if trunk.policies:
        teams["policies"] = {
            name: render_policy(policy) for name, policy in sorted(trunk.policies.items())
        }
    config: dict[str, Any] = {
        "listeners": [
            {
                "name": "teams",
                "transport": "tls",
                "host": "0.0.0.0",
                "port": trunk.sbc.teams_port,
                "advertise": trunk.fqdn,
                "tls": tls,
            },
            carrier_listener,
        ],
        "teams": teams,
        "http": {"host": "0.0.0.0", "port": HTTP_PORT},
        "logging": {"level": "INFO", "format": "json"},
        "drain_seconds": DRAIN_SECONDS,
    }
    if trunk.sbc.workers > 1:
        # A supervisor and N workers; a change needs a restart, which the pod template's
        # annotation (workload.WORKERS_ANNOTATION) brings.
        config["workers"] = trunk.sbc.workers
    return config


def config_yaml(config: dict[str, Any]) -> str:
    """The file's text: stable key order, so an unchanged config is an unchanged ConfigMap."""
    header = "# Rendered by teams-sbc-operator from a TeamsTrunk; edits are overwritten.\n"
    return header + yaml.safe_dump(config, sort_keys=True, default_flow_style=False)
