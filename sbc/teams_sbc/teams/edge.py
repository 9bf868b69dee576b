"""The Teams edge: the stateful proxy with the Teams Direct Routing policy on top, sans-IO.

:class:`TeamsProxy` is :class:`~teams_sbc.sip.proxy.Proxy` plus the rules of this package,
applied at the core's hooks: which tenant a request belongs to, where a new call goes (the
carrier, or Microsoft's proxies in failover order), what a message looks like when it leaves
towards Teams or towards the carrier, the OPTIONS keepalive, and the ACK repair. Each rule lives
in its own module (named for what it does, citing its source); this module only decides where
each one applies. Like the core: no sockets, clocks or asyncio; ``now`` comes in.

Direction is by listener: what arrives on ``teams.teams_listener`` is from Teams, what leaves by
it goes to Teams; every other listener faces the carrier.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from teams_sbc import __version__
from teams_sbc.config import Route, SbcConfig
from teams_sbc.metrics import Metrics
from teams_sbc.sip.errors import SipParseError
from teams_sbc.sip.headers import parse_name_addr
from teams_sbc.sip.message import Message, Request, Response
from teams_sbc.sip.peer import Outgoing, Peer
from teams_sbc.sip.proxy import (
    ALLOW,
    BRANCH_PREFIX,
    DIALOG_CREATING,
    TIMER_C,
    UDP_SIZE_LIMIT,
    Proxy,
    _ClientCtx,
    _Local,
    _ServerCtx,
)
from teams_sbc.sip.transaction import State, Transaction
from teams_sbc.sip.uri import SipUri, Uri, parse_uri
from teams_sbc.teams import contact, normalise, record_route
from teams_sbc.teams.ack_repair import AckRepair, mark_worker, worker_in
from teams_sbc.teams.config import MicrosoftProxy, TeamsConfig
from teams_sbc.teams.metrics import TeamsMetrics
from teams_sbc.teams.numbers import to_e164
from teams_sbc.teams.proxies import Outcome, ProxyPool, ProxyState, build_options
from teams_sbc.teams.sdp import trim_for_udp
from teams_sbc.teams.tenants import NoTenant, TenantInfo, Tenants

log = logging.getLogger("teams_sbc.teams")

#: Failover statuses from a Microsoft proxy ("Plan Direct Routing": Teams itself moves on after
#: 408 and 503; the issue's list for the SBC).
FAILOVER_STATUSES = frozenset({408, 503})


@dataclass(slots=True)
class CallInfo:
    """What the edge knows about one request (kept in its server transaction's context)."""

    tenant: TenantInfo
    from_teams: bool
    initial: bool  # outside a dialog
    order: tuple[ProxyState, ...] = ()  # carrier -> Teams INVITE: proxies to try, in order
    tried: int = 0
    proxy: ProxyState | None = None  # the one tried now
    from_to_changed: bool = False  # From/To shown to Teams differ from the carrier's
    sent_to_teams: bool = False  # edited on its way to Teams: responses come back from there
    to_carrier_hop: bool = False  # a new request from Teams routed to the carrier's next hop


@dataclass(slots=True)
class Attempt:
    """One try of a new call at one Microsoft proxy (a client transaction's context)."""

    proxy: ProxyState
    info: CallInfo
    server: Transaction[Message]
    answered: bool = False
    abandoned: bool = False


@dataclass(slots=True)
class Probe:
    """Our OPTIONS keepalive to one proxy (a client transaction's context)."""

    proxy: ProxyState


class TeamsProxy(Proxy):
    """The SIP core with the Teams Direct Routing edge (see the module's docstring)."""

    def __init__(
        self,
        config: SbcConfig,
        metrics: Metrics,
        *,
        token: Callable[[int], str] = secrets.token_hex,
        timer_c: float = TIMER_C,
        **core: Any,
    ) -> None:
        assert config.teams is not None, "TeamsProxy needs the teams section"
        self.teams: TeamsConfig = config.teams
        self.tenants = Tenants(self.teams)
        self.pool = ProxyPool(
            self.teams.microsoft_proxies(),
            self.teams.options_interval,
            self.teams.options_timeout,
            self.teams.retry_after_max,
        )
        self.teams_listener = self.teams.teams_listener
        self.x_ms_sbc = f"teams-sbc/{self.teams.edition}/{__version__}"
        self.ack_repair = AckRepair(lifetime=64 * config.timers.t1_ms / 1000)
        #: Deadlines of new-call attempts that have heard nothing yet (constant timeout, so
        #: insertion order is deadline order, as for timer C).
        self._silent: OrderedDict[Transaction[Message], float] = OrderedDict()
        self._ack_info: CallInfo | None = None
        self._attempt = 0  # which try of a new call _forward is building (its branch)
        self._now = 0.0
        self._teams_route = Route(
            name="teams", next_hop="sip:teams.invalid", listener=self.teams_listener
        )
        self._carrier_routes: dict[str, Route] = {}
        #: As one of several workers: this worker's index, and its siblings' own UDP ports on
        #: the carrier listener, by index (ack_repair.py: an ACK goes to the worker that knows).
        self._worker: int | None = None
        self._worker_peers: dict[int, Peer] = {}
        super().__init__(config, metrics, token=token, timer_c=timer_c, **core)
        self.edge_metrics = TeamsMetrics(metrics.registry, self.pool)

    # -- names ------------------------------------------------------------------------------

    def set_bound_addresses(
        self,
        bound: Mapping[str, tuple[str, int]],
        via_ports: Mapping[str, int] | None = None,
        sibling_ports: Mapping[str, Collection[int]] | None = None,
    ) -> None:
        """Besides each listener's own address: every FQDN of the trunk (base and tenants)
        names the Teams listener (at its port and at 5061, the port Microsoft assumes) and
        each carrier listener at its port, so our Record-Route entries and Request-URIs with
        those names are recognised as ours by any replica."""
        super().set_bound_addresses(bound, via_ports, sibling_ports)
        # As one of several workers with a UDP carrier listener: our index among them, and
        # where each sibling's own port is (ACKs for calls it forwarded are passed to it).
        self._worker = None
        self._worker_peers = {}
        carrier = self.teams.carrier_listener
        seats = list((sibling_ports or {}).get(carrier, ()))
        own = (via_ports or {}).get(carrier)
        if len(seats) > 1 and own in seats:
            self._worker = seats.index(own)
            for index, port in enumerate(seats):
                peer = self._siblings.get((carrier, port))
                if index != self._worker and peer is not None:
                    self._worker_peers[index] = peer
        for local in self._locals.values():
            ports = {local.port, 5061} if local.name == self.teams_listener else {local.port}
            for fqdn in self.tenants.fqdns():
                for port in ports:
                    self._by_hostport.setdefault((fqdn, port, local.transport), local)

    def reconfigure(self, config: SbcConfig) -> None:
        """Take over a reloaded config (teams_sbc.reload lets only the tenants, their numbers
        and policies, the carrier trunk, the tenant header, the unknown-tenant status, the
        failover timeout, routes and hosts change): the tenant tables and the names we answer
        to are built again. Calls in flight keep the tenant they were given; the Microsoft
        proxies and their health stay as they are."""
        assert config.teams is not None, "the teams section cannot be removed by a reload"
        old_fqdns = set(self.tenants.fqdns())
        super().reconfigure(config)
        self.teams = config.teams
        self.tenants = Tenants(self.teams)
        self._carrier_routes.clear()
        listener_hosts = {
            host.lower().strip("[]")
            for local in self._locals.values()
            for host in (local.host, local.bind_host)
        }
        for key in [k for k in self._by_hostport if k[0] in old_fqdns - listener_hosts]:
            del self._by_hostport[key]
        for local in self._locals.values():
            ports = {local.port, 5061} if local.name == self.teams_listener else {local.port}
            for fqdn in self.tenants.fqdns():
                for port in ports:
                    self._by_hostport.setdefault((fqdn, port, local.transport), local)
        self._ours.clear()

    def _finished(self, ctx: _ServerCtx | _ClientCtx) -> _ServerCtx | _ClientCtx:
        """The core shares one context among the finished transactions of a destination; a
        request of the Teams edge keeps its own, with what the edge knows of it (the tenant and
        direction its final and further 2xx responses are edited by)."""
        if ctx.edge is None:
            return super()._finished(ctx)
        if isinstance(ctx, _ClientCtx):
            return _ClientCtx(ctx.peer, ctx.listener, None, edge=ctx.edge)
        return _ServerCtx(ctx.peer, ctx.listener, None, edge=ctx.edge)

    @property
    def teams_port(self) -> int:
        return self._locals[self.teams_listener].port

    # -- requests in ----------------------------------------------------------------------------

    def receive(self, data: bytes, peer: Peer, listener: str, now: float) -> None:
        self._now = now
        super().receive(data, peer, listener, now)

    def _on_request(self, req: Request, peer: Peer, listener: str, now: float) -> None:
        if listener == self.teams_listener:
            # Teams addresses in-dialog requests to the Contact we gave it: the carrier's URI
            # goes back in (contact.py). Teams' own Contact is never touched.
            contact.restore_request_uri(req)
        super()._on_request(req, peer, listener, now)

    def _handle_new_request(self, txn: Transaction[Message], req: Request, now: float) -> None:
        info = self._call_info(req, txn.context.listener)
        if isinstance(info, NoTenant):
            self.edge_metrics.rejections.labels(reason="unknown_tenant").inc()
            log.info(
                "no tenant for request",
                extra={"call_id": req.call_id, "method": req.method, "status": info.status,
                       "reason": info.reason, "ruri": req.uri},
            )  # fmt: skip
            self._reply(txn, req, info.status, info.reason, now)
            return
        txn.context.edge = info
        super()._handle_new_request(txn, req, now)

    def _call_info(self, req: Request, listener: str) -> CallInfo | NoTenant:
        """The tenant and direction of a request, before the core pops its Route entries."""
        from_teams = listener == self.teams_listener
        initial = req.to_tag is None
        tenant = self._tenant_from_routes(req)
        if tenant is None and initial and not req.headers.values("route"):
            if from_teams:
                found = self.tenants.from_teams(_host(req.ruri), _host_of(req, "to"))
                if isinstance(found, NoTenant):
                    if req.method != "OPTIONS":  # OPTIONS to any of our names: answered
                        return found
                else:
                    tenant = found
            elif req.method == "INVITE":
                found = self.tenants.from_carrier(
                    self._called_number(req), self._tenant_header(req)
                )
                if isinstance(found, NoTenant):
                    return found
                tenant = found
        if tenant is None and from_teams:
            tenant = self.tenants.by_fqdn(_host(req.ruri) or "")
        return CallInfo(tenant or self.tenants.base, from_teams, initial)

    def _tenant_from_routes(self, req: Request) -> TenantInfo | None:
        """In-dialog requests name their tenant in our Record-Route entry with its FQDN."""
        for value in req.headers.values("route"):
            try:
                uri = parse_name_addr(value, "Route").uri
            except SipParseError:
                continue
            if isinstance(uri, SipUri):
                found = self.tenants.by_fqdn(uri.bare_host)
                if found is not None:
                    return found
        return None

    def _tenant_header(self, req: Request) -> str | None:
        name = self.teams.tenant_header
        return None if name is None else req.headers.get(name)

    def _called_number(self, req: Request) -> str | None:
        uri = req.ruri
        user = uri.user if isinstance(uri, SipUri) else None
        if not user:
            return None
        return to_e164(user, self.tenants.base.policy.numbers)

    # -- routing new requests -----------------------------------------------------------------

    def _route_for_us(
        self,
        txn: Transaction[Message],
        req: Request,
        out_local: _Local | None,
        max_forwards: int | None,
        loop_hash: str,
        now: float,
    ) -> bool:
        info: CallInfo | None = txn.context.edge
        if info is None:
            return False
        if info.from_teams:
            if req.method == "OPTIONS":
                self._answer_options(txn, req, now)
                return True
            route = self._carrier_route(info.tenant)
            target = parse_uri(route.next_hop)
            dest = self._resolve(target)
            info.to_carrier_hop = info.initial
            if info.initial and req.method == "INVITE":
                labels = {"tenant": info.tenant.label, "direction": "from_teams"}
                self.edge_metrics.calls.labels(**labels).inc()
            self._forward(txn, req, target, dest, None, route, max_forwards, loop_hash, now)
            return True
        if req.method != "INVITE" or not info.initial:
            return False
        self.edge_metrics.calls.labels(tenant=info.tenant.label, direction="to_teams").inc()
        info.order = tuple(self.pool.order(now))
        if not self._try_next_proxy(txn, req, info, now):
            self._reply(txn, req, 503, "Service Unavailable (no Microsoft proxy usable)", now)
        return True

    def _carrier_route(self, tenant: TenantInfo) -> Route:
        route = self._carrier_routes.get(tenant.carrier_next_hop)
        if route is None:
            route = self._carrier_routes[tenant.carrier_next_hop] = Route(
                name="carrier",
                next_hop=tenant.carrier_next_hop,
                listener=self.teams.carrier_listener,
                large_over_tcp=self.teams.carrier.tcp_allowed,
            )
        return route

    def _proxy_peer(self, proxy: MicrosoftProxy, port: int | None = None) -> Peer:
        """Where a Microsoft proxy is: its configured address, else its name (the transport
        resolves it for each new connection). The name stays the TLS server name."""
        if proxy.address is not None:
            return Peer("tls", proxy.address, proxy.port, proxy.name)
        return Peer("tls", proxy.name, port or proxy.port, proxy.name)

    def _resolve(self, uri: Uri) -> Peer | None:
        """A Microsoft proxy by name goes where the config says; other TLS names are left to
        the transport to resolve (Teams' Record-Route names its proxies)."""
        if isinstance(uri, SipUri):
            state = self.pool.get(uri.bare_host)
            if state is not None:
                return self._proxy_peer(state.proxy, uri.port)
        peer = super()._resolve(uri)
        if peer is None and isinstance(uri, SipUri):
            transport = uri.transport or ("tls" if uri.scheme == "sips" else None)
            name = (uri.maddr or uri.host).strip("[]")
            if transport == "tls" and "." in name:
                return Peer("tls", name.lower(), uri.port or 5061, name.lower())
        return peer

    def _try_next_proxy(
        self, server: Transaction[Message], req: Request, info: CallInfo, now: float
    ) -> bool:
        """Failover ("Plan Direct Routing"): the next proxy in the order; False when none."""
        if info.tried >= len(info.order):
            return False
        state = info.order[info.tried]
        info.tried += 1
        info.proxy = state
        dest = self._proxy_peer(state.proxy)
        target = SipUri("sip", state.name, None, None, 5061, (("transport", "tls"),))
        self._forward(
            server, req, target, dest, None, self._teams_route, req.max_forwards,
            self._loop_hash(req), now,
        )  # fmt: skip
        log.info(
            "call to Teams",
            extra={"call_id": req.call_id, "tenant": info.tenant.label, "proxy": state.name,
                   "attempt": info.tried},
        )  # fmt: skip
        return True

    def _fail_over(self, attempt: Attempt, why: str, now: float) -> bool:
        """Move a new call on to the next proxy after ``why``; False when it cannot (the
        caller cancelled, a final response went, or no proxy is left)."""
        self.pool.record(attempt.proxy, Outcome.FAILED, now, why)
        rctx = attempt.server.context.rctx
        info = attempt.info
        if rctx is None or rctx.final_sent or rctx.cancelled or info.tried >= len(info.order):
            return False
        req = attempt.server.request
        assert isinstance(req, Request)
        attempt.proxy.failovers += 1
        self.edge_metrics.failovers.labels(proxy=attempt.proxy.name).inc()
        log.warning(
            "failing over",
            extra={"call_id": req.call_id, "tenant": info.tenant.label,
                   "proxy": attempt.proxy.name, "reason": why},
        )  # fmt: skip
        return self._try_next_proxy(attempt.server, req, info, now)

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
        *more: Any,
        **named: Any,
    ) -> None:
        """The core's forwarding, and for a try of a new call at a Microsoft proxy: its own
        branch, and its client transaction marked (failover, the silent-proxy timer). Done
        here, not where the try starts, because the core may forward later (when rtpengine
        has answered)."""
        info = txn.context.edge
        attempt = info if isinstance(info, CallInfo) and info.proxy is not None else None
        rctx = txn.context.rctx
        before = rctx.branches[-1] if rctx is not None and rctx.branches else None
        self._attempt = attempt.tried if attempt is not None else 0
        try:
            super()._forward(
                txn, req, target, dest, out_local, route_cfg, max_forwards, loop_hash, now,
                *more, **named,
            )  # fmt: skip
        finally:
            self._attempt = 0
        rctx = txn.context.rctx
        if attempt is None or attempt.proxy is None or rctx is None or not rctx.branches:
            return
        client = rctx.branches[-1]
        if client is not before and client.context.edge is None:
            client.context.edge = Attempt(attempt.proxy, attempt, txn)
            self._silent[client] = now + self.teams.failover_timeout

    def _send(
        self, txn: Transaction[Message], message: Message | bytes, retransmission: bool
    ) -> None:
        """The CANCEL and the non-2xx ACK the core builds for an INVITE it sent to Teams get
        our identification too ("on everything towards Teams")."""
        if (
            type(message) is Request
            and message.method in ("CANCEL", "ACK")
            and txn.context.listener == self.teams_listener
            and "x-ms-sbc" not in message.headers
        ):
            info = txn.context.edge
            tenant = info.info.tenant if isinstance(info, Attempt) else self.tenants.base
            if tenant.policy.identify:
                normalise.identify(message, self.config.server_header, self.x_ms_sbc)
        super()._send(txn, message, retransmission)

    def _branch(self, req: Request, local: _Local, loop_hash: str) -> str:
        """Each try of a new call at another proxy is a new client transaction: its branch
        differs from the first try's (which is derived from the caller's branch)."""
        branch = super()._branch(req, local, loop_hash)
        if self._attempt > 1:
            unique = hashlib.blake2b(f"{branch}|{self._attempt}".encode(), digest_size=8)
            branch = f"{BRANCH_PREFIX}{unique.hexdigest()}.{loop_hash}"
        return branch

    # -- what leaves: requests ------------------------------------------------------------------

    def _edit_forwarded(
        self, txn: Transaction[Message] | None, fwd: Request, in_local: _Local, local: _Local
    ) -> None:
        to_teams = local.name == self.teams_listener
        from_teams = in_local.name == self.teams_listener
        if to_teams == from_teams:
            return
        info = txn.context.edge if txn is not None else self._ack_info
        if info is None:
            info = CallInfo(self.tenants.base, from_teams, fwd.to_tag is None)
        tenant = info.tenant
        if self.config.record_route and fwd.method in DIALOG_CREATING and fwd.to_tag is None:
            # record_route.py: the July 2020 rule, the tenant's FQDN in the entry facing Teams.
            added = 1 if in_local is local else 2
            record_route.tenant_fqdn_in_record_route(fwd, added, from_teams, tenant.fqdn)
            if to_teams and added == 2 and self._worker is not None and tenant.policy.ack_repair:
                # The entry facing the carrier (the second) names this worker, which will hold
                # the To-tags its ACK may need repaired with.
                mark_worker(fwd, 1, self._worker)
        if to_teams:
            self._request_to_teams(fwd, info)
        elif info.to_carrier_hop:
            # A new call from Teams: the carrier gets it addressed to its own next hop.
            fwd.ruri = _retarget(fwd.ruri, parse_uri(tenant.carrier_next_hop))

    def _request_to_teams(self, fwd: Request, info: CallInfo) -> None:
        policy = info.tenant.policy
        info.sent_to_teams = True
        if self.teams.tenant_header is not None:
            fwd.headers.remove(self.teams.tenant_header)
        if info.initial and fwd.method == "INVITE" and info.proxy is not None:
            # Microsoft, SIP protocol: INVITE sip:+15550100@sip.pstnhub.microsoft.com;user=phone
            user = fwd.ruri.user if isinstance(fwd.ruri, SipUri) else None
            number = to_e164(user, policy.numbers) if user and policy.e164 else user
            userinfo = f"{number}@" if number else ""
            fwd.uri = f"sip:{userinfo}{info.proxy.name}:5061;user=phone;transport=tls"
        if policy.e164 and normalise.numbers_to_e164(fwd, policy.numbers, ruri=False):
            info.from_to_changed = True
        if policy.pai_to_from and info.initial and normalise.pai_to_from(fwd):
            info.from_to_changed = True
        if policy.hold_inactive and fwd.method != "ACK":
            normalise.hold_inactive(fwd)
        self._towards_teams(fwd, info.tenant)

    def _towards_teams(self, msg: Message, tenant: TenantInfo) -> None:
        """What everything sent to Teams gets: REFER out of Allow, Contact with the tenant's
        FQDN, ``;lr`` exactly, and our identification."""
        policy = tenant.policy
        if policy.refer == "strip":
            normalise.strip_refer(msg)
        if isinstance(msg, Request) or (isinstance(msg, Response) and 100 < msg.status < 300):
            contact.contact_towards_teams(msg, tenant.fqdn, self.teams_port)
        if record_route.full_lr_to_lr(msg):
            self.edge_metrics.lr_rewrites.inc()
        if policy.identify:
            normalise.identify(msg, self.config.server_header, self.x_ms_sbc)

    def _large_over_udp(self, txn: Transaction[Message], fwd: Request) -> None:
        """A message from Teams too big for the carrier's UDP and no TCP allowed: trimmed by
        the tenant's policy (sdp.trim_for_udp) before it goes, never fragmented blindly
        unless the policy says so."""
        info: CallInfo | None = txn.context.edge
        if info is not None and info.from_teams and info.tenant.policy.trim_large_sdp:
            if fwd.body and (fwd.content_type or "").lower().startswith("application/sdp"):
                sdp = fwd.body.decode("utf-8", "surrogateescape")
                fwd.body = trim_for_udp(sdp, info.tenant.policy.carrier_codecs).encode(
                    "utf-8", "surrogateescape"
                )
                self.edge_metrics.trimmed.inc()
                log.info(
                    "large message trimmed for UDP",
                    extra={"call_id": fwd.call_id, "tenant": info.tenant.label,
                           "size": len(fwd.to_bytes())},
                )  # fmt: skip
            if len(fwd.to_bytes()) <= UDP_SIZE_LIMIT:
                return
        super()._large_over_udp(txn, fwd)

    # -- what leaves: responses -----------------------------------------------------------------

    def _respond(self, txn: Transaction[Message], response: Response, now: float) -> None:
        ctx = txn.context
        info: CallInfo | None = ctx.edge
        if ctx.listener == self.teams_listener:
            self._towards_teams(response, info.tenant if info else self.tenants.base)
        elif info is not None and info.sent_to_teams:
            # A response to a call we sent to Teams, on its way to the carrier.
            policy = info.tenant.policy
            original = txn.request
            if info.from_to_changed and isinstance(original, Request):
                normalise.restore_from_to(response, original)
            if policy.early_media_183_to_180:
                normalise.early_media_to_ringing(response)
            if policy.busy_cause_17:
                normalise.busy_cause_17(response)
            if policy.ack_repair:
                self.ack_repair.note_response(response, now)
        super()._respond(txn, response, now)

    def _answer_options(self, txn: Transaction[Message], req: Request, now: float) -> None:
        """Microsoft's OPTIONS to us (teams-direct-routing.md, OPTIONS): 200 with Contact (our
        FQDN, never an address) and Allow."""
        if txn.context.listener != self.teams_listener:
            super()._answer_options(txn, req, now)
            return
        host = _host(req.ruri)
        fqdn = host if host and self.tenants.by_fqdn(host) else self.tenants.base.fqdn
        policy = self.tenants.base.policy
        allow = ALLOW if policy.refer == "strip" else ALLOW + ", REFER"
        extra = [
            ("Contact", f"<sip:{fqdn}:{self.teams_port};transport=tls>"),
            ("Allow", allow),
            ("Accept", "application/sdp"),
        ]
        self._reply(txn, req, 200, "OK", now, extra, to_tag=self.token(8))

    # -- responses in ---------------------------------------------------------------------------

    def _response_from_downstream(
        self, client: Transaction[Message], resp: Response, now: float
    ) -> None:
        edge = client.context.edge
        if isinstance(edge, Probe):
            if resp.status >= 200:
                self.pool.probe_answered(edge.proxy, resp.status, resp.reason, now)
                seconds = _retry_after(resp) if resp.status == 503 else None
                if seconds is not None:  # the proxy asks for a pause: calls honour it too
                    self.pool.retry_after(edge.proxy, seconds, now)
            return
        if isinstance(edge, Attempt):
            if edge.abandoned:
                log.info(
                    "late response from an abandoned proxy dropped",
                    extra={"call_id": resp.call_id, "status": resp.status,
                           "proxy": edge.proxy.name},
                )  # fmt: skip
                return
            if not edge.answered:
                edge.answered = True
                self._silent.pop(client, None)
                self.pool.record(edge.proxy, Outcome.OK, now, None)
            if resp.status in FAILOVER_STATUSES:
                if resp.status == 503:
                    seconds = _retry_after(resp)
                    if seconds is not None:
                        self.pool.retry_after(edge.proxy, seconds, now)
                why = f"{resp.status} {resp.reason}"
                if self._fail_over(edge, why, now):
                    return
        super()._response_from_downstream(client, resp, now)

    def _branch_failed(
        self, client: Transaction[Message], status: int, reason: str, now: float
    ) -> None:
        edge = client.context.edge
        if isinstance(edge, Probe):
            self.pool.probe_failed(edge.proxy, reason, now)
            return
        if isinstance(edge, Attempt):
            self._silent.pop(client, None)
            if edge.abandoned:
                return
            if self._fail_over(edge, reason, now):
                return
        super()._branch_failed(client, status, reason, now)

    def _forward_stateless_ack(self, ack: Request, listener: str, now: float) -> None:
        from_teams = listener == self.teams_listener
        tenant = self._tenant_from_routes(ack) or self.tenants.base
        if not from_teams and tenant.policy.ack_repair and self._worker_peers:
            holder = worker_in(ack.headers.values("route"))
            sibling = self._worker_peers.get(holder) if holder is not None else None
            if sibling is not None:
                # The call's INVITE went out through that worker: it has the tags.
                self.edge_metrics.acks_passed.inc()
                log.debug("ACK passed to the worker that forwarded the INVITE",
                          extra={"call_id": ack.call_id, "to_worker": holder})  # fmt: skip
                self.outbox.append(Outgoing(ack.to_bytes(), sibling, listener))
                return
        if not from_teams and tenant.policy.ack_repair:
            repaired = self.ack_repair.repair(ack, now)
            if repaired is not None:
                self.edge_metrics.ack_repairs.inc()
                log.warning(
                    "ACK To-tag repaired",
                    extra={"call_id": repaired.call_id, "tenant": tenant.label,
                           "wrong_tag": repaired.wrong_tag, "right_tag": repaired.right_tag,
                           "was_provisional": repaired.was_provisional},
                )  # fmt: skip
        self._ack_info = CallInfo(tenant, from_teams, initial=False)
        try:
            super()._forward_stateless_ack(ack, listener, now)
        finally:
            self._ack_info = None

    # -- timers: OPTIONS keepalive and silent proxies ---------------------------------------------

    def next_deadline(self) -> float | None:
        deadlines = [
            d for d in (super().next_deadline(), self.pool.next_deadline()) if d is not None
        ]
        if self._silent:
            deadlines.append(next(iter(self._silent.values())))
        return min(deadlines) if deadlines else None

    def advance(self, now: float) -> None:
        self._now = now
        super().advance(now)
        silent = self._silent
        while silent:
            client, at = next(iter(silent.items()))
            if at > now:
                break
            del silent[client]
            self._silence(client, now)
        for state in self.pool.overdue_probes(now):
            why = f"OPTIONS unanswered after {self.pool.timeout:g} s"
            self.pool.probe_failed(state, why, now)
        if not self.draining:
            for state in self.pool.due_probes(now):
                self._send_probe(state, now)

    def _silence(self, client: Transaction[Message], now: float) -> None:
        """A new call's proxy said nothing (not even 100 Trying) for ``failover_timeout``:
        give up on it (a CANCEL may not be sent before a provisional, RFC 3261 9.1) and try
        the next; late responses from it are dropped."""
        attempt = client.context.edge
        if not isinstance(attempt, Attempt) or attempt.answered:
            return
        if client.state is not State.CALLING:
            return
        info = attempt.info
        rctx = attempt.server.context.rctx
        if rctx is None or rctx.final_sent or rctx.cancelled or info.tried >= len(info.order):
            return  # the last proxy: timer B decides
        attempt.abandoned = True
        self._timer_c.pop(client, None)
        self._fail_over(attempt, f"no response in {self.teams.failover_timeout:g} s", now)

    def _send_probe(self, state: ProxyState, now: float) -> None:
        local = self._locals[self.teams_listener]
        branch = f"{BRANCH_PREFIX}{self.token(8)}.ka"
        extra = [("Allow", ALLOW)]
        if self.tenants.base.policy.identify:
            extra += [("User-Agent", self.config.server_header), ("X-MS-SBC", self.x_ms_sbc)]
        req = build_options(
            state.proxy,
            self.teams.fqdn,
            local.port,
            local.via_prefix + branch,
            f"{self.token(12)}@{self.teams.fqdn}",
            self.token(8),
            extra,
        )
        dest = self._proxy_peer(state.proxy)
        _, actions = self.txns.send_request(
            req,
            method="OPTIONS",
            branch=branch,
            reliable=True,
            now=now,
            context=_ClientCtx(dest, self.teams_listener, None, edge=Probe(state)),
        )
        self._act(actions, now)

    # -- status -----------------------------------------------------------------------------

    def teams_status(self, now: float) -> dict[str, object]:
        """What /teams shows: the trunk, its tenants and each Microsoft proxy's health."""
        return {
            "fqdn": self.teams.fqdn,
            "cloud": self.teams.cloud,
            "tenants": {t.name: t.fqdn_under(self.teams.fqdn) for t in self.teams.tenants},
            "proxies": [s.status(now) for s in self.pool.states],
            "ack_repairs": self.ack_repair.repairs,
        }


def _host(uri: Uri) -> str | None:
    return uri.bare_host.lower() if isinstance(uri, SipUri) else None


def _host_of(req: Request, header: str) -> str | None:
    try:
        addr = req.to_addr if header == "to" else req.from_addr
        return _host(addr.uri)
    except SipParseError:
        return None


def _retarget(uri: Uri, next_hop: Uri) -> Uri:
    """``uri`` with the host, port and transport of ``next_hop``; user and other params kept."""
    if not isinstance(uri, SipUri) or not isinstance(next_hop, SipUri):
        return uri
    params = tuple((n, v) for n, v in uri.params if n.lower() not in ("transport", "maddr"))
    if next_hop.transport:
        params += (("transport", next_hop.transport),)
    return uri.with_host(next_hop.host, next_hop.port).with_params(params)


def _retry_after(resp: Response) -> float | None:
    """Seconds of a Retry-After header (RFC 3261 20.33: delta-seconds, comment and params)."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    digits = value.strip().split(";", 1)[0].split("(", 1)[0].strip()
    return float(digits) if digits.isdigit() else None
