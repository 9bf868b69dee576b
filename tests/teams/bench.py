"""A Teams edge on a virtual clock: the sans-IO TeamsProxy, fed bytes and read back."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from teams_sbc.config import SbcConfig, parse_config
from teams_sbc.metrics import Metrics
from teams_sbc.sip.message import Request, Response, make_response, parse_message
from teams_sbc.sip.peer import Outgoing, Peer
from teams_sbc.teams.edge import TeamsProxy

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
class Out:
    raw: bytes
    peer: Peer
    listener: str
    item: Outgoing | None = field(default=None, repr=False, compare=False)

    @property
    def msg(self) -> Request | Response:
        return parse_message(self.raw)

    @property
    def is_response(self) -> bool:
        return self.raw.startswith(b"SIP/2.0 ")

    @property
    def status(self) -> int:
        return int(self.raw.split(b" ", 2)[1])

    @property
    def req(self) -> Request:
        msg = self.msg
        assert isinstance(msg, Request), msg
        return msg

    @property
    def resp(self) -> Response:
        msg = self.msg
        assert isinstance(msg, Response), msg
        return msg


class Edge:
    """A TeamsProxy, its metrics and a virtual clock starting at 1000 s."""

    def __init__(self, cfg: SbcConfig | None = None, *, probes: bool = False) -> None:
        self.metrics = Metrics()
        self.tokens = (f"{n:016x}" for n in range(1, 1_000_000))
        self.proxy = TeamsProxy(cfg or config(), self.metrics, token=lambda _n: next(self.tokens))
        self.proxy.set_bound_addresses({})
        self.now = 1000.0
        if not probes:  # keep the keepalive OPTIONS out of the way of call tests
            for state in self.proxy.pool.states:
                state.next_probe_at = float("inf")

    def feed(self, data: bytes | str, peer: Peer, listener: str) -> list[Out]:
        if isinstance(data, str):
            data = data.encode()
        self.proxy.receive(data, peer, listener, self.now)
        return self.take()

    def from_teams(self, data: bytes | str) -> list[Out]:
        return self.feed(data, TEAMS_IN, "teams")

    def from_carrier(self, data: bytes | str) -> list[Out]:
        return self.feed(data, CARRIER, "carrier")

    def take(self) -> list[Out]:
        out = [Out(item.data, item.peer, item.listener, item) for item in self.proxy.outbox]
        self.proxy.outbox.clear()
        return out

    def advance(self, seconds: float) -> list[Out]:
        end = self.now + seconds
        out: list[Out] = []
        while (deadline := self.proxy.next_deadline()) is not None and deadline <= end:
            self.now = max(self.now, deadline)
            self.proxy.advance(self.now)
            out += self.take()
        self.now = end
        return out

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


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
