"""The stateful proxy (RFC 3261 section 16) on top of the transaction layer, sans-IO.

:class:`Proxy` takes bytes, where they came from and ``now``; it queues what must be sent in
:attr:`Proxy.outbox` and tells the driver when it next needs :meth:`Proxy.advance`. No sockets,
clocks or asyncio here (``teams_sbc.app`` is the driver).

Routing needs no per-dialog memory: the Record-Route entries we insert name the listener they
belong to by its address and transport, so whichever SBC process receives an in-dialog request
pops its own Route entries and knows, from the last one, which listener to send from
(see :meth:`Proxy._pop_own_routes`). Per-transaction state (the response context of 16.7) lives
only as long as the transactions; the proxy's own timer C (16.6 step 11) makes sure an INVITE
that rings forever ends too.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import itertools
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mypy_extensions import mypyc_attr

from teams_sbc.config import Route, SbcConfig
from teams_sbc.media.commands import Failure, MediaCommand, MediaResult, Op
from teams_sbc.media.legs import Leg
from teams_sbc.media.metrics import MediaMetrics
from teams_sbc.metrics import Metrics
from teams_sbc.sip.errors import SipParseError
from teams_sbc.sip.headers import Via, parse_name_addr
from teams_sbc.sip.media import (
    MEDIA_TIMEOUT_REASON,
    Dialog,
    MediaState,
    Pending,
    sdp_of,
    token_in,
    with_token,
)
from teams_sbc.sip.message import (
    DEFAULT_MAX_FORWARDS,
    Message,
    Request,
    Response,
    error_response,
    make_response,
    parse_message,
)
from teams_sbc.sip.peer import Outgoing, Peer
from teams_sbc.sip.transaction import (
    Kind,
    PassUp,
    Send,
    SendCancel,
    State,
    Stray,
    Terminated,
    TimedOut,
    TimerConfig,
    Transaction,
    TransactionTable,
    TransportFailed,
)
from teams_sbc.sip.uri import SipUri, Uri, parse_uri

log = logging.getLogger("teams_sbc.proxy")

MAGIC = "z9hG4bK"
#: Our branches start with this, so a Via of ours is recognisable in loop detection.
BRANCH_PREFIX = MAGIC + "ts"
_BRANCH_PREFIX_BYTES = BRANCH_PREFIX.encode()
#: RFC 3261 16.6 step 11: timer C, how long a forwarded INVITE may go without a final response
#: once it rings ("MUST be greater than 3 minutes").
TIMER_C = 185.0
#: RFC 3261 18.1.1: a request over this size is sent over a congestion-controlled transport.
UDP_SIZE_LIMIT = 1300
#: Requests that create a dialog and therefore get Record-Route (RFC 3261 16.6 step 4).
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
#: Requests whose SDP is an offer rtpengine anchors (docs/media.md): INVITE and re-INVITE, and
#: UPDATE (RFC 3311), whose answer comes in its 2xx as a re-INVITE's does.
MEDIA_OFFERS = frozenset({"INVITE", "UPDATE"})
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, NOTIFY, SUBSCRIBE, MESSAGE"
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}
#: Methods counted under their own name in ``sbc_sip_requests``; any other token a peer sends
#: (RFC 3261 allows extension methods, and a proxy forwards them) is counted as "other", so
#: no input can grow the metric's label set without bound.
COUNTED_METHODS = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY",
     "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE"}
)  # fmt: skip
_PENDING = frozenset({State.CALLING, State.TRYING, State.PROCEEDING})
_UNKNOWN = object()
#: Commands whose deadline passed, kept (this many at most) so a late success can be undone.
_EXPIRED_KEPT = 4096
_T = TypeVar("_T", str, Peer)
_OURS_CACHE_SIZE = 4096


@dataclass(slots=True)
class _Local:
    """One listener as the core sees it: where it is bound and how it names itself."""

    name: str
    transport: str
    host: str  # advertised host (address or FQDN) for Via and Record-Route
    port: int
    bind_host: str
    #: The port our Via names, when not ``port``: a worker process's own UDP port, so the
    #: responses to what it sends come back to it (Record-Route keeps the shared ``port``).
    via_port: int | None = None
    # Derived once, when the listener is learnt: every forwarded request needs them.
    via_prefix: str = field(init=False, default="")  # "SIP/2.0/UDP host:port;branch="
    rr: str = field(init=False, default="")  # our Record-Route URI
    rr_r2: str = field(init=False, default="")  # the same with r2=on

    def __post_init__(self) -> None:
        via_hostport = self.hostport(self.via_port)
        self.via_prefix = f"SIP/2.0/{self.transport.upper()} {via_hostport};branch="
        self.rr = self.rr_uri(r2=False)
        self.rr_r2 = self.rr_uri(r2=True)

    def hostport(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{port or self.port}"

    def rr_uri(self, r2: bool) -> str:
        transport = "" if self.transport == "udp" else f";transport={self.transport}"
        return f"<sip:{self.hostport()}{transport};lr{';r2=on' if r2 else ''}>"


@dataclass(slots=True)
class _ServerCtx:
    """What a server transaction needs: where responses go, and its response context."""

    peer: Peer
    listener: str
    rctx: _ResponseContext | None = None
    parked: Pending | None = None  # the INVITE waits for rtpengine's offer
    edge: Any = None  # what a policy layer (teams.edge) keeps about this request


@dataclass(slots=True)
class _ClientCtx:
    peer: Peer
    listener: str
    rctx: _ResponseContext | None  # None for a CANCEL we originate, and once final_sent
    #: The server transaction it forwards for: an INVITE client that got a 2xx keeps sending
    #: further 2xx there (16.7 step 5, RFC 6026 7.2) after dropping the response context.
    server: Transaction[Message] | None = None
    edge: Any = None  # what a policy layer (teams.edge) keeps about this branch


@dataclass(slots=True)
class _ResponseContext:
    """RFC 3261 16.7's response context for one forwarded request."""

    server: Transaction[Message]
    call_id: str
    branches: tuple[Transaction[Message], ...] = ()
    best: Response | None = None
    final_sent: bool = False
    cancelled: bool = False
    media: MediaState | None = None  # the offer went through rtpengine


# Compiled with mypyc (docs/performance.md), a class only Python classes of the same build may
# extend unless it says so: teams.edge.TeamsProxy extends it.
@mypyc_attr(allow_interpreted_subclasses=True)
class Proxy:
    """The SBC's SIP core: a transaction-stateful, record-routing proxy."""

    def __init__(
        self,
        config: SbcConfig,
        metrics: Metrics,
        *,
        token: Callable[[int], str] = secrets.token_hex,
        timer_c: float = TIMER_C,
        media_metrics: MediaMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.token = token
        self.timer_c = timer_c
        #: Timer C of each pending INVITE client transaction, by deadline. Every deadline is
        #: ``now + timer_c`` when set, so insertion order is deadline order: an ordered dict
        #: (moved to the end on a reset, deleted on the final response) is the whole timer
        #: queue, O(1) for each of those and for reading the earliest.
        self._timer_c: OrderedDict[Transaction[Message], float] = OrderedDict()
        self.outbox: list[Outgoing] = []
        self.draining = False
        timers = config.timers
        # A waiting transaction repeats its last message as the bytes we sent (to_bytes caches
        # them), not as the parsed message: thousands wait for timers J, K, L and M at once.
        self.txns: TransactionTable[Message] = TransactionTable(
            TimerConfig(t1=timers.t1_ms / 1000, t2=timers.t2_ms / 1000, t4=timers.t4_ms / 1000),
            serialise=Message.to_bytes,
        )
        self._locals: dict[str, _Local] = {}
        self._by_hostport: dict[tuple[str, int, str], _Local] = {}
        #: Per listener: the configured route, its next hop and that resolved (_default_hop).
        self._hops: dict[str, tuple[Route, Uri, Peer | None] | None] = {}
        #: What _is_ours answered, by its arguments as given.
        self._ours: dict[tuple[str, int | None, str | None], _Local | None] = {}
        #: One object for equal sent-by strings and response peers (see _shared).
        self._shares: dict[object, Any] = {}
        #: As one of several workers: where a response whose top Via names a sibling worker's
        #: port goes (that sibling), by (listener, port).
        self._siblings: dict[tuple[str, int], Peer] = {}
        self.set_bound_addresses({})
        self._warning_agent = config.server_header
        # Message counts in plain integers, read by the metrics collector at scrape time.
        self._requests = dict.fromkeys([*COUNTED_METHODS, "other"], 0)
        self._sent = [0] * 7  # by status // 100
        self._received = [0] * 7
        metrics.observe_messages(self.request_counts, self.response_counts)
        metrics.observe_transactions(self.transaction_counts, self.transaction_stats)
        self._init_media(media_metrics)

    # -- configuration ------------------------------------------------------------------------

    def set_bound_addresses(
        self,
        bound: Mapping[str, tuple[str, int]],
        via_ports: Mapping[str, int] | None = None,
        sibling_ports: Mapping[str, Collection[int]] | None = None,
    ) -> None:
        """Learn the real ports (a listener configured with port 0 gets one from the kernel).

        As one of several worker processes: ``via_ports`` are this worker's own ports, put in
        our Via instead of the listener's; ``sibling_ports`` are every worker's, recognised as
        ours too (loop detection, and a Route or Request-URI naming one of them); a response
        for a sibling that reaches this worker is passed to it (see _on_response).
        """
        self._locals.clear()
        self._siblings.clear()
        self._by_hostport.clear()
        self._hops.clear()
        self._ours.clear()
        via_ports = via_ports or {}
        sibling_ports = sibling_ports or {}
        for listener in self.config.listeners:
            name = listener.name
            port = bound.get(name, (listener.host, listener.port))[1]
            local = _Local(
                name, listener.transport, listener.advertised_host, port, listener.host,
                via_ports.get(name),
            )  # fmt: skip
            self._locals[name] = local
            ports = {port, *sibling_ports.get(name, ()), local.via_port or port}
            to = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(listener.host, listener.host)
            for sibling in set(sibling_ports.get(name, ())) - {local.via_port}:
                self._siblings[(name, sibling)] = Peer(listener.transport, to, sibling)
            for host in {listener.advertised_host.lower(), listener.host.lower()}:
                for each in ports:
                    self._by_hostport[(host.strip("[]"), each, listener.transport)] = local

    def reconfigure(self, config: SbcConfig) -> None:
        """Take over a reloaded config (teams_sbc.reload): only the parts it lets change
        (routes, hosts) are read again; transactions in flight keep what they were given."""
        self.config = config
        self._hops.clear()  # the routes' next hops, resolved with the old routes and hosts

    def _is_ours(self, host: str, port: int | None, transport: str | None = None) -> _Local | None:
        """The listener that ``host:port`` (and transport, if given, any case) names, if any.

        Asked for the top Via of every response and the Request-URI of every request, with
        the same few hosts over and over: answers are remembered, as given, in a bounded dict.
        """
        key = (host, port, transport)
        found = self._ours.get(key, _UNKNOWN)
        if found is not _UNKNOWN:
            return found  # type: ignore[return-value]
        name = host.lower().strip("[]")
        local = None
        for kind in (transport.lower(),) if transport else ("udp", "tcp", "tls"):
            local = self._by_hostport.get((name, port or DEFAULT_PORTS[kind], kind))
            if local is not None:
                break
        if len(host) <= 255:  # whatever peers write, the cache stays small
            if len(self._ours) >= _OURS_CACHE_SIZE:
                self._ours.clear()
            self._ours[key] = local
        return local

    def _shared(self, value: _T) -> _T:
        """``value``, or an equal object seen before: every transaction keeps a sent-by and a
        response peer for its whole life (timers J and L: 64*T1), and a busy peer sends the
        same ones over and over, each parsed into a new object. Bounded like ``_ours``."""
        shares = self._shares
        found: _T | None = shares.get(value)
        if found is not None:
            return found
        if len(shares) >= _OURS_CACHE_SIZE:
            shares.clear()
        shares[value] = value
        return value

    def _finished(self, ctx: _ServerCtx | _ClientCtx) -> _ServerCtx | _ClientCtx:
        """The context of a transaction whose final response is decided: where its messages
        go, without a response context. One object per destination, shared (its ``rctx`` stays
        None: only a new request's own context gets one), since thousands such transactions
        wait for timers J, K and L at once. Bounded like ``_ours``."""
        peer = ctx.peer
        key = (type(ctx), peer, peer.server_name, ctx.listener)  # (not part of a Peer's equality)
        found: _ServerCtx | _ClientCtx | None = self._shares.get(key)
        if found is None:
            if len(self._shares) >= _OURS_CACHE_SIZE:
                self._shares.clear()
            found = self._shares[key] = type(ctx)(peer, ctx.listener, None)
        return found

    def _uri_is_ours(self, uri: Uri) -> _Local | None:
        if not isinstance(uri, SipUri):
            return None
        transport = "tls" if uri.scheme == "sips" else uri.transport
        return self._is_ours(uri.host, uri.port, transport)

    # -- health ---------------------------------------------------------------------------------

    def transaction_count(self) -> int:
        return len(self.txns)

    def transaction_counts(self) -> dict[str, int]:
        """Live transactions by kind (``invite_client``...), for the transactions gauge."""
        return {kind.name.lower(): count for kind, count in self.txns.counts().items()}

    def transaction_stats(self) -> dict[str, int]:
        """The transaction table's counters (retransmissions, timeouts, strays...)."""
        return dataclasses.asdict(self.txns.stats)

    def not_ready_reasons(self) -> list[str]:
        return ["draining"] if self.draining else []

    def next_deadline(self) -> float | None:
        deadline = self.txns.next_deadline()
        if self._timer_c:
            c_at = next(iter(self._timer_c.values()))
            deadline = c_at if deadline is None else min(deadline, c_at)
        if self._media_on:
            for queue in (self._pending_due, self._audits):
                if queue:
                    at = next(iter(queue.values()))
                    deadline = at if deadline is None else min(deadline, at)
        return deadline

    def advance(self, now: float) -> None:
        self._act(self.txns.advance(now), now)
        timer_c = self._timer_c
        while timer_c:
            client, c_at = next(iter(timer_c.items()))
            if c_at > now:
                break
            del timer_c[client]
            self._timer_c_fired(client, now)
        if self._media_on:
            self._media_advance(now)

    def _start_timer_c(self, client: Transaction[Message], now: float) -> None:
        """16.6 step 11, 16.7 step 2: (re)start timer C; a reset moves it to the end."""
        self._timer_c[client] = now + self.timer_c
        self._timer_c.move_to_end(client)

    def _timer_c_fired(self, client: Transaction[Message], now: float) -> None:
        """16.8: the INVITE rang for timer C without an answer. Ringing: CANCEL it (the callee's
        487, or timer B after the CANCEL, ends it). Not even ringing: as if it got a 408."""
        if client.state is State.PROCEEDING:
            self._act(self.txns.cancel(client, now=now), now)
        elif client.state is State.CALLING:
            self._branch_failed(client, 408, "Request Timeout (timer C)", now)

    # -- input ------------------------------------------------------------------------------------

    def receive(self, data: bytes, peer: Peer, listener: str, now: float) -> None:
        """One complete message from the network. Never raises."""
        try:
            msg = parse_message(data, max_size=self.config.max_message_size)
        except SipParseError as exc:
            self._parse_failed(exc, peer, listener)
            return
        try:
            if isinstance(msg, Request):
                self._on_request(msg, peer, listener, now)
            else:
                self._on_response(msg, now)
        except SipParseError as exc:
            # A header the proxy needed did not parse (found lazily, after parse_message).
            exc.is_request = isinstance(msg, Request)
            exc.partial = msg if isinstance(msg, Request) else None
            self._parse_failed(exc, peer, listener)
        except Exception:
            self.metrics.parse_errors.labels(kind="internal").inc()
            log.exception("internal error handling a message", extra={"call_id": _cid(msg)})
            if isinstance(msg, Request) and msg.method != "ACK":
                self._reply_stateless(msg, peer, listener, 500, "Internal Server Error")

    def _parse_failed(self, exc: SipParseError, peer: Peer, listener: str) -> None:
        if exc.is_request:
            self.metrics.parse_errors.labels(kind="request").inc()
            # Stateless (8.2): a request we cannot parse has no transaction to match. None when
            # it cannot be answered at all (an ACK, or a Via, From, To, Call-ID or CSeq missing).
            response = error_response(exc, warning_agent=self._warning_agent)
            log.info(
                "bad request answered" if response is not None else "bad request dropped",
                extra={"status": exc.status, "reason": exc.reason, "peer": str(peer),
                       "call_id": _cid(exc.partial)},
            )  # fmt: skip
            if response is not None:
                self._count_response(response.status, "sent")
                self.outbox.append(Outgoing(response.to_bytes(), peer, listener))
        else:
            kind = "response" if exc.is_request is False else "unrecognised"
            self.metrics.parse_errors.labels(kind=kind).inc()
            log.info("unparseable message dropped", extra={"reason": exc.reason, "peer": str(peer)})

    # -- requests ---------------------------------------------------------------------------------

    def _on_request(self, req: Request, peer: Peer, listener: str, now: float) -> None:
        method = req.method
        counts = self._requests
        counts[method if method in counts else "other"] += 1
        top = req.top_via
        _ = req.call_id, req.cseq, req.from_addr, req.to_addr  # mandatory: 400 if malformed
        rport = top.param("rport")
        self._stamp_via(req, top, peer, rport)
        branch = top.branch
        if not branch or not branch.startswith(MAGIC):
            branch = _rfc2543_key(req, top)
        ack = method == "ACK"
        context = None  # an ACK never starts a transaction: no context to build for it
        if not ack:
            respond_to = _response_peer(top, peer, rport)
            if respond_to.server_name is None:  # (not part of a Peer's equality)
                respond_to = self._shared(respond_to)
            context = _ServerCtx(respond_to, listener)
        actions = self.txns.receive_request(
            req,
            method=method,
            branch=branch,
            sent_by=self._shared(top.sent_by.lower()),
            reliable=peer.reliable,
            now=now,
            context=context,
        )
        if ack and actions and type(actions[0]) is Stray:
            # No INVITE server transaction took it: the ACK for a 2xx, its own transaction.
            self._forward_stateless_ack(req, listener, now)
            return
        self._act(actions, now)

    def _stamp_via(self, req: Request, top: Via, peer: Peer, rport: str | None) -> None:
        """RFC 3261 18.2.1 and RFC 3581 4: received and rport on the top Via.

        ``received`` when the sent-by host is not the source address; with a bare ``rport``,
        ``rport`` set to the source port and ``received`` added even when it is the same
        address (RFC 3581 4 says MUST: the client learns its public address from it).
        ``rport`` is the top Via's rport parameter as received.
        """
        new = top
        rport_asked = rport == ""
        if rport_asked or top.bare_host != peer.host:
            new = new.with_param("received", peer.host)
        if rport_asked:
            new = new.with_param("rport", str(peer.port))
        if new is not top:
            req.headers.remove_first_value("via")
            req.headers.prepend("Via", str(new))

    def _new_request(self, txn: Transaction[Message], req: Request, now: float) -> None:
        """A request that started a server transaction: answer it or forward it (16.3-16.6).

        Headers the parser leaves for later (Max-Forwards, Route, the Request-URI's
        parameters) may turn out malformed only here. The answer is then the 400 the parser
        would have given, but sent on the transaction: it must end like any other, or an INVITE
        server transaction would wait in Proceeding forever.
        """
        if req.method == "INVITE":
            # 16.2: a stateful proxy answers an INVITE with 100 Trying at once (so the caller
            # stops retransmitting while the next hop takes its time).
            self._respond(txn, make_response(req, 100, "Trying"), now)
        try:
            self._handle_new_request(txn, req, now)
        except SipParseError as exc:
            self.metrics.parse_errors.labels(kind="request").inc()
            if txn.state in _PENDING:
                warning = [("Warning", f'399 {self._warning_agent} "{exc.reason}"')]
                self._reply(txn, req, exc.status, exc.reason, now, warning)

    def _handle_new_request(self, txn: Transaction[Message], req: Request, now: float) -> None:
        ctx: _ServerCtx = txn.context
        method = req.method
        if method == "CANCEL":
            self._cancel(txn, req, now)
            return
        # 16.3 step 3: Max-Forwards.
        max_forwards = req.max_forwards
        if max_forwards == 0:
            if method == "OPTIONS":
                self._answer_options(txn, req, now)
            else:
                self._reply(txn, req, 483, "Too Many Hops", now)
            return
        # 16.3 step 4: loop detection.
        loop_hash = self._loop_hash(req)
        vias = req.vias if req.headers.mentions("via", _BRANCH_PREFIX_BYTES) else ()
        for via in vias:
            if (
                via.branch
                and via.branch.startswith(BRANCH_PREFIX)
                and via.branch.endswith("." + loop_hash)
                and self._is_ours(via.bare_host, via.port, via.transport)
            ):
                self._reply(txn, req, 482, "Loop Detected", now)
                return
        # 16.3 step 5: Proxy-Require (we support no extensions that need a proxy's help).
        required = req.headers.values("proxy-require")
        if required:
            self._reply(txn, req, 420, "Bad Extension", now, [("Unsupported", ", ".join(required))])
            return
        # 16.4: Route information preprocessing.
        out_local, next_route, ruri_local, token = self._pop_own_routes(req)
        in_dialog = req.to_tag is not None
        if in_dialog and self._media_on:
            self._media_in_dialog(req, token)
        if self.draining and not in_dialog and method == "INVITE":
            self._reply(
                txn, req, 503, "Service Unavailable (draining)", now, [("Retry-After", "30")]
            )
            return
        target: Uri
        dest: Peer | None = None
        route_cfg: Route | None = None
        if next_route is not None:
            target = next_route
        elif ruri_local is None:
            target = req.ruri
        else:
            if method == "OPTIONS" and isinstance(req.ruri, SipUri) and not req.ruri.user:
                self._answer_options(txn, req, now)
                return
            if self._route_for_us(txn, req, out_local, max_forwards, loop_hash, now):
                return
            hop = self._default_hop(ctx.listener)
            if hop is None:
                self._reply(txn, req, 404, "Not Found (no route)", now)
                return
            route_cfg, target, dest = hop
        self._forward(
            txn, req, target, dest, out_local, route_cfg, max_forwards, loop_hash, now, token
        )

    def _forward(
        self,
        txn: Transaction[Message],
        req: Request,
        target: Uri,
        dest: Peer | None,
        out_local: _Local | None,
        route_cfg: Route | None,
        max_forwards: int | None,
        loop_hash: str,
        now: float,
        token: str | None = None,
        media: MediaState | None = None,
        offered: bool = False,
    ) -> None:
        """16.6: copy, adjust and send the request to one target, statefully. ``dest`` is
        ``target`` resolved already (the configured next hop's), or None to resolve it here.

        An INVITE with SDP first goes to rtpengine (``offered`` False): it is parked, and
        forwarded by this same method, with rtpengine's SDP, ``media`` and the instance's
        ``token``, once the driver reports the offer (:meth:`_offer_done`)."""
        ctx: _ServerCtx = txn.context
        if dest is None:
            dest = self._resolve(target)
        if dest is None:
            self._reply(txn, req, 503, "Service Unavailable (next hop not resolvable)", now)
            return
        local = self._pick_local(dest.transport, out_local, route_cfg)
        if local is None:
            self._reply(txn, req, 503, f"Service Unavailable (no {dest.transport} listener)", now)
            return
        if not offered and self._media_on and req.method in MEDIA_OFFERS:
            resolved = dest

            def forward(relay: str | None, state: MediaState, later: float) -> None:
                self._forward(
                    txn, req, target, resolved, out_local, route_cfg, max_forwards, loop_hash,
                    later, relay, state, offered=True,
                )  # fmt: skip

            if self._park_offer(txn, req, local, token, forward, now):
                return
        in_local = self._locals[ctx.listener]
        fwd, branch = self._prepare(req, in_local, local, max_forwards, loop_hash, token)
        self._edit_forwarded(txn, fwd, in_local, local)
        # 18.1.1: a request over 1,300 bytes must not go over UDP; where the next hop takes TCP
        # (a TCP listener to send from, and the route allows it) it goes there instead. The
        # copy is prepared again, so Via and Record-Route name the listener it really leaves by.
        if dest.transport == "udp" and len(fwd.to_bytes()) > UDP_SIZE_LIMIT:
            tcp_local = self._pick_local("tcp", None, None)
            if tcp_local is not None and (route_cfg is None or route_cfg.large_over_tcp):
                dest = Peer("tcp", dest.host, dest.port)
                local = tcp_local
                fwd, branch = self._prepare(req, in_local, local, max_forwards, loop_hash, token)
                self._edit_forwarded(txn, fwd, in_local, local)
            else:
                self._large_over_udp(txn, fwd)
        rctx = ctx.rctx = _ResponseContext(txn, req.call_id)
        rctx.media = media
        client, actions = self.txns.send_request(
            fwd,
            method=req.method,
            branch=branch,
            reliable=dest.reliable,
            now=now,
            context=_ClientCtx(dest, local.name, rctx, txn),
            build_ack=_ack_builder(fwd) if req.method == "INVITE" else None,
        )
        rctx.branches += (client,)
        if req.method == "INVITE":
            self._start_timer_c(client, now)
        self._act(actions, now)

    # -- where a policy layer hooks in (teams_sbc.teams.edge.TeamsProxy) ---------------------------

    def _route_for_us(
        self,
        txn: Transaction[Message],
        req: Request,
        out_local: _Local | None,
        max_forwards: int | None,
        loop_hash: str,
        now: float,
    ) -> bool:
        """A new request addressed to the SBC itself that it does not answer: True when a
        policy routed or answered it; False leaves it to the configured routes."""
        return False

    def _edit_forwarded(
        self, txn: Transaction[Message] | None, fwd: Request, in_local: _Local, local: _Local
    ) -> None:
        """The copy of a request about to leave by ``local`` (``txn`` None: a 2xx's ACK,
        forwarded statelessly), after Max-Forwards, Record-Route and our Via."""

    def _large_over_udp(self, txn: Transaction[Message], fwd: Request) -> None:
        """A request over 1,300 bytes that must go over UDP all the same (18.1.1)."""
        self.metrics.large_over_udp.inc()

    def _prepare(
        self,
        req: Request,
        in_local: _Local,
        local: _Local,
        max_forwards: int | None,
        loop_hash: str,
        token: str | None = None,
    ) -> tuple[Request, str]:
        """16.6 steps 1-8 for one target: the copy, Max-Forwards, Record-Route and our Via.

        Returns the copy and the branch of our Via (the client transaction's key). ``token``
        names the rtpengine instance that anchors the call, carried in our Record-Route.
        """
        fwd = req.copy()
        headers = fwd.headers
        # 16.6 step 3: decrement Max-Forwards, or add it.
        headers.set("Max-Forwards", _next_max_forwards(max_forwards))
        # 16.6 step 4: Record-Route on dialog-creating requests outside a dialog.
        if self.config.record_route and req.method in DIALOG_CREATING and req.to_tag is None:
            self._record_route(fwd, in_local, local, token)
        # 16.6 step 8: our Via, its branch unique to this hop and carrying the loop hash.
        branch = self._branch(req, local, loop_hash)
        headers.prepend("Via", local.via_prefix + branch)
        return fwd, branch

    def _record_route(
        self, fwd: Request, in_local: _Local, out_local: _Local, token: str | None = None
    ) -> None:
        """16.6 step 4: one Record-Route, or two (r2=on) when the request changes listener.

        The top entry faces the next hop (it sends in-dialog requests there); the second faces
        where the request came from. Both carry the rtpengine ``token`` of an anchored call,
        so whichever replica an in-dialog request reaches knows the instance (16.4 pops them).
        """
        if in_local is out_local:
            fwd.headers.prepend("Record-Route", with_token(in_local.rr, token))
        else:
            fwd.headers.prepend("Record-Route", with_token(in_local.rr_r2, token))
            fwd.headers.prepend("Record-Route", with_token(out_local.rr_r2, token))

    def _pop_own_routes(
        self, req: Request
    ) -> tuple[_Local | None, Uri | None, _Local | None, str | None]:
        """16.4: remove the Route entries that name us.

        Returns the listener of the last one removed, the URI of the Route entry now on top
        (the next hop, 16.6 step 6; None when no Route is left), the listener the Request-URI
        names, if it is ours, and the rtpengine token our entries carried (the instance the
        dialog's media is stuck to): what routing needs next, found once here.

        A request whose Request-URI is one of our Record-Route URIs came from a strict router:
        the real Request-URI is the last Route entry (16.4, strict-route compatibility).
        """
        headers = req.headers
        last: _Local | None = None
        token: str | None = None
        ruri_local = self._uri_is_ours(req.ruri)
        routes = headers.values("route")
        if not routes:  # the usual request outside a dialog, or a dialog without our RR
            return None, None, ruri_local, None
        if ruri_local is not None and isinstance(req.ruri, SipUri) and req.ruri.lr:
            token = token_in(req.uri)
            headers.replace("route", *routes[:-1])
            req.uri = str(parse_name_addr(routes[-1], "Route").uri)
            last = ruri_local
            ruri_local = self._uri_is_ours(req.ruri)
            routes = headers.values("route")
        while routes:
            uri = parse_name_addr(routes[0], "Route").uri
            local = self._uri_is_ours(uri)
            if local is None:
                return last, uri, ruri_local, token
            token = token_in(routes[0]) or token
            headers.remove_first_value("route")
            last = local
            routes = headers.values("route")
        return last, None, ruri_local, token

    def _route_for(self, listener: str) -> Route | None:
        for route in self.config.routes:
            if not route.from_listeners or listener in route.from_listeners:
                return route
        return None

    def _default_hop(self, listener: str) -> tuple[Route, Uri, Peer | None] | None:
        """The configured route for requests to us from ``listener``: the route, its next hop
        and where that resolves to (None: not resolvable). The configuration is immutable, so
        this is worked out once per listener; every in-dialog ACK and BYE of a call without a
        Route set (and every new call) comes this way."""
        try:
            return self._hops[listener]
        except KeyError:
            pass
        route_cfg = self._route_for(listener)
        hop = None
        if route_cfg is not None:
            target = _parse_target(route_cfg.next_hop)
            hop = (route_cfg, target, self._resolve(target))
        if len(self._hops) < 1024:  # listener names come from the config, but stay bounded
            self._hops[listener] = hop
        return hop

    def _pick_local(
        self, transport: str, preferred: _Local | None, route_cfg: Route | None
    ) -> _Local | None:
        if preferred is not None and preferred.transport == transport:
            return preferred
        if route_cfg is not None and route_cfg.listener:
            local = self._locals[route_cfg.listener]
            if local.transport == transport:
                return local
        for local in self._locals.values():
            if local.transport == transport:
                return local
        return None

    def _resolve(self, uri: Uri) -> Peer | None:
        """The transport address for a URI (RFC 3263 without DNS: IPs and configured hosts)."""
        if not isinstance(uri, SipUri):
            return None
        transport = (uri.transport or ("tls" if uri.scheme == "sips" else "udp")).lower()
        if transport not in DEFAULT_PORTS:
            return None
        name = (uri.maddr or uri.host).strip("[]")
        host = self.config.hosts.get(name.lower(), name)
        if not _is_ip(host):
            return None
        # TLS keeps the name for SNI and the certificate check while connecting to the address.
        server_name = name if transport == "tls" and host != name else None
        return Peer(transport, host, uri.port or DEFAULT_PORTS[transport], server_name)

    def _branch(self, req: Request, local: _Local, loop_hash: str) -> str:
        """A branch unique to this hop, ending in the loop-detection hash (16.6 step 8).

        Derived from the incoming branch, so a retransmitted request (or an ACK for a 2xx,
        forwarded statelessly) gets the same branch again.
        """
        top_via = req.top_via
        top = top_via.branch
        if top and top.startswith(MAGIC):
            seed = f"{top}|{top_via.sent_by}|{req.method == 'ACK'}|{local.name}"
            unique = _digest(seed, 8)
        else:
            unique = self.token(8)
        return f"{BRANCH_PREFIX}{unique}.{loop_hash}"

    @staticmethod
    def _loop_hash(req: Request) -> str:
        """Fields that stay the same on a loop and change on a spiral (RFC 3261 16.6 step 8)."""
        seed = f"{req.uri}|{req.call_id}|{req.from_tag}|{req.cseq.number}"
        return _digest(seed, 4)

    def _answer_options(self, txn: Transaction[Message], req: Request, now: float) -> None:
        self._reply(
            txn,
            req,
            200,
            "OK",
            now,
            [("Allow", ALLOW), ("Accept", "application/sdp"), ("Supported", "path"),
             ("Server", self.config.server_header)],
            to_tag=self.token(8),
        )  # fmt: skip

    # -- CANCEL (16.10) and stateless ACK forwarding ----------------------------------------------

    def _cancel(self, txn: Transaction[Message], cancel: Request, now: float) -> None:
        invite = self.txns.invite_for_cancel(txn)
        if invite is None:
            self._reply(txn, cancel, 481, "Call/Transaction Does Not Exist", now)
            return
        self._reply(txn, cancel, 200, "OK", now)
        invite_ctx: _ServerCtx = invite.context
        if invite_ctx.parked is not None and invite.state in _PENDING:
            # The INVITE is still with rtpengine, not yet forwarded: it ends here (16.10 as a
            # UAS would); the offer, when it comes back, is deleted (_offer_done).
            request = invite.request
            assert isinstance(request, Request)
            self._reply(invite, request, 487, "Request Terminated", now)
            return
        rctx = invite_ctx.rctx
        if rctx is None or rctx.final_sent:
            return
        rctx.cancelled = True
        for branch in rctx.branches:
            self._act(self.txns.cancel(branch, now=now), now)

    def _send_cancel(self, client: Transaction[Message], now: float) -> None:
        """RFC 3261 9.1: CANCEL built from the INVITE we forwarded, same branch."""
        invite = client.request
        assert isinstance(invite, Request)
        ctx: _ClientCtx = client.context
        cancel = _for_invite_transaction(invite, "CANCEL", invite.headers.get("to") or "")
        _, actions = self.txns.send_request(
            cancel,
            method="CANCEL",
            branch=client.branch,
            reliable=client.reliable,
            now=now,
            context=_ClientCtx(ctx.peer, ctx.listener, None),
        )
        self._act(actions, now)

    def _forward_stateless_ack(self, ack: Request, listener: str, now: float) -> None:
        """The ACK for a 2xx is its own transaction: route it like any request, no state
        (its SDP, the answer to a delayed offer, goes to rtpengine first)."""
        max_forwards = ack.max_forwards
        if max_forwards == 0:
            return
        out_local, next_route, ruri_local, token = self._pop_own_routes(ack)
        route_cfg: Route | None = None
        dest: Peer | None
        if next_route is not None:
            dest = self._resolve(next_route)
        elif ruri_local is None:
            dest = self._resolve(ack.ruri)
        else:
            hop = self._default_hop(listener)
            if hop is None:
                return
            route_cfg, _, dest = hop
        local = None if dest is None else self._pick_local(dest.transport, out_local, route_cfg)
        if dest is None or local is None:
            log.info("ACK not routable", extra={"call_id": ack.call_id})
            return
        headers = ack.headers
        headers.set("Max-Forwards", _next_max_forwards(max_forwards))
        branch = self._branch(ack, local, self._loop_hash(ack))
        headers.prepend("Via", local.via_prefix + branch)
        self._edit_forwarded(None, ack, self._locals[listener], local)
        if self._media_on and self._park_ack_answer(ack, token, dest, local.name, now):
            return
        self.outbox.append(Outgoing(ack.to_bytes(), dest, local.name))

    # -- responses ----------------------------------------------------------------------------

    def _on_response(self, resp: Response, now: float) -> None:
        status = resp.status
        top = resp.top_via
        local = self._is_ours(top.bare_host, top.port, top.transport)
        if self._siblings and local is not None:
            sibling = self._siblings.get((local.name, top.port or 0))
            if sibling is not None:
                # Another worker's transaction: a peer that answers where the dialog's first
                # request came from (sipp does), not to the Via, sent it here. Pass it on.
                self.outbox.append(Outgoing(resp.to_bytes(), sibling, local.name))
                return
        self._received[status // 100] += 1
        branch = top.branch or ""
        if not branch.startswith(BRANCH_PREFIX) or local is None:
            log.info("response not for us dropped", extra={"call_id": resp.call_id})
            return
        actions = self.txns.receive_response(
            resp, status=status, method=resp.cseq.method, branch=branch, now=now
        )
        self._act(actions, now)

    def _response_from_downstream(
        self, client: Transaction[Message], resp: Response, now: float
    ) -> None:
        """16.7: forward provisionals and 2xx at once; the best final response at the end."""
        ctx: _ClientCtx = client.context
        rctx = ctx.rctx
        status = resp.status
        if rctx is None:  # our own CANCEL's or BYE's answer, or the final response is decided
            if ctx.server is not None and 200 <= status < 300:  # a 2xx still goes upstream
                resp.headers.remove_first_value("via")
                self._respond(ctx.server, resp, now)
            return
        if status == 100:
            return  # a hop-by-hop 100 Trying
        media = rctx.media
        if media is not None and self._park_answer(client, rctx, media, resp, now):
            return
        self._relay_response(client, rctx, resp, now)

    def _relay_response(
        self, client: Transaction[Message], rctx: _ResponseContext, resp: Response, now: float
    ) -> None:
        """16.7 for one response of ``client`` (its SDP already through rtpengine, if any)."""
        status = resp.status
        resp.headers.remove_first_value("via")
        server = rctx.server
        if status < 200:
            if client in self._timer_c:
                self._start_timer_c(client, now)  # 16.7 step 2: reset by a provisional
            if not rctx.final_sent:
                self._respond(server, resp, now)
            return
        self._timer_c.pop(client, None)
        if status < 300:
            if rctx.media is not None and rctx.media.initial:
                self._remember_dialog(rctx.media, resp, now)
            if not rctx.final_sent:
                _final_sent(rctx, client, self._finished)
            self._respond(server, resp, now)
            return
        if rctx.final_sent:
            return
        if rctx.best is None or _better(resp, rctx.best):
            rctx.best = resp
        if status >= 600:
            for other in rctx.branches:
                if other is not client:
                    self._act(self.txns.cancel(other, now=now), now)
        self._maybe_send_best(rctx, now, finished=client)

    def _maybe_send_best(
        self, rctx: _ResponseContext, now: float, finished: Transaction[Message]
    ) -> None:
        pending = [
            b for b in rctx.branches
            if b is not finished and b.state in _PENDING
        ]  # fmt: skip
        if pending or rctx.final_sent or rctx.best is None:
            return
        best = rctx.best
        if best.status == 503:
            # 16.7 step 6: a 503 is not forwarded upstream; we say the failure is ours.
            best = self._local_response(rctx.server, 500, "Server Internal Error (next hop 503)")
        media = rctx.media
        if media is not None and media.initial and media.relay is not None and media.offered:
            # A new call failed (rejected, cancelled, timed out): free its media.
            self._delete_call(media.call_id, media.from_tag, media.relay, f"{best.status}")
        server = rctx.server
        _final_sent(rctx, finished, self._finished)
        self._respond(server, best, now)

    def _branch_failed(
        self, client: Transaction[Message], status: int, reason: str, now: float
    ) -> None:
        ctx: _ClientCtx = client.context
        rctx = ctx.rctx
        if rctx is None or rctx.final_sent:
            return
        log.info(
            "next hop failed",
            extra={
                "call_id": rctx.call_id,
                "status": status,
                "reason": reason,
                "peer": str(ctx.peer),
            },
        )
        response = self._local_response(rctx.server, status, reason)
        if rctx.best is None or _better(response, rctx.best):
            rctx.best = response
        self._maybe_send_best(rctx, now, finished=client)

    def _local_response(self, server: Transaction[Message], status: int, reason: str) -> Response:
        req = server.request
        assert isinstance(req, Request)
        return make_response(req, status, reason, to_tag=self.token(8))

    # -- media: rtpengine anchors the call (docs/media.md) -------------------------------------
    #
    # The core cannot wait for rtpengine. A message whose SDP needs it is parked: the command
    # goes to `media_commands` with an id, the message's continuation to `_pending`, and the
    # driver's `media_done(id, result, now)` resumes it. Every pending command has a deadline
    # (the ng client's whole retransmission schedule and a second), so nothing parked is
    # forgotten even if the driver never answers.

    def _init_media(self, media_metrics: MediaMetrics | None) -> None:
        media = self.config.media
        #: Commands for the driver, taken (and emptied) by it after every call into the core.
        self.media_commands: list[MediaCommand] = []
        self._media_on = media is not None
        self._pending: dict[int, Pending] = {}
        #: Deadline of each pending command; all are `now + command_deadline`, so insertion
        #: order is deadline order (as for timer C).
        self._pending_due: OrderedDict[int, float] = OrderedDict()
        self._expired: OrderedDict[int, Pending] = OrderedDict()
        self._command_ids = itertools.count(1)
        self._dialogs: dict[str, list[Dialog]] = {}
        self._audits: OrderedDict[Dialog, float] = OrderedDict()
        self._roles: dict[str, Leg] = {}
        #: Every configured instance's token: where an in-dialog request that carries none
        #: (its UA ignored our Record-Route) is sent.
        self._tokens: tuple[str, ...] = ()
        self._command_deadline = 0.0
        self._audit_interval = 0.0
        self._retry_after = 0
        self.media_metrics: MediaMetrics | None = None
        if media is None:
            return
        self.media_metrics = media_metrics or MediaMetrics(self.metrics.registry)
        self.media_metrics.observe_core(self.parked_count, self.dialog_count)
        teams = set(media.teams_listeners)
        if not teams and self.config.teams is not None:
            teams = {self.config.teams.teams_listener}  # the Teams edge names its listener
        self._roles = {
            listener.name: Leg.TEAMS if listener.name in teams else Leg.CARRIER
            for listener in self.config.listeners
        }
        self._tokens = tuple(instance.identity for instance in media.rtpengines)
        self._command_deadline = media.command_deadline
        self._audit_interval = media.dialog_audit_interval
        self._retry_after = media.retry_after

    def parked_count(self) -> int:
        """Commands waited on: parked messages and audits (the ``sbc_media_parked`` gauge)."""
        return len(self._pending)

    def dialog_count(self) -> int:
        """Confirmed calls remembered for media-timeout BYEs (``sbc_media_dialogs``)."""
        return sum(len(dialogs) for dialogs in self._dialogs.values())

    def media_done(self, command_id: int, result: MediaResult, now: float) -> None:
        """The driver ran command ``command_id``: resume what waited on it. Never raises."""
        pending = self._pending.pop(command_id, None)
        if pending is None:
            late = self._expired.pop(command_id, None)
            if late is not None and late.initial and result.ok:
                # The INVITE was answered 503 (or cancelled) meanwhile: undo the session.
                command = late.command
                self._delete_call(command.call_id, command.from_tag, result.relay, "late offer")
            return
        self._pending_due.pop(command_id, None)
        self._resume(pending, result, now)

    def media_timeout(
        self, call_id: str, from_tag: str | None, to_tag: str | None, now: float
    ) -> int:
        """rtpengine saw no media for its timeout and dropped the call (its XMLRPC callback):
        send each party of the matching dialogs a BYE with a Reason. Returns how many dialogs
        were torn down (0: this process does not know the call)."""
        dialogs = [d for d in self._dialogs.get(call_id, ()) if d.matches(from_tag, to_tag)]
        for dialog in dialogs:
            self._forget(dialog)
            log.warning(
                "media timeout: call torn down",
                extra={"call_id": call_id, "rtpengine": dialog.relay},
            )
            if self.media_metrics is not None:
                self.media_metrics.timeout_teardowns.inc()
            for towards_callee in (True, False):
                try:
                    self._send_bye(dialog, towards_callee, now)
                except SipParseError as exc:  # a stored header that no longer parses
                    log.warning(
                        "media timeout: BYE not sent: %s",
                        exc.reason,
                        extra={"call_id": call_id},
                    )
        return len(dialogs)

    def _media_advance(self, now: float) -> None:
        due = self._pending_due
        while due:
            command_id, at = next(iter(due.items()))
            if at > now:
                break
            del due[command_id]
            pending = self._pending.pop(command_id, None)
            if pending is None:
                continue
            self._expired[command_id] = pending
            if len(self._expired) > _EXPIRED_KEPT:
                self._expired.popitem(last=False)
            command = pending.command
            reason = f"no answer to {command.op.value!r} within {self._command_deadline:.1f}s"
            log.warning("rtpengine: %s", reason, extra={"call_id": command.call_id})
            self._resume(pending, MediaResult(failure=Failure.UNAVAILABLE, reason=reason), now)
        audits = self._audits
        while audits:
            dialog, at = next(iter(audits.items()))
            if at > now:
                break
            del audits[dialog]
            self._audit(dialog, now)

    def _command(
        self,
        op: Op,
        call_id: str,
        from_tag: str,
        relay: str | None,
        now: float,
        *,
        to_tag: str | None = None,
        sdp: str | None = None,
        towards: Leg | None = None,
        resume: Callable[[MediaResult, float], None] | None = None,
        txn: Transaction[Message] | None = None,
        initial: bool = False,
        via_branch: str | None = None,
    ) -> Pending | None:
        """Queue a command for the driver; with ``resume``, park it until its result."""
        command = MediaCommand(
            next(self._command_ids), op, call_id, from_tag, relay, to_tag, sdp, towards,
            via_branch,
        )  # fmt: skip
        self.media_commands.append(command)
        if resume is None:
            return None
        pending = Pending(command, resume, txn, initial=initial)
        self._pending[command.id] = pending
        self._pending_due[command.id] = now + self._command_deadline
        return pending

    def _resume(self, pending: Pending, result: MediaResult, now: float) -> None:
        try:
            pending.resume(result, now)
        except Exception as exc:
            call_id = pending.command.call_id
            if isinstance(exc, SipParseError):
                log.info("message not continued: %s", exc.reason, extra={"call_id": call_id})
            else:
                log.exception("internal error after rtpengine", extra={"call_id": call_id})
            txn = pending.txn
            if txn is not None and txn.state in _PENDING and isinstance(txn.request, Request):
                self._reply(txn, txn.request, 500, "Server Internal Error", now)

    def _delete_call(self, call_id: str, from_tag: str, relay: str | None, why: str) -> None:
        """Free a call's media (fire and forget: the driver logs a failure)."""
        if relay is None:
            return
        log.debug("rtpengine delete (%s)", why, extra={"call_id": call_id, "rtpengine": relay})
        self._command(Op.DELETE, call_id, from_tag, relay, 0.0)

    # offer: an INVITE or re-INVITE with SDP

    def _park_offer(
        self,
        txn: Transaction[Message],
        req: Request,
        local: _Local,
        token: str | None,
        forward: Callable[[str | None, MediaState, float], None],
        now: float,
    ) -> bool:
        """Send an INVITE's (or UPDATE's) SDP to rtpengine before it goes out by ``local``;
        False when it needs none (an UPDATE without SDP, or a call we did not anchor).

        An INVITE without SDP is a delayed offer: the offer comes back in the 18x/2xx and the
        answer in the ACK (:meth:`_park_answer`, :meth:`_park_ack_answer`). A re-INVITE of
        that kind goes on at once; a new call first has its instance picked (no ng command),
        so the token rides in our Record-Route as every other call's does."""
        sdp = sdp_of(req)
        ctx: _ServerCtx = txn.context
        initial = req.to_tag is None
        if req.method != "INVITE" and (sdp is None or initial):
            return False
        if not initial and token is None:
            # No token in the Route: a UA that ignores Record-Route (its requests reach us as
            # their target), or a call we never anchored. With one instance there is no doubt
            # where the call is (or goes); with several, the SDP passes untouched.
            if len(self._tokens) != 1:
                log.info("%s names no rtpengine", req.method, extra={"call_id": req.call_id})
                return False
            token = self._tokens[0]
        state = MediaState(
            call_id=req.call_id,
            from_tag=req.from_tag or "",
            initial=initial,
            offer_towards=self._roles[local.name],
            answer_towards=self._roles[ctx.listener],
            relay=token,
            delayed=sdp is None,
            offered=sdp is not None,
        )
        if initial:
            state.caller_from = req.headers.get("from") or ""
            state.caller_target = _contact_uri(req)
            state.caller_cseq = req.cseq.number
            if sdp is not None:
                # One rtpengine branch per INVITE, whatever forks behind the next hop: the
                # caller's branch names it (any stable per-INVITE value would do).
                state.via_branch = req.top_via.branch or f"{req.call_id}-{req.cseq.number}"
        if sdp is None and not initial:
            forward(token, state, now)
            return True

        def resume(result: MediaResult, later: float) -> None:
            self._offer_done(txn, req, state, result, forward, later)

        ctx.parked = self._command(
            Op.PICK if sdp is None else Op.OFFER, state.call_id, state.from_tag, token, now,
            to_tag=req.to_tag, sdp=sdp, towards=state.offer_towards,
            resume=resume, txn=txn, initial=initial and sdp is not None,
            via_branch=state.via_branch,
        )  # fmt: skip
        return True

    def _offer_done(
        self,
        txn: Transaction[Message],
        req: Request,
        state: MediaState,
        result: MediaResult,
        forward: Callable[[str | None, MediaState, float], None],
        now: float,
    ) -> None:
        ctx: _ServerCtx = txn.context
        ctx.parked = None
        if result.relay is not None:
            state.relay = result.relay
        if txn.state not in _PENDING:
            # Answered meanwhile (CANCEL: 487; deadline: 503): the INVITE goes no further.
            if result.ok and state.initial and state.offered:
                self._delete_call(state.call_id, state.from_tag, state.relay, "INVITE ended")
            return
        if not result.ok or (result.sdp is None and not state.delayed):
            self._offer_failed(txn, req, state, result, now)
            return
        if result.sdp is not None:
            req.body = result.sdp.encode()
        forward(state.relay, state, now)

    def _offer_failed(
        self, txn: Transaction[Message], req: Request, state: MediaState, result: MediaResult,
        now: float,
    ) -> None:  # fmt: skip
        reason = result.reason or "no reason given"
        log.warning(
            "rtpengine did not take the offer: %s",
            reason,
            extra={"call_id": state.call_id, "failure": result.failure, "rtpengine": state.relay},
        )
        extra: list[tuple[str, str]] = []
        if not state.initial:
            # RFC 3261 14.2: a re-INVITE that fails leaves the session as it was; the call
            # goes on with the media it had, and the UA may try again.
            extra.append(("Retry-After", str(self._retry_after)))
            self._reply(txn, req, 500, "Server Internal Error (media relay)", now, extra)
            return
        failure = result.failure or Failure.ERROR
        if failure is Failure.UNAVAILABLE or "ran out of ports" in reason.lower():
            status, text = 503, "Service Unavailable (no media relay)"
            extra.append(("Retry-After", str(self._retry_after)))
            if failure is Failure.UNAVAILABLE:
                # The offer may have reached rtpengine with only its answer lost.
                self._delete_call(state.call_id, state.from_tag, state.relay, "offer failed")
        elif failure is Failure.REFUSED:
            status, text = 488, "Not Acceptable Here"
            extra.append(("Warning", f'399 {self._warning_agent} "{_quotable(reason)}"'))
        else:
            status, text = 500, "Server Internal Error (media relay)"
        if self.media_metrics is not None:
            self.media_metrics.calls_rejected.labels(status=str(status)).inc()
        self._reply(txn, req, status, text, now, extra)

    # answer: a 183 or 2xx with SDP

    def _park_answer(
        self,
        client: Transaction[Message],
        rctx: _ResponseContext,
        media: MediaState,
        resp: Response,
        now: float,
    ) -> bool:
        """Send a response's SDP to rtpengine before it is relayed; responses of the same
        INVITE wait behind it, in order. False when it can go on at once.

        The SDP is the answer to the request's offer, or, after a delayed offer, the callee's
        offer (rtpengine's `offer` from the callee's tag; the caller answers in the ACK).

        Forks (docs/media.md, "Forked answers"): the answers of a new call carry the offer's
        ``via-branch``, so the latest fork to answer (its own To tag) gets the leg rtpengine
        offered. The first 2xx fixes the dialog; another fork's 2xx after it keeps its own SDP
        (the media stays with the first), and another fork's 18x then goes nowhere."""
        if media.busy:
            media.queue.append((client, resp))
            return True
        status = resp.status
        tag = resp.to_tag
        other_fork = media.confirmed_tag is not None and tag != media.confirmed_tag
        if 200 <= status < 300 and media.confirmed_tag is None:
            media.confirmed_tag = tag
        sdp = sdp_of(resp) if status < 300 else None
        if sdp is None:
            return False
        if other_fork:
            if status >= 200:
                self._other_fork_2xx(media, resp)
            return False
        key = (tag, sdp)
        cached = media.answers.get(key)
        if cached is not None and tag == media.answered_tag:
            resp.body = cached.encode()  # a retransmitted 2xx (or 183): the same answer again
            return False
        if media.relay is None or tag is None:
            return False
        if media.answered_tag is not None and tag != media.answered_tag:
            if media.via_branch is not None and self.media_metrics is not None:
                self.media_metrics.fork_switches.inc()
            log.info(
                "%s from another fork: its SDP goes to rtpengine under its own tag",
                status,
                extra={"call_id": media.call_id, "rtpengine": media.relay},
            )
        media.answered_tag = tag
        media.busy = True

        def resume(result: MediaResult, later: float) -> None:
            self._answer_done(client, rctx, media, resp, key, result, later)

        if media.delayed:
            # Each fork's offer under its own tag (a from-tag rtpengine has not seen makes a
            # pair of legs of its own; no via-branch, which would take the caller's leg).
            media.offered = True
            self._command(
                Op.OFFER, media.call_id, tag, media.relay, now,
                to_tag=media.from_tag, sdp=sdp, towards=media.answer_towards, resume=resume,
            )  # fmt: skip
            return True
        self._command(
            Op.ANSWER, media.call_id, media.from_tag, media.relay, now,
            to_tag=tag, sdp=sdp, towards=media.answer_towards, resume=resume,
            via_branch=media.via_branch,
        )  # fmt: skip
        return True

    def _other_fork_2xx(self, media: MediaState, resp: Response) -> None:
        """A 2xx from another fork after the first 2xx (both forks answered): the caller gets
        two dialogs (RFC 3261 13.2.2.4) and usually BYEs this one. Its SDP does not go to
        rtpengine, which would move the first dialog's media; it is relayed as it came."""
        log.warning(
            "2xx from another fork after the call was answered: relayed unanchored",
            extra={"call_id": media.call_id, "rtpengine": media.relay},
        )
        if self.media_metrics is not None:
            self.media_metrics.answer_failures.inc()

    def _answer_done(
        self,
        client: Transaction[Message],
        rctx: _ResponseContext,
        media: MediaState,
        resp: Response,
        key: tuple[str | None, str],
        result: MediaResult,
        now: float,
    ) -> None:
        media.busy = False
        try:
            if result.ok and result.sdp is not None:
                resp.body = result.sdp.encode()
                media.remember_answer(key, result.sdp)
            else:
                self._answer_failed(media, resp, result)
            self._relay_response(client, rctx, resp, now)
        finally:
            while media.queue and not media.busy:
                queued_client, queued = media.queue.popleft()
                if not self._park_answer(queued_client, rctx, media, queued, now):
                    self._relay_response(queued_client, rctx, queued, now)

    def _answer_failed(self, media: MediaState, resp: Response, result: MediaResult) -> None:
        """What keeps the call alive: a provisional goes on without its SDP (ringing, no early
        media), a 2xx with the far end's own SDP (a proxy cannot take back a 2xx; a later
        re-INVITE anchors the media again)."""
        log.error(
            "rtpengine did not take the %s: %s; %s",
            "offer" if media.delayed else "answer",
            result.reason or result.failure,
            "provisional relayed without SDP" if resp.status < 200 else "2xx relayed unanchored",
            extra={"call_id": media.call_id, "status": resp.status, "rtpengine": media.relay},
        )
        if self.media_metrics is not None:
            self.media_metrics.answer_failures.inc()
        if resp.status < 200:
            resp.body = b""
            resp.headers.remove("content-type")

    # answer in the ACK: after a delayed offer

    def _park_ack_answer(
        self, ack: Request, token: str | None, dest: Peer, listener: str, now: float
    ) -> bool:
        """An ACK with SDP answers the offer its 2xx carried (a delayed offer, RFC 3261
        13.2.1): rtpengine takes that answer before the ACK goes on by ``listener``. As
        stateless as the ACK itself: the 2xx's sender (the ACK's To tag) made the offer, our
        Route entry names the instance, and the ACK goes on even if rtpengine fails (with
        the caller's own SDP: a 2xx's offer cannot be taken back)."""
        sdp = sdp_of(ack)
        if sdp is None or ack.to_tag is None:
            return False
        if token is None:
            if len(self._tokens) != 1:
                log.info("ACK names no rtpengine", extra={"call_id": ack.call_id})
                return False
            token = self._tokens[0]

        def resume(result: MediaResult, _now: float) -> None:
            if result.ok and result.sdp is not None:
                ack.body = result.sdp.encode()
            else:
                log.error(
                    "rtpengine did not take the ACK's answer: %s; ACK relayed unanchored",
                    result.reason or result.failure,
                    extra={"call_id": ack.call_id, "rtpengine": token},
                )
                if self.media_metrics is not None:
                    self.media_metrics.answer_failures.inc()
            self.outbox.append(Outgoing(ack.to_bytes(), dest, listener))

        self._command(
            Op.ANSWER, ack.call_id, ack.to_tag, token, now,
            to_tag=ack.from_tag, sdp=sdp, towards=self._roles[listener], resume=resume,
        )  # fmt: skip
        return True

    # dialogs: remembered for the BYEs of a media timeout

    def _remember_dialog(self, media: MediaState, resp: Response, now: float) -> None:
        to_tag = resp.to_tag
        if to_tag is None or to_tag in media.remembered:
            return
        media.remembered.add(to_tag)
        dialog = Dialog(
            call_id=media.call_id,
            caller_tag=media.from_tag,
            callee_tag=to_tag,
            caller_from=media.caller_from,
            callee_to=resp.headers.get("to") or "",
            caller_target=media.caller_target,
            callee_target=_contact_uri(resp),
            record_route=tuple(resp.headers.values("record-route")),
            caller_cseq=media.caller_cseq,
            callee_cseq=0,
            relay=media.relay,
            anchored=media.confirmed_tag in (None, to_tag),
        )
        self._dialogs.setdefault(dialog.call_id, []).append(dialog)
        self._audits[dialog] = now + self._audit_interval

    def _forget(self, dialog: Dialog) -> None:
        self._audits.pop(dialog, None)
        dialogs = self._dialogs.get(dialog.call_id)
        if dialogs is None:
            return
        remaining = [d for d in dialogs if d is not dialog]
        if remaining:
            self._dialogs[dialog.call_id] = remaining
        else:
            del self._dialogs[dialog.call_id]

    def _media_in_dialog(self, req: Request, token: str | None) -> None:
        """An in-dialog request: keep a remembered dialog current (CSeq, target refresh);
        a BYE frees the call's media and ends the record."""
        method = req.method
        call_id = req.call_id
        media_elsewhere = False  # a BYE of a dialog whose media is another dialog's
        for dialog in self._dialogs.get(call_id, ()):
            if not dialog.matches(req.from_tag, req.to_tag):
                continue
            if method == "BYE":
                self._forget(dialog)
                media_elsewhere = not dialog.anchored
                continue
            from_caller = req.from_tag == dialog.caller_tag
            number = req.cseq.number
            if from_caller:
                dialog.caller_cseq = max(dialog.caller_cseq, number)
            else:
                dialog.callee_cseq = max(dialog.callee_cseq, number)
            if method in ("INVITE", "UPDATE"):  # RFC 3261 12.2.2: a target refresh
                target = _contact_uri(req)
                if target and from_caller:
                    dialog.caller_target = target
                elif target:
                    dialog.callee_target = target
        if method == "BYE" and not media_elsewhere:
            # Without a token (a UA that ignores Record-Route), every instance is asked: a
            # session must not outlive its call; "unknown call-id" elsewhere costs nothing.
            for relay in (token,) if token is not None else self._tokens:
                self._delete_call(call_id, req.from_tag or "", relay, "BYE")

    def _audit(self, dialog: Dialog, now: float) -> None:
        """Does rtpengine still hold this call? A BYE through another replica ended it there."""
        if dialog.relay is None:
            self._forget(dialog)
            return

        def resume(result: MediaResult, later: float) -> None:
            self._audit_done(dialog, result, later)

        self._command(Op.QUERY, dialog.call_id, dialog.caller_tag, dialog.relay, now,
                      resume=resume)  # fmt: skip

    def _audit_done(self, dialog: Dialog, result: MediaResult, now: float) -> None:
        if dialog not in self._dialogs.get(dialog.call_id, ()):
            return  # ended meanwhile
        if result.failure is Failure.REFUSED and "unknown call" in result.reason.lower():
            log.info("call ended elsewhere: forgotten", extra={"call_id": dialog.call_id})
            self._forget(dialog)
        else:
            self._audits[dialog] = now + self._audit_interval

    def _send_bye(self, dialog: Dialog, towards_callee: bool, now: float) -> None:
        """A BYE from one party to the other, as that party's UA would send it (RFC 3261
        15.1.1, 12.2.1.1), from our place in the route set: the Route entries past ours, our
        own Via, the dialog's tags, a CSeq above the last one seen, and the Reason."""
        route_set = (
            list(reversed(dialog.record_route)) if towards_callee else [*dialog.record_route]
        )
        own: _Local | None = None
        past = 0
        for index, entry in enumerate(route_set):
            local = self._uri_is_ours(parse_name_addr(entry, "Record-Route").uri)
            if local is not None:
                own, past = local, index + 1
        remaining = route_set[past:]
        target = dialog.callee_target if towards_callee else dialog.caller_target
        if not target:
            log.warning("media timeout: no Contact to send a BYE to",
                        extra={"call_id": dialog.call_id})  # fmt: skip
            return
        next_hop = parse_name_addr(remaining[0], "Route").uri if remaining else parse_uri(target)
        dest = self._resolve(next_hop)
        local = None if dest is None else self._pick_local(dest.transport, own, None)
        if dest is None or local is None:
            log.warning("media timeout: BYE not routable", extra={"call_id": dialog.call_id})
            return
        if towards_callee:
            from_value, to_value, cseq = dialog.caller_from, dialog.callee_to, dialog.caller_cseq
            dialog.caller_cseq += 1
        else:
            from_value, to_value, cseq = dialog.callee_to, dialog.caller_from, dialog.callee_cseq
            dialog.callee_cseq += 1
        branch = f"{BRANCH_PREFIX}{self.token(8)}"
        headers = [("Via", local.via_prefix + branch)]
        headers += [("Route", entry) for entry in remaining]
        headers += [
            ("Max-Forwards", str(DEFAULT_MAX_FORWARDS)),
            ("From", from_value),
            ("To", to_value),
            ("Call-ID", dialog.call_id),
            ("CSeq", f"{cseq + 1} BYE"),
            ("Reason", MEDIA_TIMEOUT_REASON),
            ("User-Agent", self.config.server_header),
            ("Content-Length", "0"),
        ]
        bye = Request("BYE", target, headers)
        _, actions = self.txns.send_request(
            bye,
            method="BYE",
            branch=branch,
            reliable=dest.reliable,
            now=now,
            context=_ClientCtx(dest, local.name, None),
        )
        self._act(actions, now)

    # -- the transaction layer's actions ------------------------------------------------------

    def _act(self, actions: list[Any], now: float) -> None:
        for action in actions:
            kind = type(action)
            if kind is Send:
                self._send(action.txn, action.message, action.retransmission)
            elif kind is PassUp:
                txn = action.txn
                message = action.message
                if isinstance(message, Request):
                    if message.method == "ACK":  # the ACK for a 2xx, in RFC 6026's Accepted
                        self._forward_stateless_ack(message, txn.context.listener, now)
                    else:
                        self._new_request(txn, message, now)
                elif isinstance(action.message, Response):
                    self._response_from_downstream(txn, action.message, now)
            elif kind is Stray:
                self._stray(action.message, now)
            elif kind is SendCancel:
                self._send_cancel(action.txn, now)
            elif kind is TimedOut:
                if action.txn.kind in (Kind.INVITE_CLIENT, Kind.NON_INVITE_CLIENT):
                    self._branch_failed(action.txn, 408, "Request Timeout", now)
            elif kind is TransportFailed:
                if action.txn.kind in (Kind.INVITE_CLIENT, Kind.NON_INVITE_CLIENT):
                    self._branch_failed(action.txn, 503, "Service Unavailable (transport)", now)
            elif kind is Terminated:
                txn = action.txn
                self._timer_c.pop(txn, None)
                # Break the transaction <-> response context cycle so reference counting frees
                # both at once, without waiting for the cyclic garbage collector.
                if txn.context is not None:
                    txn.context.rctx = None

    def _send(
        self, txn: Transaction[Message], message: Message | bytes, retransmission: bool
    ) -> None:
        ctx = txn.context
        if type(message) is bytes:  # a waiting transaction's repeat, serialised already
            data = message
            if data.startswith(b"SIP/2.0 "):  # a response: count it by its status class
                self._sent[data[8] - 48] += 1
        else:
            assert isinstance(message, Message)
            data = message.to_bytes()
            if isinstance(message, Response):
                self._sent[message.status // 100] += 1
        self.outbox.append(Outgoing(data, ctx.peer, ctx.listener, txn))

    def send_failed(self, out: Outgoing, now: float) -> None:
        """The transport could not deliver ``out`` (no connection, TLS handshake failed, no
        listener): its transaction ends with a transport error (RFC 3261 17.1.4, 17.2.4), which
        for a forwarded request means a 503 upstream."""
        txn = out.owner
        if isinstance(txn, Transaction) and txn.state is not State.TERMINATED:
            self._act(self.txns.transport_error(txn, now=now), now)

    def _stray(self, message: Message, now: float) -> None:
        if not isinstance(message, Response):
            return  # stray ACKs are handled in _on_request, where their origin is known
        if 200 <= message.status < 300 and message.cseq.method == "INVITE":
            # 16.7: a 2xx retransmission after our client transaction ended: forward statelessly
            # to the next Via, honouring received and rport.
            message.headers.remove_first_value("via")
            try:
                via = message.top_via
            except SipParseError:
                return
            transport = via.transport.lower()
            host = via.received or via.bare_host
            port = via.rport or via.port or DEFAULT_PORTS.get(transport, 5060)
            local = self._upstream_local(message, transport)
            if local is None or not _is_ip(host):
                return
            peer = Peer(transport, host, port)
            name = local.name
            if self._media_on and self._park_stray_answer(message, peer, name, now):
                return
            self._count_response(message.status, "sent")
            self.outbox.append(Outgoing(message.to_bytes(), peer, name))

    def _park_stray_answer(self, message: Response, peer: Peer, listener: str, now: float) -> bool:
        """A stray 2xx of an anchored call carries the callee's SDP: it goes through rtpengine
        again (the same answer, which rtpengine gives back unchanged) before it is relayed.
        The instance is the one named in our Record-Route entries."""
        sdp = sdp_of(message)
        to_tag = message.to_tag
        if sdp is None or to_tag is None:
            return False
        dialogs = self._dialogs.get(message.call_id, ())
        if any(d.anchored and to_tag not in (d.caller_tag, d.callee_tag) for d in dialogs):
            return False  # another fork's 2xx again: the media stays with the first dialog
        token = None
        for value in message.headers.values("record-route"):
            token = token or token_in(value)
        if token is None:
            return False

        def resume(result: MediaResult, _now: float) -> None:
            if not result.ok or result.sdp is None:
                return  # the first 2xx went on; a copy with the far end's SDP would not help
            message.body = result.sdp.encode()
            self._count_response(message.status, "sent")
            self.outbox.append(Outgoing(message.to_bytes(), peer, listener))

        self._command(
            Op.ANSWER, message.call_id, message.from_tag or "", token, now,
            to_tag=to_tag, sdp=sdp, towards=self._roles[listener], resume=resume,
        )  # fmt: skip
        return True

    def _upstream_local(self, response: Response, transport: str) -> _Local | None:
        """The listener facing the caller, for a response no transaction remembers: the last of
        our own Record-Route entries names it (16.6 step 4), else any of that transport."""
        facing: _Local | None = None
        for value in response.headers.values("record-route"):
            try:
                local = self._uri_is_ours(parse_name_addr(value, "Record-Route").uri)
            except SipParseError:
                continue
            if local is not None and local.transport == transport:
                facing = local
        return facing or self._pick_local(transport, None, None)

    def _respond(self, txn: Transaction[Message], response: Response, now: float) -> None:
        actions = self.txns.respond(txn, response, status=response.status, now=now)
        if len(actions) == 1 and type(action := actions[0]) is Send:  # nearly always
            self._send(action.txn, action.message, action.retransmission)
        else:
            self._act(actions, now)

    def _reply(
        self,
        txn: Transaction[Message],
        req: Request,
        status: int,
        reason: str,
        now: float,
        extra: list[tuple[str, str]] | None = None,
        to_tag: str | None = None,
    ) -> None:
        if to_tag is None and req.to_tag is None and status > 100:
            to_tag = self.token(8)
        if status >= 300:
            log.info(
                "request rejected",
                extra={"call_id": req.call_id, "method": req.method, "status": status,
                       "reason": reason},
            )  # fmt: skip
        self._respond(
            txn, make_response(req, status, reason, to_tag=to_tag, extra_headers=extra or ()), now
        )

    def _reply_stateless(
        self, req: Request, peer: Peer, listener: str, status: int, reason: str
    ) -> None:
        try:
            response = make_response(req, status, reason)
        except SipParseError:
            return
        self._count_response(status, "sent")
        self.outbox.append(Outgoing(response.to_bytes(), peer, listener))

    def _count_response(self, status: int, direction: str) -> None:
        (self._sent if direction == "sent" else self._received)[status // 100] += 1

    def request_counts(self) -> dict[str, int]:
        return dict(self._requests)

    def response_counts(self) -> dict[tuple[str, str], int]:
        counts = {}
        for cls in range(1, 7):
            counts[f"{cls}xx", "sent"] = self._sent[cls]
            counts[f"{cls}xx", "received"] = self._received[cls]
        return counts


# -- helpers --------------------------------------------------------------------------------------


#: Max-Forwards values as text, by the value received (0-255 after parsing), so forwarding
#: formats no number: the value to send for each, 16.6 step 3 (absent: our default).
_MAX_FORWARDS_TEXT = [str(max(n - 1, 0)) for n in range(256)]
_DEFAULT_MAX_FORWARDS_TEXT = str(DEFAULT_MAX_FORWARDS)


def _next_max_forwards(received: int | None) -> str:
    if received is None:
        return _DEFAULT_MAX_FORWARDS_TEXT
    return _MAX_FORWARDS_TEXT[received] if 0 < received < 256 else str(received - 1)


def _contact_uri(msg: Message) -> str:
    """The URI of a message's (first) Contact, or "" (none, ``*``, or not parseable)."""
    value = msg.headers.get("contact")
    if not value or value.strip() == "*":
        return ""
    try:
        return str(parse_name_addr(value, "Contact").uri)
    except SipParseError:
        return ""


def _quotable(text: str, limit: int = 120) -> str:
    """Text for a quoted-string (a Warning's): no quotes, backslashes or control characters."""
    cleaned = "".join(c if c.isprintable() and c not in '"\\' else " " for c in text)
    return cleaned[:limit]


def _cid(msg: Message | None) -> str | None:
    if msg is None:
        return None
    try:
        return msg.call_id
    except SipParseError:
        return None


def _response_peer(top: Via, peer: Peer, rport: str | None) -> Peer:
    """RFC 3261 18.2.2 and RFC 3581: where the responses of a server transaction go.
    ``rport`` is the top Via's rport parameter as received."""
    if peer.reliable:
        return peer  # the connection the request came on
    if rport is not None:
        return peer
    port = top.port or 5060
    return peer if port == peer.port else Peer(peer.transport, peer.host, port)


def _digest(seed: str, size: int) -> str:
    """A short hex digest of header text. Header values keep undecodable bytes as surrogates
    (the parser decodes with surrogateescape): they go back to bytes the same way."""
    return hashlib.blake2b(seed.encode("utf-8", "surrogateescape"), digest_size=size).hexdigest()


def _rfc2543_key(req: Request, top: Via) -> str:
    """17.2.3's fallback for peers without the magic cookie: a key from the matching fields."""
    seed = f"{req.uri}|{req.to_tag}|{req.from_tag}|{req.call_id}|{req.cseq.number}|{top}"
    return "2543-" + _digest(seed, 12)


def _ack_builder(invite: Request) -> Callable[[Message], Message]:
    """The hop-by-hop ACK for a non-2xx final response to ``invite`` (RFC 3261 17.1.1.3):
    the INVITE's Request-URI, top Via, Route set, From, Call-ID and CSeq number, the
    response's To (with its tag)."""

    def build(response: Message) -> Message:
        return _for_invite_transaction(invite, "ACK", response.headers.get("to") or "")

    return build


def _for_invite_transaction(invite: Request, method: str, to: str) -> Request:
    """A CANCEL (RFC 3261 9.1) or non-2xx ACK (17.1.1.3) for a forwarded INVITE: its
    Request-URI, top Via (so its branch), Route set, From, Call-ID and CSeq number; ``to`` is
    the INVITE's To for a CANCEL, the response's (with its tag) for an ACK."""
    src = invite.headers
    headers = [("Via", src.values("via")[0])]
    headers += [("Route", v) for v in src.get_all("route")]
    headers += [
        ("Max-Forwards", str(DEFAULT_MAX_FORWARDS)),
        ("From", src.get("from") or ""),
        ("To", to),
        ("Call-ID", invite.call_id),
        ("CSeq", f"{invite.cseq.number} {method}"),
        ("Content-Length", "0"),
    ]
    return Request(method, invite.uri, headers)


@functools.lru_cache(maxsize=4096)
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=256)
def _parse_target(text: str) -> Uri:
    """A route's next hop (config text, so the cache stays small); URIs are immutable."""
    from teams_sbc.sip.uri import parse_uri

    return parse_uri(text)


def _final_sent(
    rctx: _ResponseContext,
    client: Transaction[Message],
    finished: Callable[[_ServerCtx | _ClientCtx], Any],
) -> None:
    """16.7: the final response is decided; mark it so and let go of what only deciding it
    needed. Every path that reads a response context returns at ``final_sent`` except the
    forwarding of further 2xx (16.7 step 5), which needs the server transaction alone, and
    finds it through the client's context. So the server transaction drops its context for a
    ``finished`` one (a CANCEL finds no response context, and is answered as after a final
    response, 16.10), and so does ``client`` once it has finished without a 2xx; with a 2xx it
    keeps its own, without the response context. They then wait for timers J, K, L, M or D
    holding no response context, best response or Call-ID."""
    rctx.final_sent = True
    rctx.best = None
    rctx.branches = ()
    rctx.call_id = ""
    server = rctx.server
    server.context = finished(server.context)
    if client.state is State.COMPLETED:
        client.context = finished(client.context)
    elif rctx.media is None:  # Accepted: further 2xx go to ``client.context.server`` (16.7
        client.context.rctx = None  # step 5); a call with media keeps the context, whose
        # rtpengine answer each retransmitted 2xx must carry again instead of the far end's SDP


def _better(a: Response, b: Response) -> bool:
    """16.7 step 6: 6xx beats all; then the lowest class; 503 is the least wanted 5xx."""

    def rank(r: Response) -> tuple[int, int]:
        cls = r.status // 100
        return (0 if cls == 6 else cls, 1 if r.status == 503 else 0)

    return rank(a) < rank(b)


__all__ = ["Proxy"]
