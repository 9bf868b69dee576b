"""500 TeamsTenants on one TeamsTrunk: how long until all are Ready, how many API requests and
ConfigMap writes that takes, and how much memory the operator holds.

    uv run python bench/operator_scale.py [--tenants 500] [--peer-debounce 0]

Everything is real and on loopback: etcd, kube-apiserver and kube-controller-manager of the test
bed, bind9 taking the DNS records (RFC 2136 with TSIG), and ``teams-sbc-operator`` as a process.
The trunk uses the development CA and is made Ready first (the benchmark marks its pods ready,
as a kubelet would); then every tenant is applied with one ``kubectl apply`` and the clock runs
until the last tenant reports Ready.

The peer, in the same run: the same operator with ``--debounce`` set to ``--peer-debounce``
(default 0: a pass starts as soon as a change arrives), against the default 0.5 s. Changes that
arrive while a pass runs are served by the next one in both cases, so the ratio shows what the
debounce window adds to that batching.

ConfigMap writes are counted by watching the ConfigMap (every MODIFIED event is a new
resourceVersion), API requests from the operator's own counter (its client; kopf's watches and
event posts are not in it), memory from /proc (VmRSS at the end, VmHWM the peak). The last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.testbed.dns import DnsServer  # noqa: E402
from tests.testbed.kube import KubeCluster, control_plane  # noqa: E402
from tests.testbed.process import ManagedProcess, free_port, scrape_flat, wait_until  # noqa: E402

GROUP, VERSION = "sbc.teams-sbc.io", "v1alpha1"
CRD_DIRS = [REPO / "deploy" / "crds", REPO / "tests" / "testbed" / "crds"]


def proc_memory(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB -> MiB
    return fields


class ConfigMapWatch(threading.Thread):
    """Counts the ConfigMap's versions through a watch (one per write)."""

    def __init__(self, cluster: KubeCluster, namespace: str, name: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.namespace, self.name = cluster, namespace, name
        self.versions: set[str] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        from kubernetes import client, watch

        with self.cluster.api_client() as api:
            core = client.CoreV1Api(api)
            while not self.stop.is_set():
                w = watch.Watch()
                for event in w.stream(
                    core.list_namespaced_config_map,
                    self.namespace,
                    field_selector=f"metadata.name={self.name}",
                    timeout_seconds=5,
                ):
                    self.versions.add(event["object"].metadata.resource_version)
                    if self.stop.is_set():
                        w.stop()
                        break


def mark_pods_ready(cluster: KubeCluster, namespace: str) -> int:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    status = {
        "phase": "Running",
        "conditions": [
            {"type": t, "status": "True", "lastTransitionTime": now}
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ],
    }
    for pod in pods:
        cluster.kubectl(
            "patch", "pod", pod["metadata"]["name"], "-n", namespace, "--subresource=status",
            "--type=merge", "-p", json.dumps({"status": status}),
        )  # fmt: skip
    return len(pods)


def ready_tenants(cluster: KubeCluster, namespace: str) -> int:
    out = cluster.kubectl(
        "get", "teamstenants", "-n", namespace, "-o",
        'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
        timeout=120,
    ).stdout  # fmt: skip
    return sum(1 for line in out.splitlines() if line == "True")


def run_one(
    cluster: KubeCluster, dns: DnsServer, work: Path, label: str, tenants: int, debounce: float
) -> dict[str, Any]:
    namespace = f"scale-{label}"
    cluster.kubectl("create", "namespace", namespace)
    secret = {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "tsig", "namespace": namespace},
        "data": {"secret": base64.b64encode(dns.key.secret.encode()).decode()},
    }  # fmt: skip
    fqdn = f"{label}.sbc.test"
    trunk = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TeamsTrunk",
        "metadata": {"name": "sbc1", "namespace": namespace},
        "spec": {
            "fqdn": fqdn,
            "carrier": {"address": "192.0.2.10"},
            "certificate": {"devCA": True},
            "publicAddresses": ["198.51.100.7"],
            "sbc": {"replicas": 1},
            "dns": {
                "rfc2136": {
                    "server": dns.host, "port": dns.port, "zone": "sbc.test",
                    "tsigKeyName": dns.key.name, "tsigSecretRef": {"name": "tsig"},
                }
            },
        },
    }  # fmt: skip
    metrics_port, live_port = free_port(), free_port()
    proc = ManagedProcess(
        f"operator-{label}",
        [
            sys.executable, "-m", "teams_sbc_operator.main", "--namespace", namespace,
            "--liveness", f"http://127.0.0.1:{live_port}/healthz",
            "--metrics", f"http://127.0.0.1:{metrics_port}/metrics",
            "--debounce", str(debounce), "--sbc-image", "teams-sbc:bench",
            "--rtpengine-image", "rtpengine:bench",
        ],
        work / label,
        env={"KUBECONFIG": str(cluster.kubeconfig)},
    )  # fmt: skip
    try:
        wait_until(lambda: scrape_flat(metrics_port, timeout=5) is not None, 60, "metrics", proc)
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([secret, trunk]))
        wait_until(lambda: mark_pods_ready(cluster, namespace) >= 1, 60, "the SBC pod", proc, 0.5)
        cluster.kubectl(
            "wait", "--for=condition=Ready", "teamstrunk/sbc1", "-n", namespace,
            "--timeout=120s", timeout=130,
        )  # fmt: skip
        watcher = ConfigMapWatch(cluster, namespace, "sbc1-sbc-config")
        watcher.start()
        time.sleep(1.0)
        base_versions = len(watcher.versions)
        before = scrape_flat(metrics_port, timeout=5)

        manifests = [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "TeamsTenant",
                "metadata": {"name": f"t{i:04d}", "namespace": namespace},
                "spec": {"trunk": "sbc1", "subdomain": f"t{i:04d}", "numbers": [f"+4930{i:04d}"]},
            }
            for i in range(tenants)
        ]
        started = time.monotonic()
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests), timeout=600)
        applied = time.monotonic() - started
        wait_until(
            lambda: ready_tenants(cluster, namespace) == tenants, 900,
            f"{tenants} tenants Ready", proc, interval=1.0,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        time.sleep(2.0)  # let the last writes arrive at the watch
        watcher.stop.set()
        after = scrape_flat(metrics_port, timeout=5)
        memory = proc_memory(proc.pid)

        def delta(prefix: str, where: str = "") -> float:
            return sum(
                v - before.get(k, 0.0)
                for k, v in after.items()
                if k.startswith(prefix) and where in k
            )

        config = json.loads(
            cluster.kubectl(
                "get", "configmap", "sbc1-sbc-config", "-n", namespace, "-o", "json"
            ).stdout
        )
        rendered = yaml.safe_load(config["data"]["sbc.yaml"])
        in_dns = dns.records_of(f"t{tenants - 1:04d}.{fqdn}")
        return {
            "label": label,
            "debounce_s": debounce,
            "tenants": tenants,
            "kubectl_apply_s": round(applied, 1),
            "all_ready_s": round(elapsed, 1),
            "configmap_writes": len(watcher.versions) - base_versions,
            "tenants_in_config": len(rendered["teams"]["tenants"]),
            "passes": int(delta("teams_sbc_operator_reconciliations_total")),
            "api_requests": int(delta("teams_sbc_operator_api_requests_total")),
            "api_applies": int(delta("teams_sbc_operator_api_requests_total", 'verb="apply"')),
            "api_patches": int(delta("teams_sbc_operator_api_requests_total", 'verb="patch"')),
            "dns_updates": int(delta("teams_sbc_operator_dns_updates_total")),
            "last_tenant_in_dns": sorted(in_dns),
            "operator_rss_mib": round(memory.get("VmRSS", 0.0), 1),
            "operator_peak_rss_mib": round(memory.get("VmHWM", 0.0), 1),
        }
    finally:
        proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=500)
    parser.add_argument("--debounce", type=float, default=0.5)
    parser.add_argument("--peer-debounce", type=float, default=0.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="teams-sbc-operator-bench-"))
    print(f"# logs in {work}", flush=True)
    dns = DnsServer(work / "named", records=[]).start()
    try:
        with control_plane(work / "kube", work / "logs", crd_dirs=CRD_DIRS) as cluster:
            results = []
            for label, debounce in (("batched", args.debounce), ("peer", args.peer_debounce)):
                result = run_one(cluster, dns, work, label, args.tenants, debounce)
                print(json.dumps(result), flush=True)
                results.append(result)
    finally:
        dns.stop()
    ours, peer = results
    summary = {
        "tenants": args.tenants,
        "ready_s": ours["all_ready_s"],
        "peer_ready_s": peer["all_ready_s"],
        "configmap_writes": ours["configmap_writes"],
        "peer_configmap_writes": peer["configmap_writes"],
        "configmap_write_ratio": round(
            ours["configmap_writes"] / max(1, peer["configmap_writes"]), 3
        ),
        "api_requests": ours["api_requests"],
        "peer_api_requests": peer["api_requests"],
        "operator_peak_rss_mib": ours["operator_peak_rss_mib"],
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
