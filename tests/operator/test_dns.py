"""DNS records as the operator writes them into a real bind9 (RFC 2136 with TSIG), checked by
asking that authoritative server: A/AAAA for the base and every tenant FQDN, nobody else's record
touched, records following address and tenant changes, removed by the finalizers, and an
unreachable server reported and retried without blocking the rest."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.operator.conftest import Kube, Operator, tenant_manifest, trunk_manifest
from tests.testbed.dns import DnsServer, TsigKey
from tests.testbed.process import wait_until

FINALIZER = "sbc.teams-sbc.io/dns-records"


@pytest.fixture
def named(tmp_path: Path) -> Iterator[DnsServer]:
    """named for sbc.test. with a record of its own at keep and one at taken.sbc1."""
    server = DnsServer(
        tmp_path / "named", records=["keep IN A 192.0.2.99", "taken.sbc1 IN A 192.0.2.5"]
    )
    try:
        yield server.start()
    finally:
        server.stop()


def tsig_secret(namespace: str, key: TsigKey, name: str = "tsig") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"secret": base64.b64encode(key.secret.encode()).decode()},
    }


def dns_spec(server: DnsServer) -> dict[str, Any]:
    return {
        "rfc2136": {
            "server": server.host,
            "port": server.port,
            "zone": "sbc.test",
            "tsigKeyName": server.key.name,
            "tsigSecretRef": {"name": "tsig"},
            "ttl": 60,
        }
    }


def dns_trunk(namespace: str, server: DnsServer, *addresses: str) -> dict[str, Any]:
    """Trunk sbc1 (dev CA certificate) publishing ``addresses`` through ``server``."""
    return trunk_manifest(
        namespace,
        certificate={"devCA": True},
        publicAddresses=list(addresses),
        dns=dns_spec(server),
    )


def a(server: DnsServer, name: str) -> set[str]:
    return server.records_of(name, "A")


def eventually(check: Any, what: str, operator: Operator, timeout: float = 60) -> None:
    wait_until(check, timeout, what, operator.proc, interval=0.2)


def test_records_follow_the_trunk_and_its_tenants(
    kube: Kube, operator: Operator, named: DnsServer
) -> None:
    ns = kube.namespace
    kube.apply(
        tsig_secret(ns, named.key),
        dns_trunk(ns, named, "198.51.100.7", "2001:db8::7"),
        tenant_manifest(ns, "contoso"),
        tenant_manifest(ns, "fabrikam"),
        tenant_manifest(ns, "taken"),
    )
    # Someone else's records: left as they were, and the tenant is told why.
    refused = kube.wait_condition(
        "teamstenant", "taken", "DNSReady", "False", reason="RecordsNotOwned", proc=operator.proc
    )
    assert "taken.sbc1.sbc.test" in refused["message"]
    cond = kube.wait_condition("teamstrunk", "sbc1", "DNSReady", proc=operator.proc)
    assert "198.51.100.7" in cond["message"] and "1 tenant name(s) refused" in cond["message"]
    for name in ("sbc1.sbc.test", "contoso.sbc1.sbc.test", "fabrikam.sbc1.sbc.test"):
        assert a(named, name) == {"198.51.100.7"}
        assert named.records_of(name, "AAAA") == {"2001:db8::7"}
        assert named.records_of(f"_teams-sbc-owner.{name}", "TXT") == {
            f'"heritage=teams-sbc,owner={ns}/sbc1"'
        }
    assert a(named, "taken.sbc1.sbc.test") == {"192.0.2.5"}
    assert a(named, "keep.sbc.test") == {"192.0.2.99"}
    published = kube.wait_condition("teamstenant", "contoso", "DNSReady", proc=operator.proc)
    assert published["message"] == "contoso.sbc1.sbc.test -> 198.51.100.7, 2001:db8::7"
    assert FINALIZER in kube.must("teamstenant", "contoso")["metadata"]["finalizers"]
    assert sorted(kube.status("teamstrunk", "sbc1")["dns"]["names"]) == [
        "contoso.sbc1.sbc.test", "fabrikam.sbc1.sbc.test", "sbc1.sbc.test",
    ]  # fmt: skip

    # A new address: every record follows.
    kube.apply(dns_trunk(ns, named, "198.51.100.8"))
    eventually(lambda: a(named, "fabrikam.sbc1.sbc.test") == {"198.51.100.8"}, "new A", operator)
    assert a(named, "sbc1.sbc.test") == {"198.51.100.8"}
    assert named.records_of("sbc1.sbc.test", "AAAA") == set()

    # A tenant deleted: its record goes, then the tenant (its finalizer waited for DNS).
    kube.delete("teamstenant", "fabrikam")
    eventually(lambda: kube.get("teamstenant", "fabrikam") is None, "fabrikam gone", operator)
    assert a(named, "fabrikam.sbc1.sbc.test") == set()
    assert named.records_of("_teams-sbc-owner.fabrikam.sbc1.sbc.test", "TXT") == set()
    assert a(named, "contoso.sbc1.sbc.test") == {"198.51.100.8"}

    # The trunk deleted: all its records go, nobody else's; its tenants are told.
    kube.delete("teamstrunk", "sbc1")
    eventually(lambda: kube.get("teamstrunk", "sbc1") is None, "trunk gone", operator)
    assert a(named, "sbc1.sbc.test") == set()
    assert a(named, "contoso.sbc1.sbc.test") == set()
    assert named.records_of("_teams-sbc-owner.sbc1.sbc.test", "TXT") == set()
    assert a(named, "taken.sbc1.sbc.test") == {"192.0.2.5"}
    assert a(named, "keep.sbc.test") == {"192.0.2.99"}
    kube.wait_condition(
        "teamstenant", "contoso", "TrunkFound", "False", reason="TrunkNotFound", proc=operator.proc
    )
    assert FINALIZER not in (
        kube.must("teamstenant", "contoso")["metadata"].get("finalizers") or []
    )
    assert "sbc1.sbc.test" in kube.wait_event("sbc1", "DNSRecordsPublished")["message"]
    kube.wait_event("sbc1", "DNSRecordsRemoved")


def test_renamed_subdomain_moves_its_record(
    kube: Kube, operator: Operator, named: DnsServer
) -> None:
    ns = kube.namespace
    kube.apply(
        tsig_secret(ns, named.key),
        dns_trunk(ns, named, "198.51.100.7"),
        tenant_manifest(ns, "contoso"),
    )
    eventually(lambda: a(named, "contoso.sbc1.sbc.test") == {"198.51.100.7"}, "record", operator)
    kube.apply(tenant_manifest(ns, "contoso", subdomain="contoso-eu"))
    eventually(lambda: a(named, "contoso-eu.sbc1.sbc.test") == {"198.51.100.7"}, "moved", operator)
    eventually(lambda: a(named, "contoso.sbc1.sbc.test") == set(), "old name removed", operator)
    status = kube.status("teamstenant", "contoso")
    assert status["fqdn"] == "contoso-eu.sbc1.sbc.test"


def test_unreachable_server_is_reported_retried_and_blocks_nothing_else(
    kube: Kube, operator: Operator, tmp_path: Path
) -> None:
    ns = kube.namespace
    first = DnsServer(tmp_path / "named-1").start()
    port, key = first.port, first.key
    first.stop()  # nothing answers on that port now
    kube.apply(
        tsig_secret(ns, key),
        dns_trunk(ns, first, "198.51.100.7"),
        tenant_manifest(ns, "contoso"),
    )
    cond = kube.wait_condition(
        "teamstrunk", "sbc1", "DNSReady", "False", reason="DNSServerUnreachable",
        proc=operator.proc,
    )  # fmt: skip
    assert f"127.0.0.1:{port}" in cond["message"] and "retrying in" in cond["message"]
    # Nothing else waited for DNS: the config and the certificate are there.
    assert kube.condition("teamstrunk", "sbc1", "ConfigApplied")["status"] == "True"  # type: ignore[index]
    assert kube.condition("teamstrunk", "sbc1", "CertificateReady")["status"] == "True"  # type: ignore[index]
    assert kube.get("configmap", "sbc1-sbc-config") is not None
    tenant = kube.wait_condition(
        "teamstenant", "contoso", "DNSReady", "False", reason="DNSServerUnreachable",
        proc=operator.proc,
    )  # fmt: skip
    assert "retrying" in tenant["message"]

    # Retried by itself (no change to any object), with back-off.
    errors = 'teams_sbc_operator_errors_total{reason="DNSServerUnreachable",step="dns"}'
    eventually(lambda: operator.metrics().get(errors, 0) >= 3, "three attempts", operator)

    # The server comes back on the same port: the next retry publishes the records.
    second = DnsServer(tmp_path / "named-2", key=key, port=port).start()
    try:
        assert second.port == port
        kube.wait_condition("teamstrunk", "sbc1", "DNSReady", timeout=60, proc=operator.proc)
        assert a(second, "sbc1.sbc.test") == {"198.51.100.7"}
        assert a(second, "contoso.sbc1.sbc.test") == {"198.51.100.7"}
    finally:
        second.stop()


def test_tsig_problems_are_conditions(kube: Kube, operator: Operator, named: DnsServer) -> None:
    ns = kube.namespace
    kube.apply(dns_trunk(ns, named, "198.51.100.7"))
    cond = kube.wait_condition(
        "teamstrunk", "sbc1", "DNSReady", "False", reason="TSIGSecretNotFound", proc=operator.proc
    )
    assert "'tsig'" in cond["message"]
    kube.apply(tsig_secret(ns, TsigKey.generate(named.key.name)))
    cond = kube.wait_condition(
        "teamstrunk", "sbc1", "DNSReady", "False", reason="TSIGRefused", proc=operator.proc
    )
    assert named.key.name in cond["message"]
    kube.apply(tsig_secret(ns, named.key))
    kube.wait_condition("teamstrunk", "sbc1", "DNSReady", timeout=60, proc=operator.proc)
    assert a(named, "sbc1.sbc.test") == {"198.51.100.7"}


def test_moving_to_another_zone_leaves_the_old_records_and_says_so(
    kube: Kube, operator: Operator, named: DnsServer, tmp_path: Path
) -> None:
    ns = kube.namespace
    kube.apply(
        tsig_secret(ns, named.key),
        dns_trunk(ns, named, "198.51.100.7"),
    )
    eventually(lambda: a(named, "sbc1.sbc.test") == {"198.51.100.7"}, "first record", operator)
    other = DnsServer(tmp_path / "named-other", zone="other.test", key=named.key).start()
    try:
        spec = dns_spec(other)
        spec["rfc2136"]["zone"] = "other.test"
        kube.apply(
            trunk_manifest(
                ns, fqdn="sbc1.other.test", certificate={"devCA": True},
                publicAddresses=["198.51.100.7"], dns=spec,
            )
        )  # fmt: skip
        eventually(lambda: a(other, "sbc1.other.test") == {"198.51.100.7"}, "new zone", operator)
        eventually(
            lambda: kube.status("teamstrunk", "sbc1")["dns"]["names"] == ["sbc1.other.test"],
            "the names in status",
            operator,
        )
        kube.wait_condition("teamstrunk", "sbc1", "DNSReady", proc=operator.proc)
        # The old server cannot be reached through the new settings: its record stays, told.
        assert a(named, "sbc1.sbc.test") == {"198.51.100.7"}
        left = kube.wait_event("sbc1", "DNSRecordsLeft", operator.proc)
        assert "sbc1.sbc.test" in left["message"]
    finally:
        other.stop()


def test_external_dns_mode_keeps_a_dns_endpoint(kube: Kube, operator: Operator) -> None:
    """external-dns does not run here: the test plays it by writing the DNSEndpoint's status."""
    ns = kube.namespace
    spec = {
        "certificate": {"devCA": True},
        "publicAddresses": ["198.51.100.7", "2001:db8::7"],
        "dns": {"externalDNS": {"ttl": 120}},
    }
    kube.apply(trunk_manifest(ns, **spec), tenant_manifest(ns, "contoso"))
    cond = kube.wait_condition(
        "teamstrunk", "sbc1", "DNSReady", "False", reason="WaitingForExternalDNS",
        proc=operator.proc,
    )  # fmt: skip
    assert "--source=crd" in cond["message"]
    endpoint = kube.must("dnsendpoint", "sbc1-sbc")
    assert endpoint["metadata"]["ownerReferences"][0]["name"] == "sbc1"
    assert sorted(
        (e["dnsName"], e["recordType"], tuple(e["targets"]), e["recordTTL"])
        for e in endpoint["spec"]["endpoints"]
    ) == [
        ("contoso.sbc1.sbc.test", "A", ("198.51.100.7",), 120),
        ("contoso.sbc1.sbc.test", "AAAA", ("2001:db8::7",), 120),
        ("sbc1.sbc.test", "A", ("198.51.100.7",), 120),
        ("sbc1.sbc.test", "AAAA", ("2001:db8::7",), 120),
    ]  # fmt: skip

    # external-dns publishes and says so; a new tenant waits for its next round.
    generation = endpoint["metadata"]["generation"]
    kube.patch_status("dnsendpoint", "sbc1-sbc", {"observedGeneration": generation})
    kube.wait_condition(
        "teamstrunk", "sbc1", "DNSReady", reason="EndpointsPublished", proc=operator.proc
    )
    kube.wait_condition("teamstenant", "contoso", "DNSReady", proc=operator.proc)
    kube.apply(tenant_manifest(ns, "fabrikam"))
    kube.wait_condition(
        "teamstenant", "fabrikam", "DNSReady", "False", reason="WaitingForExternalDNS",
        proc=operator.proc,
    )  # fmt: skip
    endpoint = kube.must("dnsendpoint", "sbc1-sbc")
    assert "fabrikam.sbc1.sbc.test" in {e["dnsName"] for e in endpoint["spec"]["endpoints"]}
    kube.patch_status(
        "dnsendpoint", "sbc1-sbc", {"observedGeneration": endpoint["metadata"]["generation"]}
    )
    kube.wait_condition("teamstenant", "fabrikam", "DNSReady", proc=operator.proc)

    # Back to no DNS management: the DNSEndpoint goes (external-dns then removes the records).
    kube.apply(trunk_manifest(ns, certificate={"devCA": True}, publicAddresses=["198.51.100.7"]))
    eventually(lambda: kube.get("dnsendpoint", "sbc1-sbc") is None, "DNSEndpoint gone", operator)
    kube.wait_condition("teamstrunk", "sbc1", "DNSReady", reason="NotManaged", proc=operator.proc)
