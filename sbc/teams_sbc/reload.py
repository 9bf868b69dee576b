"""Reloading a changed config file without a restart (docs/config.md, "Reloading").

The operator updates the SBC's ConfigMap when a tenant is added or changed; the kubelet swaps
the mounted file (a ``..data`` symlink) some seconds later. The SBC polls the file's content
hash (and checks at once on SIGHUP), validates the new file with :func:`load_config`, and:

- applies it to the running core when only *reloadable* parts changed (:data:`RELOADABLE` and
  :data:`RELOADABLE_TEAMS`): the tenants, their numbers and policies, the carrier trunk, the
  static routes and hosts. Transactions in flight go on with what they were started with.
- keeps running on the old config when anything else changed (listeners, http, workers,
  media, the trunk's FQDN, Microsoft's proxies, certificates...): those need new sockets or
  new state, so a new pod. It logs which keys and says so in ``sbc_config_reload_total
  {result="restart_required"}`` and on ``/config``.
- refuses a file that does not load or validate (``result="rejected"``), error logged; the
  old config stays.

Nothing here touches the core directly: :meth:`Reloader.check` returns the new config to
apply, and the caller (``teams_sbc.app``) hands it to the core's ``reconfigure``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from teams_sbc.config import ConfigError, SbcConfig, load_config
from teams_sbc.teams.wiring import sni_certificates

log = logging.getLogger("teams_sbc.reload")

#: Top-level keys a running SBC takes over from a new file.
RELOADABLE = frozenset({"routes", "hosts", "teams"})
#: Keys of the ``teams`` section it takes over (the rest of the section needs a restart).
RELOADABLE_TEAMS = frozenset(
    {
        "tenants",
        "policies",
        "carrier",
        "tenant_header",
        "unknown_tenant_status",
        "failover_timeout",
    }
)

RESULTS = ("applied", "rejected", "restart_required")


def restart_reasons(old: SbcConfig, new: SbcConfig) -> list[str]:
    """The keys that differ between ``old`` and ``new`` and cannot be applied to a running SBC
    (empty: everything that changed can be)."""
    before: dict[str, Any] = old.model_dump(mode="json")
    after: dict[str, Any] = new.model_dump(mode="json")
    reasons = [
        key
        for key in sorted(set(before) | set(after))
        if key not in RELOADABLE and before.get(key) != after.get(key)
    ]
    teams_before, teams_after = before.get("teams"), after.get("teams")
    if (teams_before is None) != (teams_after is None):
        reasons.append("teams")
    elif teams_before is not None and teams_after is not None:
        reasons += [
            f"teams.{key}"
            for key in sorted(set(teams_before) | set(teams_after))
            if key not in RELOADABLE_TEAMS and teams_before.get(key) != teams_after.get(key)
        ]
        # A tenant's own certificate is served by the TLS listener (SNI), set up at start.
        if sni_certificates(old) != sni_certificates(new):
            reasons.append("teams.tenants[].cert_file/key_file")
    return reasons


def restart_digest(config: SbcConfig) -> str:
    """A digest of what a running SBC cannot take over from a new file: two configs have the
    same digest exactly when :func:`restart_reasons` finds nothing between them. The operator
    puts it on the pod template, so a change that needs a restart rolls the pods and one that
    can be reloaded (tenants, numbers, policies, routes) does not."""
    dump: dict[str, Any] = config.model_dump(mode="json")
    kept = {key: value for key, value in dump.items() if key not in RELOADABLE}
    teams = dump.get("teams")
    if teams is not None:
        kept["teams"] = {k: v for k, v in teams.items() if k not in RELOADABLE_TEAMS}
        kept["teams.sni"] = sni_certificates(config)
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class ReloadState:
    """What /config shows: which file generation runs and what the last check decided."""

    generation: int = 1
    hash: str = ""
    last_result: str | None = None
    last_error: str | None = None
    restart_required: list[str] = field(default_factory=list)
    checked_at: float | None = None

    def status(self) -> dict[str, object]:
        return {
            "generation": self.generation,
            "sha256": self.hash,
            "last_result": self.last_result,
            "last_error": self.last_error,
            "restart_required": self.restart_required,
        }


class Reloader:
    """Watches one config file; see the module's docstring."""

    def __init__(self, path: str | Path, config: SbcConfig, registry: CollectorRegistry) -> None:
        self.path = Path(path)
        self.config = config
        # No hash yet: the first check reads the file and compares it with ``config`` (a worker
        # restarted by its supervisor is given the config the supervisor started with).
        self.state = ReloadState()
        self.total = Counter(
            "sbc_config_reload",
            "Config file changes seen, by what became of them (applied, rejected: invalid "
            "file, restart_required: changed keys a running SBC cannot take over).",
            ["result"],
            registry=registry,
        )
        for result in RESULTS:
            self.total.labels(result)
        self.generation = Gauge(
            "sbc_config_generation",
            "How many config files this process has run with (1: the one it started with).",
            registry=registry,
        )
        self.generation.set(self.state.generation)
        self.pending = Gauge(
            "sbc_config_restart_required",
            "1 while the file on disk has changes that need a restart to take effect.",
            registry=registry,
        )

    def _digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def check(self) -> SbcConfig | None:
        """Look at the file once; the new config to apply, or None (unchanged, refused, or
        needing a restart; logged and counted)."""
        digest = self._digest()
        self.state.checked_at = time.time()
        if digest is None or digest == self.state.hash:
            return None  # unchanged, or briefly absent while the kubelet swaps it
        self.state.hash = digest
        try:
            new = load_config(self.path)
        except ConfigError as exc:
            self._decide("rejected", error=str(exc))
            log.error("config file refused, the running config stays", extra={"error": str(exc)})
            return None
        if new == self.config:  # same meaning (comments, order of keys), or reverted
            self.state.restart_required = []
            self.pending.set(0)
            return None
        reasons = restart_reasons(self.config, new)
        if reasons:
            self._decide("restart_required", reasons=reasons)
            log.warning(
                "config change needs a restart, the running config stays",
                extra={"keys": reasons},
            )
            return None
        self.config = new
        self.state.generation += 1
        self.generation.set(self.state.generation)
        self._decide("applied")
        log.info("config reloaded", extra={"generation": self.state.generation})
        return new

    def _decide(
        self, result: str, *, error: str | None = None, reasons: list[str] | None = None
    ) -> None:
        self.total.labels(result).inc()
        self.state.last_result = result
        self.state.last_error = error
        self.state.restart_required = reasons or []
        self.pending.set(1 if reasons else 0)
