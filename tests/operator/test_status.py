"""The whole story a carrier sees, on the real API server and bind9: a trunk and two tenants
applied with kubectl become Ready once the SBC pods are (the test plays the kubelet and marks
them ready), `kubectl wait --for=condition=Ready` works, the public address can come from the
Service's load balancer, the operator restarts mid-way, and its metrics count what it did."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.operator.conftest import Kube, Operator, tenant_manifest, trunk_manifest
from tests.operator.test_dns import dns_spec, tsig_secret
from tests.testbed.dns import DnsServer
from tests.testbed.process import wait_until


@pytest.fixture
def named(tmp_path: Path) -> Iterator[DnsServer]:
    server = DnsServer(tmp_path / "named")
    try:
        yield server.start()
    finally:
        server.stop()


def mark_pods_ready(kube: Kube) -> int:
    """What a kubelet would report for pods whose containers passed their readiness probes."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    pods = kube.list("pod", "app.kubernetes.io/instance=sbc1")
    for pod in pods:
        status = {
            "phase": "Running",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": now}
                for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ],
        }
        kube.kubectl(
            "patch", "pod", pod["metadata"]["name"], "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": status}),
        )  # fmt: skip
    return len(pods)


def test_trunk_and_tenants_become_ready(kube: Kube, operator: Operator, named: DnsServer) -> None:
    ns = kube.namespace
    kube.apply(
        tsig_secret(ns, named.key),
        trunk_manifest(
            ns,
            certificate={"devCA": True},
            dns=dns_spec(named),
            sbc={"replicas": 2, "service": {"type": "LoadBalancer"}},
        ),
        tenant_manifest(ns, "contoso", numbers=["+4930"]),
        tenant_manifest(ns, "fabrikam", numbers=["+4989"]),
    )
    # No load balancer has given the Service an address yet.
    cond = kube.wait_condition(
        "teamstrunk", "sbc1", "DNSReady", "False", reason="NoPublicAddress", proc=operator.proc
    )
    assert "spec.publicAddresses" in cond["message"]
    kube.wait_condition("teamstrunk", "sbc1", "ConfigApplied", proc=operator.proc)
    kube.wait_condition("teamstrunk", "sbc1", "CertificateReady", proc=operator.proc)

    # The operator restarts in the middle; nothing is lost or duplicated.
    operator.restart()

    # The load balancer (played by the test) publishes an address on the Service.
    kube.patch_status("service", "sbc1-sbc", {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}})
    kube.wait_condition("teamstrunk", "sbc1", "DNSReady", proc=operator.proc)
    assert named.records_of("sbc1.sbc.test") == {"203.0.113.9"}
    assert named.records_of("fabrikam.sbc1.sbc.test") == {"203.0.113.9"}
    assert kube.status("teamstrunk", "sbc1")["publicAddresses"] == ["203.0.113.9"]

    # The pods: none ready, then the kubelet (played by the test) marks them ready.
    kube.wait_condition("teamstrunk", "sbc1", "SBCAvailable", "False", proc=operator.proc)
    wait_until(lambda: mark_pods_ready(kube) == 2, 30, "two SBC pods", operator.proc)
    cond = kube.wait_condition(
        "teamstrunk", "sbc1", "SBCAvailable", reason="SBCPodsAvailable", proc=operator.proc
    )
    assert cond["message"] == "2 of 2 SBC pods available"

    # Ready, as kubectl wait (and Argo CD, Flux) read it.
    out = kube.kubectl("wait", "--for=condition=Ready", "teamstrunk/sbc1", "--timeout=30s")
    assert "condition met" in out
    out = kube.kubectl("wait", "--for=condition=Ready", "teamstenants", "--all", "--timeout=30s")
    assert out.count("condition met") == 2

    trunk = kube.must("teamstrunk", "sbc1")
    status = trunk["status"]
    assert status["observedGeneration"] == trunk["metadata"]["generation"]
    assert status["tenants"] == 2
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "CertificateReady": "True", "DNSReady": "True", "ConfigApplied": "True",
        "SBCAvailable": "True", "Ready": "True",
        "TeamsReachable": "False",  # no SBC runs in these pods to report Microsoft's state
    }  # fmt: skip
    reachable = kube.condition("teamstrunk", "sbc1", "TeamsReachable") or {}
    assert reachable.get("reason") == "NotReported"
    assert all(c["observedGeneration"] == trunk["metadata"]["generation"]
               for c in status["conditions"])  # fmt: skip
    tenant = kube.status("teamstenant", "contoso")
    assert tenant["fqdn"] == "contoso.sbc1.sbc.test"
    assert {c["type"] for c in tenant["conditions"]} == {
        "Accepted", "TrunkFound", "CertificateReady", "DNSReady", "Ready",
    }  # fmt: skip
    row = kube.kubectl("get", "tstenant", "contoso", "--no-headers").split()
    assert row[:4] == ["contoso", "contoso.sbc1.sbc.test", "sbc1", "True"]

    # A spec change: observedGeneration follows. (One the SBC reloads in place, a policy, so
    # the pods stay; a change that needs a restart, such as the cloud, rolls them:
    # test_workload.py.)
    kube.apply(
        trunk_manifest(
            ns, certificate={"devCA": True}, dns=dns_spec(named),
            sbc={"replicas": 2, "service": {"type": "LoadBalancer"}},
            policies={"strict": {"refer": "pass"}},
        )
    )  # fmt: skip
    generation = kube.must("teamstrunk", "sbc1")["metadata"]["generation"]
    wait_until(
        lambda: kube.status("teamstrunk", "sbc1").get("observedGeneration") == generation,
        30, "observedGeneration", operator.proc, interval=0.2,
    )  # fmt: skip

    # One pod stops being ready (the test plays the kubelet again): still available, partly.
    pod = kube.list("pod", "app.kubernetes.io/instance=sbc1")[0]["metadata"]["name"]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    kube.kubectl(
        "patch", "pod", pod, "--subresource=status", "--type=json", "-p",
        json.dumps([{"op": "replace", "path": "/status/conditions/3",
                     "value": {"type": "Ready", "status": "False", "lastTransitionTime": now}}]),
    )  # fmt: skip
    cond = kube.wait_condition(
        "teamstrunk", "sbc1", "SBCAvailable", reason="SBCPodsPartlyAvailable", proc=operator.proc
    )
    assert cond["message"] == "1 of 2 SBC pods available"

    metrics = operator.metrics()
    assert metrics['teams_sbc_operator_reconciliations_total{result="ok"}'] >= 1
    assert metrics["teams_sbc_operator_reconcile_duration_seconds_count"] >= 1
    assert (
        metrics[f'teams_sbc_operator_trunk_condition{{namespace="{ns}",trunk="sbc1",type="Ready"}}']
        == 1
    )
    assert metrics[f'teams_sbc_operator_tenants{{namespace="{ns}",trunk="sbc1"}}'] == 2
    assert metrics['teams_sbc_operator_dns_updates_total{operation="ensure",result="done"}'] >= 3


def test_a_tenant_of_a_bad_spec_says_what_to_do(kube: Kube, operator: Operator) -> None:
    ns = kube.namespace
    kube.apply(
        trunk_manifest(ns, certificate={"devCA": True}, publicAddresses=["198.51.100.7"]),
        tenant_manifest(ns, "contoso", numbers=["+4930"]),
        tenant_manifest(ns, "contoso-eu", subdomain="contoso"),
        tenant_manifest(ns, "fabrikam", numbers=["+4930", "+4989"]),
        tenant_manifest(ns, "tailspin", policy="gold"),
    )
    dup = kube.wait_condition(
        "teamstenant", "contoso-eu", "Ready", "False", reason="SubdomainConflict",
        proc=operator.proc,
    )  # fmt: skip
    assert "'contoso'" in dup["message"] and "choose another" in dup["message"]
    numbers = kube.wait_condition(
        "teamstenant", "fabrikam", "Accepted", "False", reason="NumbersConflict",
        proc=operator.proc,
    )  # fmt: skip
    assert "+4930 (contoso)" in numbers["message"]
    policy = kube.wait_condition(
        "teamstenant", "tailspin", "Accepted", "False", reason="PolicyNotFound",
        proc=operator.proc,
    )  # fmt: skip
    assert "spec.policies" in policy["message"]
    kube.wait_event("contoso-eu", "SubdomainConflict", operator.proc)
