"""Fixtures for the operator's tests: the operator as a real process (``teams-sbc-operator``)
against the test bed's API server, and a small helper that talks to the cluster as a user would
(kubectl for writes, the API for reads)."""

from __future__ import annotations

import base64
import json
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.testbed.kube import CommandFailed, KubeCluster
from tests.testbed.process import ManagedProcess, free_port, scrape_flat, wait_until

GROUP, VERSION = "sbc.teams-sbc.io", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: Short delays so tests see passes, retries and re-checks quickly.
FAST = ["--debounce", "0.2", "--resync", "30", "--dns-retry", "1"]


@dataclass
class Operator:
    """One running ``teams-sbc-operator``; ``restart()`` stops it and starts a new process."""

    cluster: KubeCluster
    namespace: str
    log_dir: Path
    extra: list[str]
    proc: ManagedProcess | None = None
    metrics_port: int = 0
    starts: int = 0

    def start(self) -> Operator:
        self.starts += 1
        live = free_port()
        self.metrics_port = free_port()
        self.proc = ManagedProcess(
            f"teams-sbc-operator-{self.starts}",
            [
                sys.executable, "-m", "teams_sbc_operator.main",
                "--namespace", self.namespace,
                "--liveness", f"http://127.0.0.1:{live}/healthz",
                "--metrics", f"http://127.0.0.1:{self.metrics_port}/metrics",
                "--sbc-image", "teams-sbc:test", "--rtpengine-image", "rtpengine:test",
                *FAST, *self.extra,
            ],
            self.log_dir,
            env={"KUBECONFIG": str(self.cluster.kubeconfig)},
        )  # fmt: skip

        def alive() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{live}/healthz", timeout=1) as r:
                return bool(r.status == 200)

        wait_until(alive, 60, "the operator's liveness endpoint", self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def restart(self) -> Operator:
        self.stop()
        return self.start()

    def metrics(self) -> dict[str, float]:
        """The operator's /metrics as {'name{labels}': value}."""
        return scrape_flat(self.metrics_port)

    def passes(self) -> float:
        """Passes over trunks this process has finished (any result)."""
        return sum(
            v for k, v in self.metrics().items()
            if k.startswith("teams_sbc_operator_reconciliations_total")
        )  # fmt: skip

    def wait_passes(self, minimum: float = 1, timeout: float = 30) -> None:
        wait_until(lambda: self.passes() >= minimum, timeout, f"{minimum:g} passes", self.proc)

    def log_records(self) -> list[dict[str, Any]]:
        assert self.proc is not None
        records = []
        for line in self.proc.log_text().splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records


@pytest.fixture
def operator_factory(
    kube_cluster: KubeCluster, kube_namespace: str, tmp_path: Path
) -> Iterator[Callable[..., Operator]]:
    started: list[Operator] = []

    def start(*extra: str) -> Operator:
        op = Operator(kube_cluster, kube_namespace, tmp_path, list(extra))
        started.append(op)
        return op.start()

    try:
        yield start
    finally:
        for op in started:
            op.stop()
        _release(kube_cluster, kube_namespace)


def _release(cluster: KubeCluster, namespace: str) -> None:
    """With no operator left to run them, drop the finalizers of the test's trunks and tenants,
    so the namespace's deletion (by the kube_namespace fixture) can finish."""
    for plural in ("teamstrunks", "teamstenants"):
        out = cluster.kubectl("get", plural, "-n", namespace, "-o", "json").stdout
        for item in json.loads(out)["items"]:
            if item["metadata"].get("finalizers"):
                cluster.kubectl(
                    "patch", plural, item["metadata"]["name"], "-n", namespace, "--type=merge",
                    "-p", '{"metadata": {"finalizers": null}}',
                )  # fmt: skip


@pytest.fixture
def operator(operator_factory: Callable[..., Operator]) -> Operator:
    return operator_factory()


# -- the cluster as a user sees it -------------------------------------------------------------


@dataclass
class Kube:
    """kubectl for what a user types, JSON reads for what tests check; all in one namespace."""

    cluster: KubeCluster
    namespace: str

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.cluster.kubectl(*args, "-n", self.namespace, input=input).stdout

    def apply(self, *manifests: dict[str, Any]) -> str:
        return self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            out = self.kubectl("get", kind, name, "-o", "json")
        except CommandFailed as exc:
            if "NotFound" in exc.stderr:
                return None
            raise
        return dict(json.loads(out))

    def must(self, kind: str, name: str) -> dict[str, Any]:
        obj = self.get(kind, name)
        assert obj is not None, f"{kind} {name} does not exist"
        return obj

    def list(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json"] + (["-l", selector] if selector else [])
        return list(json.loads(self.kubectl(*args))["items"])

    def delete(self, kind: str, name: str, wait: bool = False) -> None:
        self.kubectl("delete", kind, name, f"--wait={'true' if wait else 'false'}")

    def status(self, kind: str, name: str) -> dict[str, Any]:
        obj = self.get(kind, name)
        return dict((obj or {}).get("status") or {})

    def condition(self, kind: str, name: str, type_: str) -> dict[str, Any] | None:
        for cond in self.status(kind, name).get("conditions") or []:
            if cond.get("type") == type_:
                return dict(cond)
        return None

    def wait_condition(
        self,
        kind: str,
        name: str,
        type_: str,
        status: str = "True",
        timeout: float = 60,
        reason: str | None = None,
        proc: ManagedProcess | None = None,
    ) -> dict[str, Any]:
        """Poll until the condition has ``status`` (and ``reason``); return it."""
        seen: list[Any] = []

        def check() -> bool:
            cond = self.condition(kind, name, type_)
            seen[:] = [cond]
            return (
                cond is not None
                and cond["status"] == status
                and (reason is None or cond["reason"] == reason)
            )

        try:
            wait_until(check, timeout, f"{kind}/{name} {type_}={status} {reason or ''}", proc)
        except Exception as exc:
            raise AssertionError(f"{exc}\nlast seen: {seen}") from exc
        return dict(seen[0])

    def events(self, name: str) -> list[dict[str, Any]]:
        out = self.kubectl(
            "get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json"
        )
        return list(json.loads(out)["items"])

    def wait_event(
        self, name: str, reason: str, proc: ManagedProcess | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        """Events are posted after the status they report: poll for one with ``reason``."""
        found: list[dict[str, Any]] = []

        def posted() -> bool:
            found[:] = [e for e in self.events(name) if e["reason"] == reason]
            return bool(found)

        wait_until(posted, timeout, f"an event {reason} on {name}", proc, interval=0.2)
        return found[0]

    def patch_status(self, kind: str, name: str, status: dict[str, Any]) -> None:
        self.kubectl(
            "patch", kind, name, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": status}),
        )  # fmt: skip


@pytest.fixture
def kube(kube_cluster: KubeCluster, kube_namespace: str) -> Kube:
    return Kube(kube_cluster, kube_namespace)


# -- manifests -------------------------------------------------------------------------------


def trunk_manifest(namespace: str, name: str = "sbc1", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "fqdn": f"{name}.sbc.test",
        "carrier": {"address": "192.0.2.10", "port": 5060, "transport": "udp"},
        "certificate": {"secretName": f"{name}-tls"},
    }
    body.update(spec)
    return {
        "apiVersion": API_VERSION,
        "kind": "TeamsTrunk",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def tenant_manifest(namespace: str, name: str, trunk: str = "sbc1", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"trunk": trunk, "subdomain": name}
    body.update(spec)
    return {
        "apiVersion": API_VERSION,
        "kind": "TeamsTenant",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def tls_secret(namespace: str, name: str, cert: bytes, key: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(cert).decode(),
            "tls.key": base64.b64encode(key).decode(),
        },
    }
