"""TeamsReachable and the trunk's Teams-Up column, from what the SBC pods report.

Each SBC pod writes its Microsoft proxies' OPTIONS state into an annotation on its own Pod
(:data:`ANNOTATION`, written by ``teams_sbc.podstatus`` when the state changes), compact JSON::

    {"proxies": {"sip.pstnhub.microsoft.com": "up", "sip2.pstnhub.microsoft.com": "down"},
     "at": "2026-01-01T00:00:00Z"}

TeamsReachable is True when every SBC pod (not being deleted) reports at least one proxy up; its
message names the proxies down. It is informational: Ready does not depend on it (Microsoft's
side of the trunk is not the operator's to fix, and a new trunk is Ready before Microsoft
knows it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from teams_sbc_operator.model import GROUP
from teams_sbc_operator.render.conditions import Check

#: The Pod annotation the SBC writes its proxies' state into.
ANNOTATION = f"{GROUP}/teams-proxies"
CONDITION = "TeamsReachable"


def pod_report(pod: Mapping[str, Any]) -> dict[str, str] | None:
    """The pod's proxies and their state, or None when it reported nothing readable."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    proxies = value.get("proxies") if isinstance(value, dict) else None
    if not isinstance(proxies, dict):
        return None
    return {str(name): str(state) for name, state in proxies.items()}


def teams_reachable(pods: Sequence[Mapping[str, Any]]) -> tuple[Check, str | None]:
    """The TeamsReachable check and the Teams-Up column (``up/total``: proxies up on every
    reporting pod, of the proxies the pods keep alive; None before any report)."""
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    if not live:
        return Check(CONDITION, False, "NoSBCPods", "no SBC pod to report Microsoft's state"), None
    reports: dict[str, dict[str, str]] = {}
    silent: list[str] = []
    for pod in live:
        name = str(pod["metadata"]["name"])
        report = pod_report(pod)
        if report is None:
            silent.append(name)
        else:
            reports[name] = report
    names = sorted({proxy for report in reports.values() for proxy in report})
    up_everywhere = [n for n in names if all(r.get(n) == "up" for r in reports.values())]
    column = f"{len(up_everywhere)}/{len(names)}" if reports else None
    down = {
        proxy: sorted(pod for pod, r in reports.items() if r.get(proxy) != "up")
        for proxy in names
        if proxy not in up_everywhere
    }
    down_text = "; ".join(
        f"{proxy} down on {', '.join(pods_)}" for proxy, pods_ in sorted(down.items())
    )
    cut_off = sorted(pod for pod, r in reports.items() if "up" not in r.values())
    if cut_off:
        message = f"no Microsoft proxy answers OPTIONS from pod(s) {', '.join(cut_off)}"
        return Check(
            CONDITION, False, "MicrosoftUnreachable", f"{message} ({down_text})"
        ), column
    if silent:
        return Check(
            CONDITION,
            False,
            "NotReported",
            f"SBC pod(s) {', '.join(sorted(silent))} have not reported Microsoft's state yet",
        ), column
    message = f"each of {len(reports)} SBC pod(s) reaches a Microsoft proxy"
    return Check(
        CONDITION,
        True,
        "MicrosoftReachable",
        f"{message}; {down_text}" if down_text else f"{message}; all {len(names)} up",
    ), column
