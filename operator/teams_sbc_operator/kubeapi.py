"""A small asyncio client for the Kubernetes API: get, list, server-side apply, patch, create,
delete, on the operator's event loop (aiohttp), with every request counted in the metrics.

Credentials come from the same places kubectl and kopf look: the pod's service account inside a
cluster, else ``$KUBECONFIG`` / ``~/.kube/config`` (read with the kubernetes package's loader,
which also refreshes expiring tokens).
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from teams_sbc_operator import metrics
from teams_sbc_operator.render.objects import FIELD_MANAGER

#: kind -> (plural, namespaced) for the kinds the operator applies.
PLURALS: dict[str, str] = {
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Service": "services",
    "Deployment": "deployments",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "Certificate": "certificates",
    "DNSEndpoint": "dnsendpoints",
    "TeamsTrunk": "teamstrunks",
    "TeamsTenant": "teamstenants",
    "Event": "events",
    "Pod": "pods",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
}


class ApiError(Exception):
    """The API server said no; ``status`` is the HTTP status, the message is the server's."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def resource_path(
    api_version: str, plural: str, namespace: str | None, name: str | None = None
) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if namespace is not None:
        base += f"/namespaces/{quote(namespace)}"
    base += f"/{plural}"
    if name is not None:
        base += f"/{quote(name)}"
    return base


class KubeApi:
    """One connection pool to the API server, used from the operator's event loop."""

    def __init__(self, configuration: Any) -> None:
        self._config = configuration
        self.host = str(configuration.host).rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool = self._ssl_context()

    @classmethod
    def from_environment(cls) -> KubeApi:
        from kubernetes import client, config

        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return cls(configuration)

    def _ssl_context(self) -> ssl.SSLContext | bool:
        cfg = self._config
        if not self.host.startswith("https"):
            return False
        context = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        if not cfg.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
        return context

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        # The client keeps a token under "BearerToken" (in-cluster and kubeconfig tokens alike;
        # older versions used "authorization").
        token = self._config.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token:
            headers["Authorization"] = token
        return headers

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str | None = None,
        params: Mapping[str, str] | None = None,
        kind: str = "",
    ) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=16),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        data = None if body is None else json.dumps(body)
        started = time.monotonic()
        async with self._session.request(
            method,
            self.host + path,
            data=data,
            params=params,
            headers=self._headers(content_type if body is not None else None),
        ) as response:
            text = await response.text()
        verb = "apply" if content_type == "application/apply-patch+yaml" else method.lower()
        metrics.API_REQUESTS.labels(
            verb=verb, kind=kind or "other", code=str(response.status)
        ).inc()
        metrics.API_LATENCY.observe(time.monotonic() - started)
        if response.status >= 400:
            try:
                status = json.loads(text)
                message = str(status.get("message", text))
                reason = str(status.get("reason", response.reason))
            except ValueError:
                message, reason = text, str(response.reason)
            raise ApiError(response.status, reason, message)
        return json.loads(text) if text else None

    # -- verbs ------------------------------------------------------------------------------

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        try:
            return dict(
                await self.request(
                    "GET", resource_path(api_version, PLURALS[kind], namespace, name), kind=kind
                )
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        reply = await self.request(
            "GET", resource_path(api_version, PLURALS[kind], namespace), params=params, kind=kind
        )
        return [dict(item) for item in reply.get("items", [])]

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply under the operator's one field manager, taking over fields someone
        else changed (that is how drift is corrected). An unchanged object is not written: the
        API server keeps its resourceVersion."""
        meta = obj["metadata"]
        path = resource_path(
            obj["apiVersion"], PLURALS[obj["kind"]], meta.get("namespace"), meta["name"]
        )
        return dict(
            await self.request(
                "PATCH",
                path,
                body=obj,
                content_type="application/apply-patch+yaml",
                params={"fieldManager": FIELD_MANAGER, "force": "true"},
                kind=obj["kind"],
            )
        )

    async def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        subresource: str | None = None,
        patch_type: str = "application/merge-patch+json",
    ) -> dict[str, Any]:
        path = resource_path(api_version, PLURALS[kind], namespace, name)
        if subresource:
            path += f"/{subresource}"
        return dict(
            await self.request(
                "PATCH",
                path,
                body=patch,
                content_type=patch_type,
                params={"fieldManager": FIELD_MANAGER},
                kind=kind,
            )
        )

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], PLURALS[obj["kind"]], meta.get("namespace"))
        return dict(
            await self.request(
                "POST", path, body=obj, params={"fieldManager": FIELD_MANAGER}, kind=obj["kind"]
            )
        )

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        try:
            await self.request(
                "DELETE", resource_path(api_version, PLURALS[kind], namespace, name), kind=kind
            )
        except ApiError as exc:
            if exc.status != 404:
                raise
