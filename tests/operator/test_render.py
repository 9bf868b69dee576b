"""The pure renderers: spec in, objects out, no cluster. The SBC config they render is checked
with the SBC's own parser (teams_sbc.config.parse_config), so the operator and the SBC cannot
disagree about the format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from teams_sbc.config import parse_config
from teams_sbc.reload import restart_digest, restart_reasons
from teams_sbc_operator.model import Tenant, Trunk
from teams_sbc_operator.render import certificate, workload
from teams_sbc_operator.render.sbc_config import config_yaml, render_sbc_config
from teams_sbc_operator.render.tenants import plan_tenants

NS = "carrier"


def trunk(**spec: Any) -> Trunk:
    body: dict[str, Any] = {
        "fqdn": "sbc1.sbc.test",
        "carrier": {"address": "192.0.2.10", "port": 5060, "transport": "udp"},
        "certificate": {"secretName": "sbc1-tls"},
        "sbc": {"replicas": 2, "teamsPort": 5061, "carrierPort": 5060},
    }
    body.update(spec)
    return Trunk.from_body(
        {"metadata": {"name": "sbc1", "namespace": NS, "uid": "u-1", "generation": 3}, "spec": body}
    )


def tenant(name: str, created: str = "2026-01-01T00:00:00Z", **spec: Any) -> Tenant:
    body = {"trunk": "sbc1", "subdomain": name, **spec}
    return Tenant.from_body(
        {"metadata": {"name": name, "namespace": NS, "creationTimestamp": created}, "spec": body}
    )


TENANTS = [
    tenant("contoso", numbers=["+4930"], numberRanges=[{"from": "+4940100", "to": "+4940199"}]),
    tenant("fabrikam", policy="ringback", numbers=["+4989"]),
]
POLICIES = {"ringback": {"earlyMedia183To180": True, "numbers": {"countryCode": "49"}}}


# -- the SBC config ------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_rendered_config_is_what_the_sbc_reads(transport: str) -> None:
    t = trunk(
        carrier={"address": "2001:db8::10", "transport": transport},
        policies=POLICIES,
        sbc={"carrierPort": 5080, "teamsPort": 5061},
    )
    config = render_sbc_config(t, plan_tenants(t.fqdn, TENANTS, t.policies.keys()), "10.0.0.12")
    parsed = parse_config(yaml.safe_load(config_yaml(config)), source="rendered")
    teams_listener, carrier = parsed.listeners
    assert (teams_listener.transport, teams_listener.port) == ("tls", 5061)
    assert teams_listener.advertised_host == "sbc1.sbc.test"
    assert teams_listener.tls is not None and teams_listener.tls.verify_peer
    assert teams_listener.tls.cert_file == "/etc/teams-sbc/tls/tls.crt"
    assert (carrier.transport, carrier.port, carrier.advertised_host) == (
        transport,
        5080,
        "10.0.0.12",
    )
    assert parsed.teams is not None
    default_port = 5061 if transport == "tls" else 5060
    assert parsed.teams.carrier.next_hop == (
        f"sip:[2001:db8::10]:{default_port};transport={transport}"
    )
    assert [(x.name, x.fqdn_under(parsed.teams.fqdn), x.numbers, x.policy)
            for x in parsed.teams.tenants] == [
        ("contoso", "contoso.sbc1.sbc.test", ["+4930", "+4940100-+4940199"], "default"),
        ("fabrikam", "fabrikam.sbc1.sbc.test", ["+4989"], "ringback"),
    ]  # fmt: skip
    ringback = parsed.teams.policy("ringback")
    assert ringback.early_media_183_to_180 and ringback.numbers.country_code == "49"
    assert parsed.teams.microsoft_proxies()[0].name == "sip.pstnhub.microsoft.com"


def test_proxies_allow_list_and_cloud_reach_the_config() -> None:
    t = trunk(
        cloud="gcch",
        teams={
            "proxies": [{"name": "sip.pstnhub.gov.teams.microsoft.us", "address": "127.0.0.1",
                         "port": 15061}],
            "allowSources": [],
            "tenantHeader": "X-Tenant",
            "unknownTenantStatus": 403,
        },
    )  # fmt: skip
    parsed = parse_config(render_sbc_config(t, [], None))
    assert parsed.teams is not None
    (proxy,) = parsed.teams.microsoft_proxies()
    assert (proxy.name, proxy.address, proxy.port) == (
        "sip.pstnhub.gov.teams.microsoft.us", "127.0.0.1", 15061
    )  # fmt: skip
    assert parsed.teams.source_networks() == ()
    assert (parsed.teams.tenant_header, parsed.teams.unknown_tenant_status) == ("X-Tenant", 403)
    assert parsed.teams.cloud == "gcch"
    assert parsed.listeners[1].advertise is None  # no cluster IP known, none given


def test_the_config_text_is_stable() -> None:
    t = trunk(policies=POLICIES)
    plans = plan_tenants(t.fqdn, TENANTS, t.policies.keys())
    one = config_yaml(render_sbc_config(t, plans, "10.0.0.12"))
    two = config_yaml(render_sbc_config(t, list(reversed(plans)), "10.0.0.12"))
    assert one == two


def test_workers_reach_the_config_only_when_more_than_one() -> None:
    one = render_sbc_config(trunk(), [], None)
    assert "workers" not in one and parse_config(one).workers == 1
    three = render_sbc_config(trunk(sbc={"workers": 3}), [], None)
    assert three["workers"] == 3
    assert parse_config(yaml.safe_load(config_yaml(three)), source="rendered").workers == 3


# -- tenants -----------------------------------------------------------------------------------


def test_conflicts_go_to_the_younger_tenant() -> None:
    older = tenant("contoso", "2026-01-01T00:00:00Z", numbers=["+4930", "+4940"],
                   numberRanges=[{"from": "+4950100", "to": "+4950199"}])  # fmt: skip
    same_label = tenant("contoso-2", "2026-01-02T00:00:00Z", subdomain="contoso")
    overlapping = tenant("fabrikam", "2026-01-03T00:00:00Z", numbers=["+4930", "+4989"],
                         numberRanges=[{"from": "+4950150", "to": "+4950250"}])  # fmt: skip
    unknown_policy = tenant("tailspin", "2026-01-04T00:00:00Z", policy="gold")
    long_label = tenant("x" * 63, "2026-01-05T00:00:00Z")
    plans = plan_tenants("sbc1.sbc.test",
                         [overlapping, same_label, older, unknown_policy, long_label])  # fmt: skip
    by_name = {p.tenant.name: p for p in plans}
    assert by_name["contoso"].problem is None
    assert by_name["contoso-2"].problem is not None
    assert by_name["contoso-2"].problem[0] == "SubdomainConflict"
    assert "'contoso'" in by_name["contoso-2"].problem[1] and not by_name["contoso-2"].served
    fab = by_name["fabrikam"]
    assert fab.problem is not None and fab.problem[0] == "NumbersConflict" and fab.served
    assert "+4930 (contoso)" in fab.problem[1] and "+4950100..+4950199 (contoso)" in fab.problem[1]
    assert fab.numbers == ("+4989",) and fab.ranges == ()
    assert by_name["tailspin"].problem is not None
    assert by_name["tailspin"].problem[0] == "PolicyNotFound"
    assert by_name["x" * 63].problem is None


def test_a_name_too_long_for_dns_is_refused() -> None:
    base = ".".join(["a" * 62] * 3) + ".test"  # 193 characters: with 64 more, over 253
    (plan,) = plan_tenants(base, [tenant("t" * 63)])
    assert plan.problem is not None and plan.problem[0] == "FQDNTooLong" and not plan.served


def test_deleting_tenants_are_not_planned() -> None:
    gone = Tenant.from_body(
        {"metadata": {"name": "old", "namespace": NS, "deletionTimestamp": "2026-01-01T00:00:00Z"},
         "spec": {"trunk": "sbc1", "subdomain": "old"}}
    )  # fmt: skip
    assert plan_tenants("sbc1.sbc.test", [gone]) == []


# -- the objects -------------------------------------------------------------------------------


def test_deployment_has_the_sbc_and_rtpengine_probes_drain_and_mounts() -> None:
    t = trunk(media={"portMin": 31000, "portMax": 31999})
    d = workload.deployment(t, sbc_image="sbc:1", rtpengine_image="rtp:1")
    assert d["metadata"]["ownerReferences"] == [
        {"apiVersion": "sbc.teams-sbc.io/v1alpha1", "kind": "TeamsTrunk", "name": "sbc1",
         "uid": "u-1", "controller": True, "blockOwnerDeletion": True}
    ]  # fmt: skip
    pod = d["spec"]["template"]["spec"]
    sbc, rtp = pod["containers"]
    assert (sbc["name"], sbc["image"], rtp["name"], rtp["image"]) == (
        "teams-sbc", "sbc:1", "rtpengine", "rtp:1"
    )  # fmt: skip
    assert sbc["args"] == ["run", "--config", "/etc/teams-sbc/config/sbc.yaml"]
    assert sbc["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sbc["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sbc["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert pod["terminationGracePeriodSeconds"] > 5 + 32
    assert {v["name"]: v for v in pod["volumes"]} == {
        "config": {"name": "config", "configMap": {"name": "sbc1-sbc-config"}},
        "tls": {"name": "tls", "secret": {"secretName": "sbc1-tls"}},
    }
    assert all("subPath" not in m for m in sbc["volumeMounts"])  # a subPath never updates
    assert "--port-min=31000" in rtp["args"] and "--port-max=31999" in rtp["args"]
    assert "annotations" not in d["spec"]["template"]["metadata"]  # no config hash: no restarts
    assert d["spec"]["replicas"] == 2


def test_several_workers_get_a_tmp_in_memory_and_an_annotation() -> None:
    d = workload.deployment(trunk(sbc={"workers": 3}), sbc_image="s", rtpengine_image="r")
    template = d["spec"]["template"]
    pod = template["spec"]
    sbc, rtp = pod["containers"]
    assert sbc["securityContext"]["readOnlyRootFilesystem"] is True
    assert {v["name"]: v for v in pod["volumes"]}["tmp"] == {
        "name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}
    }  # fmt: skip
    assert {"name": "tmp", "mountPath": "/tmp"} in sbc["volumeMounts"]
    assert "volumeMounts" not in rtp
    assert template["metadata"]["annotations"] == {"sbc.teams-sbc.io/workers": "3"}
    assert template["metadata"]["labels"]["sbc.teams-sbc.io/trunk"] == "sbc1"


@pytest.mark.parametrize(("before", "after"), [(1, 3), (3, 4), (4, 1)])
def test_a_change_of_workers_changes_the_pod_template(before: int, after: int) -> None:
    """The SBC cannot take ``workers`` over while running: the template changes with the config,
    so the Deployment rolls the pods."""
    old, new = trunk(sbc={"workers": before}), trunk(sbc={"workers": after})
    configs = [parse_config(render_sbc_config(t, [], None)) for t in (old, new)]
    assert restart_reasons(*configs) == ["workers"]
    templates = [
        workload.deployment(t, sbc_image="s", rtpengine_image="r")["spec"]["template"]
        for t in (old, new)
    ]
    assert templates[0] != templates[1]


def test_host_network_rolls_one_pod_at_a_time() -> None:
    d = workload.deployment(trunk(sbc={"hostNetwork": True}), sbc_image="s", rtpengine_image="r")
    assert d["spec"]["template"]["spec"]["hostNetwork"] is True
    assert d["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}


def test_service_and_pdb() -> None:
    t = trunk(carrier={"address": "192.0.2.10", "transport": "tcp"},
              sbc={"service": {"type": "LoadBalancer", "annotations": {"lb": "x"}}})  # fmt: skip
    svc = workload.service(t)
    assert [(p["name"], p["port"], p["protocol"]) for p in svc["spec"]["ports"]] == [
        ("sip-teams", 5061, "TCP"), ("sip-carrier-tcp", 5060, "TCP"),
    ]  # fmt: skip
    assert svc["spec"]["externalTrafficPolicy"] == "Local"
    assert svc["metadata"]["annotations"] == {"lb": "x"}
    pdb = workload.pod_disruption_budget(t)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]


def test_cert_manager_certificate() -> None:
    t = trunk(certificate={"issuerRef": {"name": "le", "kind": "ClusterIssuer"}})
    c = certificate.cert_manager_certificate(t)
    assert c["apiVersion"] == "cert-manager.io/v1"
    assert c["spec"]["dnsNames"] == ["sbc1.sbc.test", "*.sbc1.sbc.test"]
    assert c["spec"]["commonName"] == "sbc1.sbc.test"
    assert {"server auth", "client auth"} <= set(c["spec"]["usages"])
    assert c["spec"]["issuerRef"] == {"name": "le", "kind": "ClusterIssuer",
                                      "group": "cert-manager.io"}  # fmt: skip
    long = trunk(fqdn="a" * 60 + ".sbc.test", certificate={"issuerRef": {"name": "le"}})
    assert "commonName" not in certificate.cert_manager_certificate(long)["spec"]


def test_the_sbc_knows_its_pod_and_may_annotate_pods_only() -> None:
    """teams_sbc.podstatus needs POD_NAME and POD_NAMESPACE (the downward API) and a Role that
    lets its ServiceAccount get and patch pods in the trunk's namespace, nothing more."""
    t = trunk()
    spec = workload.deployment(t, sbc_image="s", rtpengine_image="r")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "sbc1-sbc"
    sbc = next(c for c in spec["containers"] if c["name"] == "teams-sbc")
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in sbc["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    sa, role, binding = workload.service_account(t), workload.role(t), workload.role_binding(t)
    assert sa["kind"] == "ServiceAccount" and sa["metadata"]["name"] == "sbc1-sbc"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sbc1-sbc",
    }  # fmt: skip
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "sbc1-sbc", "namespace": t.namespace}
    ]
    for obj in (sa, role, binding):
        assert obj["metadata"]["namespace"] == t.namespace
        assert obj["metadata"]["ownerReferences"][0]["kind"] == "TeamsTrunk"


def test_the_operator_holds_every_verb_it_grants_the_sbc() -> None:
    """RBAC lets a subject bind a Role only with verbs it holds itself (escalation check)."""
    text = (Path(__file__).resolve().parents[2] / "helm/teams-sbc/templates/rbac.yaml").read_text()
    # The ClusterRole's rules hold no template directives: the YAML between "rules:" and "---".
    rules = yaml.safe_load("rules:" + text.split("\nrules:", 1)[1].split("\n---")[0])["rules"]
    for granted in workload.SBC_RULES:
        for resource in granted["resources"]:
            held = {
                v for r in rules if resource in r["resources"]
                and set(granted["apiGroups"]) <= set(r["apiGroups"]) for v in r["verbs"]
            }  # fmt: skip
            assert set(granted["verbs"]) <= held, (resource, held)
    kinds = {res for r in rules for res in r["resources"]}
    assert {"serviceaccounts", "roles", "rolebindings"} <= kinds


@pytest.mark.parametrize(
    ("change", "restart"),
    [
        ({"sbc": {"workers": 2}}, True),
        ({"teams": {"allowSources": ["52.112.0.0/14"]}}, True),
        ({"sbc": {"carrierPort": 5070}}, True),
        ({"policies": {"strict": {"refer": "pass"}}}, False),
        ({"carrier": {"address": "192.0.2.11", "port": 5060, "transport": "udp"}}, False),
    ],
)
def test_the_restart_digest_changes_exactly_when_the_sbc_needs_a_restart(
    change: dict[str, Any], restart: bool
) -> None:
    """The pod template's digest (teams_sbc.reload.restart_digest) follows restart_reasons:
    what the SBC reloads in place (policies, the carrier's next hop, tenants) keeps the pods,
    anything else rolls them."""
    configs = [
        parse_config(render_sbc_config(t, [], None)) for t in (trunk(), trunk(**change))
    ]
    assert bool(restart_reasons(*configs)) is restart
    digests = [restart_digest(c) for c in configs]
    assert (digests[0] != digests[1]) is restart
    templates = [
        workload.deployment(
            t, sbc_image="s", rtpengine_image="r", restart_digest=d
        )["spec"]["template"]["metadata"]
        for t, d in zip((trunk(), trunk(**change)), digests, strict=True)
    ]
    assert templates[1]["annotations"]["sbc.teams-sbc.io/restart-config"] == digests[1]
