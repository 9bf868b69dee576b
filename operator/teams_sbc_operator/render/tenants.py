"""Which of a trunk's TeamsTenants it can serve, under which FQDN, and why not where it cannot.

What the CRD's schema cannot see, because it spans objects: two tenants of one trunk with the
same subdomain, or claiming the same numbers. The tenant created first keeps what it claimed; the
later one is told (a condition), not silently dropped.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from teams_sbc_operator.model import NumberRange, Tenant

#: RFC 1035 section 2.3.4: a name is at most 255 octets on the wire, 253 characters as text.
MAX_FQDN = 253


def tenant_fqdn(subdomain: str, trunk_fqdn: str) -> str:
    """The tenant's SBC FQDN in Microsoft's carrier model: one label under the trunk's base FQDN
    (the tenant pairs it with New-CsOnlinePSTNGateway; the trunk's wildcard certificate covers
    it)."""
    return f"{subdomain}.{trunk_fqdn}"


@dataclass(frozen=True)
class TenantPlan:
    """One tenant of the trunk: its FQDN, the numbers it keeps, and what stops it being served
    (reason, message)."""

    tenant: Tenant
    fqdn: str
    problem: tuple[str, str] | None = None
    #: The prefixes and ranges routed to it: its own minus those an older tenant claimed first.
    numbers: tuple[str, ...] = ()
    ranges: tuple[NumberRange, ...] = ()

    @property
    def served(self) -> bool:
        """Does it get a DNS record and a place in the SBC's config?"""
        return self.problem is None or self.problem[0] == "NumbersConflict"


def plan_tenants(
    trunk_fqdn: str, tenants: Iterable[Tenant], policies: Collection[str] = ()
) -> list[TenantPlan]:
    """Plans for the tenants not being deleted, oldest first."""
    alive = sorted((t for t in tenants if not t.deleting), key=lambda t: (t.created, t.name))
    plans: list[TenantPlan] = []
    subdomains: dict[str, str] = {}
    prefixes: dict[str, str] = {}
    ranges: list[tuple[NumberRange, str]] = []
    for t in alive:
        fqdn = tenant_fqdn(t.subdomain, trunk_fqdn)
        if len(fqdn) > MAX_FQDN:
            problem = (
                "FQDNTooLong",
                f"{fqdn} has {len(fqdn)} characters, more than DNS allows ({MAX_FQDN}); "
                "choose a shorter subdomain",
            )
            plans.append(TenantPlan(t, fqdn, problem))
            continue
        if t.subdomain in subdomains:
            problem = (
                "SubdomainConflict",
                f"subdomain {t.subdomain!r} is already used by TeamsTenant "
                f"{subdomains[t.subdomain]!r} on this trunk; choose another",
            )
            plans.append(TenantPlan(t, fqdn, problem))
            continue
        if t.policy is not None and t.policy != "default" and t.policy not in policies:
            known = ", ".join(sorted(policies)) or "none"
            problem = (
                "PolicyNotFound",
                f"policy {t.policy!r} is not in the trunk's spec.policies (it has: {known}); "
                "add it there or fix spec.policy",
            )
            plans.append(TenantPlan(t, fqdn, problem))
            continue
        subdomains[t.subdomain] = t.name
        mine_prefixes = tuple(p for p in t.numbers if p not in prefixes)
        mine_ranges = tuple(r for r in t.ranges if not any(r.overlaps(o) for o, _ in ranges))
        clashes = sorted(
            {f"{p} ({prefixes[p]})" for p in t.numbers if p in prefixes}
            | {
                f"{r.first}..{r.last} ({owner})"
                for mine in t.ranges
                for r, owner in ranges
                if mine.overlaps(r)
            }
        )
        conflict: tuple[str, str] | None = None
        if clashes:
            more = f" and {len(clashes) - 5} more" if len(clashes) > 5 else ""
            conflict = (
                "NumbersConflict",
                "numbers already routed to another tenant of this trunk: "
                + ", ".join(clashes[:5])
                + more
                + "; calls to them keep going to that tenant",
            )
        for p in mine_prefixes:
            prefixes[p] = t.name
        ranges.extend((r, t.name) for r in mine_ranges)
        plans.append(TenantPlan(t, fqdn, conflict, mine_prefixes, mine_ranges))
    return plans
