"""kopf handlers: they decide when a TeamsTrunk needs a pass and hand it to the reconciler.

- every TeamsTrunk has a daemon (reconciler.Reconciler.run) that makes a pass when woken, and at
  least every ``resync`` seconds;
- events wake it: its own spec changing, one of its tenants changing, an object it owns changing
  or disappearing behind its back (drift), a Secret it reads changing (a renewed certificate);
  the operator's own writes come back as events too and are recognised by their
  resourceVersion, so they wake nothing;
- a TeamsTenant without its trunk says so in its status (write_orphan_status);
- deleting a TeamsTrunk first removes its DNS records (kopf's finalizer), then lets the garbage
  collector take the objects it owns.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from teams_sbc_operator import metrics
from teams_sbc_operator.dnsrecords import DnsError
from teams_sbc_operator.kubeapi import KubeApi
from teams_sbc_operator.model import GROUP, VERSION, Tenant, Trunk
from teams_sbc_operator.reconciler import (
    DNS_FINALIZER,
    Key,
    Reconciler,
    Settings,
    set_finalizer,
    write_orphan_status,
)
from teams_sbc_operator.render.objects import FIELD_MANAGER, TRUNK_LABEL

log = logging.getLogger("teams_sbc_operator")

#: Set by main() before kopf.run.
SETTINGS = Settings()
_reconciler: Reconciler | None = None
#: Per tenant: what of it wakes its trunk when it changes (generation, deleting, trunk).
_seen: dict[Key, tuple[int, bool, str]] = {}


def reconciler() -> Reconciler:
    if _reconciler is None:
        raise RuntimeError("the operator has not started")
    return _reconciler


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _reconciler
    settings.persistence.finalizer = f"{GROUP}/cleanup"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    _reconciler = Reconciler(KubeApi.from_environment(), SETTINGS)


@kopf.on.cleanup()
async def close(**_: Any) -> None:
    if _reconciler is not None:
        await _reconciler.api.close()


# -- indices (kopf keeps them current from its watches, and fills them before any handler) ---


@kopf.index(GROUP, VERSION, "teamstrunks")
def trunk_fqdns(*, namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
    """TeamsTrunk FQDNs by (namespace, name)."""
    return {(namespace, name): spec.get("fqdn")}


@kopf.index(GROUP, VERSION, "teamstenants")
def tenants_by_trunk(
    *, namespace: str | None, body: kopf.Body, spec: kopf.Spec, **_: Any
) -> dict[Any, Any]:
    """Whole TeamsTenant bodies by (namespace, trunk name)."""
    return {(namespace, spec.get("trunk")): dict(body)}


# -- trunks ----------------------------------------------------------------------------------


@kopf.daemon(GROUP, VERSION, "teamstrunks", cancellation_backoff=10.0, cancellation_timeout=30.0)
async def trunk_daemon(
    *, namespace: str | None, name: str, body: kopf.Body, stopped: Any, **kwargs: Any
) -> None:
    namespace = namespace or ""
    index: kopf.Index[Any, Any] = kwargs["tenants_by_trunk"]
    await reconciler().run((namespace, name), body, stopped, lambda key: list(index.get(key, [])))


@kopf.on.event(GROUP, VERSION, "teamstrunks")
async def trunk_event(*, namespace: str | None, name: str, meta: kopf.Meta, **_: Any) -> None:
    namespace = namespace or ""
    state = reconciler().states.get((namespace, name))
    generation = int(meta.get("generation") or 0)
    if state is not None and state.generation != generation:
        state.generation = generation
        state.wake.set()


@kopf.on.delete(GROUP, VERSION, "teamstrunks")
async def trunk_deleted(
    *, namespace: str | None, name: str, body: kopf.Body, retry: int, **kwargs: Any
) -> None:
    """Only the DNS records need the trunk's help to go; the garbage collector takes the rest."""
    namespace = namespace or ""
    rec = reconciler()
    trunk = Trunk.from_body(body)
    # kopf stops the trunk's daemon at the same time; a pass it is in the middle of would
    # otherwise write its tenants' statuses (TrunkNotReady) after the TrunkNotFound below.
    await rec.close((namespace, name))
    try:
        await rec.remove_all_dns(trunk, body)
    except DnsError as exc:
        raise kopf.TemporaryError(
            f"{exc.message}; the TeamsTrunk stays until its DNS records are removed (remove "
            "spec.dns to leave them)",
            delay=min(5.0 * 2**retry, 300.0),
        ) from exc
    index: kopf.Index[Any, Any] = kwargs["tenants_by_trunk"]
    for tenant_body in list(index.get((namespace, name), [])):
        tenant = Tenant.from_body(tenant_body)
        if DNS_FINALIZER in tenant.finalizers:
            await set_finalizer(rec.api, tenant, present=False)
        if not tenant.deleting:
            await write_orphan_status(rec.api, tenant)
    rec.states.pop((namespace, name), None)
    metrics.forget_trunk(namespace, name)


# -- tenants ---------------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, "teamstenants")
async def tenant_event(
    *, type: str, body: kopf.Body, namespace: str | None, name: str, **kwargs: Any
) -> None:
    namespace = namespace or ""
    rec = reconciler()
    key = (namespace, name)
    tenant = Tenant.from_body(body)
    before = _seen.get(key)
    if type == "DELETED":
        _seen.pop(key, None)
        rec.wake((namespace, tenant.trunk))
        return
    now = (tenant.generation, tenant.deleting, tenant.trunk)
    if before != now:
        _seen[key] = now
        rec.wake((namespace, tenant.trunk))
        if before is not None and before[2] != tenant.trunk:
            rec.wake((namespace, before[2]))
    trunks: kopf.Index[Any, Any] = kwargs["trunk_fqdns"]
    if (namespace, tenant.trunk) in trunks:
        return
    if tenant.deleting:
        if DNS_FINALIZER in tenant.finalizers:
            await set_finalizer(rec.api, tenant, present=False)
    else:
        await write_orphan_status(rec.api, tenant)


# -- what trunks own, and the Secrets they read ----------------------------------------------

MANAGED = {"app.kubernetes.io/managed-by": FIELD_MANAGER}


def _owned_event(kind: str) -> Any:
    async def handler(
        *,
        type: str,
        body: kopf.Body,
        namespace: str | None,
        name: str,
        labels: kopf.Labels,
        **_: Any,
    ) -> None:
        namespace = namespace or ""
        rec = reconciler()
        key = (namespace, str(labels.get(TRUNK_LABEL, "")))
        rv = str(body.get("metadata", {}).get("resourceVersion", ""))
        if type == "DELETED" or not rec.owns_version(key, kind, name, rv):
            rec.wake(key)

    return handler


#: What trunks own, by (group, version, plural) and kind. kopf skips the ones a cluster does not
#: serve (no cert-manager, no external-dns) and starts watching them when their CRD appears.
OWNED_KINDS = [
    ("", "v1", "configmaps", "ConfigMap"),
    ("", "v1", "services", "Service"),
    ("apps", "v1", "deployments", "Deployment"),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    ("", "v1", "serviceaccounts", "ServiceAccount"),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    ("cert-manager.io", "v1", "certificates", "Certificate"),
    ("externaldns.k8s.io", "v1alpha1", "dnsendpoints", "DNSEndpoint"),
]
for _group, _version, _plural, _kind in OWNED_KINDS:
    kopf.on.event(_group, _version, _plural, labels=MANAGED, id=f"owned_{_kind.lower()}")(
        _owned_event(_kind)
    )


@kopf.on.event("", "v1", "pods", labels=MANAGED, id="sbc_pod")
async def sbc_pod_event(*, namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    """An SBC pod came, went or reported Microsoft's state (its annotation): TeamsReachable."""
    trunk = str(labels.get(TRUNK_LABEL, ""))
    if trunk:
        reconciler().wake((namespace or "", trunk))


def _read_by_a_trunk(*, namespace: str | None, name: str, **_: Any) -> bool:
    return _reconciler is not None and bool(
        _reconciler.trunks_reading_secret(namespace or "", name)
    )


@kopf.on.event("v1", "secrets", when=_read_by_a_trunk)
async def secret_event(
    *, type: str, body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> None:
    namespace = namespace or ""
    rec = reconciler()
    rv = str(body.get("metadata", {}).get("resourceVersion", ""))
    for key in rec.trunks_reading_secret(namespace, name):
        if type == "DELETED" or not rec.owns_version(key, "Secret", name, rv):
            rec.wake(key)
