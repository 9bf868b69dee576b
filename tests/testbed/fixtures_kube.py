"""pytest fixtures for the Kubernetes parts of the test bed (a plugin loaded by tests/conftest.py).

``kube_cluster`` (session): a running etcd + kube-apiserver + kube-controller-manager, see
:class:`tests.testbed.kube.KubeCluster`. ``kube_namespace`` (function): a fresh namespace, deleted
after the test. ``helm_binary`` (session): the built helm, for tests that need no cluster.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testbed import kube_build
from tests.testbed.kube import KubeCluster, control_plane

#: The project's CRDs, installed when the cluster starts (see :func:`control_plane` for why).
CRD_DIR = Path(__file__).resolve().parents[2] / "deploy" / "crds"
#: Other projects' CRDs the operator writes objects of (cert-manager's Certificate), written for
#: the test bed from their documented schemas; their controllers do not run here.
TESTBED_CRD_DIR = Path(__file__).resolve().parent / "crds"
KUBE_FIXTURES = {"kube_cluster", "kube_namespace", "helm_binary"}


def pytest_collection_modifyitems(session: pytest.Session, items: list[pytest.Item]) -> None:
    """Build the binaries before any test runs when a selected test needs them.

    The first build takes many minutes; doing it here keeps it outside the per-test timeout, and
    runs that select no Kubernetes test do not pay for it. When cached this takes milliseconds.
    """
    if session.config.option.collectonly:
        return
    if any(KUBE_FIXTURES & set(getattr(item, "fixturenames", ())) for item in items):
        if not kube_build.is_built():
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(
                    "building kube-apiserver, kube-controller-manager, kubectl, etcd and helm "
                    "(first time only, see docs/testing-kube.md) ..."
                )
        kube_build.ensure_built()


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """A real control plane with the project's CRDs (and cert-manager's Certificate), for the whole
    session; stopped at its end."""
    work_dir = tmp_path_factory.mktemp("kube")
    crd_dirs = [CRD_DIR, TESTBED_CRD_DIR]
    with control_plane(work_dir, work_dir / "logs", crd_dirs=crd_dirs) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    """The helm built with the cluster binaries (``helm lint``/``template`` need no cluster)."""
    return kube_build.ensure_built()["helm"]


def _namespace_name(test_name: str) -> str:
    """A unique DNS-label namespace name that still says which test made it."""
    stem = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].rstrip("-")
    return f"{stem or 'test'}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test; deleted afterwards (the namespace controller empties it)."""
    from kubernetes import client  # late import: see KubeCluster.api_client

    name = _namespace_name(request.node.name)
    with kube_cluster.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        try:
            yield name
        finally:
            core.delete_namespace(name)
