"""Sockets for the SBC: listeners, connection reuse and outbound connection pooling.

As one of several worker processes (config ``workers``), every listener is bound with
SO_REUSEPORT, so the kernel spreads flows over the workers, and each UDP listener has a private
socket too (bound by the supervisor, handed over by file descriptor): requests leave by it and
its port is the one in our Via, so their responses come back to this worker and no other.
Responses leave by the shared listener socket, the address the peer sent its request to.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Callable, Mapping
from typing import cast

from teams_sbc.config import Listener
from teams_sbc.metrics import Metrics
from teams_sbc.sip.framing import FramingError, KeepAlivePing, StreamFramer
from teams_sbc.sip.peer import Outgoing, Peer
from teams_sbc.transport.tls import CertPair, TlsContexts, TlsServerProtocol

log = logging.getLogger("teams_sbc.transport")


#: Called for every complete message: raw bytes, where it came from, the listener's name.
MessageHandler = Callable[[bytes, Peer, str], None]
#: Called with what could not be sent.
FailureHandler = Callable[[Outgoing], None]
#: Whether a source address may connect to a listener (checked before any TLS).
SourceCheck = Callable[[str], bool]


#: Source addresses whose Peer a UDP listener keeps for reuse (see _Datagram.datagram_received).
_PEER_CACHE_SIZE = 4096


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self, listener: Listener, on_message: MessageHandler) -> None:
        self.listener = listener
        self.name = listener.name
        self.on_message = on_message
        self.transport: asyncio.DatagramTransport | None = None
        self._peers: dict[tuple[str | int, ...], Peer] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio's classes.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if data[:1] in b"\r\n" and not data.strip(b"\r\n"):  # [:1] of b"" is in anything
            return  # RFC 5626 keep-alive over UDP is STUN; a bare CRLF is noise
        # Peers are immutable, and a proxy hears from the same few addresses (its next hops,
        # the carrier's SBCs) again and again: reuse one Peer per address rather than build
        # one per datagram. Bounded: a flood of sources only empties the cache.
        peer = self._peers.get(addr)
        if peer is None:
            peer = Peer("udp", str(addr[0]), int(addr[1]))
            if len(self._peers) >= _PEER_CACHE_SIZE:
                self._peers.clear()
            self._peers[addr] = peer
        self.on_message(data, peer, self.name)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the transaction layer times out on its own.
        log.debug("udp error on %s: %s", self.name, exc)


class _Stream(asyncio.Protocol):
    """One TCP or TLS connection, inbound or outbound, framed by Content-Length."""

    def __init__(self, layer: TransportLayer, listener: Listener, kind: str) -> None:
        self.layer = layer
        self.listener = listener
        self.kind = kind
        self.framer = StreamFramer(layer.max_size)
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.ready = asyncio.get_running_loop().create_future()
        #: Other keys this outbound connection is known by (a TLS next hop by its name).
        self.aliases: list[tuple[str, str, int]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = Peer(self.kind, host, port)
        self.layer._register(self)
        if not self.ready.done():
            self.ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.transport is not None
        for event in self.framer.feed(data):
            if isinstance(event, bytes):
                self.layer.on_message(event, self.peer, self.listener.name)
            elif isinstance(event, KeepAlivePing):
                self.transport.write(b"\r\n")  # RFC 5626 4.4.1: pong
            elif isinstance(event, FramingError):
                self.layer.metrics.parse_errors.labels(kind="framing").inc()
                log.warning("closing %s: %s", self.peer, event.reason)
                if event.response is not None:
                    self.transport.write(event.response)
                self.transport.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.layer._unregister(self)
        if not self.ready.done():
            self.ready.set_exception(exc or ConnectionError("closed"))

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class TransportLayer:
    """All listeners of one SBC process and the connections they own."""

    def __init__(
        self,
        listeners: list[Listener],
        on_message: MessageHandler,
        on_send_failed: FailureHandler,
        metrics: Metrics,
        max_size: int = 65535,
        connect_timeout: float = 5.0,
        *,
        reuse_port: bool = False,
        private_udp: Mapping[str, socket.socket] | None = None,
        sni: dict[str, dict[str, tuple[str, str]]] | None = None,
        allow: dict[str, SourceCheck] | None = None,
    ) -> None:
        self.listeners = {listener.name: listener for listener in listeners}
        self.on_message = on_message
        self.on_send_failed = on_send_failed
        self.metrics = metrics
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.tls: dict[str, TlsContexts] = {
            lis.name: TlsContexts(
                lis.tls, {n: CertPair(*files) for n, files in (sni or {}).get(lis.name, {}).items()}
            )
            for lis in listeners
            if lis.tls is not None
        }
        self.reuse_port = reuse_port
        self._private_socks = dict(private_udp or {})
        self.allow = allow or {}
        self._udp: dict[str, _Datagram] = {}
        #: Where a UDP request leaves, by listener: its private socket if it has one.
        self._udp_requests: dict[str, _Datagram] = {}
        #: The private socket's port of each UDP listener that has one (our Via's sent-by).
        self.via_ports: dict[str, int] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._conns: dict[tuple[str, str, int], _Stream] = {}
        self._connecting: dict[tuple[str, str, int], asyncio.Task[_Stream]] = {}
        self.bound: dict[str, tuple[str, int]] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for listener in self.listeners.values():
            if listener.transport == "udp":
                family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
                if self.reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((listener.host, listener.port))
                transport, proto = await loop.create_datagram_endpoint(
                    functools.partial(_Datagram, listener, self.on_message), sock=sock
                )
                self._udp[listener.name] = self._udp_requests[listener.name] = proto
                self.bound[listener.name] = transport.get_extra_info("sockname")[:2]
                private = self._private_socks.get(listener.name)
                if private is not None:
                    # Messages arriving here are the listener's too (responses, and requests
                    # from peers that answer to the address a request came from).
                    _t, own = await loop.create_datagram_endpoint(
                        functools.partial(_Datagram, listener, self.on_message), sock=private
                    )
                    self._udp_requests[listener.name] = own
                    self.via_ports[listener.name] = int(private.getsockname()[1])
            else:
                tls = self.tls.get(listener.name)
                stream = functools.partial(_Stream, self, listener, listener.transport)
                factory: Callable[[], asyncio.Protocol] = stream
                if tls is not None:
                    factory = functools.partial(self._tls_server, tls, listener, stream)
                server = await loop.create_server(
                    factory,
                    listener.host,
                    listener.port,
                    reuse_address=True,
                    reuse_port=self.reuse_port or None,
                )
                self._servers.append(server)
                self.bound[listener.name] = server.sockets[0].getsockname()[:2]

    def _tls_server(
        self, tls: TlsContexts, listener: Listener, stream: Callable[[], asyncio.Protocol]
    ) -> TlsServerProtocol:
        """TLS on our own terms (transport.tls): the source allow-list first, then the
        handshake, and Microsoft's client certificates without the clientAuth purpose."""
        name = listener.name

        def refused(host: str) -> None:
            self.metrics.source_refused.labels(listener=name).inc()
            log.info("connection refused by the source allow-list",
                     extra={"listener": name, "peer": host})  # fmt: skip

        def failed(_peer: str, _reason: str) -> None:
            self.metrics.tls_handshake_failures.labels(listener=name).inc()

        return TlsServerProtocol(
            tls,
            stream,
            handshake_timeout=self.connect_timeout,
            allow=self.allow.get(name),
            on_refused=refused,
            on_handshake_failed=failed,
        )

    def stop_listening(self) -> None:
        """Close listening sockets for streams (drain); UDP stays for in-flight transactions."""
        for server in self._servers:
            server.close()

    async def close(self) -> None:
        self.stop_listening()
        for task in self._connecting.values():
            task.cancel()
        for conn in list(self._conns.values()):
            if conn.transport is not None:
                conn.transport.close()
        for proto in {*self._udp.values(), *self._udp_requests.values()}:
            if proto.transport is not None:
                proto.transport.close()
        await asyncio.sleep(0)

    # -- connection bookkeeping -------------------------------------------------------------

    def _register(self, conn: _Stream) -> None:
        assert conn.peer is not None
        self._conns[(conn.kind, conn.peer.host, conn.peer.port)] = conn
        self.metrics.connections.labels(transport=conn.kind).inc()

    def _unregister(self, conn: _Stream) -> None:
        if conn.peer is None:
            return
        key = (conn.kind, conn.peer.host, conn.peer.port)
        for known in (key, *conn.aliases):
            if self._conns.get(known) is conn:
                del self._conns[known]
        self.metrics.connections.labels(transport=conn.kind).dec()

    def connection_count(self, kind: str) -> int:
        return sum(1 for key in self._conns if key[0] == kind)

    # -- sending ------------------------------------------------------------------------------

    def send(self, out: Outgoing) -> None:
        """Send one message; a failure goes to ``on_send_failed``, never raised into the core."""
        peer = out.peer
        if peer.transport == "udp":
            # A request leaves by the listener's private socket where it has one (a worker's):
            # its responses come back to that port. A response leaves by the shared socket.
            by = self._udp if out.data.startswith(b"SIP/2.0 ") else self._udp_requests
            proto = by.get(out.listener) or next(iter(by.values()), None)
            if proto is None or proto.transport is None:
                self._send_failed(out, "no UDP listener to send from")
                return
            proto.transport.sendto(out.data, (peer.host, peer.port))
            return
        key = (peer.transport, peer.host, peer.port)
        conn = self._conns.get(key)
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            conn.send(out.data)
            return
        asyncio.get_running_loop().create_task(self._connect_and_send(key, out))

    async def _connect_and_send(self, key: tuple[str, str, int], out: Outgoing) -> None:
        task = self._connecting.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._connect(key, out.listener, out.peer.server_name)
            )
            self._connecting[key] = task
            task.add_done_callback(lambda _t: self._connecting.pop(key, None))
        try:
            conn = await asyncio.shield(task)
        except (TimeoutError, OSError) as exc:
            self._send_failed(out, f"connect failed: {exc or type(exc).__name__}")
            return
        if (
            key not in self._conns
            and conn.transport is not None
            and not conn.transport.is_closing()
        ):
            # Reached by name (a TLS next hop): later messages to the name reuse it.
            self._conns[key] = conn
            conn.aliases.append(key)
        conn.send(out.data)

    async def _connect(
        self, key: tuple[str, str, int], name: str, server_name: str | None
    ) -> _Stream:
        kind, host, port = key
        listener = self.listeners.get(name)
        if listener is None or listener.transport != kind:
            listener = next((lis for lis in self.listeners.values() if lis.transport == kind), None)
        if listener is None:
            raise OSError(f"no {kind} listener to connect from")
        loop = asyncio.get_running_loop()
        tls = self.tls.get(listener.name) if kind == "tls" else None
        if kind == "tls" and tls is None:
            raise OSError(f"no TLS listener to take certificates from for {host}:{port}")
        _transport, proto = await asyncio.wait_for(
            loop.create_connection(
                functools.partial(_Stream, self, listener, kind),
                host,
                port,
                ssl=tls.client if tls else None,
                server_hostname=(server_name or host) if tls else None,
            ),
            self.connect_timeout,
        )
        await proto.ready
        return proto

    def _send_failed(self, out: Outgoing, why: str) -> None:
        self.metrics.send_errors.labels(transport=out.peer.transport).inc()
        log.warning("cannot send to %s: %s", out.peer, why)
        self.on_send_failed(out)
