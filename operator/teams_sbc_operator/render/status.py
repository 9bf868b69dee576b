"""The status the operator writes on TeamsTrunks and TeamsTenants, from the checks it made."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from teams_sbc_operator.render.conditions import (
    Check,
    condition,
    conditions_from,
    merge_conditions,
    ready,
)
from teams_sbc_operator.render.tenants import TenantPlan, tenant_fqdn

#: The trunk's conditions besides Ready, in the order Ready reports them.
TRUNK_CHECKS = ("CertificateReady", "DNSReady", "ConfigApplied", "SBCAvailable")


def trunk_status(
    *,
    generation: int,
    checks: Sequence[Check],
    old: Mapping[str, Any],
    now: datetime.datetime,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """The whole status of a trunk: the checks and Ready as conditions, plus ``extra`` fields
    (tenants, certificate, dns, publicAddresses)."""
    all_checks = [*checks, ready(checks, "the SBC")]
    return {
        **extra,
        "observedGeneration": generation,
        "conditions": conditions_from(all_checks, old.get("conditions") or [], generation, now),
    }


def tenant_checks(
    plan: TenantPlan,
    *,
    trunk_name: str,
    trunk_ready: Check,
    certificate: Check,
    dns: Check,
) -> list[Check]:
    """A served tenant's conditions; Ready last."""
    if plan.problem is None:
        accepted = Check(
            "Accepted", True, "Accepted", f"served by TeamsTrunk {trunk_name!r} as {plan.fqdn}"
        )
    else:
        accepted = Check("Accepted", False, plan.problem[0], plan.problem[1])
    checks = [
        accepted,
        Check(
            "TrunkFound", True, "TrunkFound", f"served by TeamsTrunk {trunk_name!r} as {plan.fqdn}"
        ),
        certificate,
        dns,
    ]
    trunk = Check(
        "TrunkReady",
        trunk_ready.ok,
        "TrunkReady" if trunk_ready.ok else "TrunkNotReady",
        f"TeamsTrunk {trunk_name!r} is ready"
        if trunk_ready.ok
        else f"TeamsTrunk {trunk_name!r} is not ready: {trunk_ready.message}",
    )
    summary = ready([*checks, trunk], "the tenant")
    return [*checks, summary]


def served_tenant_status(
    plan: TenantPlan, checks: Sequence[Check], now: datetime.datetime
) -> dict[str, Any]:
    t = plan.tenant
    return {
        "observedGeneration": t.generation,
        "fqdn": plan.fqdn,
        "conditions": conditions_from(checks, t.status.get("conditions") or [], t.generation, now),
    }


def orphan_tenant_status(
    *, trunk: str, generation: int, old: Mapping[str, Any], now: datetime.datetime
) -> dict[str, Any]:
    """A tenant whose trunk does not exist: TrunkFound and Ready False, no FQDN."""
    message = f"no TeamsTrunk {trunk!r} in this namespace; create it or fix spec.trunk"
    checks = [
        Check("TrunkFound", False, "TrunkNotFound", message),
        Check("Ready", False, "TrunkNotFound", message),
    ]
    kept = [c for c in old.get("conditions") or [] if c.get("type") in ("TrunkFound", "Ready")]
    return {
        "observedGeneration": generation,
        "fqdn": None,
        "conditions": conditions_from(checks, kept, generation, now),
    }


def tenant_status(
    *,
    spec: Mapping[str, Any],
    generation: int,
    trunk_fqdn: str | None,
    old_conditions: list[Mapping[str, Any]],
    now: datetime.datetime,
) -> dict[str, Any]:
    """A TeamsTenant's FQDN once its trunk is known, and the TrunkFound condition alone."""
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
