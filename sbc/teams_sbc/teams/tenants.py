"""Which tenant a call belongs to (Microsoft: "Configure an SBC for multiple tenants").

- From Teams: Teams puts the FQDN of the trunk it routed the call to in the Request-URI host
  (and in To); in the carrier model that FQDN is the tenant's subdomain of the base FQDN, and
  it is the only tenant marker there is (no tenant-id header). The seed article: "Your SBC will
  be able to detect which tenant account to use ... because the subdomain will appear in the
  R-URI and the To header." Request-URI host first, To host as fallback.
- From the carrier: by a configurable header naming the tenant, else by the called number:
  per-tenant E.164 prefixes or ranges, longest (most specific) match over all tenants.
- Unknown: a clear rejection (404 or 403 with a reason phrase), logged by the caller.

Sans-IO: built once from the config; lookups are pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from teams_sbc.teams.config import Policy, TeamsConfig, parse_number_spec


@dataclass(frozen=True, slots=True)
class TenantInfo:
    """What a call needs to know about its tenant. ``name`` is None for the base trunk."""

    name: str | None
    fqdn: str
    policy: Policy
    carrier_next_hop: str

    @property
    def label(self) -> str:
        """For logs and metric labels: the tenant's name, or ``base``."""
        return self.name or "base"


@dataclass(frozen=True, slots=True)
class NoTenant:
    """Why no tenant was found: the status and reason phrase to answer with."""

    status: int
    reason: str


class Tenants:
    """The trunk's tenants by FQDN, by name and by number."""

    def __init__(self, config: TeamsConfig) -> None:
        self.config = config
        default = config.policy("default")
        self.base = TenantInfo(None, config.fqdn, default, config.carrier.next_hop)
        self._by_fqdn: dict[str, TenantInfo] = {config.fqdn: self.base}
        self._by_name: dict[str, TenantInfo] = {}
        self._prefixes: dict[str, TenantInfo] = {}
        self._ranges: list[tuple[str, str, TenantInfo]] = []
        for tenant in config.tenants:
            info = TenantInfo(
                tenant.name,
                tenant.fqdn_under(config.fqdn),
                config.policy(tenant.policy),
                tenant.carrier_next_hop or config.carrier.next_hop,
            )
            self._by_fqdn[info.fqdn] = info
            self._by_name[tenant.name] = info
            for spec in tenant.numbers:
                low, high = parse_number_spec(spec)
                if low == high:
                    self._prefixes.setdefault(low, info)
                else:
                    self._ranges.append((low, high, info))
        self._prefix_lengths = sorted({len(p) for p in self._prefixes}, reverse=True)

    @property
    def multi_tenant(self) -> bool:
        return bool(self._by_name)

    def fqdns(self) -> list[str]:
        """Every FQDN the SBC answers to towards Teams: the base and each tenant's."""
        return list(self._by_fqdn)

    def by_fqdn(self, host: str) -> TenantInfo | None:
        return self._by_fqdn.get(host.lower().rstrip("."))

    def by_name(self, name: str) -> TenantInfo | None:
        return self._by_name.get(name)

    # -- calls from Teams -------------------------------------------------------------------

    def from_teams(self, ruri_host: str | None, to_host: str | None) -> TenantInfo | NoTenant:
        """The tenant of a new request from Teams: the Request-URI host, else the To host."""
        for host in (ruri_host, to_host):
            if host:
                found = self.by_fqdn(host)
                if found is not None:
                    return found
        return NoTenant(404, f"Not Found (no trunk {ruri_host or to_host or '?'} here)")

    # -- calls from the carrier ---------------------------------------------------------------

    def from_carrier(self, number: str | None, header_value: str | None) -> TenantInfo | NoTenant:
        """The tenant of a new call towards Teams: the tenant header when configured and
        present (a tenant's name or FQDN), else the called number (E.164 with `+`)."""
        status = self.config.unknown_tenant_status
        if header_value is not None:
            value = header_value.strip().lower()
            found = self._by_name.get(value) or self.by_fqdn(value)
            if found is None:
                return NoTenant(status, f"Unknown tenant {value[:64]!r}")
            return found
        if not self.multi_tenant:
            return self.base
        if number is None:
            return NoTenant(status, "Called number not in E.164")
        found = self.by_number(number)
        if found is None:
            return NoTenant(status, f"No tenant for {number}")
        return found

    def by_number(self, number: str) -> TenantInfo | None:
        """Longest match: a range (its full length) or the longest prefix; ties go to the
        tenant listed first."""
        best: tuple[int, TenantInfo] | None = None
        for low, high, info in self._ranges:
            in_range = len(number) == len(low) and low <= number <= high
            if in_range and (best is None or len(low) > best[0]):
                best = (len(low), info)
        for length in self._prefix_lengths:
            if best is not None and best[0] >= length:
                break
            found = self._prefixes.get(number[:length])
            if found is not None and len(number) >= length:
                best = (length, found)
                break
        return None if best is None else best[1]
