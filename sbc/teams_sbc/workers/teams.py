"""One /teams for all worker processes: each worker's view of Microsoft's proxies, and a combined
view that the supervisor serves and writes into the Pod's annotation (teams_sbc.podstatus).

Each worker sends its own OPTIONS (in a slot of its own, teams_sbc.teams.proxies) and keeps its
own state per proxy, first-hand, for its own failover order. The combined view, per proxy:

- ``state``: that of the worker whose latest outcome for the proxy (an OPTIONS answer or
  timeout, or a call's response or silence) is the most recent (smallest
  ``last_result_seconds_ago``); ``decided_by`` names it. ``unknown`` while no worker has an
  outcome. The workers share the pod's network, so the freshest answer is the best estimate of
  the proxy's state now; a worker that disagrees for longer shows in ``workers``.
- ``rtt_ms``, ``last_error``, ``changed_seconds_ago``: the deciding worker's.
- ``last_ok_seconds_ago``, ``last_result_seconds_ago``: the smallest over the workers.
- ``options_sent``, ``options_failed``, ``failovers``: summed over the workers that answered.
- ``retry_after_seconds``: the largest (a worker that heard a 503's Retry-After keeps new calls
  away from the proxy for that long).
- ``workers``: each worker's state of the proxy, by worker index.

The ``seconds ago`` of different workers compare: the supervisor asks them all at once.
Pure: the workers' JSON in, the combined JSON out; the supervisor does the asking.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Says in the JSON how the combined view was made.
RULE = (
    "per proxy, the state of the worker whose latest outcome (OPTIONS answer or timeout, or a "
    "call's response) is the most recent; unknown while no worker has one"
)

View = dict[str, Any]


def combine(views: Mapping[int, View | None]) -> View:
    """The supervisor's /teams: the trunk (from the first worker that answered), the combined
    proxies, and every worker's own view (None: the worker did not answer)."""
    answered = {i: v for i, v in sorted(views.items()) if v is not None}
    first = next(iter(answered.values()), {})
    names: list[str] = []
    for view in answered.values():
        for proxy in view.get("proxies", []):
            if proxy["name"] not in names:
                names.append(proxy["name"])
    proxies = [_combine_proxy(name, answered) for name in names]
    return {
        "fqdn": first.get("fqdn"),
        "cloud": first.get("cloud"),
        "tenants": first.get("tenants", {}),
        "combined_by": RULE,
        "proxies": proxies,
        "ack_repairs": sum(int(v.get("ack_repairs", 0)) for v in answered.values()),
        "workers": {str(i): views[i] for i in sorted(views)},
    }


def _combine_proxy(name: str, answered: Mapping[int, View]) -> dict[str, Any]:
    seen: dict[int, dict[str, Any]] = {}
    for index, view in answered.items():
        for proxy in view.get("proxies", []):
            if proxy["name"] == name:
                seen[index] = proxy
    decided = [
        (p["last_result_seconds_ago"], i)
        for i, p in seen.items()
        if p.get("state") != "unknown" and p.get("last_result_seconds_ago") is not None
    ]
    base = next(iter(seen.values()))
    out: dict[str, Any] = {
        "name": name,
        "address": base.get("address"),
        "port": base.get("port"),
        "state": "unknown",
        "decided_by": None,
        "rtt_ms": None,
        "last_error": None,
        "changed_seconds_ago": None,
    }
    if decided:
        _, index = min(decided)
        winner = seen[index]
        out.update(
            state=winner["state"],
            decided_by=index,
            rtt_ms=winner.get("rtt_ms"),
            last_error=winner.get("last_error"),
            changed_seconds_ago=winner.get("changed_seconds_ago"),
        )
    out["last_ok_seconds_ago"] = _least(p.get("last_ok_seconds_ago") for p in seen.values())
    out["last_result_seconds_ago"] = _least(
        p.get("last_result_seconds_ago") for p in seen.values()
    )
    out["retry_after_seconds"] = max(
        float(p.get("retry_after_seconds") or 0.0) for p in seen.values()
    )
    for key in ("options_sent", "options_failed", "failovers"):
        out[key] = sum(int(p.get(key) or 0) for p in seen.values())
    out["workers"] = {str(i): p.get("state") for i, p in sorted(seen.items())}
    return out


def _least(values: Any) -> float | None:
    present = [float(v) for v in values if v is not None]
    return min(present) if present else None


def annotation_report(combined: View) -> dict[str, str] | None:
    """The combined view as the Pod's annotation carries it (teams_sbc.podstatus); None while
    a proxy is unknown to every worker, or no worker answered."""
    proxies = combined.get("proxies") or []
    if not proxies or any(p["state"] == "unknown" for p in proxies):
        return None
    return {p["name"]: "up" if p["state"] == "up" else "down" for p in proxies}
