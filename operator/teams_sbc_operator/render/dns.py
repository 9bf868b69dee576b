"""DNS through external-dns: the DNSEndpoint (externaldns.k8s.io/v1alpha1) listing an A and an
AAAA endpoint per name, for external-dns to publish with whatever provider it is set up for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from teams_sbc_operator.dnsrecords import split_addresses
from teams_sbc_operator.model import Trunk
from teams_sbc_operator.render.objects import metadata, sbc_name


def dns_endpoint(trunk: Trunk, names: Sequence[str], addresses: Sequence[str]) -> dict[str, Any]:
    v4, v6 = split_addresses(addresses)
    endpoints: list[dict[str, Any]] = []
    for name in sorted(names):
        for record_type, targets in (("A", v4), ("AAAA", v6)):
            if not targets:
                continue
            endpoint: dict[str, Any] = {
                "dnsName": name,
                "recordType": record_type,
                "targets": list(targets),
            }
            if trunk.external_dns_ttl:
                endpoint["recordTTL"] = trunk.external_dns_ttl
            endpoints.append(endpoint)
    return {
        "apiVersion": "externaldns.k8s.io/v1alpha1",
        "kind": "DNSEndpoint",
        "metadata": metadata(trunk, sbc_name(trunk)),
        "spec": {"endpoints": endpoints},
    }
