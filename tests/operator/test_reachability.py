"""TeamsReachable and the Teams-Up column on the real API server: the SBC pods (made by the real
Deployment and ReplicaSet controllers) carry their Microsoft proxies' OPTIONS state in an
annotation, and the operator sums them up on the TeamsTrunk, read back with kubectl."""

from __future__ import annotations

import json

from teams_sbc_operator.render.reachability import ANNOTATION
from tests.operator.conftest import Kube, Operator, trunk_manifest
from tests.testbed.process import wait_until

SIP = "sip.pstnhub.microsoft.com"
SIP2 = "sip2.pstnhub.microsoft.com"
SIP3 = "sip3.pstnhub.microsoft.com"


def report(kube: Kube, pod: str, **states: str) -> None:
    """What the SBC in ``pod`` writes (teams_sbc.podstatus), keyed by proxy label."""
    names = {"sip": SIP, "sip2": SIP2, "sip3": SIP3}
    value = json.dumps({"proxies": {names[k]: v for k, v in states.items()}, "at": "now"})
    kube.kubectl("annotate", "pod", pod, "--overwrite", f"{ANNOTATION}={value}")


def reachable(kube: Kube, reason: str) -> str:
    """TeamsReachable's message while its reason is ``reason`` (else empty)."""
    cond = kube.condition("teamstrunk", "sbc1", "TeamsReachable") or {}
    return str(cond.get("message", "")) if cond.get("reason") == reason else ""


def teams_up_column(kube: Kube) -> str:
    out = kube.kubectl("get", "teamstrunk", "sbc1", "--no-headers")
    return out.split()[-2]  # ... Teams-Up, Age


def test_teams_reachable_from_the_pods_annotations(kube: Kube, operator: Operator) -> None:
    kube.apply(trunk_manifest(kube.namespace, certificate={"devCA": True}, sbc={"replicas": 2}))
    wait_until(
        lambda: len(kube.list("pod", "app.kubernetes.io/instance=sbc1")) == 2, 30, "two SBC pods",
        operator.proc,
    )  # fmt: skip
    listed = kube.list("pod", "app.kubernetes.io/instance=sbc1")
    pods = sorted(p["metadata"]["name"] for p in listed)
    wait_until(
        lambda: all(p in reachable(kube, "NotReported") for p in pods), 20,
        "both pods named as not reported", operator.proc,
    )  # fmt: skip

    report(kube, pods[0], sip="up", sip2="up", sip3="down")
    wait_until(
        lambda: pods[1] in (msg := reachable(kube, "NotReported")) and pods[0] not in msg, 20,
        "only the second pod not reported", operator.proc,
    )  # fmt: skip
    assert pods[1] in reachable(kube, "NotReported")

    report(kube, pods[1], sip="down", sip2="down", sip3="down")
    cond = kube.wait_condition(
        "teamstrunk", "sbc1", "TeamsReachable", "False", reason="MicrosoftUnreachable",
        proc=operator.proc,
    )  # fmt: skip
    assert pods[1] in cond["message"] and pods[0] not in cond["message"].split("(")[0]
    assert f"{SIP3} down on {pods[0]}, {pods[1]}" in cond["message"]
    wait_until(lambda: teams_up_column(kube) == "0/3", 20, "Teams-Up 0/3", operator.proc)

    report(kube, pods[1], sip="up", sip2="up", sip3="down")
    cond = kube.wait_condition("teamstrunk", "sbc1", "TeamsReachable", proc=operator.proc)
    assert cond["reason"] == "MicrosoftReachable"
    assert f"{SIP3} down on {pods[0]}, {pods[1]}" in cond["message"]
    wait_until(lambda: teams_up_column(kube) == "2/3", 20, "Teams-Up 2/3", operator.proc)
    assert kube.status("teamstrunk", "sbc1")["teamsProxies"] == "2/3"
    # Informational: Ready does not wait for Microsoft (and is not made False by it).
    ready = kube.condition("teamstrunk", "sbc1", "Ready")
    assert ready is not None and "TeamsReachable" not in ready["message"]
