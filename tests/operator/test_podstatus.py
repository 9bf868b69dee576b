"""The SBC writes its Microsoft proxies' state into its Pod's annotation (teams_sbc.podstatus),
and the operator turns it into the trunk's TeamsReachable condition: the REAL ``teams-sbc run``
outside the cluster, given the test API server's kubeconfig and the name of a pod the real
Deployment and ReplicaSet controllers made, its Microsoft proxies being the Teams emulator. A
proxy failed in the emulator shows up in the annotation (read with kubectl) and on the trunk."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from teams_sbc.podstatus import ANNOTATION as SBC_ANNOTATION
from teams_sbc_operator.render.reachability import ANNOTATION
from tests.operator.conftest import Kube, Operator, trunk_manifest
from tests.teams.test_emulator_e2e import EdgeFactory
from tests.testbed.kube import CommandFailed
from tests.testbed.process import free_port, wait_until
from tests.testbed.sbc import SbcFactory, SbcProcess
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


# -- the SBC's own pod, without the operator: workers, and an API server that says no -------------


def writer_pod(kube: Kube, *, grant: bool = True, name: str = "sbc-0") -> str:
    """A Pod run by a ServiceAccount whose Role may get and patch pods (bound if ``grant``),
    as the operator renders them; nothing runs in it (no kubelet), the SBC runs beside."""
    account = "sbc-writer"
    kube.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": account},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
         "spec": {"serviceAccountName": account,
                  "containers": [{"name": "sbc", "image": "teams-sbc:test"}]}},
    )  # fmt: skip
    if grant:
        grant_writer(kube)
    return name


def grant_writer(kube: Kube) -> None:
    kube.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "sbc-writer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sbc-writer"},
        "subjects": [{"kind": "ServiceAccount", "name": "sbc-writer",
                      "namespace": kube.namespace}],
    })  # fmt: skip


def writer_env(
    kube: Kube, tmp_path: Path, pod: str, *, server: str | None = None
) -> dict[str, str]:
    """The SBC's env in ``pod``: a kubeconfig with the writer's token (and another ``server``
    address, if given)."""
    token = kube.kubectl("create", "token", "sbc-writer").strip()
    config = yaml.safe_load(kube.cluster.kubeconfig.read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    if server is not None:
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = server
    path = tmp_path / "writer.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return {"KUBECONFIG": str(path), "POD_NAME": pod, "POD_NAMESPACE": kube.namespace}


def api_server_address(kube: Kube) -> tuple[str, int]:
    config = yaml.safe_load(kube.cluster.kubeconfig.read_text())
    url = urlsplit(config["clusters"][0]["cluster"]["server"])
    assert url.hostname is not None and url.port is not None
    return url.hostname, url.port


FAST = {"min_interval_seconds": 0.5, "refresh_seconds": 3}


def failed_writes(sbc: SbcProcess) -> list[dict[str, Any]]:
    return [r for r in sbc.log_records() if r.get("msg") == "pod status write failed"]


def assert_backed_off(failures: list[dict[str, Any]]) -> None:
    """Each failure names its attempt and the wait before the next (1 s, doubling), and the
    next attempt did wait that long (log times, to the millisecond; a 1 s check tick)."""
    assert [f["attempt"] for f in failures] == list(range(1, len(failures) + 1))
    assert [f["retry_in_seconds"] for f in failures] == [
        min(60.0, 2.0 ** (n - 1)) for n in range(1, len(failures) + 1)
    ]
    times = [datetime.strptime(f["ts"], "%Y-%m-%dT%H:%M:%S.%fZ") for f in failures]
    for before, after, failure in zip(times, times[1:], failures, strict=False):
        assert (after - before).total_seconds() >= failure["retry_in_seconds"] - 0.05


def test_with_workers_the_supervisor_writes_what_all_workers_see(
    kube: Kube,
    teams_emulator_factory: EmulatorFactory,
    sbc_factory: SbcFactory,
    sipp_factory: SippFactory,
    tmp_path: Path,
) -> None:
    """``workers: 2``: the annotation is the supervisor's combined view (its /teams), written
    by the supervisor alone; it follows a proxy failed in the emulator, and goes on being
    refreshed when a worker is killed."""
    pod = writer_pod(kube)
    edge = EdgeFactory(teams_emulator_factory, sbc_factory, sipp_factory)(
        sbc_env=writer_env(kube, tmp_path, pod),
        sbc_config={"workers": 2, "pod_status": FAST},
        options_interval=1.0, options_timeout=0.8,
    )  # fmt: skip
    wait_until(
        lambda: proxies(kube, pod) == {SIP: "up", SIP2: "up", SIP3: "up"}, 20,
        "the annotation with sip, sip2 and sip3 up", edge.sbc.proc,
    )  # fmt: skip

    edge.emu.set_failure("sip2", "refuse")
    wait_until(
        lambda: proxies(kube, pod) == {SIP: "up", SIP2: "down", SIP3: "up"}, 20,
        "sip2 down in the annotation", edge.sbc.proc,
    )  # fmt: skip
    combined = edge.status()
    assert {p["name"]: p["state"] for p in combined["proxies"]} == proxies(kube, pod)
    assert set(combined["workers"]) == {"0", "1"}

    # A worker killed: the supervisor still reports (the other worker, then the restarted one).
    os.kill(edge.sbc.worker_pids()[0], signal.SIGKILL)
    first = (annotation(kube, pod) or {})["at"]
    wait_until(
        lambda: (annotation(kube, pod) or {}).get("at", first) != first, 15,
        "the annotation refreshed after a worker was killed", edge.sbc.proc,
    )  # fmt: skip
    assert proxies(kube, pod) == {SIP: "up", SIP2: "down", SIP3: "up"}

    written = [r for r in edge.sbc.log_records() if r.get("msg") == "pod status written"]
    assert written and all(r.get("role") == "supervisor" for r in written), written
    scrape = edge.sbc.metrics()
    assert scrape.value("sbc_pod_status_writes_total", result="ok") >= 2
    assert scrape.value("sbc_pod_status_writes_total", result="error") == 0
    assert scrape.value("sbc_pod_status_failing") == 0


def test_an_api_server_that_refuses_is_retried_with_back_off_until_it_accepts(
    kube: Kube,
    teams_emulator_factory: EmulatorFactory,
    sbc_factory: SbcFactory,
    sipp_factory: SippFactory,
    tmp_path: Path,
) -> None:
    """The SBC's ServiceAccount has no RoleBinding yet: the API server answers 403. The SBC
    logs each refusal, counts it, waits ever longer, keeps serving; once the binding exists,
    the next attempt writes."""
    pod = writer_pod(kube, grant=False)
    edge = EdgeFactory(teams_emulator_factory, sbc_factory, sipp_factory)(
        sbc_env=writer_env(kube, tmp_path, pod), sbc_config={"pod_status": FAST}
    )
    wait_until(lambda: len(failed_writes(edge.sbc)) >= 3, 20, "three refused writes",
               edge.sbc.proc)  # fmt: skip
    failures = failed_writes(edge.sbc)
    assert_backed_off(failures)
    assert all("403" in f["error"] and f["pod"] == f"{kube.namespace}/{pod}" for f in failures)
    # The SBC goes on: alive, ready, Microsoft's proxies up.
    assert edge.sbc.alive() and edge.sbc.readiness()[0]
    assert edge.states() == ["up", "up", "up"]
    scrape = edge.sbc.metrics()
    assert scrape.value("sbc_pod_status_writes_total", result="error") >= 3
    assert scrape.value("sbc_pod_status_failing") >= 3
    assert annotation(kube, pod) is None

    grant_writer(kube)
    wait_until(
        lambda: proxies(kube, pod) == {SIP: "up", SIP2: "up", SIP3: "up"}, 30,
        "the annotation written once the Role is bound", edge.sbc.proc,
    )  # fmt: skip
    # The patch is visible in the API server a moment before its answer reaches the SBC.
    wait_until(lambda: edge.sbc.metrics().value("sbc_pod_status_failing") == 0, 5,
               "the failing gauge back to 0", edge.sbc.proc)  # fmt: skip
    assert edge.sbc.metrics().value("sbc_pod_status_writes_total", result="ok") >= 1
    assert any(r.get("msg") == "pod status write succeeded again" for r in edge.sbc.log_records())
    assert_backed_off(failed_writes(edge.sbc))


class Relay:
    """A TCP relay from a loopback port to an address: the API server's network path, cut
    until :meth:`start`."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self.target = target
        self.server: socket.socket | None = None
        self.sockets: list[socket.socket] = []

    def start(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self.server is not None
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        for sock in [*([self.server] if self.server else []), *self.sockets]:
            with contextlib.suppress(OSError):
                sock.close()


def test_an_unreachable_api_server_never_stops_the_sbc_and_is_written_once_back(
    kube: Kube,
    teams_emulator_factory: EmulatorFactory,
    sbc_factory: SbcFactory,
    sipp_factory: SippFactory,
    tmp_path: Path,
) -> None:
    """``workers: 2``, the API server's address unreachable (nothing listens: connection
    refused): the supervisor logs and counts each failed write, backs off, the SBC serves on.
    When the path to the real API server opens, the annotation is written."""
    pod = writer_pod(kube)
    port = free_port()
    relay = Relay(port, api_server_address(kube))
    edge = EdgeFactory(teams_emulator_factory, sbc_factory, sipp_factory)(
        sbc_env=writer_env(kube, tmp_path, pod, server=f"https://127.0.0.1:{port}"),
        sbc_config={"workers": 2, "pod_status": FAST},
    )
    try:
        wait_until(lambda: len(failed_writes(edge.sbc)) >= 2, 30, "two failed writes",
                   edge.sbc.proc)  # fmt: skip
        failures = failed_writes(edge.sbc)
        assert_backed_off(failures)
        assert all(f.get("role") == "supervisor" for f in failures)
        assert any("refused" in f["error"].lower() for f in failures), failures
        assert edge.sbc.alive() and edge.sbc.readiness()[0]
        assert [p["state"] for p in edge.status()["proxies"]] == ["up", "up", "up"]
        scrape = edge.sbc.metrics()
        assert scrape.value("sbc_pod_status_writes_total", result="error") >= 2
        assert scrape.value("sbc_pod_status_failing") >= 2

        relay.start()
        wait_until(
            lambda: proxies(kube, pod) == {SIP: "up", SIP2: "up", SIP3: "up"}, 30,
            "the annotation written once the API server is reachable", edge.sbc.proc,
        )  # fmt: skip
        # The patch is visible in the API server a moment before its answer reaches the SBC.
        wait_until(lambda: edge.sbc.metrics().value("sbc_pod_status_failing") == 0, 5,
                   "the failing gauge back to 0", edge.sbc.proc)  # fmt: skip
    finally:
        relay.stop()
