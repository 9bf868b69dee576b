"""The SBC writes its Microsoft proxies' state into its Pod's annotation (teams_sbc.podstatus),
and the operator turns it into the trunk's TeamsReachable condition: the REAL ``teams-sbc run``
outside the cluster, given the test API server's kubeconfig and the name of a pod the real
Deployment and ReplicaSet controllers made, its Microsoft proxies being the Teams emulator. A
proxy failed in the emulator shows up in the annotation (read with kubectl) and on the trunk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from teams_sbc.podstatus import ANNOTATION as SBC_ANNOTATION
from teams_sbc_operator.render.reachability import ANNOTATION
from tests.operator.conftest import Kube, Operator, trunk_manifest
from tests.teams.test_emulator_e2e import EdgeFactory
from tests.testbed.kube import CommandFailed
from tests.testbed.process import wait_until
from tests.testbed.sbc import SbcFactory
from tests.testbed.sipp import SippFactory
from tests.testbed.teams_emulator import EmulatorFactory

SIP, SIP2, SIP3 = (f"{n}.pstnhub.microsoft.com" for n in ("sip", "sip2", "sip3"))


def annotation(kube: Kube, pod: str) -> dict[str, Any] | None:
    """The annotation as ``kubectl get pod -o jsonpath`` shows it, parsed."""
    path = "{.metadata.annotations.sbc\\.teams-sbc\\.io/teams-proxies}"
    out = kube.kubectl("get", "pod", pod, "-o", f"jsonpath={path}")
    return dict(json.loads(out)) if out.strip() else None


def proxies(kube: Kube, pod: str) -> dict[str, str]:
    return dict((annotation(kube, pod) or {}).get("proxies") or {})


def sbc_kubeconfig(kube: Kube, tmp_path: Path) -> Path:
    """The test API server's kubeconfig with the SBC's own identity: a token of the
    ServiceAccount the operator rendered, so only the Role it bound applies."""
    token = kube.kubectl("create", "token", "sbc1-sbc").strip()
    config = yaml.safe_load(kube.cluster.kubeconfig.read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    path = tmp_path / "sbc.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_sbc_and_the_operator_agree_on_the_annotation() -> None:
    assert SBC_ANNOTATION == ANNOTATION


def test_sbc_reports_its_proxies_on_its_pod_and_the_trunk_follows(
    kube: Kube,
    operator: Operator,
    teams_emulator_factory: EmulatorFactory,
    sbc_factory: SbcFactory,
    sipp_factory: SippFactory,
    tmp_path: Path,
) -> None:
    kube.apply(trunk_manifest(kube.namespace, certificate={"devCA": True}, sbc={"replicas": 1}))
    wait_until(
        lambda: len(kube.list("pod", "app.kubernetes.io/instance=sbc1")) == 1, 30, "the SBC pod",
        operator.proc,
    )  # fmt: skip
    pod = kube.list("pod", "app.kubernetes.io/instance=sbc1")[0]["metadata"]["name"]
    assert kube.must("pod", pod)["spec"]["serviceAccountName"] == "sbc1-sbc"
    # The SBC's identity may patch pods, and no more than its Role says.
    can = ["auth", "can-i", "--as", f"system:serviceaccount:{kube.namespace}:sbc1-sbc"]
    assert kube.kubectl(*can, "patch", "pods").strip() == "yes"
    with pytest.raises(CommandFailed) as refused:  # can-i answers "no" with exit status 1
        kube.kubectl(*can, "list", "secrets")
    assert refused.value.stdout.strip() == "no"
    kube.wait_condition(
        "teamstrunk", "sbc1", "TeamsReachable", "False", reason="NotReported", proc=operator.proc
    )

    edges = EdgeFactory(teams_emulator_factory, sbc_factory, sipp_factory)
    edge = edges(
        sbc_env={
            "KUBECONFIG": str(sbc_kubeconfig(kube, tmp_path)),
            "POD_NAME": pod,
            "POD_NAMESPACE": kube.namespace,
        },
        sbc_config={"pod_status": {"min_interval_seconds": 0.5, "refresh_seconds": 3}},
    )
    wait_until(
        lambda: proxies(kube, pod) == {SIP: "up", SIP2: "up", SIP3: "up"}, 20,
        "the annotation with sip, sip2 and sip3 up", edge.sbc.proc,
    )  # fmt: skip
    cond = kube.wait_condition(
        "teamstrunk", "sbc1", "TeamsReachable", reason="MicrosoftReachable", proc=operator.proc
    )
    assert "all 3 up" in cond["message"]
    assert kube.status("teamstrunk", "sbc1")["teamsProxies"] == "3/3"

    # Unchanged, it is rewritten every refresh_seconds: its time moves on.
    first = (annotation(kube, pod) or {})["at"]
    wait_until(
        lambda: (annotation(kube, pod) or {}).get("at", first) != first, 10,
        "a refreshed annotation", edge.sbc.proc,
    )  # fmt: skip

    edge.emu.set_failure("sip", "refuse")
    wait_until(
        lambda: proxies(kube, pod) == {SIP: "down", SIP2: "up", SIP3: "up"}, 20,
        "sip down in the annotation", edge.sbc.proc,
    )  # fmt: skip
    cond = kube.wait_condition(
        "teamstrunk", "sbc1", "TeamsReachable", reason="MicrosoftReachable", proc=operator.proc
    )
    wait_until(
        lambda: f"{SIP} down on {pod}" in str(
            (kube.condition("teamstrunk", "sbc1", "TeamsReachable") or {}).get("message")
        ),
        20, "the trunk naming sip down on the pod", operator.proc,
    )  # fmt: skip
    wait_until(
        lambda: kube.status("teamstrunk", "sbc1").get("teamsProxies") == "2/3", 20,
        "Teams-Up 2/3", operator.proc,
    )  # fmt: skip

    for name in ("sip", "sip2", "sip3"):
        edge.emu.set_failure(name, "silent")
    wait_until(
        lambda: proxies(kube, pod) == {SIP: "down", SIP2: "down", SIP3: "down"}, 20,
        "every proxy down in the annotation", edge.sbc.proc,
    )  # fmt: skip
    cond = kube.wait_condition(
        "teamstrunk", "sbc1", "TeamsReachable", "False", reason="MicrosoftUnreachable",
        proc=operator.proc,
    )  # fmt: skip
    assert pod in cond["message"]

    scrape = edge.sbc.metrics()
    assert scrape.value("sbc_pod_status_writes_total", result="ok") >= 4
    assert scrape.value("sbc_pod_status_writes_total", result="error") == 0
