"""The SBC's objects on the real API server: applied server-side under one field manager, owned
by the trunk, their config valid for the SBC, drift corrected, nothing written again after an
operator restart, tenant changes reaching the ConfigMap without a new ReplicaSet, and the
garbage collector (kube-controller-manager) removing them with the trunk."""

from __future__ import annotations

import json
import time
from typing import Any

import yaml

from teams_sbc.config import parse_config
from teams_sbc.reload import restart_digest
from tests.operator.conftest import Kube, Operator, tenant_manifest, trunk_manifest
from tests.testbed.process import wait_until

OWNED = [
    ("configmap", "sbc1-sbc-config"),
    ("deployment", "sbc1-sbc"),
    ("service", "sbc1-sbc"),
    ("poddisruptionbudget", "sbc1-sbc"),
    ("secret", "sbc1-tls"),
    ("secret", "sbc1-dev-ca"),
]


def sbc_config(kube: Kube) -> Any:
    text = kube.must("configmap", "sbc1-sbc-config")["data"]["sbc.yaml"]
    return parse_config(yaml.safe_load(text), source="the ConfigMap")


def start(kube: Kube, operator: Operator, *tenants: str) -> None:
    ns = kube.namespace
    kube.apply(
        trunk_manifest(ns, certificate={"devCA": True}, publicAddresses=["198.51.100.7"]),
        *(tenant_manifest(ns, t, numbers=[f"+49{30 + i}"]) for i, t in enumerate(tenants)),
    )
    kube.wait_condition("teamstrunk", "sbc1", "ConfigApplied", proc=operator.proc)


def test_objects_are_applied_owned_and_hold_a_valid_config(kube: Kube, operator: Operator) -> None:
    start(kube, operator, "contoso", "fabrikam")
    uid = kube.must("teamstrunk", "sbc1")["metadata"]["uid"]
    for kind, name in OWNED:
        obj = json.loads(kube.kubectl("get", kind, name, "-o", "json", "--show-managed-fields"))
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "TeamsTrunk", "sbc1", uid, True
        )  # fmt: skip
        managers = {(m["manager"], m["operation"]) for m in obj["metadata"]["managedFields"]}
        assert ("teams-sbc-operator", "Apply") in managers, (kind, managers)
        assert obj["metadata"]["labels"]["sbc.teams-sbc.io/trunk"] == "sbc1"

    config = sbc_config(kube)
    service = kube.must("service", "sbc1-sbc")
    assert config.teams.fqdn == "sbc1.sbc.test"
    assert [(t.name, t.numbers) for t in config.teams.tenants] == [
        ("contoso", ["+4930"]), ("fabrikam", ["+4931"]),
    ]  # fmt: skip
    carrier = config.listeners[1]
    assert carrier.advertised_host == service["spec"]["clusterIP"]
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [
        ("sip-teams", 5061), ("sip-carrier-udp", 5060),
    ]  # fmt: skip

    deployment = kube.must("deployment", "sbc1-sbc")
    pod = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["teams-sbc", "rtpengine"]
    assert pod["containers"][0]["image"] == "teams-sbc:test"
    # No kubelet runs here: the pods exist but none is ready, and the trunk says so.
    cond = kube.wait_condition(
        "teamstrunk", "sbc1", "SBCAvailable", "False", reason="NoSBCPodAvailable",
        proc=operator.proc,
    )  # fmt: skip
    assert "0 of 2" in cond["message"]
    assert kube.condition("teamstrunk", "sbc1", "Ready")["status"] == "False"  # type: ignore[index]


def test_drift_is_corrected(kube: Kube, operator: Operator) -> None:
    start(kube, operator, "contoso")
    original = kube.must("configmap", "sbc1-sbc-config")["data"]["sbc.yaml"]
    kube.kubectl("patch", "configmap", "sbc1-sbc-config", "--type=merge",
                 "-p", '{"data": {"sbc.yaml": "listeners: []\\n"}}')  # fmt: skip
    wait_until(
        lambda: kube.must("configmap", "sbc1-sbc-config")["data"]["sbc.yaml"] == original,
        30, "the ConfigMap restored", operator.proc, interval=0.2,
    )  # fmt: skip

    old_uid = kube.must("service", "sbc1-sbc")["metadata"]["uid"]
    kube.delete("service", "sbc1-sbc", wait=True)
    wait_until(
        lambda: (kube.get("service", "sbc1-sbc") or {"metadata": {"uid": old_uid}})["metadata"][
            "uid"
        ]
        != old_uid,
        30, "the Service back", operator.proc, interval=0.2,
    )  # fmt: skip

    kube.kubectl("scale", "deployment", "sbc1-sbc", "--replicas=5")
    wait_until(
        lambda: kube.must("deployment", "sbc1-sbc")["spec"]["replicas"] == 2,
        30, "replicas back to spec.sbc.replicas", operator.proc, interval=0.2,
    )  # fmt: skip

    kube.delete("poddisruptionbudget", "sbc1-sbc", wait=True)
    wait_until(
        lambda: kube.get("poddisruptionbudget", "sbc1-sbc") is not None,
        30, "the PodDisruptionBudget back", operator.proc, interval=0.2,
    )  # fmt: skip


def test_a_tenant_change_reaches_the_config_map_without_a_new_replica_set(
    kube: Kube, operator: Operator
) -> None:
    start(kube, operator, "contoso")
    wait_until(lambda: len(kube.list("replicaset")) == 1, 30, "the ReplicaSet", operator.proc)
    generation = kube.must("deployment", "sbc1-sbc")["metadata"]["generation"]

    kube.apply(tenant_manifest(kube.namespace, "fabrikam", numbers=["+4989"]))
    wait_until(
        lambda: [t.name for t in sbc_config(kube).teams.tenants] == ["contoso", "fabrikam"],
        30, "fabrikam in the config", operator.proc, interval=0.2,
    )  # fmt: skip
    kube.apply(tenant_manifest(kube.namespace, "contoso", numbers=["+4930", "+4940"]))
    wait_until(
        lambda: sbc_config(kube).teams.tenants[0].numbers == ["+4930", "+4940"],
        30, "contoso's new numbers in the config", operator.proc, interval=0.2,
    )  # fmt: skip
    kube.wait_condition("teamstrunk", "sbc1", "ConfigApplied", proc=operator.proc)
    assert len(kube.list("replicaset")) == 1
    assert kube.must("deployment", "sbc1-sbc")["metadata"]["generation"] == generation
    # The pod template carries the digest of what the SBC cannot reload: the same as before.
    digest = _template(kube)["metadata"]["annotations"]["sbc.teams-sbc.io/restart-config"]
    assert digest == restart_digest(sbc_config(kube))

    # A change the SBC can only take at start (the Teams listener's source allow-list): the
    # template changes with the ConfigMap and the pods roll.
    kube.kubectl("patch", "teamstrunk", "sbc1", "--type=merge", "-p",
                 json.dumps({"spec": {"teams": {"allowSources": ["52.112.0.0/14"]}}}))  # fmt: skip
    wait_until(
        lambda: sbc_config(kube).teams.allow_sources is not None,
        30, "the allow-list in the config", operator.proc, interval=0.2,
    )  # fmt: skip
    wait_until(lambda: len(kube.list("replicaset")) == 2, 30, "a new ReplicaSet", operator.proc)
    after = _template(kube)["metadata"]["annotations"]["sbc.teams-sbc.io/restart-config"]
    assert after != digest
    assert after == restart_digest(sbc_config(kube))


def _template(kube: Kube) -> dict[str, Any]:
    return dict(kube.must("deployment", "sbc1-sbc")["spec"]["template"])


def _set_workers(kube: Kube, operator: Operator, workers: int) -> None:
    kube.kubectl("patch", "teamstrunk", "sbc1", "--type=merge",
                 "-p", json.dumps({"spec": {"sbc": {"workers": workers}}}))  # fmt: skip
    wait_until(
        lambda: sbc_config(kube).workers == workers,
        30, f"workers {workers} in the config", operator.proc, interval=0.2,
    )  # fmt: skip


def test_several_workers_get_their_config_a_tmp_and_a_rollout_on_change(
    kube: Kube, operator: Operator
) -> None:
    ns = kube.namespace
    kube.apply(trunk_manifest(ns, certificate={"devCA": True}, sbc={"workers": 3}))
    kube.wait_condition("teamstrunk", "sbc1", "ConfigApplied", proc=operator.proc)
    assert sbc_config(kube).workers == 3
    template = _template(kube)
    pod = template["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tmp"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Mi"}
    sbc = pod["containers"][0]
    assert sbc["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in sbc["volumeMounts"]
    assert template["metadata"]["annotations"]["sbc.teams-sbc.io/workers"] == "3"
    wait_until(lambda: len(kube.list("replicaset")) == 1, 30, "the ReplicaSet", operator.proc)

    # The running SBCs cannot take a new worker count over: the pod template changes with the
    # ConfigMap, and kube-controller-manager starts a new ReplicaSet for it.
    _set_workers(kube, operator, 4)
    wait_until(
        lambda: _template(kube)["metadata"].get("annotations", {}).get("sbc.teams-sbc.io/workers")
        == "4",
        30, "the new count on the pod template", operator.proc, interval=0.2,
    )  # fmt: skip
    wait_until(lambda: len(kube.list("replicaset")) == 2, 30, "a new ReplicaSet", operator.proc)
    newest = max(
        kube.list("replicaset"),
        key=lambda rs: int(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]),
    )
    assert newest["spec"]["template"]["metadata"]["annotations"] == {
        "sbc.teams-sbc.io/workers": "4",
        "sbc.teams-sbc.io/restart-config": restart_digest(sbc_config(kube)),
    }

    # Back to one process: no temporary directory, no annotation, another rollout.
    _set_workers(kube, operator, 1)
    wait_until(
        lambda: "tmp" not in {v["name"] for v in _template(kube)["spec"]["volumes"]},
        30, "the /tmp volume gone", operator.proc, interval=0.2,
    )  # fmt: skip
    template = _template(kube)
    assert "sbc.teams-sbc.io/workers" not in template["metadata"].get("annotations", {})
    assert all(m["mountPath"] != "/tmp" for m in template["spec"]["containers"][0]["volumeMounts"])
    assert "workers" not in yaml.safe_load(
        kube.must("configmap", "sbc1-sbc-config")["data"]["sbc.yaml"]
    )
    wait_until(lambda: len(kube.list("replicaset")) == 3, 30, "a third ReplicaSet", operator.proc)


def _versions(kube: Kube) -> dict[str, str]:
    objs = [*OWNED, ("teamstrunk", "sbc1"), ("teamstenant", "contoso"), ("teamstenant", "fabrikam")]
    return {f"{k}/{n}": kube.must(k, n)["metadata"]["resourceVersion"] for k, n in objs}


def test_a_restarted_operator_writes_nothing(kube: Kube, operator: Operator) -> None:
    start(kube, operator, "contoso", "fabrikam")
    kube.wait_condition("teamstenant", "fabrikam", "Accepted", proc=operator.proc)

    # Let the controllers settle (ReplicaSet, pods, Deployment status), then take a snapshot.
    def settled() -> bool:
        before = _versions(kube)
        time.sleep(1.0)
        return _versions(kube) == before

    wait_until(settled, 30, "the objects to settle", operator.proc)
    before = _versions(kube)
    passes = operator.passes()
    assert passes >= 1

    operator.restart()
    operator.wait_passes(1)
    # A wake-up for every object it sees at start-up, gathered into one or two passes.
    time.sleep(1.5)
    assert _versions(kube) == before
    writes = {k: v for k, v in operator.metrics().items() if "object_writes_total" in k}
    assert sum(writes.values()) == 0, writes
    applies = sum(
        v for k, v in operator.metrics().items()
        if k.startswith("teams_sbc_operator_api_requests_total") and 'verb="apply"' in k
    )  # fmt: skip
    assert 4 <= applies <= 20  # Service, ConfigMap, Deployment, PDB per pass; no storm


def test_garbage_collector_removes_what_the_trunk_owned(kube: Kube, operator: Operator) -> None:
    start(kube, operator, "contoso")
    kube.delete("teamstrunk", "sbc1")

    def all_gone() -> bool:
        return all(kube.get(kind, name) is None for kind, name in OWNED)

    wait_until(all_gone, 60, "the garbage collector", operator.proc, interval=0.5)
    assert kube.get("teamstrunk", "sbc1") is None
    # The tenant stays, and says its trunk is gone.
    kube.wait_condition(
        "teamstenant", "contoso", "Ready", "False", reason="TrunkNotFound", proc=operator.proc
    )
