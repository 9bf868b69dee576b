"""The stateful proxy (RFC 3261 section 16), sans-IO: bytes in with a Peer and ``now``, bytes
out of ``proxy.outbox``, on a virtual clock. No sockets, no sleeps.

The cast, on made-up addresses: a caller (UAC) at 192.0.2.10:5060 over UDP, a callee (UAS) at
192.0.2.20:5080; the SBC has two UDP interfaces, "a" (10.0.0.1, facing the caller) and "b"
(10.0.0.2, facing the callee), and a TCP listener on "a"'s address.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teams_sbc.config import SbcConfig, parse_config
from teams_sbc.metrics import Metrics
from teams_sbc.sip.message import Request, Response, make_response, parse_message
from teams_sbc.sip.peer import Peer
from teams_sbc.sip.proxy import TIMER_C, Proxy

UAC = Peer("udp", "192.0.2.10", 5060)
UAS = Peer("udp", "192.0.2.20", 5080)
UAC_CONTACT = "<sip:alice@192.0.2.10:5060>"
UAS_CONTACT = "<sip:bob@192.0.2.20:5080>"
SBC_A = "10.0.0.1:5060"
SBC_B = "10.0.0.2:5060"
T1 = 0.5


def config(**overrides: Any) -> SbcConfig:
    raw: dict[str, Any] = {
        "listeners": [
            {"name": "a", "transport": "udp", "host": "10.0.0.1", "port": 5060},
            {"name": "a-tcp", "transport": "tcp", "host": "10.0.0.1", "port": 5060},
            {"name": "b", "transport": "udp", "host": "10.0.0.2", "port": 5060},
        ],
        "routes": [{"name": "uas", "next_hop": "sip:192.0.2.20:5080"}],
    }
    raw.update(overrides)
    return parse_config(raw)


@dataclass
class Out:
    """One message the proxy queued, with where it goes and from which listener."""

    raw: bytes
    peer: Peer
    listener: str

    @property
    def msg(self) -> Request | Response:
        return parse_message(self.raw)

    @property
    def is_response(self) -> bool:
        return self.raw.startswith(b"SIP/2.0 ")

    @property
    def status(self) -> int:
        assert self.is_response, self.raw[:60]
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


class Bench:
    """A proxy, its metrics and a virtual clock."""

    def __init__(self, cfg: SbcConfig | None = None) -> None:
        self.metrics = Metrics()
        self.tokens = (f"{n:016x}" for n in range(1, 1_000_000))
        self.proxy = Proxy(cfg or config(), self.metrics, token=lambda _n: next(self.tokens))
        self.now = 1000.0

    def feed(self, data: bytes | str, peer: Peer = UAC, listener: str = "a") -> list[Out]:
        if isinstance(data, str):
            data = data.encode()
        self.proxy.receive(data, peer, listener, self.now)
        return self.take()

    def take(self) -> list[Out]:
        out = [Out(item.data, item.peer, item.listener) for item in self.proxy.outbox]
        self.proxy.outbox.clear()
        return out

    def advance(self, seconds: float) -> list[Out]:
        """Move the clock, firing every deadline on the way at its exact time."""
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


def sip(text: str) -> bytes:
    """A message written with \\n line ends, as CRLF bytes (the body, if any, too)."""
    return text.replace("\n", "\r\n").encode()


def invite(
    *,
    ruri: str = f"sip:bob@{SBC_A}",
    call_id: str | None = None,
    branch: str | None = None,
    via: str | None = None,
    extra: str = "",
    max_forwards: int | None = 70,
    method: str = "INVITE",
    to_tag: str | None = None,
    cseq: int = 1,
    from_tag: str = "caller1",
) -> bytes:
    branch = branch or "z9hG4bK" + secrets.token_hex(6)
    via = via or f"SIP/2.0/UDP 192.0.2.10:5060;branch={branch}"
    mf = "" if max_forwards is None else f"Max-Forwards: {max_forwards}\n"
    to = f"<sip:bob@{SBC_A}>" + (f";tag={to_tag}" if to_tag else "")
    return sip(
        f"{method} {ruri} SIP/2.0\n"
        f"Via: {via}\n"
        f"{mf}"
        f"From: <sip:alice@192.0.2.10>;tag={from_tag}\n"
        f"To: {to}\n"
        f"Call-ID: {call_id or secrets.token_hex(8)}@192.0.2.10\n"
        f"CSeq: {cseq} {method}\n"
        f"Contact: {UAC_CONTACT}\n"
        f"{extra}"
        "Content-Length: 0\n\n"
    )


def answer(
    request: Request, status: int, *, to_tag: str | None = "callee1", contact: bool = True
) -> bytes:
    """The UAS's response to a request the proxy forwarded: its Vias and Record-Route copied
    (RFC 3261 8.2.6.2, 12.1.1)."""
    extra = [("Contact", UAS_CONTACT)] if contact and status < 300 else []
    return make_response(request, status, to_tag=to_tag, extra_headers=extra).to_bytes()


def only(outs: list[Out], **where: Any) -> Out:
    assert len(outs) == 1, [o.msg for o in outs]
    out = outs[0]
    for key, value in where.items():
        assert getattr(out, key) == value, (key, getattr(out, key), value)
    return out


def statuses(outs: list[Out]) -> list[int]:
    return [o.status for o in outs]


@pytest.fixture
def bench() -> Bench:
    return Bench()


def forward_invite(bench: Bench, **kw: Any) -> tuple[list[Out], Out]:
    """Feed an INVITE from the caller; return (100 Trying and such to the caller, the
    forwarded INVITE)."""
    outs = bench.feed(invite(**kw))
    up = [o for o in outs if o.is_response]
    down = [o for o in outs if not o.is_response]
    return up, only(down)


def call_up(bench: Bench, **kw: Any) -> tuple[Out, Out]:
    """An answered call: returns (the INVITE as forwarded, the 200 as forwarded to the
    caller)."""
    _, fwd = forward_invite(bench, **kw)
    bench.feed(answer(fwd.req, 180), UAS, fwd.listener)
    ok = only(bench.feed(answer(fwd.req, 200), UAS, fwd.listener), peer=UAC)
    return fwd, ok


# -- forwarding and Record-Route (16.6) -----------------------------------------------------------


def test_invite_gets_100_trying_and_is_forwarded_with_one_record_route(bench: Bench) -> None:
    up, fwd = forward_invite(bench)
    assert statuses(up) == [100]
    assert fwd.peer == UAS and fwd.listener == "a"
    req = fwd.req
    assert req.uri == f"sip:bob@{SBC_A}"  # a static route is a next hop, not a retarget
    assert req.headers.get_all("record-route") == [f"<sip:{SBC_A};lr>"]
    assert req.headers.get("max-forwards") == "69"
    top, second = req.vias[0], req.vias[1]
    assert (top.transport, top.sent_by) == ("UDP", SBC_A)
    assert top.branch is not None and top.branch.startswith("z9hG4bK")  # 16.6 step 8
    assert second.sent_by == "192.0.2.10:5060"  # the caller's, below ours


def test_lr_is_written_bare_never_lr_on(bench: Bench) -> None:
    _, fwd = forward_invite(bench)
    (rr,) = fwd.req.headers.get_all("record-route")
    assert ";lr>" in rr and "lr=" not in rr


def test_double_record_route_with_r2_when_crossing_interfaces() -> None:
    bench = Bench(
        config(routes=[{"name": "uas", "next_hop": "sip:192.0.2.20:5080", "listener": "b"}])
    )
    _, fwd = forward_invite(bench)
    assert fwd.listener == "b"
    # 16.6 step 4: the top entry names the interface facing the next hop, the second the one
    # facing the caller; both r2=on so each side finds its own.
    assert fwd.req.headers.values("record-route") == [
        f"<sip:{SBC_B};lr;r2=on>",
        f"<sip:{SBC_A};lr;r2=on>",
    ]
    assert fwd.req.vias[0].sent_by == SBC_B


def test_double_record_route_when_crossing_transports() -> None:
    bench = Bench(config(routes=[{"name": "uas", "next_hop": "sip:192.0.2.20:5080;transport=tcp"}]))
    _, fwd = forward_invite(bench)
    assert fwd.peer == Peer("tcp", "192.0.2.20", 5080) and fwd.listener == "a-tcp"
    assert fwd.req.headers.values("record-route") == [
        f"<sip:{SBC_A};transport=tcp;lr;r2=on>",
        f"<sip:{SBC_A};lr;r2=on>",
    ]
    assert fwd.req.vias[0].transport == "TCP"


def test_no_record_route_when_switched_off_or_inside_a_dialog() -> None:
    off = Bench(config(record_route=False))
    _, fwd = forward_invite(off)
    assert "record-route" not in fwd.req.headers
    on = Bench()
    _, fwd = forward_invite(on, to_tag="callee1", ruri="sip:bob@192.0.2.20:5080")
    assert "record-route" not in fwd.req.headers


def test_max_forwards_added_when_missing(bench: Bench) -> None:
    _, fwd = forward_invite(bench, max_forwards=None)
    assert fwd.req.headers.get("max-forwards") == "70"


def test_large_request_to_a_udp_next_hop_goes_over_tcp(bench: Bench) -> None:
    """18.1.1: over 1,300 bytes (as it would leave) and the next hop UDP: TCP instead, and the
    Via and Record-Route say so."""
    pad = "X-Pad: " + "p" * 1300 + "\n"
    _, fwd = forward_invite(bench, extra=pad)
    assert fwd.peer == Peer("tcp", "192.0.2.20", 5080) and fwd.listener == "a-tcp"
    assert fwd.req.vias[0].transport == "TCP"
    assert fwd.req.headers.values("record-route")[0] == f"<sip:{SBC_A};transport=tcp;lr;r2=on>"
    assert bench.sample("sbc_sip_large_udp_requests_total") == 0


def test_large_request_stays_on_udp_when_the_route_forbids_tcp() -> None:
    bench = Bench(
        config(routes=[{"name": "uas", "next_hop": "sip:192.0.2.20:5080", "large_over_tcp": False}])
    )
    _, fwd = forward_invite(bench, extra="X-Pad: " + "p" * 1300 + "\n")
    assert fwd.peer == UAS
    assert bench.sample("sbc_sip_large_udp_requests_total") == 1


# -- requests the proxy answers itself (16.3) -----------------------------------------------------


def test_max_forwards_zero_gets_483(bench: Bench) -> None:
    outs = bench.feed(invite(max_forwards=0))
    assert statuses(outs) == [100, 483]
    assert outs[-1].resp.reason == "Too Many Hops"


def test_options_with_max_forwards_zero_is_answered_by_the_proxy(bench: Bench) -> None:
    outs = bench.feed(invite(method="OPTIONS", max_forwards=0))
    ok = only(outs).resp
    assert ok.status == 200 and "INVITE" in (ok.headers.get("allow") or "")
    assert ok.to_tag


def test_options_for_the_proxy_itself_is_answered(bench: Bench) -> None:
    ok = only(bench.feed(invite(method="OPTIONS", ruri=f"sip:{SBC_A}"))).resp
    assert ok.status == 200 and ok.headers.get("server") == "teams-sbc"


def test_loop_gets_482_and_a_spiral_does_not(bench: Bench) -> None:
    _, fwd = forward_invite(bench)

    def via_another_proxy(req: Request, branch: str) -> bytes:
        back = req.copy()
        back.headers.remove("record-route")
        back.headers.prepend("Via", f"SIP/2.0/UDP 192.0.2.20:5080;branch={branch}")
        return back.to_bytes()

    # Another proxy sends our request back to us unchanged (same Request-URI, Call-ID, tags,
    # CSeq), our Via inside it: a loop (16.3 step 4).
    outs = bench.feed(via_another_proxy(fwd.req, "z9hG4bKloop"), UAS, "a")
    assert statuses(outs) == [100, 482]
    # Sent back with another Request-URI (retargeted), it is a spiral: forwarded again.
    spiral = fwd.req.copy()
    spiral.uri = f"sip:carol@{SBC_A}"
    outs = bench.feed(via_another_proxy(spiral, "z9hG4bKspiral"), UAS, "a")
    assert [o.is_response for o in outs] == [True, False]


def test_proxy_require_gets_420_with_unsupported(bench: Bench) -> None:
    outs = bench.feed(invite(extra="Proxy-Require: foo, bar\n"))
    bad = outs[-1].resp
    assert bad.status == 420 and bad.headers.get("unsupported") == "foo, bar"


def test_no_route_gets_404() -> None:
    bench = Bench(config(routes=[]))
    assert statuses(bench.feed(invite()))[-1] == 404


# -- malformed input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mangle", "status", "reason_part"),
    [
        (lambda b: b.replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE"), 400, "CSeq"),
        (lambda b: b.replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1), 505, "version"),
        (lambda b: b.replace(b"INVITE sip:", b"INVITE mailto:", 1), 416, "scheme"),
        (lambda b: b.replace(b"Max-Forwards: 70", b"Max-Forwards: lots"), 400, "Max-Forwards"),
        (lambda b: b.replace(b"Content-Length: 0", b"Content-Length: 10"), 400, "Content-Length"),
    ],
)
def test_malformed_request_gets_the_right_answer_on_the_wire(
    bench: Bench, mangle: Any, status: int, reason_part: str
) -> None:
    outs = bench.feed(mangle(invite()))
    # Read as bytes: the answer copies the offending header, as 8.2.6.2 says.
    head = outs[-1].raw.split(b"\r\n\r\n")[0].decode().split("\r\n")
    assert head[0].startswith(f"SIP/2.0 {status} ")
    assert reason_part.lower() in head[0].lower(), head[0]
    warning = next(line for line in head if line.startswith("Warning: "))
    assert warning.startswith("Warning: 399 teams-sbc ") and reason_part.lower() in warning.lower()
    assert outs[-1].peer == UAC
    assert bench.sample("sbc_sip_parse_errors_total", kind="request") == 1
    # Whatever the moment the problem was found, no transaction is left waiting.
    bench.advance(64 * T1 + 1)
    assert bench.proxy.transaction_count() == 0


def test_oversized_request_gets_513() -> None:
    bench = Bench(config(max_message_size=1500))
    outs = bench.feed(invite(extra="X-Pad: " + "p" * 1600 + "\n"))
    assert statuses(outs) == [513]


def test_unparseable_response_is_dropped_and_counted(bench: Bench) -> None:
    assert bench.feed(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP x\r\n\r\n", UAS) == []
    assert bench.sample("sbc_sip_parse_errors_total", kind="response") == 1
    assert bench.feed(b"\x00\xff garbage \r\n\r\n") == []


def test_response_not_for_us_is_dropped(bench: Bench) -> None:
    stranger = sip(
        "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKother\n"
        "From: <sip:a@x>;tag=1\nTo: <sip:b@y>;tag=2\nCall-ID: c1\nCSeq: 1 OPTIONS\n"
        "Content-Length: 0\n\n"
    )
    assert bench.feed(stranger, UAS) == []


# -- responses (16.7) -----------------------------------------------------------------------------


def test_provisionals_and_2xx_go_back_to_the_caller_with_our_via_removed(bench: Bench) -> None:
    _, fwd = forward_invite(bench)
    ringing = only(bench.feed(answer(fwd.req, 180), UAS), peer=UAC, listener="a").resp
    assert ringing.status == 180 and len(ringing.vias) == 1
    assert ringing.to_tag == "callee1"
    ok = only(bench.feed(answer(fwd.req, 200), UAS), peer=UAC).resp
    assert ok.status == 200
    assert ok.headers.values("record-route") == [f"<sip:{SBC_A};lr>"]


def test_each_provisional_keeps_its_own_to_tag(bench: Bench) -> None:
    _, fwd = forward_invite(bench)
    first = only(bench.feed(answer(fwd.req, 180, to_tag="fork1"), UAS)).resp
    second = only(bench.feed(answer(fwd.req, 183, to_tag="fork2"), UAS)).resp
    assert (first.to_tag, second.to_tag) == ("fork1", "fork2")


def test_2xx_retransmissions_are_forwarded_even_after_the_transaction(bench: Bench) -> None:
    fwd, _ = call_up(bench)
    again = bench.feed(answer(fwd.req, 200), UAS)
    assert statuses(again) == [200] and again[0].peer == UAC
    bench.advance(64 * T1 + 1)  # timers L and M: both transactions are gone
    assert bench.proxy.transaction_count() == 0
    late = bench.feed(answer(fwd.req, 200), UAS)  # statelessly, by the Via (16.7 step 10)
    assert statuses(late) == [200] and late[0].peer == UAC


def test_busy_is_forwarded_and_acked_hop_by_hop(bench: Bench) -> None:
    _, fwd = forward_invite(bench)
    outs = bench.feed(answer(fwd.req, 486), UAS)
    ack = next(o for o in outs if not o.is_response)
    busy = next(o for o in outs if o.is_response)
    # 17.1.1.3: the proxy's own ACK, on the INVITE's branch, to the UAS.
    assert ack.peer == UAS and ack.req.method == "ACK"
    assert ack.req.vias[0].branch == fwd.req.vias[0].branch
    assert ack.req.to_tag == "callee1"
    assert busy.peer == UAC and busy.resp.status == 486
    # The caller's ACK for the 486 is absorbed by our server transaction, not forwarded.
    assert bench.feed(_ack_for(busy.resp)) == []


def _ack_for(resp: Response) -> bytes:
    """The caller's hop-by-hop ACK for a non-2xx (17.1.1.3): the INVITE's Via and branch."""
    h = resp.headers
    return sip(
        f"ACK sip:bob@{SBC_A} SIP/2.0\nVia: {h.get('via')}\nMax-Forwards: 70\n"
        f"From: {h.get('from')}\nTo: {h.get('to')}\nCall-ID: {resp.call_id}\n"
        f"CSeq: {resp.cseq.number} ACK\nContent-Length: 0\n\n"
    )


def test_503_from_the_next_hop_becomes_500(bench: Bench) -> None:
    _, fwd = forward_invite(bench)
    outs = bench.feed(answer(fwd.req, 503), UAS)
    final = next(o for o in outs if o.is_response)
    # 16.7 step 6: a 503 is not passed on (the caller would think the SBC is unavailable).
    assert final.resp.status == 500 and final.peer == UAC


def test_timer_b_gives_the_caller_408_after_retransmitting_on_timer_a(bench: Bench) -> None:
    forward_invite(bench)
    start = bench.now
    retransmits: list[float] = []
    outs: list[Out] = []
    while bench.now < start + 64 * T1 + 1:
        step = bench.advance(0.25)
        for o in step:
            if not o.is_response and o.peer == UAS:
                retransmits.append(round(bench.now - start, 2))
        outs += step
    # Timer A: T1, 2T1, 4T1... (17.1.1.2), each the same bytes on the same branch.
    assert retransmits[:4] == [0.5, 1.5, 3.5, 7.5]
    final = [o for o in outs if o.is_response]
    # The 408 (then its retransmissions on timer G: the caller never ACKs here).
    assert set(statuses(final)) == {408} and final[0].peer == UAC
    assert bench.sample("sbc_sip_transaction_events_total", event="timeouts") == 1


def test_no_transaction_outlives_its_timers(bench: Bench) -> None:
    """Every transaction of an answered call and of a busy one ends once its timers ran (with
    T1 = 500 ms, M, L and D all last 32 s over UDP)."""
    call_up(bench)
    _, fwd = forward_invite(bench)
    busy = [o for o in bench.feed(answer(fwd.req, 486), UAS) if o.is_response]
    bench.feed(_ack_for(busy[0].resp))
    assert bench.proxy.transaction_count() > 0
    bench.advance(31)
    # Still there: the answered INVITE's client (timer M, 64*T1) and the busy one's (timer D).
    assert bench.proxy.transaction_counts()["invite_client"] == 2
    bench.advance(2)
    assert bench.proxy.transaction_count() == 0
    assert bench.proxy.next_deadline() is None
    assert bench.sample("sbc_sip_transactions", kind="invite_client") == 0


# -- CANCEL (16.10) -------------------------------------------------------------------------------


def test_cancel_before_answer(bench: Bench) -> None:
    branch = "z9hG4bKcancelme"
    _, fwd = forward_invite(bench, branch=branch, call_id="c-1")
    bench.feed(answer(fwd.req, 180), UAS)
    cancel = invite(method="CANCEL", branch=branch, call_id="c-1")
    outs = bench.feed(cancel)
    ok = only([o for o in outs if o.is_response], peer=UAC).resp
    assert ok.status == 200 and ok.cseq.method == "CANCEL"
    down = only([o for o in outs if not o.is_response], peer=UAS).req
    # RFC 3261 9.1: the CANCEL has the forwarded INVITE's Request-URI, top Via (branch), Call-ID,
    # From, To and CSeq number.
    assert down.method == "CANCEL" and down.uri == fwd.req.uri
    assert down.headers.values("via") == [fwd.req.headers.values("via")[0]]
    assert (down.call_id, down.cseq.number) == (fwd.req.call_id, fwd.req.cseq.number)
    # The UAS answers the CANCEL and ends the INVITE with 487: ACKed by us, 487 to the caller.
    assert bench.feed(answer(down, 200, to_tag=None), UAS) == []
    outs = bench.feed(answer(fwd.req, 487), UAS)
    assert sorted(o.is_response for o in outs) == [False, True]
    final = next(o for o in outs if o.is_response)
    assert final.resp.status == 487 and final.peer == UAC


def test_cancel_waits_for_a_provisional_before_going_downstream(bench: Bench) -> None:
    branch = "z9hG4bKearlycancel"
    _, fwd = forward_invite(bench, branch=branch, call_id="c-2")
    outs = bench.feed(invite(method="CANCEL", branch=branch, call_id="c-2"))
    assert statuses(outs) == [200]  # 9.1: no CANCEL downstream before a provisional response
    outs = bench.feed(answer(fwd.req, 100, to_tag=None), UAS)
    assert [o.req.method for o in outs] == ["CANCEL"]


def test_cancel_after_the_answer_is_acknowledged_and_goes_no_further(bench: Bench) -> None:
    """16.10: a CANCEL for a transaction that already sent its final (2xx) response gets 200 and
    nothing is cancelled downstream; a 2xx retransmission still reaches the caller."""
    branch = "z9hG4bKlatecancel"
    _, fwd = forward_invite(bench, branch=branch, call_id="c-3")
    ok = bench.feed(answer(fwd.req, 200), UAS)
    assert statuses(ok) == [200] and ok[0].peer == UAC
    outs = bench.feed(invite(method="CANCEL", branch=branch, call_id="c-3"))
    assert statuses(outs) == [200] and [o for o in outs if not o.is_response] == []
    again = bench.feed(answer(fwd.req, 200), UAS)
    assert statuses(again) == [200] and again[0].peer == UAC


def test_cancel_for_nothing_gets_481(bench: Bench) -> None:
    outs = bench.feed(invite(method="CANCEL", branch="z9hG4bKnothing"))
    assert statuses(outs) == [481]


# -- in-dialog requests without per-dialog state (16.4, 16.12) ------------------------------------


def crossing_config() -> SbcConfig:
    return config(routes=[{"name": "uas", "next_hop": "sip:192.0.2.20:5080", "listener": "b"}])


def in_dialog(
    method: str, ruri: str, routes: list[str], *, from_uas: bool = False, cseq: int = 2
) -> bytes:
    via = "SIP/2.0/UDP 192.0.2.20:5080" if from_uas else "SIP/2.0/UDP 192.0.2.10:5060"
    from_, to = ("<sip:bob@x>;tag=callee1", "<sip:alice@y>;tag=caller1")
    if not from_uas:
        from_, to = to, from_
    route_lines = "".join(f"Route: {r}\n" for r in routes)
    return sip(
        f"{method} {ruri} SIP/2.0\nVia: {via};branch=z9hG4bK{secrets.token_hex(5)}\n"
        f"{route_lines}Max-Forwards: 70\nFrom: {from_}\nTo: {to}\nCall-ID: dialog-1\n"
        f"CSeq: {cseq} {method}\nContent-Length: 0\n\n"
    )


def test_a_second_proxy_routes_the_bye_of_a_call_set_up_by_the_first() -> None:
    first = Bench(crossing_config())
    _, ok = call_up(first, call_id="dialog-1")
    record_route = ok.resp.headers.values("record-route")
    assert record_route == [f"<sip:{SBC_B};lr;r2=on>", f"<sip:{SBC_A};lr;r2=on>"]

    second = Bench(crossing_config())  # a replica: same config, no memory of the call
    # The caller's BYE: route set = Record-Route reversed (12.1.2), to the callee's Contact.
    bye = in_dialog("BYE", "sip:bob@192.0.2.20:5080", list(reversed(record_route)))
    down = only(second.feed(bye, UAC, "a"))
    # Both Route entries were ours: popped, and the last one names "b", the interface to use.
    assert down.peer == UAS and down.listener == "b"
    assert down.req.uri == "sip:bob@192.0.2.20:5080"
    assert "route" not in down.req.headers
    assert down.req.vias[0].sent_by == SBC_B
    # And the callee's BYE (route set in Record-Route order) leaves by "a", to the caller.
    bye = in_dialog("BYE", "sip:alice@192.0.2.10:5060", record_route, from_uas=True)
    up = only(second.feed(bye, UAS, "b"))
    assert up.peer == UAC and up.listener == "a" and "route" not in up.req.headers


def test_ack_for_2xx_is_forwarded_statelessly_along_the_route_set(bench: Bench) -> None:
    _, ok = call_up(bench, call_id="dialog-1")
    routes = list(reversed(ok.resp.headers.values("record-route")))
    ack = in_dialog("ACK", "sip:bob@192.0.2.20:5080", routes, cseq=1)
    down = only(bench.feed(ack))
    assert down.req.method == "ACK" and down.peer == UAS
    # The same ACK again (the caller retransmits on a 2xx retransmission): same branch again.
    again = only(bench.feed(ack))
    assert again.req.vias[0].branch == down.req.vias[0].branch


def test_route_to_another_proxy_is_kept_and_followed(bench: Bench) -> None:
    outs = bench.feed(invite(extra="Route: <sip:198.51.100.7:5070;lr>\n"))
    fwd = next(o for o in outs if not o.is_response)
    assert fwd.peer == Peer("udp", "198.51.100.7", 5070)
    assert fwd.req.headers.values("route") == ["<sip:198.51.100.7:5070;lr>"]


def test_strict_router_request_uri_is_restored_from_the_last_route(bench: Bench) -> None:
    """16.4: a strict router put our Record-Route URI in the Request-URI and the real target
    last in Route: that target becomes the Request-URI again."""
    req = in_dialog("BYE", f"sip:{SBC_A};lr", [UAS_CONTACT])
    down = only(bench.feed(req))
    assert down.req.uri == "sip:bob@192.0.2.20:5080"
    assert "route" not in down.req.headers
    assert down.peer == UAS


# -- Via handling (18.2.1, RFC 3581) --------------------------------------------------------------


def test_received_and_rport_are_stamped_and_responses_follow_the_source(bench: Bench) -> None:
    nat = Peer("udp", "203.0.113.5", 40000)
    via = "SIP/2.0/UDP 192.168.1.2:5060;branch=z9hG4bKnat;rport"
    outs = bench.feed(invite(via=via), nat)
    trying = outs[0]
    assert trying.peer == nat  # rport: back to the source address and port
    fwd = next(o for o in outs if not o.is_response)
    theirs = fwd.req.vias[1]
    assert theirs.received == "203.0.113.5" and theirs.rport == 40000
    assert theirs.branch == "z9hG4bKnat"


def test_received_is_added_with_rport_even_for_the_same_address(bench: Bench) -> None:
    via = "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKsame;rport"
    _, fwd = forward_invite(bench, via=via)
    theirs = fwd.req.vias[1]
    assert (theirs.received, theirs.rport) == ("192.0.2.10", 5060)


def test_without_rport_responses_go_to_the_via_port(bench: Bench) -> None:
    src = Peer("udp", "192.0.2.10", 33333)
    outs = bench.feed(invite(via="SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKnorport"), src)
    assert outs[0].peer == Peer("udp", "192.0.2.10", 5062)


# -- draining -------------------------------------------------------------------------------------


def test_draining_refuses_new_invites_but_serves_dialogs(bench: Bench) -> None:
    bench.proxy.draining = True
    assert bench.proxy.not_ready_reasons() == ["draining"]
    outs = bench.feed(invite())
    busy = outs[-1].resp
    assert busy.status == 503 and busy.headers.get("retry-after")
    # An in-dialog request of a call set up before still goes through.
    bye = in_dialog("BYE", "sip:bob@192.0.2.20:5080", [f"<sip:{SBC_A};lr>"])
    assert only(bench.feed(bye)).peer == UAS
    # And the proxy still answers OPTIONS for itself.
    assert statuses(bench.feed(invite(method="OPTIONS", ruri=f"sip:{SBC_A}"))) == [200]


# -- the metrics the process exports --------------------------------------------------------------


def test_transaction_gauge_and_counters_come_from_the_table(bench: Bench) -> None:
    forward_invite(bench)
    assert bench.sample("sbc_sip_transactions", kind="invite_server") == 1
    assert bench.sample("sbc_sip_transactions", kind="invite_client") == 1
    bench.advance(1.6)  # timer A fired twice
    assert bench.sample("sbc_sip_retransmissions_total", direction="sent") == 2
    assert bench.sample("sbc_sip_transaction_events_total", event="created") == 2
    assert bench.sample("sbc_sip_requests_total", method="INVITE") == 1
    assert bench.sample("sbc_sip_responses_total", status_class="1xx", direction="sent") == 1


# -- timer C (16.6 step 11, 16.8) -----------------------------------------------------------------


def test_timer_c_cancels_a_call_that_rings_forever() -> None:
    bench = Bench()
    bench.proxy.timer_c = 200.0
    _, fwd = forward_invite(bench)
    bench.feed(answer(fwd.req, 180), UAS)
    outs = bench.advance(150)
    bench.feed(answer(fwd.req, 183), UAS)  # a provisional resets C (16.7 step 2)
    outs = bench.advance(199)
    assert [o for o in outs if not o.is_response] == []
    outs = bench.advance(1.2)
    cancels = [o for o in outs if not o.is_response]  # the CANCEL, and timer E's repeat
    cancel = cancels[0].req
    assert cancels[0].peer == UAS  # 200 s after the 183, not after the 180
    assert cancel.method == "CANCEL" and cancel.vias[0].branch == fwd.req.vias[0].branch
    # The callee never answers the CANCEL either: timer B (64*T1 after it) ends the wait
    # with a 408 to the caller, and nothing is left.
    outs = bench.advance(64 * T1 + 1)
    assert 408 in statuses([o for o in outs if o.is_response and o.peer == UAC])
    bench.advance(64 * T1 + 1)
    assert bench.proxy.transaction_count() == 0 and bench.proxy.next_deadline() is None


# -- no input breaks the core ---------------------------------------------------------------------

_TOKENS = [
    *(b";", b",", b"<", b">", b'"', b":", b"@", b"[", b"]", b" ", b"\r\n", b"=", b";lr"),
    *(b"sip:", b"tel:+1", b"0", b"99999999", b"z9hG4bK", SBC_A.encode(), b"SIP/2.0/TCP"),
    *(b"\x00", b"\xff\xfe", b"Route: <sip:10.0.0.1:5060;lr>\r\n", b"Max-Forwards: 0\r\n"),
    *(b"Via: SIP/2.0/UDP [::1\r\n", b"CSeq: 1 CANCEL\r\n", b"To: <sip:b@x>;tag=t\r\n"),
]


def _seeds() -> list[tuple[bytes, Peer]]:
    bench = Bench()
    fwd, _ = call_up(bench)
    return [
        (invite(branch="z9hG4bKseed"), UAC),
        (invite(method="OPTIONS"), UAC),
        (invite(method="CANCEL", branch="z9hG4bKseed"), UAC),
        (invite(method="ACK", branch="z9hG4bKseed"), UAC),
        (answer(fwd.req, 180), UAS),
        (answer(fwd.req, 200), UAS),
        (answer(fwd.req, 486), UAS),
        (in_dialog("BYE", "sip:bob@192.0.2.20:5080", [f"<sip:{SBC_A};lr>"]), UAC),
        (in_dialog("BYE", f"sip:{SBC_A};lr", [UAS_CONTACT]), UAC),
    ]


SEEDS = _seeds()


@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, len(SEEDS) - 1),
            st.lists(
                st.tuples(st.floats(0, 1), st.integers(0, 2), st.sampled_from(_TOKENS)),
                max_size=4,
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
@settings(max_examples=150, deadline=None)
def test_mutated_messages_never_break_the_proxy(
    steps: list[tuple[int, list[tuple[float, int, bytes]]]],
) -> None:
    """Valid messages of a call, mangled: each is answered, forwarded or dropped, never an
    internal error, and every transaction they started ends once the timers ran."""
    bench = Bench()
    forward_invite(bench, branch="z9hG4bKseed")  # something in flight to hit
    for index, mutations in steps:
        data, peer = SEEDS[index]
        buf = bytearray(data)
        for where, op, token in mutations:
            at = int(where * (len(buf) - 1))
            if op == 0:
                buf[at:at] = token
            elif op == 1:
                del buf[at : at + len(token)]
            else:
                buf[at] = token[0]
        bench.feed(bytes(buf), peer, "a")
    assert bench.sample("sbc_sip_parse_errors_total", kind="internal") == 0
    bench.advance(TIMER_C + 64 * T1 + 40)
    assert bench.proxy.transaction_count() == 0
    assert bench.proxy.next_deadline() is None


def test_extension_methods_are_forwarded_and_counted_as_other(bench: Bench) -> None:
    """RFC 3261 16: a proxy forwards methods it does not know. The request counter groups them,
    so peers cannot grow its label set without bound."""
    for n in range(3):
        method = f"FOO{n}"
        outs = bench.feed(invite(method=method))
        assert only(outs).req.method == method
    assert bench.sample("sbc_sip_requests_total", method="other") == 3
    assert bench.sample("sbc_sip_requests_total", method="FOO0") == 0


def test_late_2xx_goes_back_by_the_interface_facing_the_caller() -> None:
    """With no transaction left, the 2xx retransmission leaves by the interface our
    Record-Route names for the caller's side ("a"), though it came in on "b"."""
    listeners = config().model_dump()["listeners"]
    b_first = config(
        listeners=list(reversed(listeners)),  # so "any UDP listener" would be the wrong one
        routes=[{"name": "uas", "next_hop": "sip:192.0.2.20:5080", "listener": "b"}],
    )
    bench = Bench(b_first)
    fwd, ok = call_up(bench)
    assert ok.listener == "a"
    bench.advance(64 * T1 + 1)
    late = only(bench.feed(answer(fwd.req, 200), UAS, "b"))
    assert late.peer == UAC and late.listener == "a"
