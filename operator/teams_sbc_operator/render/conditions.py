"""Status conditions as the Kubernetes API conventions define them (type, status, reason,
message, observedGeneration, lastTransitionTime), and how Ready sums up the others."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    """One aspect's verdict before it becomes a condition: ``ok`` with a reason and a message
    (for a person: what was seen, and when something is wrong, what to do)."""

    type: str
    ok: bool
    reason: str
    message: str


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


def merge_conditions(old: Iterable[Mapping[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
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


def conditions_from(
    checks: Iterable[Check],
    old: Iterable[Mapping[str, Any]],
    generation: int,
    now: datetime.datetime,
) -> list[dict[str, Any]]:
    """The conditions for ``checks`` merged into ``old`` (transition times kept)."""
    merged = [dict(c) for c in old]
    for check in checks:
        merged = merge_conditions(
            merged, condition(check.type, check.ok, check.reason, check.message, generation, now)
        )
    return merged


def ready(checks: Iterable[Check], what: str) -> Check:
    """Ready: True when every check holds; otherwise False with the first failing check's reason
    and every failing check's message."""
    failing = [c for c in checks if not c.ok]
    if not failing:
        return Check("Ready", True, "Ready", f"{what} is ready")
    return Check(
        "Ready",
        False,
        failing[0].reason,
        "; ".join(f"{c.type}: {c.message}" for c in failing),
    )


def transitions(
    old: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Conditions of ``new`` whose status or reason differs from ``old`` (what deserves an
    event)."""
    before = {c.get("type"): (c.get("status"), c.get("reason")) for c in old}
    return [dict(c) for c in new if before.get(c.get("type")) != (c.get("status"), c.get("reason"))]


def without_times(conditions: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Conditions with their transition times dropped, to compare what they say."""
    return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conditions]
