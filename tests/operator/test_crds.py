"""The CRDs as a user meets them: kubectl against the real API server accepts good TeamsTrunks and
TeamsTenants with their defaults filled in, and refuses bad ones with a message naming the field
and the rule. No operator runs here: this is the schema alone (OpenAPI v3 and CEL)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.testbed.kube import CommandFailed, KubeCluster

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "deploy" / "crds"
GROUP, VERSION = "sbc.teams-sbc.io", "v1alpha1"


def trunk(namespace: str, name: str = "sbc1", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "fqdn": "sbc1.sbc.test",
        "carrier": {"address": "192.0.2.10"},
        "certificate": {"secretName": "sbc1-tls"},
    }
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TeamsTrunk",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def tenant(namespace: str, name: str = "contoso", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"trunk": "sbc1", "subdomain": name}
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TeamsTenant",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def apply(cluster: KubeCluster, manifest: dict[str, Any], *extra: str) -> str:
    return cluster.kubectl("apply", *extra, "-f", "-", input=yaml.safe_dump(manifest)).stdout


def refused(cluster: KubeCluster, manifest: dict[str, Any]) -> str:
    """Apply (as a server-side dry run, which runs every validation) and return the refusal."""
    with pytest.raises(CommandFailed) as failure:
        apply(cluster, manifest, "--dry-run=server")
    return str(failure.value.stderr)


def get(cluster: KubeCluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
    return dict(json.loads(out))


@pytest.fixture
def ns(kube_namespace: str) -> str:
    """A fresh namespace (the shorter name keeps the tests readable)."""
    return kube_namespace


# -- TeamsTrunk ------------------------------------------------------------------------------


def test_good_trunk_is_stored_with_its_defaults(kube_cluster: KubeCluster, ns: str) -> None:
    dns = {
        "rfc2136": {
            "server": "127.0.0.1",
            "zone": "sbc.test",
            "tsigKeyName": "sbc-key",
            "tsigSecretRef": {"name": "tsig"},
        }
    }
    manifest = trunk(
        ns,
        publicAddresses=["198.51.100.7", "2001:db8::7"],
        dns=dns,
        certificate={"issuerRef": {"name": "letsencrypt"}},
    )
    apply(kube_cluster, manifest)
    spec = get(kube_cluster, ns, "teamstrunk", "sbc1")["spec"]
    assert spec["cloud"] == "commercial"
    assert spec["carrier"] == {"address": "192.0.2.10", "transport": "udp"}
    assert spec["certificate"]["issuerRef"] == {
        "name": "letsencrypt",
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    assert spec["dns"]["rfc2136"] == {
        **dns["rfc2136"],
        "port": 53,
        "tsigAlgorithm": "hmac-sha256",
        "tsigSecretRef": {"name": "tsig", "key": "secret"},
        "ttl": 300,
    }
    assert spec["media"] == {"portMin": 30000, "portMax": 40000}
    assert spec["sbc"] == {
        "replicas": 2,
        "teamsPort": 5061,
        "carrierPort": 5060,
        "hostNetwork": False,
        "workers": 1,
        "service": {"type": "LoadBalancer"},
    }


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"fqdn": "sbc.contoso.onmicrosoft.com"}, "spec.fqdn", "onmicrosoft.com"),
        ({"fqdn": "sbc1"}, "spec.fqdn", "should match"),
        ({"fqdn": "a" * 64 + ".example.com"}, "spec.fqdn", "should match"),
        ({"cloud": "china"}, "spec.cloud", "supported values"),
        ({"publicAddresses": ["198.51.100.300"]}, "spec.publicAddresses[0]", "IPv4 or IPv6"),
        ({"publicAddresses": ["sbc.example.com"]}, "spec.publicAddresses[0]", "IPv4 or IPv6"),
        (
            {"carrier": {"address": "carrier example", "transport": "tcp"}},
            "spec.carrier.address",
            "IP address or a host name",
        ),
        ({"carrier": {"address": "192.0.2.1", "port": 70000}}, "spec.carrier.port", "65535"),
        (
            {"certificate": {"devCA": True, "issuerRef": {"name": "le"}}},
            "spec.certificate",
            "choose one certificate source",
        ),
        (
            {"certificate": {"issuerRef": {"name": "le", "kind": "Vault"}}},
            "spec.certificate.issuerRef.kind",
            "supported values",
        ),
        ({"media": {"portMin": 40000, "portMax": 30000}}, "spec.media", "lower than"),
        ({"media": {"portMin": 80, "portMax": 3000}}, "spec.media.portMin", "1024"),
        (
            {
                "carrier": {"address": "192.0.2.1", "transport": "tls"},
                "sbc": {"carrierPort": 5061},
            },
            "spec.sbc.carrierPort",
            "must differ from spec.sbc.teamsPort",
        ),
        ({"sbc": {"replicas": 0}}, "spec.sbc.replicas", "greater than or equal to 1"),
        ({"sbc": {"workers": 0}}, "spec.sbc.workers", "greater than or equal to 1"),
        ({"sbc": {"workers": 17}}, "spec.sbc.workers", "less than or equal to 16"),
        ({"sbc": {"workers": "x"}}, "spec.sbc.workers", "must be of type integer"),
        (
            {
                "dns": {
                    "rfc2136": {
                        "server": "127.0.0.1",
                        "zone": "other.test",
                        "tsigKeyName": "k",
                        "tsigSecretRef": {"name": "s"},
                    }
                }
            },
            "spec.dns.rfc2136.zone",
            "parent domains",
        ),
        (
            {"dns": {"rfc2136": {"server": "127.0.0.1", "zone": "sbc.test"}}},
            "spec.dns.rfc2136.tsigKeyName",
            "Required value",
        ),
        ({"policies": {"Ring_Back": {}}}, "spec.policies", "policy names are DNS labels"),
        ({"policies": {"rb": {"refer": "drop"}}}, "spec.policies.rb.refer", "supported values"),
        (
            {"policies": {"rb": {"numbers": {"countryCode": "+49"}}}},
            "spec.policies.rb.numbers.countryCode",
            "should match",
        ),
        ({"teams": {"allowSources": ["52.112.0.0/33"]}}, "spec.teams.allowSources[0]", "CIDR"),
        (
            {"teams": {"proxies": [{"name": "sip.pstnhub.microsoft.com", "address": "sip"}]}},
            "spec.teams.proxies[0].address",
            "IP address",
        ),
        ({"teams": {"unknownTenantStatus": 500}}, "spec.teams.unknownTenantStatus", "supported"),
    ],
)
def test_bad_trunk_is_refused_with_the_field_and_the_rule(
    kube_cluster: KubeCluster, ns: str, change: dict[str, Any], field: str, words: str
) -> None:
    message = refused(kube_cluster, trunk(ns, "bad", **change))
    lines = [line for line in message.splitlines() if field + ":" in line]
    assert lines, f"no complaint about {field} in:\n{message}"
    assert any(words in line for line in lines), message


@pytest.mark.parametrize("name", ["sbc.one", "1sbc", "s" * 60])
def test_trunk_name_must_fit_its_service_name(
    kube_cluster: KubeCluster, ns: str, name: str
) -> None:
    message = refused(kube_cluster, trunk(ns, name))
    assert "metadata.name: a TeamsTrunk's name must be a DNS label" in message


def test_trunk_without_certificate_or_carrier_is_refused(
    kube_cluster: KubeCluster, ns: str
) -> None:
    manifest = trunk(ns, "bad")
    del manifest["spec"]["certificate"], manifest["spec"]["carrier"]
    message = refused(kube_cluster, manifest)
    assert "spec.certificate: Required value" in message
    assert "spec.carrier: Required value" in message


def test_status_is_a_subresource_with_a_schema(kube_cluster: KubeCluster, ns: str) -> None:
    apply(kube_cluster, trunk(ns))
    # Written with the main resource, status is dropped (the status subresource owns it) ...
    kube_cluster.kubectl(
        "patch", "teamstrunk", "sbc1", "-n", ns, "--type=merge",
        "-p", json.dumps({"status": {"tenants": 3}}),
    )  # fmt: skip
    assert "status" not in get(kube_cluster, ns, "teamstrunk", "sbc1")
    # ... through /status it is stored, and checked: conditions need the conventions' fields.
    good = {
        "type": "Ready",
        "status": "False",
        "reason": "CertificateMissing",
        "message": "no Secret sbc1-tls",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    kube_cluster.kubectl(
        "patch", "teamstrunk", "sbc1", "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"tenants": 3, "conditions": [good]}}),
    )  # fmt: skip
    assert get(kube_cluster, ns, "teamstrunk", "sbc1")["status"]["tenants"] == 3
    bad = {**good, "status": "Maybe"}
    with pytest.raises(CommandFailed) as failure:
        kube_cluster.kubectl(
            "patch", "teamstrunk", "sbc1", "-n", ns, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"conditions": [bad]}}),
        )  # fmt: skip
    assert "status.conditions[0].status" in failure.value.stderr


def test_printer_columns(kube_cluster: KubeCluster, ns: str) -> None:
    apply(kube_cluster, trunk(ns))
    status = {
        "tenants": 2,
        "teamsProxies": "3/3",
        "certificate": {"daysLeft": 87},
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Ready",
                "message": "all in place",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
    }
    kube_cluster.kubectl(
        "patch", "teamstrunk", "sbc1", "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip
    header, row = kube_cluster.kubectl("get", "tstrunk", "-n", ns).stdout.splitlines()
    assert header.split() == [
        "NAME", "FQDN", "CLOUD", "READY", "TENANTS", "CERT-DAYS", "TEAMS-UP", "AGE",
    ]  # fmt: skip
    assert row.split()[:7] == ["sbc1", "sbc1.sbc.test", "commercial", "True", "2", "87", "3/3"]
    wide = kube_cluster.kubectl("get", "teamstrunks", "-n", ns, "-o", "wide").stdout
    assert wide.splitlines()[0].split()[-2:] == ["REASON", "AGE"]

    apply(kube_cluster, tenant(ns))
    header = kube_cluster.kubectl("get", "tstenant", "-n", ns).stdout.splitlines()[0]
    assert header.split() == ["NAME", "FQDN", "TRUNK", "READY", "AGE"]


def test_every_spec_field_is_described() -> None:
    """`kubectl explain` is a user's manual: no field of a spec without a description."""

    def undescribed(schema: dict[str, Any], path: str) -> Iterator[str]:
        if "description" not in schema:
            yield path
        for key, sub in schema.get("properties", {}).items():
            yield from undescribed(sub, f"{path}.{key}")
        if "items" in schema and schema["items"].get("type") == "object":
            yield from undescribed_fields(schema["items"], f"{path}[]")

    def undescribed_fields(schema: dict[str, Any], path: str) -> Iterator[str]:
        for key, sub in schema.get("properties", {}).items():
            yield from undescribed(sub, f"{path}.{key}")

    missing = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        # Tolerations copy a pod's fields, documented by Kubernetes itself.
        missing += [
            f"{crd['spec']['names']['kind']}{p}"
            for p in undescribed(spec, ".spec")
            if ".tolerations[]." not in p
        ]
    assert missing == []


def test_kubectl_explain_shows_the_descriptions(kube_cluster: KubeCluster) -> None:
    out = kube_cluster.kubectl("explain", "teamstrunk.spec.dns.rfc2136").stdout
    assert "TSIG" in out and "tsigSecretRef" in out and "_teams-sbc-owner" in out


# -- TeamsTenant -----------------------------------------------------------------------------


def test_good_tenant_with_numbers_and_ranges(kube_cluster: KubeCluster, ns: str) -> None:
    ranges = [
        {"from": "+4930123000", "to": "+4930123999"},
        {"from": "+4930124000", "to": "+4930124999"},
        {"from": "+14255550100", "to": "+14255550100"},
    ]
    apply(kube_cluster, tenant(ns, numbers=["+4930", "+1425"], numberRanges=ranges))
    assert get(kube_cluster, ns, "teamstenant", "contoso")["spec"]["numberRanges"] == ranges


RANGE = {"from": "+4930123000", "to": "+4930123999"}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"subdomain": "Contoso"}, "spec.subdomain", "should match"),
        ({"subdomain": "con.toso"}, "spec.subdomain", "should match"),
        ({"subdomain": "-contoso"}, "spec.subdomain", "should match"),
        ({"subdomain": "c" * 64}, "spec.subdomain", "more than 63"),
        ({"numbers": ["+0301"]}, "spec.numbers[0]", "should match"),
        ({"numbers": ["+4930", "+4930"]}, "spec.numbers[1]", "Duplicate value"),
        (
            {"numberRanges": [RANGE, {"from": "+4930123500", "to": "+4930124999"}]},
            "spec.numberRanges",
            "overlap",
        ),
        ({"numberRanges": [RANGE, RANGE]}, "spec.numberRanges", "overlap"),
        (
            {"numberRanges": [{"from": "+49301", "to": "+493012"}]},
            "spec.numberRanges[0]",
            "same number of digits",
        ),
        (
            {"numberRanges": [{"from": "+4940999", "to": "+4940000"}]},
            "spec.numberRanges[0]",
            "must not be above",
        ),
        ({"numberRanges": [{"from": "+4940999"}]}, "spec.numberRanges[0].to", "Required value"),
    ],
)
def test_bad_tenant_is_refused_with_the_field_and_the_rule(
    kube_cluster: KubeCluster, ns: str, change: dict[str, Any], field: str, words: str
) -> None:
    manifest = tenant(ns, "bad")
    manifest["spec"].update(copy.deepcopy(change))
    message = refused(kube_cluster, manifest)
    lines = [line for line in message.splitlines() if field + ":" in line]
    assert lines, f"no complaint about {field} in:\n{message}"
    assert any(words in line for line in lines), message
