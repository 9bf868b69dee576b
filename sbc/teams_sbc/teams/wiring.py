"""What the transport needs from the teams section: per-name certificates and source checks.

The source allow-list (teams-direct-routing.md, endpoints: Microsoft connects from its
signalling ranges, from any address and port in them; "Plan Direct Routing") is checked on the
Teams listener before any TLS byte is read (transport.tls).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable

from teams_sbc.config import SbcConfig

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def sni_certificates(config: SbcConfig) -> dict[str, dict[str, tuple[str, str]]]:
    """Per listener, the tenants' own (certificate, key) files by FQDN (for SNI)."""
    teams = config.teams
    if teams is None:
        return {}
    pairs = {
        tenant.fqdn_under(teams.fqdn): (tenant.cert_file, tenant.key_file)
        for tenant in teams.tenants
        if tenant.cert_file is not None and tenant.key_file is not None
    }
    return {teams.teams_listener: pairs} if pairs else {}


def source_allowed(networks: tuple[Network, ...], host: str) -> bool:
    """Whether ``host`` (an IP address, IPv4-mapped IPv6 included) is in ``networks``."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def allow_lists(config: SbcConfig) -> dict[str, Callable[[str], bool]]:
    """The Teams listener's source check; nothing when the allow-list is empty (any source)."""
    teams = config.teams
    if teams is None:
        return {}
    networks = teams.source_networks()
    if not networks:
        return {}
    return {teams.teams_listener: functools.partial(source_allowed, networks)}
