"""A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager.

Like controller-runtime's envtest, but with the controller manager too, so garbage collection and
namespace deletion behave as in a cluster. There is no kubelet or scheduler: pods are stored but
never run. Everything listens on free loopback ports and keeps its state in a temporary directory;
:func:`control_plane` starts the three programs, waits until each answers a real request, and stops
them again.

Security is set up as kubeadm does it, so RBAC is really enforced: one CA signs the API server's
serving certificate and the client certificates (the admin in ``system:masters``, the controller
manager as ``system:kube-controller-manager``); the controller manager runs each controller with
its own service-account token, signed with the service-account key below.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from teams_sbc.pki import CertFiles, DevCA, write_private_key
from tests.testbed import kube_build
from tests.testbed.process import ManagedProcess, PartFailed, free_port, wait_until

HOST = "127.0.0.1"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
#: The first address of the service range: the ``kubernetes`` Service, so it is in the serving cert.
KUBERNETES_SERVICE_IP = "10.0.0.1"
#: What the controller manager runs: enough for ownerReferences, namespaces and Deployments to act
#: as in a cluster. Names are kube-controller-manager's ``--controllers`` names.
CONTROLLERS = (
    "garbagecollector",
    "namespace",
    "serviceaccount",
    "root-ca-cert-publisher",
    "deployment",
    "replicaset",
)
START_TIMEOUT = 90.0


class CommandFailed(subprocess.CalledProcessError):
    """kubectl or helm exited non-zero; the message carries its stderr, which says why."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr:\n{self.stderr}\nstdout:\n{self.stdout}"


# --- certificates ---------------------------------------------------------------------------------


#: The control plane's certificates come from the product's throw-away CA (EC keys here).
KeyPair = CertFiles


def write_service_account_keys(directory: Path) -> KeyPair:
    """The key pair service-account tokens are signed with (``cert`` holds the public key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pair = KeyPair(directory / "sa.pub", directory / "sa.key")
    write_private_key(pair.key, key)
    pair.cert.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pair


def write_kubeconfig(path: Path, server: str, ca: Path, client: KeyPair, user: str) -> Path:
    """A self-contained kubeconfig (certificates embedded) so it can be copied anywhere."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client.cert),
                    "client-key-data": b64(client.key),
                },
            }
        ],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


# --- probes ---------------------------------------------------------------------------------------


def _https_get(url: str, context: ssl.SSLContext) -> tuple[int, str]:
    with urllib.request.urlopen(url, context=context, timeout=3) as response:
        return int(response.status), response.read().decode(errors="replace")


def etcd_healthy(client_url: str) -> bool:
    """etcd's own health endpoint says the member is up and has a leader."""
    with urllib.request.urlopen(f"{client_url}/health", timeout=3) as response:
        return '"health":"true"' in response.read().decode()


def apiserver_ready(server: str, ca: Path, client: KeyPair) -> bool:
    """``/readyz`` answers ``ok`` to the admin, i.e. TLS, client auth and all post-start hooks."""
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(client.cert), str(client.key))
    status, body = _https_get(f"{server}/readyz", context)
    return status == 200 and body.strip() == "ok"


def controller_manager_healthy(port: int) -> bool:
    """``/healthz`` of the controller manager (self-signed cert, an always-allowed path)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    status, body = _https_get(f"https://{HOST}:{port}/healthz", context)
    return status == 200 and body.strip() == "ok"


# --- the cluster ----------------------------------------------------------------------------------


@dataclass
class KubeCluster:
    """What tests get: how to reach the API server and the matched kubectl/helm binaries."""

    kubeconfig: Path
    server: str
    ca_cert: Path
    admin: KeyPair
    kubectl_path: Path
    helm_path: Path
    work_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)

    def api_client(self) -> Any:
        """A new ``kubernetes.client.ApiClient`` authenticated as the admin."""
        # Imported here: the plugin loads for every run, only Kubernetes tests pay for this.
        from kubernetes import config

        return config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )

    def tool_env(self) -> dict[str, str]:
        """Environment for kubectl/helm: this cluster, and caches kept out of $HOME."""
        home = self.work_dir / "tool-home"
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "KUBECACHEDIR": str(home / "kube-cache"),
            "HELM_CACHE_HOME": str(home / "helm-cache"),
            "HELM_CONFIG_HOME": str(home / "helm-config"),
            "HELM_DATA_HOME": str(home / "helm-data"),
        }

    def kubectl(
        self, *args: str, input: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; raises :class:`CommandFailed` with its stderr."""
        return run_tool([str(self.kubectl_path), *args], self.tool_env(), input, timeout)

    def apply_crds(self, directory: Path, timeout: float = 60.0) -> list[str]:
        """``kubectl apply`` every CRD in ``directory`` and wait until each is Established."""
        names = [
            str(yaml.safe_load(path.read_text())["metadata"]["name"])
            for path in sorted(directory.glob("*.yaml"))
        ]
        if not names:
            raise PartFailed(f"no CRD manifests (*.yaml) in {directory}")
        self.kubectl("apply", "-f", str(directory))
        self.kubectl(
            "wait",
            "--for=condition=Established",
            f"--timeout={timeout:.0f}s",
            *(f"customresourcedefinition/{name}" for name in names),
            timeout=timeout + 10,
        )
        return names

    def helm(
        self, *args: str, input: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run helm against this cluster; raises :class:`CommandFailed` with its stderr."""
        return run_tool([str(self.helm_path), *args], self.tool_env(), input, timeout)


def run_tool(
    args: list[str], env: dict[str, str], input: str | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run a CLI, capturing its output; a non-zero exit raises with the output attached."""
    proc = subprocess.run(
        args, env=env, input=input, text=True, capture_output=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise CommandFailed(proc.returncode, args, proc.stdout, proc.stderr)
    return proc


def start_etcd(binary: Path, work_dir: Path, log_dir: Path, started: list[ManagedProcess]) -> str:
    """etcd on free loopback ports with its data in ``work_dir``; returns its client URL.

    Every ``start_*`` appends its process to ``started`` before waiting, so a part that never
    becomes ready is still stopped by the caller.
    """
    client_url = f"http://{HOST}:{free_port()}"
    peer_url = f"http://{HOST}:{free_port()}"
    proc = ManagedProcess(
        "etcd",
        [
            str(binary),
            "--name=default",
            f"--data-dir={work_dir / 'etcd'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            # A test cluster's data is thrown away: skipping fsync makes the API server fast.
            "--unsafe-no-fsync",
        ],
        log_dir,
    )
    started.append(proc)
    wait_until(lambda: etcd_healthy(client_url), START_TIMEOUT, "etcd /health", proc)
    return client_url


def start_apiserver(
    binary: Path,
    *,
    etcd_url: str,
    pki: Path,
    ca: DevCA,
    sa_keys: KeyPair,
    admin: KeyPair,
    log_dir: Path,
    started: list[ManagedProcess],
) -> str:
    """kube-apiserver with client-cert auth, RBAC and service-account tokens; returns its URL."""
    port = free_port()
    server = f"https://{HOST}:{port}"
    # The front-proxy (request-header) CA, as kubeadm sets it up: it lets the controller
    # manager's delegated authentication load a complete configuration (and aggregated API
    # servers work), instead of logging a missing request-header CA forever.
    front_proxy_ca = DevCA(pki, name="front-proxy-ca", key_type="ec")
    front_proxy_client = front_proxy_ca.issue("front-proxy-client", "front-proxy-client")
    serving = ca.issue(
        "apiserver",
        "kube-apiserver",
        dns_names=(
            "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ip_addresses=(HOST, KUBERNETES_SERVICE_IP),
    )  # fmt: skip
    proc = ManagedProcess(
        "kube-apiserver",
        [
            str(binary),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={HOST}",
            f"--advertise-address={HOST}",
            # A loopback address cannot back the `kubernetes` Service's endpoints; nothing here
            # runs pods that would use them, so the reconciler is off.
            "--endpoint-reconciler-type=none",
            f"--secure-port={port}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={ca.cert_path}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            f"--service-account-issuer={server}",
            f"--service-account-key-file={sa_keys.cert}",
            f"--service-account-signing-key-file={sa_keys.key}",
            "--allow-privileged=true",
            f"--requestheader-client-ca-file={front_proxy_ca.cert_path}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={front_proxy_client.cert}",
            f"--proxy-client-key-file={front_proxy_client.key}",
        ],
        log_dir,
    )
    started.append(proc)
    wait_until(
        lambda: apiserver_ready(server, ca.cert_path, admin),
        START_TIMEOUT,
        "kube-apiserver /readyz",
        proc,
        interval=0.2,
    )
    return server


def start_controller_manager(
    binary: Path,
    *,
    kubeconfig: Path,
    pki: Path,
    ca: DevCA,
    sa_keys: KeyPair,
    log_dir: Path,
    started: list[ManagedProcess],
) -> None:
    """kube-controller-manager running :data:`CONTROLLERS`, each with its own service account."""
    port = free_port()
    proc = ManagedProcess(
        "kube-controller-manager",
        [
            str(binary),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={HOST}",
            f"--secure-port={port}",
            f"--cert-dir={pki / 'kube-controller-manager'}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--controllers={','.join(CONTROLLERS)}",
            f"--service-account-private-key-file={sa_keys.key}",
            f"--root-ca-file={ca.cert_path}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        ],
        log_dir,
    )
    started.append(proc)
    wait_until(
        lambda: controller_manager_healthy(port),
        START_TIMEOUT,
        "kube-controller-manager /healthz",
        proc,
        interval=0.2,
    )


@contextlib.contextmanager
def control_plane(
    work_dir: Path, log_dir: Path, crd_dirs: Sequence[Path] = ()
) -> Iterator[KubeCluster]:
    """Build if needed, start etcd, kube-apiserver and kube-controller-manager; stop them after.

    The CRDs in ``crd_dirs`` are installed before the controller manager starts, as a chart
    installs them before its operator: the garbage collector discovers new resource types only
    every 30 s, so owner references to a CRD created later are acted on up to a minute late.
    """
    bins = kube_build.ensure_built()
    for name, path in bins.items():
        if not os.access(path, os.X_OK):
            raise PartFailed(f"{name} was not built at {path}: run tests.testbed.kube_build")
    pki = work_dir / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    ca = DevCA(pki, key_type="ec")
    sa_keys = write_service_account_keys(pki)
    admin = ca.issue("admin", "teams-sbc-test-admin", organizations=("system:masters",))
    kcm_client = ca.issue("kube-controller-manager", "system:kube-controller-manager")
    processes: list[ManagedProcess] = []
    try:
        etcd_url = start_etcd(bins["etcd"], work_dir, log_dir, processes)
        server = start_apiserver(
            bins["kube-apiserver"],
            etcd_url=etcd_url,
            pki=pki,
            ca=ca,
            sa_keys=sa_keys,
            admin=admin,
            log_dir=log_dir,
            started=processes,
        )
        cluster = KubeCluster(
            kubeconfig=write_kubeconfig(
                work_dir / "kubeconfig", server, ca.cert_path, admin, "admin"
            ),
            server=server,
            ca_cert=ca.cert_path,
            admin=admin,
            kubectl_path=bins["kubectl"],
            helm_path=bins["helm"],
            work_dir=work_dir,
            processes=processes,
        )
        for crd_dir in crd_dirs:
            cluster.apply_crds(crd_dir)
        kcm_kubeconfig = write_kubeconfig(
            pki / "kube-controller-manager.kubeconfig",
            server,
            ca.cert_path,
            kcm_client,
            "system:kube-controller-manager",
        )
        start_controller_manager(
            bins["kube-controller-manager"],
            kubeconfig=kcm_kubeconfig,
            pki=pki,
            ca=ca,
            sa_keys=sa_keys,
            log_dir=log_dir,
            started=processes,
        )
        yield cluster
    finally:
        for proc in reversed(processes):
            proc.stop()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Run a control plane with the project's CRDs until Ctrl-C or SIGTERM, for poking at it by
    hand: ``uv run python -m tests.testbed.kube`` prints the ``KUBECONFIG`` to export."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    crd_dirs = [
        Path(__file__).resolve().parents[2] / "deploy" / "crds",
        Path(__file__).resolve().parent / "crds",  # cert-manager's Certificate, for the operator
    ]
    with (
        tempfile.TemporaryDirectory(prefix="teams-sbc-kube-") as tmp,
        control_plane(Path(tmp), Path(tmp) / "logs", crd_dirs=crd_dirs) as cluster,
    ):
        print(f"export KUBECONFIG={cluster.kubeconfig}  # logs in {tmp}/logs", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while all(p.alive() for p in cluster.processes):
                time.sleep(1)
        print("stopping", flush=True)


if __name__ == "__main__":
    main()
