"""Pure renderers: from custom resources to what the operator writes. No I/O here."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

GROUP = "sbc.teams-sbc.io"
VERSION = "v1alpha1"


def tenant_fqdn(subdomain: str, trunk_fqdn: str) -> str:
    """The tenant's SBC FQDN in Microsoft's carrier model: one label under the trunk's base FQDN
    (the tenant pairs it with New-CsOnlinePSTNGateway; the trunk's wildcard certificate covers
    it)."""
    return f"{subdomain}.{trunk_fqdn}"


def condition(
    kind: str, ok: bool, reason: str, message: str, generation: int, now: datetime.datetime
) -> dict[str, Any]:
    """One status condition as the Kubernetes API conventions define it."""
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def merge_conditions(old: list[Mapping[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Replace the condition of the same type; keep its transition time if the status held."""
    out: list[dict[str, Any]] = []
    for cond in old:
        if cond.get("type") == new["type"]:
            if cond.get("status") == new["status"]:
                new = {**new, "lastTransitionTime": cond.get("lastTransitionTime")}
            continue
        out.append(dict(cond))
    out.append(new)
    return sorted(out, key=lambda c: str(c.get("type")))


def tenant_status(
    *,
    spec: Mapping[str, Any],
    generation: int,
    trunk_fqdn: str | None,
    old_conditions: list[Mapping[str, Any]],
    now: datetime.datetime,
) -> dict[str, Any]:
    """A TeamsTenant's status: its FQDN once its trunk is known, and the TrunkFound condition."""
    trunk = spec["trunk"]
    if trunk_fqdn is None:
        cond = condition(
            "TrunkFound",
            False,
            "TrunkNotFound",
            f"no TeamsTrunk {trunk!r} in this namespace; create it or fix spec.trunk",
            generation,
            now,
        )
        return {
            "observedGeneration": generation,
            "conditions": merge_conditions(old_conditions, cond),
        }
    fqdn = tenant_fqdn(spec["subdomain"], trunk_fqdn)
    cond = condition(
        "TrunkFound",
        True,
        "TrunkFound",
        f"served by TeamsTrunk {trunk!r} as {fqdn}",
        generation,
        now,
    )
    return {
        "observedGeneration": generation,
        "fqdn": fqdn,
        "conditions": merge_conditions(old_conditions, cond),
    }
