"""The operator against the real API server: a TeamsTenant learns its FQDN from its TeamsTrunk,
and says so in its status; a tenant whose trunk is missing says that, and recovers when the
trunk appears."""

from __future__ import annotations

import datetime
import json
from typing import Any

import yaml

from teams_sbc_operator.render import merge_conditions, tenant_fqdn, tenant_status
from tests.operator.conftest import Operator
from tests.testbed.kube import KubeCluster
from tests.testbed.process import wait_until

GROUP, VERSION = "sbc.teams-sbc.io", "v1alpha1"


# -- the pure renderers --------------------------------------------------------------------------


def test_tenant_fqdn_is_one_label_under_the_trunk() -> None:
    assert tenant_fqdn("contoso", "sbc.carrier.example") == "contoso.sbc.carrier.example"


def test_condition_keeps_its_transition_time_while_status_holds() -> None:
    t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    t1 = t0 + datetime.timedelta(hours=1)
    spec = {"trunk": "t", "subdomain": "a"}
    first = tenant_status(
        spec=spec, generation=1, trunk_fqdn="x.example", old_conditions=[], now=t0
    )
    again = tenant_status(
        spec=spec, generation=2, trunk_fqdn="x.example", old_conditions=first["conditions"], now=t1
    )
    assert again["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert again["conditions"][0]["observedGeneration"] == 2
    lost = tenant_status(
        spec=spec, generation=3, trunk_fqdn=None, old_conditions=again["conditions"], now=t1
    )
    assert lost["conditions"] == merge_conditions([], lost["conditions"][0])
    assert lost["conditions"][0]["status"] == "False"
    assert lost["conditions"][0]["lastTransitionTime"] == "2026-01-01T01:00:00Z"
    assert "fqdn" not in lost


# -- the operator process ----------------------------------------------------------------------


def _apply(cluster: KubeCluster, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))


def _status(cluster: KubeCluster, namespace: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "teamstenant", name, "-n", namespace, "-o", "json").stdout
    return dict(json.loads(out).get("status") or {})


def _tenant(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TeamsTenant",
        "metadata": {"name": "contoso", "namespace": namespace},
        "spec": {"trunk": "sbc1", "subdomain": "contoso", "numbers": ["+4930"]},
    }


def _trunk(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TeamsTrunk",
        "metadata": {"name": "sbc1", "namespace": namespace},
        "spec": {
            "fqdn": "sbc1.carrier.example",
            "carrier": {"address": "192.0.2.10", "port": 5060, "transport": "udp"},
            "certificate": {"secretName": "sbc1-tls"},
        },
    }


def test_tenant_reports_missing_trunk_then_its_fqdn(
    kube_cluster: KubeCluster, kube_namespace: str, operator: Operator
) -> None:
    _apply(kube_cluster, _tenant(kube_namespace))

    def trunk_missing_reported() -> bool:
        conditions = _status(kube_cluster, kube_namespace, "contoso").get("conditions", [])
        return any(c["type"] == "TrunkFound" and c["status"] == "False" for c in conditions)

    wait_until(trunk_missing_reported, 30, "TrunkFound=False on the tenant", operator.proc)

    _apply(kube_cluster, _trunk(kube_namespace))

    def fqdn_reported() -> bool:
        return _status(kube_cluster, kube_namespace, "contoso").get("fqdn") is not None

    wait_until(fqdn_reported, 40, "the tenant's FQDN in its status", operator.proc)
    status = _status(kube_cluster, kube_namespace, "contoso")
    assert status["fqdn"] == "contoso.sbc1.carrier.example"
    (found,) = [c for c in status["conditions"] if c["type"] == "TrunkFound"]
    assert found["status"] == "True"
    assert status["observedGeneration"] == 1
