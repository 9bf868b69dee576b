"""One pass over a TeamsTrunk and its tenants: read what is there, call the pure renderers,
apply what they return, and write status. The kopf handlers (handlers.py) decide when a pass
runs; this module decides what a pass does.

A pass, in order (each step ends in one condition and never stops the steps after it):

1. tenants: which the trunk serves, under which FQDN (:mod:`.render.tenants`);
2. certificate: the Secret's certificate checked against the base and every tenant FQDN, made
   first by cert-manager or the dev CA when the trunk asks (``CertificateReady``);
3. config and pods: the ConfigMap with the SBC's config, the Deployment, Service and
   PodDisruptionBudget, applied server-side under one field manager (``ConfigApplied``,
   ``SBCAvailable`` from the Deployment's status);
4. DNS: A/AAAA records for every name at the public address (``DNSReady``), with its own
   back-off when the server is unreachable;
5. status: the trunk's and each tenant's, written only where something changed; events for
   conditions that changed.

Passes are batched: every change that arrives while a pass is waiting or running (500 tenants
applied at once) is served by the next single pass, so the ConfigMap is written once per batch,
not once per tenant.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

from teams_sbc.config import ConfigError, parse_config
from teams_sbc.reload import restart_digest
from teams_sbc_operator import certs, metrics
from teams_sbc_operator.dnsrecords import DnsError, DnsTarget, DnsUpdater, Outcome, owner_text
from teams_sbc_operator.kubeapi import ApiError, KubeApi
from teams_sbc_operator.model import API_VERSION, GROUP, Tenant, Trunk
from teams_sbc_operator.render import certificate as render_cert
from teams_sbc_operator.render import dns as render_dns
from teams_sbc_operator.render import workload
from teams_sbc_operator.render.conditions import Check, ready, transitions, without_times
from teams_sbc_operator.render.objects import (
    NOT_FOR_MICROSOFT,
    dev_ca_secret_name,
    selector_labels,
)
from teams_sbc_operator.render.reachability import CONDITION, teams_reachable
from teams_sbc_operator.render.sbc_config import config_yaml, render_sbc_config
from teams_sbc_operator.render.status import (
    orphan_tenant_status,
    served_tenant_status,
    tenant_checks,
    trunk_status,
)
from teams_sbc_operator.render.tenants import TenantPlan, plan_tenants

log = logging.getLogger("teams_sbc_operator")

#: The finalizer on tenants whose name the operator published in DNS: the record goes first.
DNS_FINALIZER = f"{GROUP}/dns-records"
#: RFC 2136 updates in flight at once (the server applies them one by one anyway).
DNS_CONCURRENCY = 4

Key = tuple[str, str]


@dataclass(frozen=True)
class Settings:
    """What the command line sets (main.py)."""

    sbc_image: str = "ghcr.io/teams-sbc/teams-sbc:latest"
    rtpengine_image: str = "ghcr.io/teams-sbc/rtpengine:latest"
    #: Wait this long after a change before a pass, so changes arriving together share it.
    debounce: float = 0.5
    #: A pass at least this often, even when nothing changed (certificate expiry, DNS drift).
    resync: float = 300.0
    dns_retry_min: float = 5.0
    dns_retry_max: float = 300.0
    dns_timeout: float = 3.0
    #: At most this many tenant status writes in flight.
    status_concurrency: int = 8


@dataclass
class TrunkState:
    """What the operator remembers about one trunk between passes (lost on restart, by design:
    everything here can be rebuilt from the cluster and the DNS server)."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    generation: int = -1
    #: Names the trunk owns in DNS (seeded from status.dns.names).
    dns_names: set[str] | None = None
    #: name -> (addresses, ttl, zone) last written successfully, to skip unchanged updates.
    dns_written: dict[str, tuple[tuple[str, ...], int, str]] = field(default_factory=dict)
    dns_retry_at: float = 0.0
    dns_backoff: float = 0.0
    dns_failure: Check | None = None
    dns_full_at: float = 0.0
    dns_target: DnsTarget | None = None
    #: Per-name outcomes of the last DNS pass, and the addresses it published.
    dns_outcomes: dict[str, Outcome] = field(default_factory=dict)
    dns_addresses: tuple[str, ...] = ()
    error_backoff: float = 0.0
    next_pass_at: float = 0.0
    #: resourceVersions of the objects the operator applied (kind/name -> rv).
    applied: dict[str, str] = field(default_factory=dict)
    #: Secrets this trunk reads (certificate, TSIG key), to wake it when they change.
    secrets: set[str] = field(default_factory=set)
    #: Held for the length of a pass; the deletion handler takes it to let a pass in progress
    #: finish before it writes what the trunk's end means (no pass starts once ``closed``).
    passing: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: teams_sbc.reload.restart_digest of the config last written to the ConfigMap: on the pod
    #: template, so what the SBC cannot reload rolls the pods.
    restart_digest: str | None = None
    closed: bool = False


class Reconciler:
    """All trunks' states and the pass itself."""

    def __init__(self, api: KubeApi, settings: Settings) -> None:
        self.api = api
        self.settings = settings
        self.states: dict[Key, TrunkState] = {}
        self._status_gate = asyncio.Semaphore(settings.status_concurrency)

    def state(self, key: Key) -> TrunkState:
        if key not in self.states:
            self.states[key] = TrunkState()
        return self.states[key]

    async def close(self, key: Key) -> None:
        """No more passes for this trunk; returns once a pass in progress has finished (its
        writes, e.g. its tenants' statuses, must not land after the deletion handler's)."""
        state = self.states.get(key)
        if state is None:
            return
        state.closed = True
        async with state.passing:
            pass

    def wake(self, key: Key) -> None:
        if key in self.states:
            self.states[key].wake.set()

    def trunks_reading_secret(self, namespace: str, name: str) -> list[Key]:
        return [k for k, s in self.states.items() if k[0] == namespace and name in s.secrets]

    def owns_version(self, key: Key, kind: str, name: str, rv: str) -> bool:
        """Is ``rv`` the version the operator itself wrote (so the event is its own echo)?"""
        state = self.states.get(key)
        return state is not None and state.applied.get(f"{kind}/{name}") == rv

    # -- the loop ---------------------------------------------------------------------------

    async def run(
        self,
        key: Key,
        body: kopf.Body,
        stopped: Any,
        tenants_of: Callable[[Key], Iterable[Mapping[str, Any]]],
    ) -> None:
        """The trunk's daemon: a pass now, then one after every wake-up (debounced) and at
        least every ``resync`` seconds, until kopf stops it."""
        state = self.state(key)
        state.wake.set()
        stop = asyncio.ensure_future(_flag(stopped))
        try:
            while not stopped:
                timeout = max(0.0, state.next_pass_at - time.monotonic())
                waker = asyncio.ensure_future(state.wake.wait())
                await asyncio.wait({waker, stop}, timeout=timeout, return_when="FIRST_COMPLETED")
                waker.cancel()
                if stopped:
                    break
                if state.wake.is_set() and self.settings.debounce:
                    await asyncio.wait({stop}, timeout=self.settings.debounce)
                    if stopped:
                        break
                state.wake.clear()
                trunk = Trunk.from_body(body)
                if trunk.deleting:
                    break
                tenants = [Tenant.from_body(b) for b in tenants_of(key)]
                async with state.passing:
                    if state.closed:
                        break
                    await self.pass_once(trunk, body, tenants, state)
        finally:
            stop.cancel()

    async def pass_once(
        self, trunk: Trunk, body: Mapping[str, Any], tenants: list[Tenant], state: TrunkState
    ) -> None:
        started = time.monotonic()
        try:
            result = await self.reconcile(trunk, body, tenants, state)
        except Exception as exc:  # never let one pass kill the trunk's daemon
            log.exception("pass failed", extra={"trunk": f"{trunk.namespace}/{trunk.name}"})
            metrics.RECONCILIATIONS.labels(result="error").inc()
            metrics.ERRORS.labels(step="pass", reason=type(exc).__name__).inc()
            state.error_backoff = min(max(1.0, state.error_backoff * 2), 60.0)
            state.next_pass_at = time.monotonic() + state.error_backoff
            return
        finally:
            metrics.DURATION.observe(time.monotonic() - started)
        state.error_backoff = 0.0
        metrics.RECONCILIATIONS.labels(result=result).inc()
        deadline = time.monotonic() + self.settings.resync
        if state.dns_retry_at > time.monotonic():
            deadline = min(deadline, state.dns_retry_at)
        state.next_pass_at = deadline

    # -- one pass ---------------------------------------------------------------------------

    async def reconcile(
        self, trunk: Trunk, body: Mapping[str, Any], tenants: list[Tenant], state: TrunkState
    ) -> str:
        now = datetime.datetime.now(datetime.UTC)
        plans = plan_tenants(trunk.fqdn, tenants, trunk.policies.keys())
        served = [p for p in plans if p.served]
        names = [trunk.fqdn, *(p.fqdn for p in served)]
        where = {"trunk": f"{trunk.namespace}/{trunk.name}"}
        state.secrets = {trunk.certificate.secret_name}
        if trunk.dns:
            state.secrets.add(trunk.dns.secret_name)

        cert_check, report, cert_fields = await self.certificate_step(trunk, names, now, state)
        service, service_problem = await self.service_step(trunk, state)
        cluster_ip = str(((service or {}).get("spec") or {}).get("clusterIP") or "") or None
        config_check = await self.config_step(trunk, served, cluster_ip, state)
        sbc_check = service_problem or await self.workload_step(trunk, state)
        addresses = self.public_addresses(trunk, service)
        dns_check = await self.dns_step(trunk, served, addresses, body, state)
        await self.tenant_finalizers(trunk, tenants, state)

        checks = [cert_check, dns_check, config_check, sbc_check]
        old_status = dict(body.get("status") or {})
        extra: dict[str, Any] = {
            "tenants": len(served),
            "publicAddresses": list(addresses) or None,
            "certificate": cert_fields,
            "dns": (
                {"zone": trunk.dns.zone, "names": sorted(state.dns_names or ())}
                if trunk.dns
                else None
            ),
        }
        reachable, extra["teamsProxies"] = await self.reachability_step(trunk)
        new_status = trunk_status(
            generation=trunk.generation,
            checks=checks,
            old=old_status,
            now=now,
            extra=extra,
            informational=[reachable],
        )
        await self.write_trunk_status(trunk, body, old_status, new_status)
        for c in [*checks, ready(checks, "")]:
            metrics.CONDITION.labels(trunk.namespace, trunk.name, c.type).set(1 if c.ok else 0)
        metrics.TENANTS.labels(trunk.namespace, trunk.name).set(len(served))
        if report is not None:
            metrics.CERTIFICATE_DAYS_LEFT.labels(trunk.namespace, trunk.name).set(report.days_left)

        trunk_ready = ready(checks, "the SBC")
        await self.write_tenant_statuses(
            trunk, plans, report, cert_check, dns_check, trunk_ready, state, now
        )
        log.info(
            "pass done",
            extra={**where, "tenants": len(served), "ready": trunk_ready.ok,
                   "reason": trunk_ready.reason},
        )  # fmt: skip
        return "ok" if trunk_ready.ok else "degraded"

    # -- certificate ------------------------------------------------------------------------

    async def certificate_step(
        self, trunk: Trunk, names: Sequence[str], now: datetime.datetime, state: TrunkState
    ) -> tuple[Check, certs.CertificateReport | None, dict[str, Any] | None]:
        spec = trunk.certificate
        try:
            if spec.source == "cert-manager":
                issued = await self.apply(trunk, render_cert.cert_manager_certificate(trunk), state)
                secret = await self.api.get("v1", "Secret", trunk.namespace, spec.secret_name)
                if secret is None:
                    return self._issuing(trunk, issued), None, None
            elif spec.source == "dev-ca":
                problem = await self.ensure_dev_certificate(trunk, names, now, state)
                if problem is not None:
                    return problem, None, None
                secret = await self.api.get("v1", "Secret", trunk.namespace, spec.secret_name)
            else:
                secret = await self.api.get("v1", "Secret", trunk.namespace, spec.secret_name)
        except ApiError as exc:
            metrics.ERRORS.labels(step="certificate", reason=exc.reason).inc()
            return Check("CertificateReady", False, "APIError", exc.message), None, None
        if secret is None:
            return (
                Check(
                    "CertificateReady",
                    False,
                    "SecretNotFound",
                    f"no Secret {spec.secret_name!r} in namespace {trunk.namespace!r}: create a "
                    f"kubernetes.io/tls Secret with a certificate for {trunk.fqdn} and "
                    f"*.{trunk.fqdn}, or set spec.certificate.issuerRef for cert-manager",
                ),
                None,
                None,
            )
        try:
            cert_pem, key_pem = _secret_pems(secret)
            report = certs.check_certificate(
                cert_pem, key_pem, names, now=now, warning_days=spec.warning_days
            )
        except certs.CertificateProblem as exc:
            metrics.ERRORS.labels(step="certificate", reason=exc.reason).inc()
            return Check("CertificateReady", False, exc.reason, exc.message), None, None
        fields = {
            "secretName": spec.secret_name,
            "notAfter": report.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "daysLeft": report.days_left,
            "dnsNames": list(report.dns_names),
            "issuer": report.issuer,
        }
        if not report.ok:
            reason = report.problems[0][0]
            message = "; ".join(m for _, m in report.problems)
            return Check("CertificateReady", False, reason, message), report, fields
        if spec.source == "dev-ca" or certs.is_dev_certificate(cert_pem):
            message = (
                f"development certificate for {trunk.fqdn} and *.{trunk.fqdn}, "
                f"{report.days_left} days left; signed by the operator's dev CA, which Microsoft "
                "does not trust: for tests and the Teams emulator only"
            )
            return (
                Check("CertificateReady", True, "DevelopmentCertificate", message),
                report,
                fields,
            )
        message = (
            f"covers {trunk.fqdn} and {len(names) - 1} tenant name(s), serverAuth and clientAuth, "
            f"{report.days_left} days left (until {report.not_after:%Y-%m-%d})"
        )
        return Check("CertificateReady", True, "CertificateValid", message), report, fields

    def _issuing(self, trunk: Trunk, issued: Mapping[str, Any]) -> Check:
        conds = (issued.get("status") or {}).get("conditions") or []
        said = next((c for c in conds if c.get("type") == "Ready"), None)
        detail = f" (cert-manager: {said.get('message')})" if said and said.get("message") else ""
        return Check(
            "CertificateReady",
            False,
            "CertificateIssuing",
            f"waiting for cert-manager to issue Certificate {issued['metadata']['name']!r} into "
            f"Secret {trunk.certificate.secret_name!r}{detail}",
        )

    async def ensure_dev_certificate(
        self, trunk: Trunk, names: Sequence[str], now: datetime.datetime, state: TrunkState
    ) -> Check | None:
        """The dev CA and a leaf signed by it, made or re-made as needed; a Check if the Secret
        belongs to someone else."""
        ca_secret = await self.api.get("v1", "Secret", trunk.namespace, dev_ca_secret_name(trunk))
        if ca_secret is None:
            ca = certs.new_dev_ca(f"{trunk.namespace}/{trunk.name}", now)
            await self.apply(trunk, render_cert.dev_ca_secret(trunk, ca), state)
            kopf.warn(
                _ref(trunk),
                reason="DevCACreated",
                message=f"created development CA Secret {dev_ca_secret_name(trunk)!r}: "
                "not for Microsoft",
            )
        else:
            ca = certs.PemPair(*_secret_pems(ca_secret))
        leaf = await self.api.get("v1", "Secret", trunk.namespace, trunk.certificate.secret_name)
        if leaf is not None:
            labels = (leaf.get("metadata") or {}).get("labels") or {}
            if labels.get(NOT_FOR_MICROSOFT) != "true":
                return Check(
                    "CertificateReady",
                    False,
                    "SecretNotOwned",
                    f"Secret {trunk.certificate.secret_name!r} exists and was not made by the "
                    "operator; with devCA it would be overwritten: choose another "
                    "spec.certificate.secretName",
                )
            try:
                cert_pem, key_pem = _secret_pems(leaf)
                report = certs.check_certificate(
                    cert_pem, key_pem, names, now=now, warning_days=trunk.certificate.warning_days
                )
                current = report.ok and _signed_by(cert_pem, ca.cert)
            except certs.CertificateProblem:
                current = False
            if current:
                return None
        issued = certs.issue_dev_certificate(
            ca, trunk.fqdn, render_cert.certificate_names(trunk), now
        )
        await self.apply(trunk, render_cert.dev_certificate_secret(trunk, issued, ca.cert), state)
        kopf.info(
            _ref(trunk),
            reason="DevCertificateIssued",
            message=f"issued a development certificate for {trunk.fqdn} and *.{trunk.fqdn} "
            f"into Secret {trunk.certificate.secret_name!r}",
        )
        return None

    # -- config and pods --------------------------------------------------------------------

    async def service_step(
        self, trunk: Trunk, state: TrunkState
    ) -> tuple[dict[str, Any] | None, Check | None]:
        """The Service first: its cluster IP is the carrier side's address in the config."""
        try:
            return await self.apply(trunk, workload.service(trunk), state), None
        except ApiError as exc:
            metrics.ERRORS.labels(step="workload", reason=exc.reason).inc()
            return None, Check("SBCAvailable", False, "APIError", exc.message)

    async def config_step(
        self,
        trunk: Trunk,
        served: Sequence[TenantPlan],
        carrier_address: str | None,
        state: TrunkState,
    ) -> Check:
        config = render_sbc_config(trunk, served, carrier_address)
        try:
            parsed = parse_config(config, source="the rendered config")
        except ConfigError as exc:  # a renderer bug or a spec the schema let through
            metrics.ERRORS.labels(step="config", reason="RenderedConfigInvalid").inc()
            return Check("ConfigApplied", False, "RenderedConfigInvalid", str(exc))
        obj = workload.config_map(trunk, config_yaml(config))
        try:
            await self.apply(trunk, obj, state)
            state.restart_digest = restart_digest(parsed)
        except ApiError as exc:
            metrics.ERRORS.labels(step="config", reason=exc.reason).inc()
            return Check("ConfigApplied", False, "APIError", exc.message)
        return Check(
            "ConfigApplied",
            True,
            "ConfigApplied",
            f"ConfigMap {obj['metadata']['name']!r} holds the SBC config for {trunk.fqdn} "
            f"and {len(served)} tenant(s)",
        )

    async def workload_step(self, trunk: Trunk, state: TrunkState) -> Check:
        try:
            # The SBC's identity first: the pods start with their ServiceAccount in place.
            for obj in (workload.service_account(trunk), workload.role(trunk),
                        workload.role_binding(trunk)):  # fmt: skip
                await self.apply(trunk, obj, state)
            deployment = await self.apply(
                trunk,
                workload.deployment(
                    trunk,
                    sbc_image=self.settings.sbc_image,
                    rtpengine_image=self.settings.rtpengine_image,
                    restart_digest=state.restart_digest,
                ),
                state,
            )
            await self.apply(trunk, workload.pod_disruption_budget(trunk), state)
        except ApiError as exc:
            metrics.ERRORS.labels(step="workload", reason=exc.reason).inc()
            return Check("SBCAvailable", False, "APIError", exc.message)
        return sbc_available(deployment)

    async def reachability_step(self, trunk: Trunk) -> tuple[Check, str | None]:
        """TeamsReachable and Teams-Up from the annotations the SBC pods write on themselves
        (render/reachability.py)."""
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(trunk).items())
        try:
            pods = await self.api.list("v1", "Pod", trunk.namespace, selector)
        except ApiError as exc:
            metrics.ERRORS.labels(step="reachability", reason=exc.reason).inc()
            return Check(CONDITION, False, "APIError", exc.message), None
        return teams_reachable(pods)

    def public_addresses(self, trunk: Trunk, service: Mapping[str, Any] | None) -> list[str]:
        if trunk.public_addresses:
            return list(trunk.public_addresses)
        ingress = (((service or {}).get("status") or {}).get("loadBalancer") or {}).get(
            "ingress"
        ) or []
        return [str(i["ip"]) for i in ingress if i.get("ip")]

    # -- DNS --------------------------------------------------------------------------------

    async def dns_target(self, trunk: Trunk, state: TrunkState) -> DnsTarget:
        dns = trunk.dns
        assert dns is not None
        try:
            secret = await self.api.get("v1", "Secret", trunk.namespace, dns.secret_name)
        except ApiError as exc:
            raise DnsError("APIError", exc.message) from exc
        if secret is None:
            if state.dns_target is not None:  # e.g. deleted with the namespace: last one known
                return state.dns_target
            raise DnsError(
                "TSIGSecretNotFound",
                f"no Secret {dns.secret_name!r} with the TSIG key in namespace {trunk.namespace!r}",
            )
        raw = (secret.get("data") or {}).get(dns.secret_key)
        if not raw:
            raise DnsError(
                "TSIGSecretIncomplete",
                f"Secret {dns.secret_name!r} has no key {dns.secret_key!r} "
                "(spec.dns.rfc2136.tsigSecretRef.key)",
            )
        key_secret = base64.b64decode(raw).decode().strip()
        target = DnsTarget(
            server=dns.server,
            port=dns.port,
            zone=dns.zone,
            key_name=dns.key_name,
            key_secret=key_secret,
            algorithm=dns.algorithm,
            ttl=dns.ttl,
            timeout=self.settings.dns_timeout,
        )
        state.dns_target = target
        return target

    async def dns_step(
        self,
        trunk: Trunk,
        served: Sequence[TenantPlan],
        addresses: Sequence[str],
        body: Mapping[str, Any],
        state: TrunkState,
    ) -> Check:
        if state.dns_names is None:
            old = ((body.get("status") or {}).get("dns") or {}).get("names") or []
            state.dns_names = set(old)
        state.dns_addresses = tuple(sorted(addresses))
        if trunk.dns is None:
            await self._forget_dns(trunk, state)
        if trunk.dns_mode != "external-dns":
            await self._forget_dns_endpoint(trunk, state)
        if trunk.dns_mode == "external-dns":
            return await self.external_dns_step(trunk, served, addresses, state)
        if trunk.dns is None:
            return Check(
                "DNSReady",
                True,
                "NotManaged",
                f"spec.dns is not set: publish A/AAAA records for {trunk.fqdn} and every "
                "tenant FQDN yourself",
            )
        if not addresses:
            state.dns_outcomes = {}
            return _no_public_address(trunk)
        mono = time.monotonic()
        if mono < state.dns_retry_at and state.dns_failure is not None:
            return state.dns_failure
        desired = {trunk.fqdn: tuple(sorted(addresses))}
        desired.update({p.fqdn: tuple(sorted(addresses)) for p in served})
        full = mono >= state.dns_full_at
        try:
            target = await self.dns_target(trunk, state)
            updater = DnsUpdater(target, owner_text(trunk.namespace, trunk.name))
            outcomes = await self._dns_sync(trunk, updater, desired, state, full)
        except DnsError as exc:
            state.dns_backoff = min(
                max(self.settings.dns_retry_min, state.dns_backoff * 2),
                self.settings.dns_retry_max,
            )
            state.dns_retry_at = time.monotonic() + state.dns_backoff
            metrics.ERRORS.labels(step="dns", reason=exc.reason).inc()
            metrics.DNS_UPDATES.labels(operation="ensure", result="error").inc()
            state.dns_failure = Check(
                "DNSReady",
                False,
                exc.reason,
                f"{exc.message}; retrying in {state.dns_backoff:.0f} s",
            )
            state.dns_outcomes = {}
            log.warning(
                "DNS update failed",
                extra={"trunk": f"{trunk.namespace}/{trunk.name}", "reason": exc.reason,
                       "detail": exc.message, "retry_s": state.dns_backoff},
            )  # fmt: skip
            return state.dns_failure
        if full:
            state.dns_full_at = time.monotonic() + self.settings.resync
        state.dns_backoff = 0.0
        state.dns_failure = None
        state.dns_retry_at = 0.0
        state.dns_outcomes = outcomes
        base = outcomes.get(trunk.fqdn)
        if base is not None and not base.done:
            return Check("DNSReady", False, base.reason, base.message)
        refused = [o for o in outcomes.values() if not o.done]
        shown = ", ".join(addresses)
        message = f"{len(desired)} name(s) in zone {target.zone} point at {shown}"
        if refused:
            message += f"; {len(refused)} tenant name(s) refused (see those tenants)"
        return Check("DNSReady", True, "RecordsPublished", message)

    async def _dns_sync(
        self,
        trunk: Trunk,
        updater: DnsUpdater,
        desired: Mapping[str, tuple[str, ...]],
        state: TrunkState,
        full: bool,
    ) -> dict[str, Outcome]:
        """Remove the names no longer wanted, then write the wanted ones that changed (all of
        them on a full pass), a few updates in flight at a time; one event per pass."""
        assert state.dns_names is not None
        names = state.dns_names
        zone = updater.target.zone
        gate = asyncio.Semaphore(DNS_CONCURRENCY)
        removed: list[str] = []
        published: list[str] = []

        async def remove(name: str) -> None:
            async with gate:
                outcome = await updater.remove(name)
            result = "done" if outcome.done else "refused"
            metrics.DNS_UPDATES.labels(operation="remove", result=result).inc()
            if outcome.done:
                names.discard(name)
                state.dns_written.pop(name, None)
                removed.append(name)

        async def ensure(name: str, addrs: tuple[str, ...]) -> Outcome:
            wanted = (addrs, updater.target.ttl, zone)
            if not full and state.dns_written.get(name) == wanted and name in names:
                return Outcome(name, True)
            async with gate:
                outcome = await updater.ensure(name, addrs)
            result = "done" if outcome.done else "refused"
            metrics.DNS_UPDATES.labels(operation="ensure", result=result).inc()
            if outcome.done:
                if name not in names or state.dns_written.get(name, ((),))[0] != addrs:
                    published.append(name)
                names.add(name)
                state.dns_written[name] = wanted
            else:
                state.dns_written.pop(name, None)
            return outcome

        stale = sorted(names - desired.keys())
        outside = [n for n in stale if not _in_zone(n, zone)]
        if outside:  # the zone changed: this server cannot remove them
            names.difference_update(outside)
            kopf.warn(
                _ref(trunk),
                reason="DNSRecordsLeft",
                message=_some("left in their old zone (not " + zone + ")", outside),
            )
        await asyncio.gather(*(remove(n) for n in stale if n not in outside))
        results = await asyncio.gather(*(ensure(n, a) for n, a in desired.items()))
        if removed:
            kopf.info(
                _ref(trunk), reason="DNSRecordsRemoved", message=_some("removed", sorted(removed))
            )
        if published:
            addrs = ", ".join(next(iter(desired.values())))
            kopf.info(
                _ref(trunk),
                reason="DNSRecordsPublished",
                message=_some("published", sorted(published)) + f" -> {addrs}",
            )
        return {o.name: o for o in results}

    async def external_dns_step(
        self,
        trunk: Trunk,
        served: Sequence[TenantPlan],
        addresses: Sequence[str],
        state: TrunkState,
    ) -> Check:
        """The DNSEndpoint for external-dns; DNSReady once external-dns has seen its latest
        generation (status.observedGeneration)."""
        state.dns_outcomes = {}
        if not addresses:
            return _no_public_address(trunk)
        names = [trunk.fqdn, *(p.fqdn for p in served)]
        obj = render_dns.dns_endpoint(trunk, names, addresses)
        try:
            live = await self.apply(trunk, obj, state)
        except ApiError as exc:
            metrics.ERRORS.labels(step="dns", reason=exc.reason).inc()
            if exc.status == 404:
                return Check(
                    "DNSReady",
                    False,
                    "DNSEndpointCRDMissing",
                    "the cluster has no DNSEndpoint resource (externaldns.k8s.io/v1alpha1): "
                    "install external-dns with its CRD, or choose spec.dns.rfc2136",
                )
            return Check("DNSReady", False, "APIError", exc.message)
        name = live["metadata"]["name"]
        generation = int(live["metadata"].get("generation") or 0)
        observed = int((live.get("status") or {}).get("observedGeneration") or 0)
        done = observed >= generation
        waiting = (
            f"DNSEndpoint {name!r} lists {len(names)} name(s); external-dns has not yet "
            f"published generation {generation} (is it running with --source=crd?)"
        )
        state.dns_outcomes = {
            n: Outcome(n, done, "" if done else "WaitingForExternalDNS", "" if done else waiting)
            for n in names
        }
        if not done:
            return Check("DNSReady", False, "WaitingForExternalDNS", waiting)
        return Check(
            "DNSReady",
            True,
            "EndpointsPublished",
            f"external-dns published DNSEndpoint {name!r}: {len(names)} name(s) -> "
            + ", ".join(addresses),
        )

    async def _forget_dns_endpoint(self, trunk: Trunk, state: TrunkState) -> None:
        """external-dns is no longer the DNS mode: its DNSEndpoint goes (external-dns then
        removes the records it published)."""
        key = f"DNSEndpoint/{trunk.name}-sbc"
        if key in state.applied:
            await self.api.delete(
                "externaldns.k8s.io/v1alpha1", "DNSEndpoint", trunk.namespace, f"{trunk.name}-sbc"
            )
            del state.applied[key]

    async def _forget_dns(self, trunk: Trunk, state: TrunkState) -> None:
        """spec.dns was removed: take our records out if the server is still known."""
        if not state.dns_names:
            return
        if state.dns_target is not None:
            updater = DnsUpdater(state.dns_target, owner_text(trunk.namespace, trunk.name))
            for name in sorted(state.dns_names):
                try:
                    outcome = await updater.remove(name)
                except DnsError:
                    break
                if outcome.done:
                    state.dns_names.discard(name)
        if state.dns_names:
            kopf.warn(
                _ref(trunk),
                reason="DNSRecordsLeft",
                message="spec.dns was removed; these records stay in DNS: "
                + ", ".join(sorted(state.dns_names)),
            )
            state.dns_names = set()
        state.dns_written.clear()

    async def remove_all_dns(self, trunk: Trunk, body: Mapping[str, Any]) -> None:
        """The trunk is being deleted: every name it owns leaves DNS (only those)."""
        state = self.state(trunk.key)
        names = set(state.dns_names or ()) | set(
            ((body.get("status") or {}).get("dns") or {}).get("names") or []
        )
        if trunk.dns is None or not names:
            return
        target = await self.dns_target(trunk, state)
        updater = DnsUpdater(target, owner_text(trunk.namespace, trunk.name))
        for name in sorted(names):
            outcome = await updater.remove(name)
            metrics.DNS_UPDATES.labels(
                operation="remove", result="done" if outcome.done else "refused"
            ).inc()

    # -- tenants ----------------------------------------------------------------------------

    async def tenant_finalizers(
        self, trunk: Trunk, tenants: Sequence[Tenant], state: TrunkState
    ) -> None:
        """Tenants with a DNS record carry DNS_FINALIZER until the record is gone."""
        published = state.dns_names or set()
        desired = {o for o, out in state.dns_outcomes.items() if out.done}
        changes: list[tuple[Tenant, bool]] = []
        for t in tenants:
            fqdn = f"{t.subdomain}.{trunk.fqdn}"
            has = DNS_FINALIZER in t.finalizers
            if t.deleting:
                gone = fqdn not in published or fqdn in desired
                if has and (gone or trunk.dns is None):
                    changes.append((t, False))
            elif trunk.dns is not None and not has:
                changes.append((t, True))
            elif trunk.dns is None and has:
                changes.append((t, False))

        async def one(tenant: Tenant, present: bool) -> None:
            async with self._status_gate:
                if not await set_finalizer(self.api, tenant, present=present):
                    state.wake.set()  # someone else changed it first: look again next pass

        await asyncio.gather(*(one(t, p) for t, p in changes))

    async def write_tenant_statuses(
        self,
        trunk: Trunk,
        plans: Sequence[TenantPlan],
        report: certs.CertificateReport | None,
        cert_check: Check,
        dns_check: Check,
        trunk_ready: Check,
        state: TrunkState,
        now: datetime.datetime,
    ) -> None:
        async def one(plan: TenantPlan) -> None:
            checks = tenant_checks(
                plan,
                trunk_name=trunk.name,
                trunk_ready=trunk_ready,
                certificate=tenant_certificate(plan, report, cert_check),
                dns=tenant_dns(plan, trunk, dns_check, state),
            )
            new = served_tenant_status(plan, checks, now)
            old = plan.tenant.status
            if (
                old.get("fqdn") == new["fqdn"]
                and old.get("observedGeneration") == new["observedGeneration"]
                and without_times(old.get("conditions") or []) == without_times(new["conditions"])
            ):
                return
            async with self._status_gate:
                try:
                    await self.api.patch(
                        API_VERSION,
                        "TeamsTenant",
                        plan.tenant.namespace,
                        plan.tenant.name,
                        {"status": new},
                        subresource="status",
                    )
                except ApiError as exc:
                    if exc.status == 404:
                        return
                    raise
            metrics.WRITES.labels(kind="TeamsTenant/status").inc()
            for c in transitions(old.get("conditions") or [], new["conditions"]):
                if c["type"] == "Ready":
                    post = kopf.info if c["status"] == "True" else kopf.warn
                    post(_ref(plan.tenant), reason=c["reason"], message=c["message"])

        await asyncio.gather(*(one(p) for p in plans))

    async def write_trunk_status(
        self,
        trunk: Trunk,
        body: Mapping[str, Any],
        old: Mapping[str, Any],
        new: dict[str, Any],
    ) -> None:
        def comparable(status: Mapping[str, Any]) -> dict[str, Any]:
            out = {k: v for k, v in status.items() if v is not None and k != "conditions"}
            out["conditions"] = without_times(status.get("conditions") or [])
            return out

        if comparable(old) == comparable(new):
            return
        patch = {**new}
        for stale in set(old) - set(new):
            patch[stale] = None
        await self.api.patch(
            API_VERSION, "TeamsTrunk", trunk.namespace, trunk.name, {"status": patch},
            subresource="status",
        )  # fmt: skip
        metrics.WRITES.labels(kind="TeamsTrunk/status").inc()
        for c in transitions(old.get("conditions") or [], new["conditions"]):
            post = kopf.info if c["status"] == "True" else kopf.warn
            post(_ref(trunk), reason=c["reason"], message=f"{c['type']}: {c['message']}")

    # -- applying ---------------------------------------------------------------------------

    async def apply(
        self, trunk: Trunk, obj: Mapping[str, Any], state: TrunkState
    ) -> dict[str, Any]:
        """Server-side apply; count it as a write when the object's version moved."""
        key = f"{obj['kind']}/{obj['metadata']['name']}"
        live = await self.api.apply(obj)
        rv = str(live["metadata"]["resourceVersion"])
        before = state.applied.get(key)
        if before is not None and before != rv:
            metrics.WRITES.labels(kind=obj["kind"]).inc()
        state.applied[key] = rv
        return live


# --- small pure helpers ---------------------------------------------------------------------


def sbc_available(deployment: Mapping[str, Any]) -> Check:
    """SBCAvailable from the Deployment's status as its controller reports it."""
    spec_replicas = int((deployment.get("spec") or {}).get("replicas") or 0)
    status = deployment.get("status") or {}
    available = int(status.get("availableReplicas") or 0)
    name = deployment["metadata"]["name"]
    generation = int(deployment["metadata"].get("generation") or 0)
    if int(status.get("observedGeneration") or 0) < generation:
        return Check(
            "SBCAvailable",
            False,
            "RolloutPending",
            f"the Deployment controller has not yet seen Deployment {name!r}'s latest spec",
        )
    if available < 1:
        return Check(
            "SBCAvailable",
            False,
            "NoSBCPodAvailable",
            f"0 of {spec_replicas} SBC pods of Deployment {name!r} are available (ready on "
            "/readyz); see its pods' events",
        )
    return Check(
        "SBCAvailable",
        True,
        "SBCPodsAvailable" if available >= spec_replicas else "SBCPodsPartlyAvailable",
        f"{available} of {spec_replicas} SBC pods available",
    )


def tenant_certificate(
    plan: TenantPlan, report: certs.CertificateReport | None, trunk_check: Check
) -> Check:
    if report is None:
        return Check(
            "CertificateReady", False, trunk_check.reason, f"the trunk's {trunk_check.message}"
        )
    if not report.covers(plan.fqdn):
        return Check(
            "CertificateReady",
            False,
            "NameNotCovered",
            f"the trunk's certificate ({', '.join(report.dns_names)}) does not cover {plan.fqdn}",
        )
    return Check(
        "CertificateReady",
        True,
        "Covered",
        f"the trunk's certificate covers {plan.fqdn} ({report.days_left} days left)",
    )


def tenant_dns(plan: TenantPlan, trunk: Trunk, trunk_check: Check, state: TrunkState) -> Check:
    if trunk.dns_mode == "none":
        return Check("DNSReady", True, "NotManaged", trunk_check.message)
    outcome = state.dns_outcomes.get(plan.fqdn)
    if outcome is None:
        if not plan.served:
            return Check("DNSReady", False, "NotServed", "no record for a tenant not served")
        return Check("DNSReady", False, trunk_check.reason, trunk_check.message)
    if not outcome.done:
        return Check("DNSReady", False, outcome.reason, outcome.message)
    return Check(
        "DNSReady", True, "RecordPublished", f"{plan.fqdn} -> {', '.join(state.dns_addresses)}"
    )


def _secret_pems(secret: Mapping[str, Any]) -> tuple[bytes, bytes]:
    data = secret.get("data") or {}
    name = (secret.get("metadata") or {}).get("name")
    missing = [k for k in ("tls.crt", "tls.key") if not data.get(k)]
    if missing:
        raise certs.CertificateProblem(
            "SecretIncomplete", f"Secret {name!r} has no {' or '.join(missing)}"
        )
    try:
        return base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"])
    except (binascii.Error, ValueError) as exc:
        raise certs.CertificateProblem(
            "SecretUnreadable", f"Secret {name!r} holds no base64 data ({exc})"
        ) from exc


def _in_zone(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def _some(verb: str, names: Sequence[str]) -> str:
    shown = ", ".join(names[:5])
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f"{verb} {len(names)} name(s): {shown}{more}"


def _signed_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    from cryptography import x509

    leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    ca = x509.load_pem_x509_certificate(ca_pem)
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):
        return False
    return True


def _no_public_address(trunk: Trunk) -> Check:
    """DNSReady while there is no address to publish (RFC 2136 and external-dns alike)."""
    return Check(
        "DNSReady",
        False,
        "NoPublicAddress",
        "no public address to publish: set spec.publicAddresses, or wait until the "
        f"load balancer gives Service {trunk.name}-sbc an address",
    )


def _ref(obj: Trunk | Tenant) -> kopf.Body:
    """What kopf's event posting needs to name the trunk or tenant."""
    raw = {
        "apiVersion": API_VERSION,
        "kind": "TeamsTrunk" if isinstance(obj, Trunk) else "TeamsTenant",
        "metadata": {"name": obj.name, "namespace": obj.namespace, "uid": obj.uid},
    }
    return kopf.Body(raw)  # type: ignore[arg-type]


async def _flag(stopped: Any) -> None:
    await stopped.wait()


async def set_finalizer(api: KubeApi, tenant: Tenant, *, present: bool) -> bool:
    """Add or remove DNS_FINALIZER on a tenant, as of the version the operator last saw; on a
    conflict, once more as of the live version. False if it changed under us again."""
    for attempt in range(2):
        current = list(tenant.finalizers)
        wanted = (
            sorted({*current, DNS_FINALIZER})
            if present
            else [f for f in current if f != DNS_FINALIZER]
        )
        if wanted == current:
            return True
        meta: dict[str, Any] = {"finalizers": wanted}
        if tenant.resource_version:
            meta["resourceVersion"] = tenant.resource_version
        try:
            await api.patch(
                API_VERSION, "TeamsTenant", tenant.namespace, tenant.name, {"metadata": meta}
            )
            return True
        except ApiError as exc:
            if exc.status == 404:
                return True
            if exc.status != 409 or attempt:
                if exc.status == 409:
                    return False
                raise
        live = await api.get(API_VERSION, "TeamsTenant", tenant.namespace, tenant.name)
        if live is None:
            return True
        tenant = Tenant.from_body(live)
    return False


async def write_orphan_status(api: KubeApi, tenant: Tenant) -> None:
    """A tenant whose trunk does not exist says so (and is not Ready)."""
    now = datetime.datetime.now(datetime.UTC)
    new = orphan_tenant_status(
        trunk=tenant.trunk, generation=tenant.generation, old=tenant.status, now=now
    )
    old = tenant.status
    if (
        old.get("observedGeneration") == new["observedGeneration"]
        and not old.get("fqdn")
        and without_times(
            [c for c in old.get("conditions") or [] if c.get("type") in ("TrunkFound", "Ready")]
        )
        == without_times(new["conditions"])
        and len(old.get("conditions") or []) == len(new["conditions"])
    ):
        return
    try:
        await api.patch(
            API_VERSION, "TeamsTenant", tenant.namespace, tenant.name, {"status": new},
            subresource="status",
        )  # fmt: skip
    except ApiError as exc:
        if exc.status != 404:
            raise
        return
    metrics.WRITES.labels(kind="TeamsTenant/status").inc()
    if not (old.get("conditions") or []) or transitions(
        old.get("conditions") or [], new["conditions"]
    ):
        kopf.warn(
            _ref(tenant), reason="TrunkNotFound", message=new["conditions"][0]["message"]
        )
