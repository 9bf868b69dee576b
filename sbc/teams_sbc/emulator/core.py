"""The Teams emulator's SIP logic, sans-IO: Microsoft's proxies and the Teams users behind them.

Bytes, connection ids, the peer's certificate :class:`Identity` and ``now`` go in; messages to
send (:class:`Out`), media plans for the adapter (:class:`MediaPlan`, :class:`MediaStop`) and
timers (:meth:`EmulatorCore.next_deadline`) come out, as in the SBC's own core. Randomness (tags,
branches, Call-IDs) and media ports are passed in, so tests run it on a virtual clock.

What it does, and where each behaviour comes from, is in docs/emulator.md. In short:

- As UAS (the SBC calls Teams): checks each OPTIONS and INVITE against :mod:`.rules`; answers
  OPTIONS 200 and pings the SBC back; rings every device of the user (one 180 per fork, each
  with its own To-tag), sends one 183 with SDP from the first and the 200 from the last;
  retransmits the 200 until an ACK with *the 200's* To-tag arrives, ignores any other, and ends
  the call with BYE when none came (RFC 3261 13.3.1.4); keeps session timers (RFC 4028).
- As UAC (Teams calls the SBC): large INVITEs (ICE candidates, several keys, many codecs),
  Session-Expires/Min-SE, hold re-INVITEs, BYE, CANCEL; checks the SBC's 2xx as strictly.
- Every proxy can be told to fail: 503 to everything, or silence (refusing connections is the
  adapter's part).
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import logging
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from teams_sbc.emulator import rules
from teams_sbc.emulator.config import EmulatorConfig, FailureMode, parse_host_port
from teams_sbc.emulator.identity import Identity, trunk_configured
from teams_sbc.emulator.records import (
    CallRecord,
    LadderEntry,
    OptionsResult,
    ProxyStats,
)
from teams_sbc.emulator.sdp import (
    SENDABLE,
    RemoteMedia,
    SdpProblem,
    answer_direction,
    hold_problem,
    read_sbc_sdp,
    teams_answer,
    teams_offer,
)
from teams_sbc.media.srtp import SdesKey
from teams_sbc.sip import (
    Request,
    Response,
    SipParseError,
    SipUri,
    error_response,
    make_response,
    parse_message,
    parse_uri,
)
from teams_sbc.sip.headers import parse_name_addr, parse_name_addr_list

log = logging.getLogger("teams_sbc.emulator")

ALLOW = "INVITE, ACK, OPTIONS, CANCEL, BYE, NOTIFY, UPDATE"
#: What Microsoft's proxy lists in its own OPTIONS (a capture of Microsoft's OPTIONS).
OPTIONS_ALLOW = "INVITE,ACK,OPTIONS,CANCEL,BYE,NOTIFY"


@dataclass(frozen=True)
class Target:
    """Where a request the emulator originates goes: from ``proxy`` to the SBC named ``host``
    (SNI and certificate check), at ``address`` (None: resolve ``host`` by DNS) and ``port``."""

    proxy: str
    host: str
    address: str | None
    port: int


@dataclass
class Out:
    """One message to send: on an existing connection (``conn``) or towards ``target``."""

    data: bytes
    conn: int | None = None
    target: Target | None = None
    call_id: str | None = None
    what: str = ""  # request method or status, for the adapter's logs


@dataclass(frozen=True)
class MediaPlan:
    """Start or change the SRTP of a call: send with ``send_key`` to ``remote`` (when ``send``)
    and decrypt what arrives with ``recv_key``."""

    call_id: str
    host: str
    port: int
    remote: tuple[str, int]
    send_key: SdesKey
    recv_key: SdesKey
    payload_type: int
    send: bool


@dataclass(frozen=True)
class MediaStop:
    call_id: str


@dataclass(frozen=True)
class CallOptions:
    """How the emulator places a call (Teams user calling out through the SBC)."""

    caller: str = "+14255550100"
    caller_name: str | None = "Teams User"
    trunk: str | None = None  # the SBC FQDN; default: the first trunk that is not a wildcard
    proxy: str | None = None  # which proxy sends it; default: the first not told to fail
    privacy: bool = False  # P-Asserted-Identity with Privacy: id
    answer_timeout: float = 60.0  # CANCEL when not answered by then
    hangup_after: float | None = None  # BYE this long after the call is confirmed
    extra_headers: tuple[tuple[str, str], ...] = ()


@dataclass
class _Conn:
    conn_id: int
    proxy: str
    identity: Identity | None
    peer: tuple[str, int]
    outbound: bool


class _Timer:
    __slots__ = ("at", "cancelled", "fn")

    def __init__(self, at: float, fn: Callable[[float], None]) -> None:
        self.at = at
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class _Pending:
    """A client transaction of ours (reliable transport: no retransmissions, only timer B/F)."""

    branch: str
    method: str
    cseq: int
    call_id: str
    on_response: Callable[[Response, float], None]
    on_timeout: Callable[[float], None]
    timer: _Timer | None = None
    final: bool = False
    request: bytes = b""
    target: Target | None = None
    on_error: Callable[[str, float], None] | None = None


@dataclass
class _Call:
    record: CallRecord
    role: Literal["uas", "uac"]
    proxy: str
    conn: int | None  # UAS: where the INVITE came in (responses go back there)
    local_tag: str
    local_uri: str  # our From (UAC) or To (UAS) name-addr without tag
    remote_uri: str
    local_contact: str  # our Contact URI, exactly as sent
    invite: Request | None = None  # UAS: the SBC's INVITE
    invite_branch: str = ""  # UAC: our INVITE's branch
    invite_bytes: bytes = b""
    remote_tag: str | None = None
    local_cseq: int = 1
    remote_cseq: int = 0
    route_set: list[str] = field(default_factory=list)
    remote_target: str = ""
    next_hop: Target | None = None
    identity: Identity | None = None
    # media
    media_host: str = ""
    media_port: int = 0
    local_keys: list[SdesKey] = field(default_factory=list)
    remote_media: RemoteMedia | None = None
    session_id: int = 0
    sdp_version: int = 1
    direction: str = "sendrecv"
    # UAS pacing and 2xx retransmission
    forks: list[str] = field(default_factory=list)
    scheduled: list[_Timer] = field(default_factory=list)
    final_sent: Response | None = None
    awaiting_ack: bytes | None = None  # the 2xx being retransmitted
    awaiting_ack_tag: str | None = None
    retx_timer: _Timer | None = None
    ack_deadline: _Timer | None = None
    # session timer (RFC 4028)
    session_expires: int | None = None
    refresher: str | None = None
    expiry_timer: _Timer | None = None
    pending_invite: _Pending | None = None
    hangup_after: float | None = None
    cancelling: bool = False
    bye_sent: bool = False


class EmulatorCore:
    """Microsoft's SIP proxies and Teams users, sans-IO."""

    def __init__(
        self,
        config: EmulatorConfig,
        *,
        allocate_media: Callable[[str], int],
        token: Callable[[int], str] = secrets.token_hex,
    ) -> None:
        self.config = config
        self.allocate_media = allocate_media
        self.token = token
        self.ports: dict[str, int] = {p.name: p.port or 5061 for p in config.proxies}
        self.failure: dict[str, FailureMode] = {p.name: p.failure for p in config.proxies}
        self.outbox: list[Out] = []
        self.media_events: list[MediaPlan | MediaStop] = []
        self.calls: dict[str, _Call] = {}
        self.options: list[OptionsResult] = []
        self.stats: dict[str, ProxyStats] = {p.name: ProxyStats() for p in config.proxies}
        self.stray: list[LadderEntry] = []  # messages that belong to no call (OPTIONS, junk)
        self._conns: dict[int, _Conn] = {}
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self._pinged: dict[tuple[str, str], _Timer] = {}
        self._users = {u.number: u.behaviour for u in config.users}
        self._epoch: float | None = None
        self._receiving: int | None = None  # the connection whose message is being handled
        self._receiving_data: bytes | None = None  # ... and its bytes, for the ladder

    # ---- connections ---------------------------------------------------------------------

    def connection_opened(
        self,
        conn_id: int,
        proxy: str,
        identity: Identity | None,
        peer: tuple[str, int],
        *,
        outbound: bool = False,
    ) -> None:
        self._conns[conn_id] = _Conn(conn_id, proxy, identity, peer, outbound)
        self.stats[proxy].connections += 1

    def connection_closed(self, conn_id: int) -> None:
        self._conns.pop(conn_id, None)

    def set_port(self, proxy: str, port: int) -> None:
        self.ports[proxy] = port

    def set_failure(self, proxy: str, mode: FailureMode) -> None:
        self.config.proxy(proxy)  # raises KeyError for an unknown name
        self.failure[proxy] = mode

    # ---- timers ------------------------------------------------------------------------------

    def _after(self, now: float, delay: float, fn: Callable[[float], None]) -> _Timer:
        timer = _Timer(now + delay, fn)
        heapq.heappush(self._timers, (timer.at, next(self._seq), timer))
        return timer

    def next_deadline(self) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def advance(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.cancelled = True
                timer.fn(now)

    # ---- helpers -------------------------------------------------------------------------------

    def _tag(self) -> str:
        return self.token(6)

    def _branch(self) -> str:
        return "z9hG4bK" + self.token(8)

    def proxy_fqdn(self, proxy: str) -> str:
        return self.config.proxy(proxy).fqdn

    def _proxy_uri(self, proxy: str) -> str:
        return f"sip:{self.proxy_fqdn(proxy)}:{self.ports[proxy]};transport=tls"

    def _record_route(self, proxy: str) -> str:
        return f"<{self._proxy_uri(proxy)};lr>"

    def _via(self, proxy: str, branch: str) -> str:
        host = self.config.proxy(proxy).host
        return f"SIP/2.0/TLS {host}:{self.ports[proxy]};branch={branch};rport"

    def _contact(self, call_id: str) -> str:
        """Teams' Contact: a host of its own and routing data (x-i, x-c) that the SBC must pass
        through untouched (SEED, "Don't mess with the received Contact header")."""
        tail = "".join(ch for ch in call_id if ch.isalnum())[:32] or self.token(8)
        return (
            f"sip:api-du-a-emul.pstnhub.microsoft.com:443;x-i={uuid.uuid4()};"
            f"x-c={tail}/d/8/{self.token(8)}"
        )

    def resolve(self, proxy: str, host: str, port: int | None) -> Target:
        """Where the SBC named ``host`` is: ``hosts``, else ``sbc_address`` for a trunk name,
        else DNS (address None). The name is kept for SNI and the certificate check."""
        name = host.lower()
        override = self.config.hosts.get(name)
        if override is None and self.config.sbc_address and (
            trunk_configured(self.config.trunks, name) or rules.is_ip(name)
        ):
            override = self.config.sbc_address
        if override is not None:
            address, over_port = parse_host_port(override)
            return Target(proxy, name, address, over_port or port or 5061)
        if rules.is_ip(name):
            return Target(proxy, name, name, port or 5061)
        return Target(proxy, name, None, port or 5061)

    def _now_rel(self, call: _Call, now: float) -> float:
        return max(0.0, now - call.record.started)

    def _note(self, call: _Call | None, now: float, arrow: Literal["->", "<-", "!!"], text: str,
              proxy: str = "", raw: bytes | None = None) -> None:
        if raw is None and arrow == "<-":
            raw = self._receiving_data
        message = raw.decode("utf-8", "replace") if raw else ""
        if call is None:
            self.stray.append(
                LadderEntry(now - (self._epoch or now), arrow, proxy, text, message))
            del self.stray[:-500]
            return
        call.record.ladder.append(
            LadderEntry(self._now_rel(call, now), arrow, proxy or call.proxy, text, message)
        )

    def _violation(self, call: _Call, now: float, text: str) -> None:
        call.record.violations.append(text)
        self._note(call, now, "!!", f"violation: {text}")
        log.warning("SBC broke a Teams rule: %s", text, extra={"call_id": call.record.call_id})

    def _summary(self, message: Request | Response) -> str:
        if isinstance(message, Request):
            extra = ""
            if message.method == "ACK":
                extra = f" (To-tag {message.to_tag})"
            return f"{message.method} {message.uri}{extra}"
        tag = message.to_tag
        body = " with SDP" if message.body else ""
        return f"{message.status} {message.reason}{body}" + (f" (To-tag {tag})" if tag else "")

    def _send_on(self, conn: int, message: Request | Response, call: _Call | None, now: float,
                 proxy: str) -> None:
        data = message.to_bytes()
        what = message.method if isinstance(message, Request) else str(message.status)
        self.outbox.append(Out(data, conn=conn, call_id=call.record.call_id if call else None,
                               what=what))
        self._note(call, now, "->", self._summary(message), proxy, raw=data)

    def _send_to(self, target: Target, data: bytes, call: _Call | None, now: float,
                 summary: str) -> None:
        self.outbox.append(Out(data, target=target, call_id=call.record.call_id if call else None,
                               what=summary.split(" ", maxsplit=1)[0]))
        self._note(call, now, "->", summary, target.proxy, raw=data)

    def _response(
        self,
        request: Request,
        status: int,
        *,
        proxy: str,
        to_tag: str | None = None,
        rejection: rules.Rejection | None = None,
        extra: Iterable[tuple[str, str]] = (),
        body: str = "",
        record_route: bool = False,
        contact: str | None = None,
    ) -> Response:
        headers: list[tuple[str, str]] = []
        if rejection is not None:
            text = rejection.text.replace('"', "'").replace("\\", "/")
            headers.append(
                ("Reason", f'Q.850;cause={rejection.cause};text="{uuid.uuid4()};{text}"')
            )
        if contact is not None:
            headers.append(("Contact", f"<{contact}>"))
        headers += list(extra)
        headers.append(("Server", self.config.user_agent))
        if body:
            headers.append(("Content-Type", "application/sdp"))
        response = make_response(request, status, to_tag=to_tag, extra_headers=headers)
        if record_route and 100 < status < 300:
            response.headers.insert("record-route", "Record-Route", self._record_route(proxy))
        if body:
            response.body = body.encode()
        return response

    def _reject(self, conn: int, request: Request, rejection: rules.Rejection, proxy: str,
                now: float, call: _Call | None = None, **extra: str) -> Response:
        stats = self.stats[proxy]
        stats.rejections[rejection.rule] = stats.rejections.get(rejection.rule, 0) + 1
        headers = [(k.replace("_", "-"), v) for k, v in extra.items()]
        response = self._response(
            request, rejection.status, proxy=proxy, to_tag=None if request.to_tag else self._tag(),
            rejection=rejection, extra=headers,
        )
        log.info(
            "rejected %s with %d: %s", request.method, rejection.status, rejection.text,
            extra={"call_id": request.call_id, "rule": rejection.rule, "proxy": proxy},
        )
        if call is None:
            self._note(None, now, "<-", self._summary(request), proxy)
            self._note(None, now, "!!", f"rejected ({rejection.rule}): {rejection.text}", proxy)
        else:
            self._note(call, now, "!!", f"rejected ({rejection.rule}): {rejection.text}")
        self._send_on(conn, response, call, now, proxy)
        return response

    # ---- input ---------------------------------------------------------------------------------

    def receive(self, conn_id: int, data: bytes, now: float) -> None:
        """One complete message (framed by the adapter) arrived on a connection."""
        if self._epoch is None:
            self._epoch = now
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        self._receiving_data = data
        try:
            self._receive(conn, conn_id, data, now)
        finally:
            self._receiving_data = None

    def _receive(self, conn: _Conn, conn_id: int, data: bytes, now: float) -> None:
        try:
            message = parse_message(data)
        except SipParseError as exc:
            answer = error_response(exc)
            self._note(None, now, "!!", f"unparsable message: {exc.reason}", conn.proxy)
            if answer is not None:
                self.outbox.append(Out(answer.to_bytes(), conn=conn_id, what=str(answer.status)))
            return
        if isinstance(message, Response):
            self._receiving = conn_id
            try:
                self._on_response(conn, message, now)
            finally:
                self._receiving = None
            return
        stats = self.stats[conn.proxy]
        stats.requests += 1
        mode = self.failure[conn.proxy]
        if mode in ("503", "silent", "refuse"):
            stats.failure_mode_hits += 1
            call = self.calls.get(message.call_id)
            self._note(call, now, "<-", self._summary(message), conn.proxy)
            if mode == "503" and message.method != "ACK":
                self._send_on(
                    conn_id,
                    self._response(
                        message, 503, proxy=conn.proxy, to_tag=message.to_tag or self._tag(),
                        rejection=rules.Rejection(503, "proxy told to fail", "failure-503"),
                        extra=[("Retry-After", "30")],
                    ),
                    call, now, conn.proxy,
                )
            else:
                self._note(call, now, "!!", f"proxy {conn.proxy} is {mode}: not answered")
            return
        try:
            self._on_request(conn, message, now)
        except SipParseError as exc:  # a header only parsed now (To, Contact...) is malformed
            if message.method != "ACK":
                self._reject(conn.conn_id, message, rules.Rejection(400, exc.reason, "syntax"),
                             conn.proxy, now)

    def _on_request(self, conn: _Conn, request: Request, now: float) -> None:
        method = request.method
        call = self.calls.get(request.call_id)
        if method == "ACK":
            self._on_ack(conn, request, call, now)
            return
        if method == "CANCEL":
            self._on_cancel(conn, request, call, now)
            return
        if request.to_tag is not None:
            self._on_in_dialog(conn, request, call, now)
            return
        if method == "INVITE" and call is not None and call.invite is not None:
            # A repeated INVITE (a confused SBC; TLS needs no retransmissions): same answer.
            self._note(call, now, "<-", self._summary(request) + " (repeated)", conn.proxy)
            if call.final_sent is not None:
                self._send_on(conn.conn_id, call.final_sent, call, now, conn.proxy)
            return
        if method not in ("OPTIONS", "INVITE"):
            status = 481 if method in ("BYE", "UPDATE", "PRACK", "INFO") else 405
            self._reject(conn.conn_id, request, rules.Rejection(
                status, f"{method} outside a dialog is not accepted", "method"),
                conn.proxy, now, Allow=ALLOW)
            return
        rejection, fqdn = self._check(conn, request)
        if method == "OPTIONS":
            self._on_options(conn, request, rejection, fqdn, now)
        else:
            self._on_invite(conn, request, rejection, fqdn, now)

    def _check(self, conn: _Conn, request: Request) -> tuple[rules.Rejection | None, str]:
        """Microsoft's rules for a request that starts something, in order (module rules)."""
        identity = conn.identity
        if identity is None:  # TLS always gives one; a test harness may not
            return rules.Rejection(403, "no client certificate", "certificate-missing"), ""
        rejection = (
            rules.check_certificate(identity, self.config.require_cn)
            or rules.check_uri_scheme(request)
            or rules.check_replaces(request)
            or rules.check_loose_routing(request)
        )
        if rejection is not None:
            return rejection, ""
        fqdn, rejection = rules.check_fqdn(request, identity, self.config.trunks)
        if rejection is None and request.method == "INVITE":
            names = [p.fqdn for p in self.config.proxies]
            rejection = rules.check_ruri_host(request, names) or rules.check_e164(request)
        return rejection, fqdn

    # ---- OPTIONS ---------------------------------------------------------------------------------

    def _on_options(self, conn: _Conn, request: Request, rejection: rules.Rejection | None,
                    fqdn: str, now: float) -> None:
        stats = self.stats[conn.proxy]
        stats.options_received += 1
        if rejection is not None:
            self._reject(conn.conn_id, request, rejection, conn.proxy, now)
            return
        stats.options_answered_ok += 1
        self._note(None, now, "<-", self._summary(request), conn.proxy)
        response = self._response(
            request, 200, proxy=conn.proxy, to_tag=self._tag(),
            contact=f"sip:{self.proxy_fqdn(conn.proxy)}:{self.ports[conn.proxy]}",
            extra=[("Allow", OPTIONS_ALLOW), ("Accept", "application/sdp")],
        )
        self._send_on(conn.conn_id, response, None, now, conn.proxy)
        # Microsoft answers, then sends its own OPTIONS to the FQDN the SBC gave (MS-SIP).
        key = (conn.proxy, fqdn)
        if key not in self._pinged:
            port = self._contact_port(request)
            self._pinged[key] = self._after(now, 0.0, lambda t: self._ping(key, port, t))

    def _contact_port(self, request: Request) -> int | None:
        try:
            contact = request.headers.get("contact")
            uri = parse_name_addr(contact).uri if contact else None
        except SipParseError:
            return None
        return uri.port if isinstance(uri, SipUri) else None

    def _ping(self, key: tuple[str, str], port: int | None, now: float) -> None:
        proxy, fqdn = key
        if self.failure[proxy] == "none":
            self.send_options(proxy, fqdn, now, port=port)
        self._pinged[key] = self._after(
            now, self.config.options_interval, lambda t: self._ping(key, port, t)
        )

    def send_options(self, proxy: str, fqdn: str, now: float, *, port: int | None = None
                     ) -> OptionsResult:
        """Microsoft's keepalive OPTIONS to an SBC FQDN (header names in upper case, as
        Microsoft writes them)."""
        target = self.resolve(proxy, fqdn, port)
        branch = self._branch()
        call_id = self.token(16)
        me = self.proxy_fqdn(proxy)
        data = (
            f"OPTIONS sip:{fqdn}:{target.port};transport=tls SIP/2.0\r\n"
            f"FROM: <sip:{me}:{self.ports[proxy]}>;tag={self._tag()}\r\n"
            f"TO: <sip:{fqdn}>\r\n"
            "CSEQ: 1 OPTIONS\r\n"
            f"CALL-ID: {call_id}\r\n"
            "MAX-FORWARDS: 70\r\n"
            f"VIA: {self._via(proxy, branch)}\r\n"
            f"CONTACT: <sip:{me}:{self.ports[proxy]}>\r\n"
            "CONTENT-LENGTH: 0\r\n"
            f"USER-AGENT: {self.config.user_agent}\r\n"
            f"ALLOW: {OPTIONS_ALLOW}\r\n\r\n"
        ).encode()
        result = OptionsResult(proxy=proxy, fqdn=fqdn, sent_at=now)
        self.options.append(result)

        def answered(response: Response, at: float) -> None:
            result.status = response.status
            result.rtt = at - now
            result.contact = response.headers.get("contact")
            result.allow = response.headers.get("allow")
            self._note(None, at, "<-", f"{response.status} {response.reason} (OPTIONS to {fqdn})",
                       proxy)

        def timed_out(at: float) -> None:
            result.error = result.error or f"no answer in {64 * self.config.timing.t1:.1f}s"

        def failed(reason: str, at: float) -> None:
            result.error = reason

        pending = self._start_client(branch, "OPTIONS", 1, call_id, answered, timed_out, now,
                                     data, target)
        pending.on_error = failed
        self._send_to(target, data, None, now, f"OPTIONS sip:{fqdn}:{target.port}")
        return result

    # ---- client transactions ----------------------------------------------------------------

    def _start_client(self, branch: str, method: str, cseq: int, call_id: str,
                      on_response: Callable[[Response, float], None],
                      on_timeout: Callable[[float], None], now: float, data: bytes,
                      target: Target | None) -> _Pending:
        pending = _Pending(branch, method, cseq, call_id, on_response, on_timeout,
                           request=data, target=target)

        def expire(at: float) -> None:
            if not pending.final:
                pending.final = True
                self._pending.pop((branch, method), None)
                on_timeout(at)

        pending.timer = self._after(now, 64 * self.config.timing.t1, expire)
        self._pending[(branch, method)] = pending
        return pending

    def _on_response(self, conn: _Conn, response: Response, now: float) -> None:
        try:
            branch = response.top_via.branch or ""
            method = response.cseq.method
        except SipParseError:
            return
        pending = self._pending.get((branch, method))
        if pending is None:
            call = self.calls.get(response.call_id)
            if call is not None and method == "INVITE" and 200 <= response.status < 300:
                self._on_invite_response(call, response, now, retransmission=True)
            else:
                self._note(call, now, "<-", self._summary(response) + " (stray)", conn.proxy)
            return
        if response.status >= 200:
            pending.final = True
            self._pending.pop((branch, method), None)
            if pending.timer is not None:
                pending.timer.cancel()
        elif pending.timer is not None and method == "INVITE":
            pending.timer.cancel()  # timer B stops at a provisional (RFC 3261 17.1.1.2)
        pending.on_response(response, now)

    def send_failed(self, out: Out, reason: str, now: float) -> None:
        """The adapter could not connect or send (TLS failure, refused, timeout)."""
        for pending in list(self._pending.values()):
            if pending.request is out.data and not pending.final:
                pending.final = True
                self._pending.pop((pending.branch, pending.method), None)
                if pending.timer is not None:
                    pending.timer.cancel()
                if pending.on_error is not None:
                    pending.on_error(reason, now)
                call = self.calls.get(pending.call_id)
                if call is not None:
                    self._note(call, now, "!!", f"cannot send {pending.method}: {reason}")
                    if pending.method == "INVITE" and call.record.state == "calling":
                        self._fail(call, now, f"cannot reach the SBC: {reason}")
                    elif pending.method == "BYE":
                        self._finish(call, now)

    # ---- INVITE from the SBC (the emulator is the UAS) ----------------------------------------

    def _on_invite(self, conn: _Conn, request: Request, rejection: rules.Rejection | None,
                   fqdn: str, now: float) -> None:
        self.stats[conn.proxy].invites_received += 1
        number = rules.user_number(request.uri) or "?"
        record = CallRecord(
            call_id=request.call_id, direction="to-teams", number=number, trunk=fqdn,
            proxy=conn.proxy, started=now, invite_bytes=len(request.to_bytes()),
        )
        call = _Call(
            record=record, role="uas", proxy=conn.proxy, conn=conn.conn_id, local_tag="",
            local_uri=request.headers.get("to") or "", remote_uri=request.headers.get("from") or "",
            local_contact=self._contact(request.call_id), invite=request,
            remote_tag=request.from_tag, identity=conn.identity,
        )
        call.remote_cseq = request.cseq.number
        self.calls[request.call_id] = call
        self._note(call, now, "<-", self._summary(request) + f" ({record.invite_bytes} bytes)")
        log.info("INVITE from the SBC", extra={"call_id": request.call_id, "proxy": conn.proxy})
        if rejection is not None:
            record.state, record.final_status = "rejected", rejection.status
            record.failure = f"{rejection.status}: {rejection.text}"
            call.final_sent = self._reject(conn.conn_id, request, rejection, conn.proxy, now, call)
            return
        try:
            remote = read_sbc_sdp(request.body, request.content_type)
        except SdpProblem as exc:
            rejection = rules.Rejection(488, str(exc), "sdp")
            record.state, record.final_status = "rejected", 488
            record.failure = f"488: {exc}"
            call.final_sent = self._reject(conn.conn_id, request, rejection, conn.proxy, now, call)
            return
        expires = request.headers.get("session-expires")
        if expires is not None:
            try:
                interval = int(expires.split(";")[0].strip())
            except ValueError:
                interval = -1
            if interval < self.config.timing.min_se:
                text = f"Session-Expires {expires} is below our Min-SE {self.config.timing.min_se}"
                record.state, record.final_status, record.failure = "rejected", 422, text
                call.final_sent = self._reject(
                    conn.conn_id, request, rules.Rejection(422, text, "session-timer"),
                    conn.proxy, now, call, Min_SE=str(self.config.timing.min_se))
                return
            call.session_expires = interval
            record.session_expires = interval
        behaviour = self._users.get(number)
        if behaviour is None:
            behaviour = "answer" if not self._users or self.config.unknown_numbers == "answer" \
                else "not-found"
        if behaviour == "not-found":
            rejection = rules.Rejection(404, f"no Teams user has the number {number}", "no-user")
            record.state, record.final_status = "rejected", 404
            record.failure = f"404: {rejection.text}"
            call.final_sent = self._reject(conn.conn_id, request, rejection, conn.proxy, now, call)
            return
        call.remote_media = remote
        call.media_host = self.config.proxy(conn.proxy).host
        call.media_port = self.allocate_media(call.media_host)
        call.session_id = int(self.token(3), 16)
        offered = remote.keys[0]
        call.local_keys = [SdesKey.generate(offered.suite, offered.tag)]
        call.forks = [self._tag() for _ in range(self.config.forks)]
        self._send_on(conn.conn_id, self._response(request, 100, proxy=conn.proxy), call, now,
                      conn.proxy)
        timing = self.config.timing
        call.scheduled.append(self._after(now, timing.ring_after, lambda t: self._ring(call, t)))
        if behaviour == "answer":
            call.scheduled.append(
                self._after(now, timing.progress_after, lambda t: self._progress(call, t))
            )
            call.scheduled.append(
                self._after(now, timing.answer_after, lambda t: self._answer(call, t))
            )
        elif behaviour in ("busy", "decline"):
            status = 486 if behaviour == "busy" else 603
            call.scheduled.append(self._after(
                now, timing.answer_after,
                lambda t: self._final_failure(call, status, f"user {behaviour}", t),
            ))
        else:  # no-answer
            call.scheduled.append(self._after(
                now, timing.no_answer_after,
                lambda t: self._final_failure(call, 480, "user did not answer", t),
            ))

    def _uas_response(self, call: _Call, status: int, tag: str, now: float, *,
                      body: str = "", extra: Iterable[tuple[str, str]] = (),
                      rejection: rules.Rejection | None = None) -> Response:
        assert call.invite is not None and call.conn is not None
        response = self._response(
            call.invite, status, proxy=call.proxy, to_tag=tag, body=body, extra=extra,
            record_route=True, contact=call.local_contact if status < 300 else None,
            rejection=rejection,
        )
        self._send_on(call.conn, response, call, now, call.proxy)
        return response

    def _ring(self, call: _Call, now: float) -> None:
        """Teams forks to every device of the user: one 180 each, each with its own To-tag."""
        for tag in call.forks:
            call.record.provisional_tags.append(tag)
            self._uas_response(call, 180, tag, now, extra=[("Allow", ALLOW)])
        call.record.state = "ringing"

    def _answer_sdp(self, call: _Call) -> str:
        assert call.remote_media is not None
        return teams_answer(
            call.remote_media, call.media_host, call.media_port, call.local_keys[0],
            session_id=call.session_id, version=call.sdp_version,
            direction=answer_direction(call.remote_media.direction),
        )

    def _progress(self, call: _Call, now: float) -> None:
        """One 183 with SDP, from the first device (early media, non-bypass)."""
        self._uas_response(call, 183, call.forks[0], now, body=self._answer_sdp(call))
        call.record.state = "early"
        self._plan_media(call, call.remote_media, now)

    def _answer(self, call: _Call, now: float) -> None:
        """The 200 from the last device (another fork than the 183's when there are several)."""
        tag = call.forks[-1]
        extra = [("Allow", ALLOW), ("Supported", "timer")]
        if call.session_expires is not None:
            call.refresher = "uac"
            extra += [("Session-Expires", f"{call.session_expires};refresher=uac"),
                      ("Require", "timer")]
        response = self._uas_response(call, 200, tag, now, body=self._answer_sdp(call),
                                      extra=extra)
        call.local_tag = tag
        call.final_sent = response
        call.record.state = "answered"
        call.record.answered_tag = tag
        call.record.final_status = 200
        self._set_route_from_request(call)
        self._plan_media(call, call.remote_media, now)
        assert call.conn is not None
        self._await_ack(call, response, tag, call.conn, now)

    def _final_failure(self, call: _Call, status: int, text: str, now: float) -> None:
        rejection = rules.Rejection(status, text, "user")
        response = self._uas_response(call, status, call.forks[0], now, rejection=rejection)
        call.final_sent = response
        call.record.final_status = status
        call.record.state = "rejected"
        call.record.failure = f"{status}: {text}"
        self._cancel_scheduled(call)
        self._stop_media(call)

    def _cancel_scheduled(self, call: _Call) -> None:
        for timer in call.scheduled:
            timer.cancel()
        call.scheduled.clear()

    def _set_route_from_request(self, call: _Call) -> None:
        """UAS dialog state (RFC 3261 12.1.1): route set = Record-Route as received, remote
        target = the SBC's Contact."""
        assert call.invite is not None
        entries: list[str] = []
        for line in call.invite.headers.get_all("record-route"):
            entries += [f"<{na.uri_text}>" for na in parse_name_addr_list(line)]
        call.route_set = entries
        contact = call.invite.headers.get("contact")
        call.remote_target = parse_name_addr(contact).uri_text if contact else ""
        call.next_hop = self._next_hop(call)

    def _next_hop(self, call: _Call) -> Target | None:
        uri_text = call.route_set[0].strip("<>") if call.route_set else call.remote_target
        try:
            uri = parse_uri(uri_text)
        except SipParseError:
            return None
        if not isinstance(uri, SipUri):
            return None
        return self.resolve(call.proxy, uri.bare_host, uri.port)

    # ---- the 2xx and its ACK ------------------------------------------------------------------

    def _await_ack(self, call: _Call, response: Response, tag: str, conn: int,
                   now: float) -> None:
        """RFC 3261 13.3.1.4: the UAS core retransmits its 2xx, from T1 doubling to T2, on any
        transport, until the ACK comes; after 64*T1 it gives up and ends the session with BYE."""
        timing = self.config.timing
        call.awaiting_ack = response.to_bytes()
        call.awaiting_ack_tag = tag
        interval = [timing.t1]

        def retransmit(at: float) -> None:
            if call.awaiting_ack is None:
                return
            self.outbox.append(Out(call.awaiting_ack, conn=conn,
                                   call_id=call.record.call_id, what="200"))
            self._note(call, at, "->", f"200 OK retransmitted (To-tag {tag})")
            interval[0] = min(interval[0] * 2, timing.t2)
            call.retx_timer = self._after(at, interval[0], retransmit)

        call.retx_timer = self._after(now, timing.t1, retransmit)
        call.ack_deadline = self._after(now, timing.ack_wait, lambda t: self._no_ack(call, t))

    def _stop_retransmitting(self, call: _Call) -> None:
        call.awaiting_ack = None
        for timer in (call.retx_timer, call.ack_deadline):
            if timer is not None:
                timer.cancel()

    def _no_ack(self, call: _Call, now: float) -> None:
        """No good ACK: the call is torn down with BYE (RFC 3261 13.3.1.4, 15). The seed saw
        Teams drop such calls after about 20 s; Microsoft's pages say 4 s or 30 s."""
        if call.awaiting_ack is None:
            return
        self._stop_retransmitting(call)
        ignored = call.record.acks_ignored
        why = (f"no ACK with the 200's To-tag {call.awaiting_ack_tag} within "
               f"{self.config.timing.ack_wait:g}s"
               + (f" ({ignored} ACK(s) with another To-tag ignored)" if ignored else ""))
        call.record.failure = why
        self._bye(call, now, cause=102, text=why)

    def _on_ack(self, conn: _Conn, request: Request, call: _Call | None, now: float) -> None:
        self._note(call, now, "<-", self._summary(request), conn.proxy)
        if call is None:
            return
        if call.final_sent is not None and call.final_sent.status >= 300:
            return  # the hop-by-hop ACK of our non-2xx final response (RFC 3261 17.2.1)
        if call.awaiting_ack is None:
            if call.role == "uas" and call.record.state == "calling":
                self._note(call, now, "!!", "ignored: ACK before any final response")
            return
        tag = request.to_tag
        if tag != call.awaiting_ack_tag:
            # The seed's voipswitch case: the ACK carries a provisional's To-tag.
            call.record.acks_ignored += 1
            self._note(call, now, "!!",
                       f"ignored: ACK To-tag {tag} is not the 200's ({call.awaiting_ack_tag})")
            if not any("ACK To-tag" in v for v in call.record.violations):
                call.record.violations.append(
                    f"ACK To-tag {tag} is not the 200's ({call.awaiting_ack_tag})")
            return
        problem = self._contact_problem(call, request)
        if problem is not None:
            self._note(call, now, "!!", f"ignored: {problem}")
            call.record.acks_ignored += 1
            return
        self._stop_retransmitting(call)
        if call.record.state == "answered":
            call.record.state = "confirmed"
            self._arm_session_timer(call, now)
        self._note(call, now, "!!", "ACK accepted: call confirmed")

    def _contact_problem(self, call: _Call, request: Request) -> str | None:
        """In-dialog requests must target the Contact Teams sent, untouched (SEED, "Don't mess
        with the received Contact header")."""
        try:
            sent = parse_uri(call.local_contact)
            got = parse_uri(request.uri)
        except SipParseError:
            return f"Request-URI {request.uri} is not the Contact Teams sent"
        same = (
            isinstance(got, SipUri) and isinstance(sent, SipUri)
            and got.host.lower() == sent.host.lower() and got.port == sent.port
            and got.param("x-i") == sent.param("x-i") and got.param("x-c") == sent.param("x-c")
        )
        if same:
            return None
        return (f"Request-URI {request.uri} is not the Contact Teams sent ({call.local_contact}): "
                "its routing data was altered")

    # ---- CANCEL --------------------------------------------------------------------------------

    def _on_cancel(self, conn: _Conn, request: Request, call: _Call | None, now: float) -> None:
        self._note(call, now, "<-", self._summary(request), conn.proxy)
        if call is None or call.role != "uas" or call.invite is None:
            self._reject(conn.conn_id, request, rules.Rejection(
                481, "CANCEL matches no INVITE", "cancel"), conn.proxy, now, call)
            return
        self._send_on(conn.conn_id, self._response(request, 200, proxy=conn.proxy,
                                                   to_tag=self._tag()),
                      call, now, conn.proxy)
        if call.final_sent is not None:
            return  # too late: the final response went already (RFC 3261 9.2)
        self._cancel_scheduled(call)
        response = self._uas_response(call, 487, call.forks[0] if call.forks else self._tag(),
                                      now)
        call.final_sent = response
        call.record.final_status = 487
        call.record.state = "cancelled"
        call.record.ended_by = "sbc"
        self._stop_media(call)

    # ---- in-dialog requests from the SBC -------------------------------------------------------

    def _on_in_dialog(self, conn: _Conn, request: Request, call: _Call | None,
                      now: float) -> None:
        self._note(call, now, "<-", self._summary(request), conn.proxy)
        if call is None or request.to_tag != call.local_tag or not call.local_tag:
            self._reject(conn.conn_id, request, rules.Rejection(
                481, "no dialog matches Call-ID, From-tag and To-tag", "no-dialog"),
                conn.proxy, now, call)
            return
        problem = self._contact_problem(call, request)
        if problem is not None:
            self._violation(call, now, problem)
            self._reject(conn.conn_id, request, rules.Rejection(404, problem, "contact-altered"),
                         conn.proxy, now, call)
            return
        cseq = request.cseq.number
        if cseq <= call.remote_cseq and call.remote_cseq:
            self._reject(conn.conn_id, request, rules.Rejection(
                500, f"CSeq {cseq} is not above {call.remote_cseq} (RFC 3261 12.2.2)", "cseq"),
                conn.proxy, now, call)
            return
        call.remote_cseq = cseq
        method = request.method
        if method == "BYE":
            self._send_on(conn.conn_id, self._response(request, 200, proxy=conn.proxy), call,
                          now, conn.proxy)
            if call.record.state not in ("ended", "failed"):
                call.record.ended_by = "sbc"
                call.record.end_reason = request.headers.get("reason") or "BYE"
            self._finish(call, now)
        elif method == "INVITE":
            self._on_reinvite(conn, request, call, now)
        elif method == "UPDATE":
            self._refreshed(call, request, now)
            extra = self._session_headers(call)
            self._send_on(conn.conn_id, self._response(request, 200, proxy=conn.proxy,
                                                       extra=extra), call, now, conn.proxy)
        elif method in ("OPTIONS", "INFO", "NOTIFY"):
            self._send_on(conn.conn_id, self._response(request, 200, proxy=conn.proxy,
                                                       extra=[("Allow", ALLOW)]),
                          call, now, conn.proxy)
        else:
            self._reject(conn.conn_id, request, rules.Rejection(
                405, f"{method} is not accepted in a call", "method"), conn.proxy, now, call,
                Allow=ALLOW)

    def _on_reinvite(self, conn: _Conn, request: Request, call: _Call, now: float) -> None:
        try:
            remote = read_sbc_sdp(request.body, request.content_type)
        except SdpProblem as exc:
            self._violation(call, now, f"re-INVITE: {exc}")
            self._reject(conn.conn_id, request, rules.Rejection(488, str(exc), "sdp"),
                         conn.proxy, now, call)
            return
        problem = hold_problem(remote)
        if problem is not None and self.config.strict_hold:
            self._violation(call, now, problem)
            self._reject(conn.conn_id, request, rules.Rejection(488, problem, "hold"),
                         conn.proxy, now, call)
            return
        key = self._local_key_for(call, remote)
        call.remote_media = remote
        call.sdp_version += 1
        direction = answer_direction(remote.direction)
        call.record.hold_direction = remote.direction
        body = teams_answer(remote, call.media_host, call.media_port, key,
                            session_id=call.session_id, version=call.sdp_version,
                            direction=direction)
        self._refreshed(call, request, now)
        extra = [("Contact", f"<{call.local_contact}>"), ("Allow", ALLOW),
                 *self._session_headers(call)]
        response = self._response(request, 200, proxy=conn.proxy, extra=extra, body=body)
        self._send_on(conn.conn_id, response, call, now, conn.proxy)
        call.direction = direction
        self._plan_media(call, remote, now, local_key=key)
        self._await_ack(call, response, call.local_tag, conn.conn_id, now)

    def _local_key_for(self, call: _Call, remote: RemoteMedia) -> SdesKey:
        """Our key for the crypto line the SBC chose (answer) or the first it offered (offer):
        a new one when the tag or suite changed, else the one in use."""
        wanted = remote.keys[0]
        for key in call.local_keys:
            if key.tag == wanted.tag and key.suite == wanted.suite:
                return key
        key = SdesKey.generate(wanted.suite, wanted.tag)
        call.local_keys = [key]
        return key

    def _session_headers(self, call: _Call) -> list[tuple[str, str]]:
        if call.session_expires is None:
            return []
        return [("Session-Expires", f"{call.session_expires};refresher={call.refresher or 'uac'}"),
                ("Require", "timer")]

    # ---- session timers (RFC 4028) ---------------------------------------------------------

    def _refreshed(self, call: _Call, request: Request, now: float) -> None:
        value = request.headers.get("session-expires")
        if value is not None:
            with contextlib.suppress(ValueError):
                call.session_expires = max(int(value.split(";")[0]), self.config.timing.min_se)
        if call.record.state == "confirmed":
            call.record.refreshes += 1
        self._arm_session_timer(call, now)

    def _arm_session_timer(self, call: _Call, now: float) -> None:
        """The side that does not refresh sends BYE slightly before the session expires: the
        minimum of 32 s and a third of the interval (RFC 4028 10). The refresher refreshes at
        half the interval (RFC 4028 7.4, 9)."""
        if call.expiry_timer is not None:
            call.expiry_timer.cancel()
        interval = call.session_expires
        if interval is None:
            return
        we_refresh = (call.refresher == "uac") == (call.role == "uac")
        if we_refresh:
            call.expiry_timer = self._after(now, interval / 2, lambda t: self.refresh(
                call.record.call_id, t))
        else:
            margin = min(32.0, interval / 3)
            call.expiry_timer = self._after(now, interval - margin, lambda t: self._expired(
                call, t))

    def _expired(self, call: _Call, now: float) -> None:
        if call.record.state != "confirmed":
            return
        text = f"session expired: no refresh within Session-Expires {call.session_expires}s"
        call.record.failure = text
        self._bye(call, now, cause=102, text=text)

    # ---- the emulator places calls (it is the UAC) ---------------------------------------------

    def default_trunk(self) -> str:
        for trunk in self.config.trunks:
            if not trunk.startswith("*."):
                return trunk
        raise ValueError("no trunk to call: give CallOptions.trunk or configure trunks")

    def default_proxy(self) -> str:
        for proxy in self.config.proxies:
            if self.failure[proxy.name] == "none":
                return proxy.name
        return self.config.proxies[0].name

    def place_call(self, number: str, options: CallOptions, now: float) -> CallRecord:
        """Send a Teams INVITE to the SBC; returns the call's record (updated as it goes)."""
        if self._epoch is None:
            self._epoch = now
        trunk = (options.trunk or self.default_trunk()).lower()
        proxy = options.proxy or self.default_proxy()
        call_id = str(uuid.uuid4())
        target = self.resolve(proxy, trunk, None)
        me = self.proxy_fqdn(proxy)
        record = CallRecord(call_id=call_id, direction="from-teams", number=number, trunk=trunk,
                            proxy=proxy, started=now)
        tag = self._tag()
        display = f'"{options.caller_name}" ' if options.caller_name else ""
        local_uri = f"{display}<sip:{options.caller}@{me}:{self.ports[proxy]};user=phone>"
        remote_uri = f"<sip:{number}@{trunk};user=phone>"
        call = _Call(record=record, role="uac", proxy=proxy, conn=None, local_tag=tag,
                     local_uri=local_uri, remote_uri=remote_uri,
                     local_contact=self._contact(call_id))
        call.media_host = self.config.proxy(proxy).host
        call.media_port = self.allocate_media(call.media_host)
        call.session_id = int(self.token(3), 16)
        call.local_keys = [
            dataclasses.replace(SdesKey.generate("AES_CM_128_HMAC_SHA1_80", 1), lifetime="2^31",
                                mki=1, mki_length=1),
            dataclasses.replace(SdesKey.generate("AES_CM_128_HMAC_SHA1_80", 2), lifetime="2^31"),
            SdesKey.generate("AES_CM_128_HMAC_SHA1_32", 3),
        ]
        call.session_expires = self.config.timing.session_expires
        record.session_expires = call.session_expires
        self.calls[call_id] = call
        body = teams_offer(call.media_host, call.media_port, call.local_keys,
                           session_id=call.session_id, version=call.sdp_version)
        ruri = f"sip:{number}@{trunk}:{target.port};user=phone;transport=tls"
        call.remote_target = ruri
        branch = self._branch()
        call.invite_branch = branch
        headers = [
            f"INVITE {ruri} SIP/2.0",
            f"FROM: {local_uri};tag={tag}",
            f"TO: {remote_uri}",
            "CSEQ: 1 INVITE",
            f"CALL-ID: {call_id}",
            "MAX-FORWARDS: 70",
            f"VIA: {self._via(proxy, branch)}",
            f"RECORD-ROUTE: {self._record_route(proxy)}",
            f"CONTACT: <{call.local_contact}>",
            f"CONTENT-LENGTH: {len(body.encode())}",
            f"MIN-SE: {self.config.timing.min_se}",
            "SUPPORTED: timer",
            f"USER-AGENT: {self.config.user_agent}",
            "CONTENT-TYPE: application/sdp",
            "ALLOW: INVITE, ACK, OPTIONS, CANCEL, BYE, NOTIFY, UPDATE, REFER, PRACK",
            f"P-ASSERTED-IDENTITY: <tel:{options.caller}>",
            *(["PRIVACY: id"] if options.privacy else []),
            f"SESSION-EXPIRES: {call.session_expires}",
            "X-MS-TeamsCallType: Voice",
            f"X-MS-CallId: {uuid.uuid4()}",
            f"X-MS-SBC-Host: {trunk}",
            "X-MS-Media-Path: NonBypass",
            *(f"{name}: {value}" for name, value in options.extra_headers),
        ]
        data = ("\r\n".join(headers) + "\r\n\r\n" + body).encode()
        call.invite_bytes = data
        record.invite_bytes = len(data)
        call.next_hop = target
        pending = self._start_client(
            branch, "INVITE", 1, call_id,
            lambda r, t: self._on_invite_response(call, r, t),
            lambda t: self._invite_timeout(call, t), now, data, target,
        )
        call.pending_invite = pending
        self._send_to(target, data, call, now, f"INVITE {ruri} ({len(data)} bytes)")
        call.scheduled.append(self._after(now, options.answer_timeout,
                                          lambda t: self._unanswered(call, t)))
        call.hangup_after = options.hangup_after
        log.info("INVITE to the SBC", extra={"call_id": call_id, "proxy": proxy,
                                             "trunk": trunk})
        return record

    def _invite_timeout(self, call: _Call, now: float) -> None:
        if call.record.state == "calling":
            self._fail(call, now, f"no response to the INVITE in {64 * self.config.timing.t1:g}s "
                                  "(timer B)")

    def _unanswered(self, call: _Call, now: float) -> None:
        if call.record.state in ("calling", "ringing", "early"):
            self._note(call, now, "!!", "not answered in time: CANCEL")
            self.cancel(call.record.call_id, now)

    def _fail(self, call: _Call, now: float, why: str) -> None:
        call.record.state = "failed"
        call.record.failure = call.record.failure or why
        self._note(call, now, "!!", f"call failed: {why}")
        self._cancel_scheduled(call)
        self._stop_media(call)

    def _check_sbc_answer(self, call: _Call, response: Response, conn: _Conn | None) -> list[str]:
        """Teams' checks of the SBC's 2xx to its INVITE: ``;lr`` only, the SBC's FQDN in the
        Record-Route entry facing Teams (SEED, "The July 2020 update") or, without Record-Route,
        in the Contact, covered by the certificate; SRTP with one of our keys."""
        problems: list[str] = []
        try:
            entries = [na for line in response.headers.get_all("record-route")
                       for na in parse_name_addr_list(line)]
        except SipParseError as exc:
            return [f"malformed Record-Route in the 2xx: {exc.reason}"]
        bad = rules.lr_on_entries(entries)
        if bad:
            problems.append(f"2xx Record-Route has a valued lr parameter: {bad[0]}")
        own = self.proxy_fqdn(call.proxy).lower()
        facing = [na for na in reversed(entries)
                  if not (isinstance(na.uri, SipUri) and na.uri.bare_host.lower() == own)]
        try:
            if facing:
                header, uri = "Record-Route", facing[0].uri
            else:
                contact = response.headers.get("contact")
                if contact is None:
                    return [*problems, "2xx without Contact"]
                header, uri = "Contact", parse_name_addr(contact).uri
        except SipParseError as exc:
            return [*problems, f"malformed Contact in the 2xx: {exc.reason}"]
        host = uri.bare_host.lower() if isinstance(uri, SipUri) else ""
        identity = conn.identity if conn is not None else call.identity
        if not host or rules.is_ip(host):
            problems.append(f"2xx {header} carries {host or 'no host'}, not the SBC's FQDN")
        elif identity is not None and not identity.covers(host):
            problems.append(f"2xx {header} host {host} is not covered by the SBC's certificate "
                            f"({identity.describe()})")
        elif not trunk_configured(self.config.trunks, host):
            problems.append(f"2xx {header} host {host} is not a configured SBC (trunk)")
        return problems

    def _on_invite_response(self, call: _Call, response: Response, now: float,
                            retransmission: bool = False) -> None:
        conn = self._conns.get(self._receiving) if self._receiving is not None else None
        self._note(call, now, "<-", self._summary(response))
        status = response.status
        record = call.record
        if status < 200:
            tag = response.to_tag
            if tag and tag not in record.provisional_tags:
                record.provisional_tags.append(tag)
            if status == 100:
                return
            if record.state == "calling":
                record.state = "ringing"
            if response.body and record.state in ("calling", "ringing"):
                try:
                    remote = read_sbc_sdp(response.body, response.content_type)
                    self._match_keys(call, remote)
                except SdpProblem as exc:
                    self._violation(call, now, f"{status} SDP: {exc}")
                    return
                record.state = "early"
                call.remote_media = remote
                self._plan_media(call, remote, now)
            return
        if status >= 300:
            self._ack_non2xx(call, response, now)
            record.final_status = status
            if call.cancelling and status == 487:
                record.state = "cancelled"
            else:
                record.state = "rejected"
                record.failure = record.failure or f"{status} {response.reason}"
            self._cancel_scheduled(call)
            self._stop_media(call)
            return
        tag = response.to_tag or ""
        if call.remote_tag is not None and tag != call.remote_tag:
            # A second fork answered too: ACK it and end that dialog at once.
            self._note(call, now, "!!", f"second 2xx from another fork (To-tag {tag}): ACK+BYE")
            return
        if call.remote_tag is not None:  # a retransmitted 2xx: our ACK was lost or late
            if call.record.state in ("confirmed", "ended") and call.next_hop is not None:
                self._send_ack(call, now, note="ACK (again)")
            return
        call.remote_tag = tag
        record.answered_tag = tag
        record.final_status = status
        record.state = "answered"
        for line in response.headers.get_all("record-route"):
            call.route_set += [f"<{na.uri_text}>" for na in parse_name_addr_list(line)]
        call.route_set.reverse()  # the UAC reverses Record-Route (RFC 3261 12.1.2)
        own = self.proxy_fqdn(call.proxy).lower()
        while call.route_set and own in call.route_set[0].lower():
            call.route_set.pop(0)  # our own proxy's entry: we are that proxy
        contact = response.headers.get("contact")
        try:
            call.remote_target = parse_name_addr(contact).uri_text if contact else ""
        except SipParseError:
            call.remote_target = ""
        problems = self._check_sbc_answer(call, response, conn)
        remote_answer: RemoteMedia | None = None
        try:
            remote_answer = read_sbc_sdp(response.body, response.content_type)
            self._match_keys(call, remote_answer)
        except SdpProblem as exc:
            problems.append(f"2xx SDP: {exc}")
        expires = response.headers.get("session-expires")
        if expires is not None:
            with contextlib.suppress(ValueError):
                call.session_expires = int(expires.split(";")[0])
            call.refresher = "uas" if "refresher=uas" in expires.replace(" ", "").lower() \
                else "uac"
        else:
            call.session_expires = None
        record.session_expires = call.session_expires
        call.next_hop = self._next_hop(call)
        self._send_ack(call, now)
        if problems:
            for problem in problems:
                self._violation(call, now, problem)
            record.failure = problems[0]
            self._bye(call, now, cause=31, text=problems[0])
            return
        record.state = "confirmed"
        assert remote_answer is not None
        call.remote_media = remote_answer
        self._plan_media(call, remote_answer, now)
        self._arm_session_timer(call, now)
        self._cancel_scheduled(call)
        if call.hangup_after is not None:
            call.scheduled.append(self._after(now, call.hangup_after, lambda t: self.hangup(
                call.record.call_id, t)))

    def _match_keys(self, call: _Call, remote: RemoteMedia) -> None:
        """The SBC's answer must pick one of our crypto lines: same tag, same suite."""
        for theirs in remote.keys:
            for ours in call.local_keys:
                if ours.tag == theirs.tag and ours.suite == theirs.suite:
                    return
        offered = ", ".join(f"{k.tag} {k.suite}" for k in call.local_keys)
        raise SdpProblem(f"the answer's a=crypto matches none offered ({offered})")

    def _ack_non2xx(self, call: _Call, response: Response, now: float) -> None:
        """RFC 3261 17.1.1.3: same branch, Request-URI and Route as the INVITE, the response's
        To."""
        assert call.next_hop is not None
        data = (
            f"ACK {call.remote_target} SIP/2.0\r\n"
            f"VIA: {self._via(call.proxy, call.invite_branch)}\r\n"
            f"FROM: {call.local_uri};tag={call.local_tag}\r\n"
            f"TO: {response.headers.get('to')}\r\n"
            f"CALL-ID: {call.record.call_id}\r\n"
            "CSEQ: 1 ACK\r\n"
            "MAX-FORWARDS: 70\r\n"
            "CONTENT-LENGTH: 0\r\n\r\n"
        ).encode()
        self._send_to(call.next_hop, data, call, now, f"ACK {call.remote_target}")

    def _dialog_request(self, call: _Call, method: str, *, cseq: int | None = None,
                        body: str = "", extra: Iterable[str] = ()) -> tuple[bytes, str]:
        branch = self._branch()
        if cseq is None:
            call.local_cseq += 1
            cseq = call.local_cseq
        if call.role == "uac":
            from_, to = (f"{call.local_uri};tag={call.local_tag}",
                         f"{call.remote_uri};tag={call.remote_tag}")
        else:
            from_, to = self._uas_from_to(call)
        lines = [
            f"{method} {call.remote_target} SIP/2.0",
            f"FROM: {from_}",
            f"TO: {to}",
            f"CSEQ: {cseq} {method}",
            f"CALL-ID: {call.record.call_id}",
            "MAX-FORWARDS: 70",
            f"VIA: {self._via(call.proxy, branch)}",
        ]
        if call.route_set:
            lines.append("ROUTE: " + ", ".join(call.route_set))
        if method != "ACK":
            lines.append(f"CONTACT: <{call.local_contact}>")
        lines.append(f"USER-AGENT: {self.config.user_agent}")
        lines += list(extra)
        if body:
            lines.append("CONTENT-TYPE: application/sdp")
        lines.append(f"CONTENT-LENGTH: {len(body.encode())}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode(), branch

    def _uas_from_to(self, call: _Call) -> tuple[str, str]:
        """In a dialog where the emulator was the UAS, its From is the INVITE's To and the other
        way round (RFC 3261 12.2.1.1)."""
        local = call.local_uri
        remote = call.remote_uri
        try:
            local_na = parse_name_addr(local).without_param("tag")
            remote_na = parse_name_addr(remote)
        except SipParseError:
            return local, remote
        return f"{local_na};tag={call.local_tag}", str(remote_na)

    def _send_ack(self, call: _Call, now: float, note: str = "", cseq: int = 1) -> None:
        data, _ = self._dialog_request(call, "ACK", cseq=cseq)
        if call.next_hop is None:
            self._note(call, now, "!!", "cannot route the ACK: no usable Record-Route or Contact")
            return
        self._send_to(call.next_hop, data, call, now,
                      f"{note or 'ACK'} {call.remote_target} (To-tag {call.remote_tag})")

    def _in_dialog(self, call: _Call, method: str, now: float, *, body: str = "",
                   extra: Iterable[str] = (), note: str = "",
                   on_final: Callable[[Response, float], None] | None = None) -> bool:
        if call.next_hop is None:
            self._note(call, now, "!!", f"cannot route {method}: no route to the SBC")
            return False
        data, branch = self._dialog_request(call, method, body=body, extra=extra)
        cseq = call.local_cseq

        def answered(response: Response, at: float) -> None:
            self._note(call, at, "<-", self._summary(response))
            if response.status >= 200 and on_final is not None:
                on_final(response, at)

        def timed_out(at: float) -> None:
            self._note(call, at, "!!", f"no final response to {method}")
            if on_final is not None:
                on_final(Response(408, headers=[("Call-ID", call.record.call_id)]), at)

        self._start_client(branch, method, cseq, call.record.call_id, answered, timed_out, now,
                           data, call.next_hop)
        self._send_to(call.next_hop, data, call, now,
                      f"{method} {call.remote_target}{f' ({note})' if note else ''}")
        return True

    def _bye(self, call: _Call, now: float, *, cause: int = 16, text: str = "") -> None:
        if call.bye_sent or call.record.state in ("ended", "failed", "rejected", "cancelled"):
            return
        call.bye_sent = True
        call.record.ended_by = call.record.ended_by or "emulator"
        call.record.end_reason = text or "normal call clearing"
        safe = (text or "normal call clearing").replace('"', "'")
        reason = f'REASON: Q.850;cause={cause};text="{uuid.uuid4()};{safe}"'
        self._stop_retransmitting(call)
        self._stop_media(call)
        sent = self._in_dialog(call, "BYE", now, extra=[reason], note=f"Q.850 cause {cause}",
                               on_final=lambda r, t: self._finish(call, t))
        if not sent:
            self._finish(call, now)

    def _finish(self, call: _Call, now: float) -> None:
        self._stop_retransmitting(call)
        self._cancel_scheduled(call)
        if call.expiry_timer is not None:
            call.expiry_timer.cancel()
        record = call.record
        if record.state not in ("rejected", "cancelled", "failed", "ended"):
            record.state = "failed" if record.failure else "ended"
        self._stop_media(call)

    # ---- public actions on calls -------------------------------------------------------------

    def _call(self, call_id: str) -> _Call:
        call = self.calls.get(call_id)
        if call is None:
            raise KeyError(f"no call {call_id}")
        return call

    def hangup(self, call_id: str, now: float) -> None:
        """BYE from the Teams side."""
        call = self._call(call_id)
        if call.record.state in ("calling", "ringing", "early"):
            if call.role == "uac":
                self.cancel(call_id, now)
            else:
                self._final_failure(call, 603, "the Teams user declined", now)
            return
        self._bye(call, now)

    def cancel(self, call_id: str, now: float) -> None:
        """CANCEL our INVITE (RFC 3261 9.1): same branch, Request-URI, Call-ID, From, To."""
        call = self._call(call_id)
        if call.role != "uac" or call.remote_tag is not None or call.cancelling:
            return
        call.cancelling = True
        target = call.next_hop
        assert target is not None
        data = (
            f"CANCEL {call.remote_target} SIP/2.0\r\n"
            f"VIA: {self._via(call.proxy, call.invite_branch)}\r\n"
            f"FROM: {call.local_uri};tag={call.local_tag}\r\n"
            f"TO: {call.remote_uri}\r\n"
            f"CALL-ID: {call.record.call_id}\r\n"
            "CSEQ: 1 CANCEL\r\n"
            "MAX-FORWARDS: 70\r\n"
            f"USER-AGENT: {self.config.user_agent}\r\n"
            "CONTENT-LENGTH: 0\r\n\r\n"
        ).encode()
        call.record.ended_by = "emulator"
        self._start_client(call.invite_branch, "CANCEL", 1, call.record.call_id,
                           lambda r, t: self._note(call, t, "<-", self._summary(r)),
                           lambda t: None, now, data, target)
        self._send_to(target, data, call, now, f"CANCEL {call.remote_target}")

    def hold(self, call_id: str, now: float, direction: str = "sendonly") -> None:
        """Teams puts the call on hold: a re-INVITE with ``a=sendonly`` (Teams plays music on
        hold) or ``a=inactive``."""
        self._reinvite(self._call(call_id), now, direction)

    def resume(self, call_id: str, now: float) -> None:
        self._reinvite(self._call(call_id), now, "sendrecv")

    def refresh(self, call_id: str, now: float) -> None:
        """A session refresh (RFC 4028): a re-INVITE with the same SDP."""
        call = self._call(call_id)
        if call.record.state != "confirmed":
            return
        call.record.refreshes += 1
        self._reinvite(call, now, call.direction, refresh=True)

    def _reinvite(self, call: _Call, now: float, direction: str, refresh: bool = False) -> None:
        if call.record.state != "confirmed":
            raise ValueError(f"call {call.record.call_id} is {call.record.state}, not confirmed")
        if not refresh:
            call.sdp_version += 1
        body = teams_offer(call.media_host, call.media_port, call.local_keys,
                           session_id=call.session_id, version=call.sdp_version,
                           direction=direction)
        extra = ["SUPPORTED: timer"]
        if call.session_expires is not None:
            extra.append(f"SESSION-EXPIRES: {call.session_expires};refresher="
                         f"{'uac' if call.role == 'uac' else 'uas'}")

        cseq = call.local_cseq + 1

        def final(response: Response, at: float) -> None:
            if 200 <= response.status < 300:
                self._send_ack(call, at, cseq=cseq)
                try:
                    remote = read_sbc_sdp(response.body, response.content_type)
                    self._match_keys(call, remote)
                except SdpProblem as exc:
                    self._violation(call, at, f"re-INVITE answer: {exc}")
                    return
                call.direction = direction
                call.record.hold_direction = direction
                call.remote_media = remote
                self._plan_media(call, remote, at)
                self._arm_session_timer(call, at)
            else:
                self._note(call, at, "!!", f"re-INVITE refused with {response.status}")

        what = "session refresh" if refresh else (
            "resume" if direction == "sendrecv" else f"hold, a={direction}")
        self._in_dialog(call, "INVITE", now, body=body, extra=extra, note=what, on_final=final)

    # ---- media plans ------------------------------------------------------------------------

    def _plan_media(self, call: _Call, remote: RemoteMedia | None, now: float,
                    local_key: SdesKey | None = None) -> None:
        if remote is None:
            return
        theirs = remote.keys[0]
        ours = local_key
        if ours is None:
            ours = next((k for k in call.local_keys
                         if k.tag == theirs.tag and k.suite == theirs.suite), call.local_keys[0])
        pt = remote.voice_type(SENDABLE)
        ours_dir = call.direction
        send = (ours_dir in ("sendrecv", "sendonly")
                and remote.direction in ("sendrecv", "recvonly") and not remote.zero_address)
        plan = MediaPlan(
            call_id=call.record.call_id, host=call.media_host, port=call.media_port,
            remote=(remote.address, remote.port), send_key=ours, recv_key=theirs,
            payload_type=pt if pt is not None else 0, send=send and pt is not None,
        )
        self.media_events.append(plan)

    def _stop_media(self, call: _Call) -> None:
        if call.media_port:
            self.media_events.append(MediaStop(call.record.call_id))

    # ---- results ------------------------------------------------------------------------------

    def record(self, call_id: str) -> CallRecord:
        return self._call(call_id).record

    def records(self) -> list[CallRecord]:
        return [call.record for call in self.calls.values()]
