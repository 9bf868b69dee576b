"""The operator's own API client (teams_sbc_operator.kubeapi) authenticates as the pod's service
account: in a cluster it has a token, not the client certificate the other tests' kubeconfig
holds. (tests/test_image.py runs the whole operator from its image this way.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client
from kubernetes.config.incluster_config import InClusterConfigLoader

from teams_sbc_operator.kubeapi import KubeApi
from tests.testbed.kube import KubeCluster


def test_in_cluster_token_reaches_the_api_server(
    kube_cluster: KubeCluster, kube_namespace: str, tmp_path: Path
) -> None:
    kube_cluster.kubectl("create", "serviceaccount", "probe", "-n", kube_namespace)
    token = kube_cluster.kubectl("create", "token", "probe", "-n", kube_namespace).stdout
    (tmp_path / "token").write_text(token.strip())
    server = urlsplit(kube_cluster.server)
    configuration = client.Configuration()
    # What load_incluster_config does in a pod, with the files where the test keeps them.
    InClusterConfigLoader(
        token_filename=str(tmp_path / "token"),
        cert_filename=str(kube_cluster.ca_cert),
        environ={
            "KUBERNETES_SERVICE_HOST": str(server.hostname),
            "KUBERNETES_SERVICE_PORT": str(server.port),
        },
    ).load_and_set(configuration)  # type: ignore[no-untyped-call]
    api = KubeApi(configuration)

    async def whoami() -> Any:
        try:
            return await api.request(
                "POST",
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
                content_type="application/json",
            )
        finally:
            await api.close()

    review = asyncio.run(whoami())
    assert review["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{kube_namespace}:probe"
    )
