"""The SBC's config file, rendered from a TeamsTrunk in the format ``teams-sbc run`` reads
(:class:`teams_sbc.config.SbcConfig`, docs/config.md): the operator invents no second format.

Paths are where :mod:`.workload` mounts things in the pod.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def render_sbc_config(trunk: Trunk, tenants: Sequence[TenantPlan]) -> dict[str, Any]:
    """The config as a mapping (what the ConfigMap's ``sbc.yaml`` holds).

    Today it wires the two sides: TLS on ``sbc.teamsPort`` for Microsoft (mutual TLS with the
    trunk's certificate, advertised under the base FQDN) and the carrier listener, with one route
    each way. ``tenants`` are accepted so the Teams section (tenants by subdomain, numbers,
    policies) drops in when the SBC's config has one.
    """
    del tenants  # the SBC's config has no tenant section yet
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
    if trunk.carrier.transport == "tls":
        # The carrier side: our certificate as server and client, no client certificate asked.
        carrier_listener["tls"] = {
            "cert_file": f"{TLS_DIR}/tls.crt",
            "key_file": f"{TLS_DIR}/tls.key",
            "verify_peer": False,
        }
    carrier = trunk.carrier
    first_proxy = trunk.teams_proxies[0]
    return {
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
        "routes": [
            {
                "name": "to-carrier",
                "from_listeners": ["teams"],
                "next_hop": f"sip:{_uri_host(carrier.address)}:{carrier.port};"
                f"transport={carrier.transport}",
                "listener": "carrier",
            },
            {
                "name": "to-teams",
                "from_listeners": ["carrier"],
                "next_hop": f"sip:{first_proxy}:5061;transport=tls",
                "listener": "teams",
            },
        ],
        "http": {"host": "0.0.0.0", "port": HTTP_PORT},
        "logging": {"level": "INFO", "format": "json"},
        "drain_seconds": DRAIN_SECONDS,
    }


def config_yaml(config: dict[str, Any]) -> str:
    """The file's text: stable key order, so an unchanged config is an unchanged ConfigMap."""
    header = "# Rendered by teams-sbc-operator from a TeamsTrunk; edits are overwritten.\n"
    return header + yaml.safe_dump(config, sort_keys=True, default_flow_style=False)
