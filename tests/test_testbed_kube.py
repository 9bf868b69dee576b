"""Smoke tests of the Kubernetes test bed: the CRDs, garbage collection and the Helm chart.

They run against real kube-apiserver/etcd/kube-controller-manager processes (tests/testbed/kube.py)
and assert what a user would see through kubectl, the Python client and helm.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.testbed.kube import CommandFailed, KubeCluster, run_tool

REPO = Path(__file__).resolve().parent.parent
CRD_DIR = REPO / "deploy" / "crds"
CHART = REPO / "helm" / "teams-sbc"
GROUP, VERSION = "sbc.teams-sbc.io", "v1alpha1"


def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` (a real API read) until it holds; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def crds(kube_cluster: KubeCluster) -> list[str]:
    """The project's CRDs applied with kubectl (again: the cluster starts with them) and
    Established; returns their names."""
    return kube_cluster.apply_crds(CRD_DIR)


@pytest.fixture
def api(kube_cluster: KubeCluster) -> Iterator[Any]:
    with kube_cluster.api_client() as api_client:
        yield api_client


def get_custom(api: Any, namespace: str, plural: str, name: str) -> dict[str, Any]:
    """One of our custom objects as the API server stores it (defaults applied)."""
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, name
    )
    return cast(dict[str, Any], obj)


def trunk_manifest(name: str, namespace: str, fqdn: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TeamsTrunk",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "fqdn": fqdn,
            "carrier": {"address": "carrier.example.net", "port": 5060, "transport": "tcp"},
            "certificate": {"secretName": "sbc1-tls"},
        },
    }


def test_crds_established_and_trunk_round_trips(
    kube_cluster: KubeCluster, crds: list[str], kube_namespace: str, api: Any
) -> None:
    assert sorted(crds) == ["teamstenants.sbc.teams-sbc.io", "teamstrunks.sbc.teams-sbc.io"]
    manifest = yaml.safe_dump(trunk_manifest("sbc1", kube_namespace, "sbc1.example.com"))
    kube_cluster.kubectl("apply", "-f", "-", input=manifest)

    trunk = get_custom(api, kube_namespace, "teamstrunks", "sbc1")
    assert trunk["spec"]["fqdn"] == "sbc1.example.com"
    assert trunk["spec"]["cloud"] == "commercial"  # the schema's default was applied
    assert trunk["spec"]["carrier"] == {
        "address": "carrier.example.net",
        "port": 5060,
        "transport": "tcp",
    }
    assert trunk["spec"]["certificate"] == {"secretName": "sbc1-tls"}

    # The short name and the printer columns work as a user would type them.
    table = kube_cluster.kubectl("get", "tstrunk", "-n", kube_namespace).stdout
    assert table.split("\n")[0].split()[:4] == ["NAME", "FQDN", "CLOUD", "READY"]
    assert "sbc1.example.com" in table


@pytest.mark.parametrize(
    "fqdn", ["not a hostname", "sbc1", "-sbc.example.com", "SBC.Example.com", "sbc..example.com"]
)
def test_trunk_with_bad_fqdn_is_refused(
    kube_cluster: KubeCluster, crds: list[str], kube_namespace: str, fqdn: str
) -> None:
    manifest = yaml.safe_dump(trunk_manifest("bad", kube_namespace, fqdn))
    with pytest.raises(CommandFailed) as refused:
        kube_cluster.kubectl("apply", "-f", "-", input=manifest)
    assert "spec.fqdn" in refused.value.stderr
    assert "should match" in refused.value.stderr


def test_tenant_schema_checks_numbers(
    kube_cluster: KubeCluster, crds: list[str], kube_namespace: str, api: Any
) -> None:
    tenant: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TeamsTenant",
        "metadata": {"name": "contoso", "namespace": kube_namespace},
        "spec": {"trunk": "sbc1", "subdomain": "contoso", "numbers": ["+4930123", "+1425"]},
    }
    kube_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(tenant))
    stored = get_custom(api, kube_namespace, "teamstenants", "contoso")
    assert stored["spec"]["numbers"] == ["+4930123", "+1425"]

    tenant["metadata"]["name"] = "fabrikam"
    tenant["spec"]["numbers"] = ["004930123"]
    with pytest.raises(CommandFailed) as refused:
        kube_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(tenant))
    assert "spec.numbers[0]" in refused.value.stderr


def create_owner(api: Any, namespace: str, kind: str) -> client.V1OwnerReference:
    """A TeamsTrunk (what the operator's objects hang off) or a plain ConfigMap as an owner."""
    if kind == "TeamsTrunk":
        created = cast(
            dict[str, Any],
            client.CustomObjectsApi(api).create_namespaced_custom_object(
                GROUP, VERSION, namespace, "teamstrunks",
                trunk_manifest("owner", namespace, "owner.example.com"),
            ),
        )  # fmt: skip
        api_version, uid = f"{GROUP}/{VERSION}", created["metadata"]["uid"]
    else:
        config_map = client.CoreV1Api(api).create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
        )
        assert config_map.metadata is not None
        api_version, uid = "v1", config_map.metadata.uid
    return client.V1OwnerReference(
        api_version=api_version,
        kind=kind,
        name="owner",
        uid=uid,
        controller=True,
        block_owner_deletion=True,
    )


def delete_owner(api: Any, namespace: str, kind: str) -> None:
    if kind == "TeamsTrunk":
        client.CustomObjectsApi(api).delete_namespaced_custom_object(
            GROUP, VERSION, namespace, "teamstrunks", "owner"
        )
    else:
        client.CoreV1Api(api).delete_namespaced_config_map("owner", namespace)


@pytest.mark.parametrize("owner_kind", ["TeamsTrunk", "ConfigMap"])
def test_gc_deletes_what_a_deleted_owner_owned(
    kube_cluster: KubeCluster, crds: list[str], kube_namespace: str, api: Any, owner_kind: str
) -> None:
    core = client.CoreV1Api(api)
    owner_ref = create_owner(api, kube_namespace, owner_kind)
    owned = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="owned-config", owner_references=[owner_ref]),
        data={"sbc.yaml": "fqdn: owner.example.com\n"},
    )
    core.create_namespaced_config_map(kube_namespace, owned)
    core.create_namespaced_config_map(
        kube_namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="not-owned"))
    )

    delete_owner(api, kube_namespace, owner_kind)

    def owned_is_gone() -> bool:
        try:
            core.read_namespaced_config_map("owned-config", kube_namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    eventually(owned_is_gone, 30, "the garbage collector to delete the owned ConfigMap")
    # The bystander shows the GC acted on the owner reference, not on the whole namespace.
    assert core.read_namespaced_config_map("not-owned", kube_namespace).data is None


def test_helm_lint_passes(helm_binary: Path, tmp_path: Path) -> None:
    result = run_tool([str(helm_binary), "lint", str(CHART)], helm_env(tmp_path), None, 60)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
    assert "[ERROR]" not in result.stdout


def test_helm_template_renders_operator_and_crds(helm_binary: Path, tmp_path: Path) -> None:
    result = run_tool(
        [str(helm_binary), "template", "sbc", str(CHART), "--namespace", "teams-sbc",
         "--include-crds"],
        helm_env(tmp_path), None, 60,
    )  # fmt: skip
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == [
        ("ClusterRole", "sbc-teams-sbc-operator"),
        ("ClusterRoleBinding", "sbc-teams-sbc-operator"),
        ("CustomResourceDefinition", "teamstenants.sbc.teams-sbc.io"),
        ("CustomResourceDefinition", "teamstrunks.sbc.teams-sbc.io"),
        ("Deployment", "sbc-teams-sbc-operator"),
        ("ServiceAccount", "sbc-teams-sbc-operator"),
    ]
    # The chart ships deploy/crds itself (through the crds symlink), not a copy that could drift.
    shipped = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
    for path in CRD_DIR.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        assert shipped[crd["metadata"]["name"]] == crd


def test_helm_template_applies_to_the_api_server(
    kube_cluster: KubeCluster, crds: list[str], kube_namespace: str
) -> None:
    """The rendered chart is valid for the real API server (a server-side dry run)."""
    rendered = kube_cluster.helm(
        "template", "sbc", str(CHART), "--namespace", kube_namespace
    ).stdout
    out = kube_cluster.kubectl(
        "apply", "--dry-run=server", "-n", kube_namespace, "-f", "-", input=rendered
    ).stdout
    assert "deployment.apps/sbc-teams-sbc-operator created (server dry run)" in out


def helm_env(tmp_path: Path) -> dict[str, str]:
    """helm keeps its cache and config under the test's temp dir, not in $HOME."""
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        "HELM_DATA_HOME": str(tmp_path / "helm-data"),
    }
