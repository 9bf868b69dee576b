"""kopf handlers: they read the cluster, call the pure renderers and write status. Nothing else.

This is the operator's first slice: a TeamsTenant learns its FQDN from its TeamsTrunk and says
whether the trunk exists. Certificates, DNS, SBC config and pods follow (issue 6).
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kopf

from teams_sbc_operator.render import GROUP, VERSION, tenant_status

log = logging.getLogger("teams_sbc_operator")

#: How long a tenant waits before looking for a missing trunk again.
RETRY_MISSING_TRUNK = 10.0


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.execution.max_workers = 8


@kopf.index(GROUP, VERSION, "teamstrunks")
def trunk_fqdns(*, namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
    """TeamsTrunk FQDNs by (namespace, name), kept current by kopf from its watch stream."""
    return {(namespace, name): spec.get("fqdn")}


@kopf.on.resume(GROUP, VERSION, "teamstenants")
@kopf.on.create(GROUP, VERSION, "teamstenants")
@kopf.on.update(GROUP, VERSION, "teamstenants", field="spec")
def reconcile_tenant(
    *,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    namespace: str | None,
    name: str,
    patch: kopf.Patch,
    **kwargs: Any,
) -> None:
    trunks: kopf.Index[Any, Any] = kwargs["trunk_fqdns"]  # kopf passes indices by name
    found = list(trunks.get((namespace, spec["trunk"]), []))
    trunk_fqdn = found[0] if found else None
    new = tenant_status(
        spec=spec,
        generation=int(meta.get("generation", 0)),
        trunk_fqdn=trunk_fqdn,
        old_conditions=list(status.get("conditions", [])),
        now=datetime.datetime.now(datetime.UTC),
    )
    patch.status.update(new)
    if trunk_fqdn is None:
        log.info("tenant waits for its trunk", extra={"tenant": f"{namespace}/{name}"})
        raise kopf.TemporaryError(
            f"TeamsTrunk {spec['trunk']!r} not found", delay=RETRY_MISSING_TRUNK
        )
