"""A Teams edge on a virtual clock: the sans-IO TeamsProxy, fed bytes and read back."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from teams_sbc.config import SbcConfig, parse_config
from teams_sbc.metrics import Metrics
from teams_sbc.sip.message import Request, make_response
from teams_sbc.sip.peer import Outgoing, Peer
from teams_sbc.teams.edge import TeamsProxy
from tests.sip import test_proxy as sip_harness

#: Microsoft's proxy as it connects to us (any address of its ranges, any port).
TEAMS_IN = Peer("tls", "52.114.75.24", 40000)
CARRIER = Peer("udp", "192.0.2.20", 5060)
SIP1 = Peer("tls", "52.112.1.1", 5061, "sip.pstnhub.microsoft.com")
SIP2 = Peer("tls", "52.112.2.2", 5061, "sip2.pstnhub.microsoft.com")
SIP3 = Peer("tls", "52.112.3.3", 5061, "sip3.pstnhub.microsoft.com")
FQDN = "sbc.carrier.example"
CONTOSO = "contoso.sbc.carrier.example"
FAB = "fab.sbc.carrier.example"

BASE: dict[str, Any] = {
    "listeners": [
        {
            "name": "teams",
            "transport": "tls",
            "host": "10.0.0.1",
            "port": 5061,
            "advertise": FQDN,
            "tls": {"cert_file": "c.pem", "key_file": "k.pem", "ca_file": "ca.pem"},
        },
        {"name": "carrier", "transport": "udp", "host": "10.0.0.5", "port": 5060},
        {"name": "carrier-tcp", "transport": "tcp", "host": "10.0.0.5", "port": 5060},
    ],
    "teams": {
        "fqdn": FQDN,
        "teams_listener": "teams",
        "carrier_listener": "carrier",
        "carrier": {"next_hop": "sip:192.0.2.20:5060"},
        "proxies": [
            {"name": "sip.pstnhub.microsoft.com", "address": "52.112.1.1"},
            {"name": "sip2.pstnhub.microsoft.com", "address": "52.112.2.2"},
            {"name": "sip3.pstnhub.microsoft.com", "address": "52.112.3.3"},
        ],
        "tenants": [
            {"name": "contoso", "numbers": ["+4930123400-+4930123499", "+4930123"]},
            {"name": "fabrikam", "label": "fab", "numbers": ["+4940555"], "policy": "fab"},
        ],
        "policies": {
            "default": {"numbers": {"country_code": "49"}},
            "fab": {
                "numbers": {"country_code": "49"},
                "early_media_183_to_180": True,
                "pai_to_from": True,
                "refer": "pass",
            },
        },
    },
}


def config(**teams: Any) -> SbcConfig:
    raw = copy.deepcopy(BASE)
    raw["teams"].update(teams)
    return parse_config(raw)


@dataclass
class Out(sip_harness.Out):
    """One message the edge queued (see tests/sip/test_proxy.py), with the transport's item."""

    item: Outgoing | None = field(default=None, repr=False, compare=False)


class Edge(sip_harness.Bench):
    """A TeamsProxy, its metrics and a virtual clock starting at 1000 s; feeding, taking and
    advancing the clock work as for the plain proxy's :class:`Bench`."""

    proxy: TeamsProxy

    def __init__(self, cfg: SbcConfig | None = None, *, probes: bool = False) -> None:
        # Not Bench.__init__: the same set-up, around a TeamsProxy instead of a Proxy.
        self.metrics = Metrics()
        self.tokens = (f"{n:016x}" for n in range(1, 1_000_000))
        self.proxy = TeamsProxy(cfg or config(), self.metrics, token=lambda _n: next(self.tokens))
        self.proxy.set_bound_addresses({})
        self.now = 1000.0
        if not probes:  # keep the keepalive OPTIONS out of the way of call tests
            for state in self.proxy.pool.states:
                state.next_probe_at = float("inf")

    def from_teams(self, data: bytes | str) -> list[Out]:
        return self.feed(data, TEAMS_IN, "teams")

    def from_carrier(self, data: bytes | str) -> list[Out]:
        return self.feed(data, CARRIER, "carrier")

    def take(self) -> list[Out]:  # type: ignore[override]  # Out carries the item here
        out = [Out(item.data, item.peer, item.listener, item) for item in self.proxy.outbox]
        self.proxy.outbox.clear()
        return out


def requests(outs: list[Out]) -> list[Out]:
    return [o for o in outs if not o.is_response]


def responses(outs: list[Out]) -> list[Out]:
    return [o for o in outs if o.is_response]


def only(outs: list[Out]) -> Out:
    assert len(outs) == 1, [o.raw[:80] for o in outs]
    return outs[0]


def reply(
    request: Request,
    status: int,
    *,
    to_tag: str | None = "teams1",
    contact: str | None = None,
    extra: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> bytes:
    """A UAS's response to what the SBC forwarded: Vias and Record-Route copied."""
    headers = list(extra or [])
    if contact is not None:
        headers.append(("Contact", contact))
    resp = make_response(request, status, to_tag=to_tag, extra_headers=headers)
    if body:
        resp.headers.set("Content-Type", "application/sdp")
        resp.body = body
    return resp.to_bytes()
