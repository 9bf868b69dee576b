"""TLS for SIP: the server side towards Microsoft (pyOpenSSL), the client side (ssl), reloadable.

Microsoft's mutual TLS (teams-direct-routing.md, certificates): Microsoft presents, as a client,
certificates whose extended key usage may be serverAuth only (its 2026 certificates lack
clientAuth). The standard ``ssl`` module's server side checks the client purpose during the
handshake and offers no way out, so the server side here is pyOpenSSL driven over memory BIOs
(:class:`TlsServerProtocol`): its verify callback accepts exactly that one error,
``X509_V_ERR_INVALID_PURPOSE``, and nothing else (chain, expiry and trust are still checked
against the trust bundle). The server side also chooses its certificate by SNI (the base
FQDN's, or a tenant's own) and, because TLS is ours, can refuse a source address before any
TLS byte is read.

The client side (the SBC connecting to Microsoft) stays on the ``ssl`` module: Microsoft's
server certificates do carry serverAuth. It presents the same certificate (mutual TLS).

Reload: :meth:`TlsContexts.reload_if_changed` builds new server contexts from the files when
they change (new connections get them, established ones keep theirs) and loads the client
context anew in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from OpenSSL import SSL, crypto

from teams_sbc.config import Tls

log = logging.getLogger("teams_sbc.tls")

#: OpenSSL's "unsupported certificate purpose": the one verification error we accept.
X509_V_ERR_INVALID_PURPOSE = 26


@dataclass(frozen=True)
class CertPair:
    """A certificate chain file and its key, for one name (SNI)."""

    cert_file: str
    key_file: str


def _client_context(settings: Tls) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if settings.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    ctx.set_ciphers(settings.ciphers)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if not settings.verify_peer:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def accept_without_client_purpose(
    _conn: SSL.Connection, _cert: crypto.X509, errno: int, _depth: int, ok: int
) -> bool:
    """pyOpenSSL's verify callback: OpenSSL's verdict, except that a certificate without the
    clientAuth purpose is fine (Microsoft's). Every other error still fails the handshake."""
    return bool(ok) or errno == X509_V_ERR_INVALID_PURPOSE


def server_context(settings: Tls, pair: CertPair) -> SSL.Context:
    """A pyOpenSSL server context: TLS 1.2+, the configured ciphers, ``pair``'s certificate,
    the trust bundle, and (with ``verify_peer``) a client certificate demanded."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(
        SSL.TLS1_3_VERSION if settings.min_version == "1.3" else SSL.TLS1_2_VERSION
    )
    ctx.set_cipher_list(settings.ciphers.encode())
    # pyOpenSSL has no name for SSL_OP_NO_RENEGOTIATION; OpenSSL's value is the ssl module's.
    ctx.set_options(SSL.OP_NO_COMPRESSION | int(ssl.OP_NO_RENEGOTIATION))
    ctx.set_session_id(b"teams-sbc")
    ctx.use_certificate_chain_file(pair.cert_file)
    ctx.use_privatekey_file(pair.key_file)
    ctx.check_privatekey()
    if settings.ca_file:
        ctx.load_verify_locations(settings.ca_file)
    if settings.verify_peer:
        ctx.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, accept_without_client_purpose
        )
    return ctx


class TlsContexts:
    """The server and client contexts of one TLS listener, and per-name (SNI) certificates."""

    def __init__(self, settings: Tls, sni: dict[str, CertPair] | None = None) -> None:
        self.settings = settings
        self.sni = {name.lower(): pair for name, pair in (sni or {}).items()}
        self.client = _client_context(settings)
        self.server: SSL.Context
        self._by_name: dict[str, SSL.Context] = {}
        self._stamp: tuple[float, ...] = ()
        self.load()

    def _files(self) -> list[str]:
        s = self.settings
        files = [f for f in (s.cert_file, s.key_file, s.ca_file) if f]
        for pair in self.sni.values():
            files += [pair.cert_file, pair.key_file]
        return files

    def load(self) -> None:
        """(Re)load certificates, keys and trust bundle: new server contexts, the client
        context in place. Raises (OSError, ssl.SSLError, SSL.Error) on a broken file."""
        s = self.settings
        stamp = tuple(os.stat(f).st_mtime_ns for f in self._files())
        base = server_context(s, CertPair(s.cert_file, s.key_file))
        by_name = {name: server_context(s, pair) for name, pair in self.sni.items()}
        if by_name:
            base.set_tlsext_servername_callback(self._choose(by_name))
        # The client side presents the same certificate: Microsoft demands mutual TLS.
        self.client.load_cert_chain(s.cert_file, s.key_file)
        if s.ca_file:
            self.client.load_verify_locations(cafile=s.ca_file)
        self.server, self._by_name, self._stamp = base, by_name, stamp

    @staticmethod
    def _choose(by_name: dict[str, SSL.Context]) -> Callable[[SSL.Connection], None]:
        def choose(conn: SSL.Connection) -> None:
            name = conn.get_servername()
            if name:
                ctx = by_name.get(name.decode("ascii", "replace").lower())
                if ctx is not None:
                    conn.set_context(ctx)

        return choose

    def reload_if_changed(self) -> bool:
        """Reload when a file changed on disk; a broken new file keeps the old material."""
        try:
            stamp = tuple(os.stat(f).st_mtime_ns for f in self._files())
        except OSError as exc:
            log.warning("cannot stat TLS files: %s", exc)
            return False
        if stamp == self._stamp:
            return False
        try:
            self.load()
        except (OSError, ssl.SSLError, SSL.Error) as exc:
            log.error("TLS reload failed, keeping the previous certificate: %s", exc)
            self._stamp = stamp  # do not retry every tick on the same broken files
            return False
        log.info("TLS certificate reloaded", extra={"cert_file": self.settings.cert_file})
        return True


class _PlainSide(asyncio.Transport):
    """What the SIP stream protocol above TLS sees as its transport."""

    def __init__(self, tls: TlsServerProtocol) -> None:
        super().__init__()
        self._tls = tls

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._tls.send_plain(bytes(data))

    def is_closing(self) -> bool:
        return self._tls.closing

    def close(self) -> None:
        self._tls.close()

    def abort(self) -> None:
        self._tls.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peercert":
            return self._tls.peer_certificate()
        if name == "ssl_object":
            return self._tls.conn
        return self._tls.get_extra_info(name, default)


class TlsServerProtocol(asyncio.Protocol):
    """The server side of one TLS connection: TCP below, TLS (pyOpenSSL, memory BIOs) here,
    the SIP stream protocol above, which only hears of the connection once the handshake
    succeeded. ``allow`` may refuse the source address first: then the connection is closed
    before any TLS byte is read, and ``on_refused`` is told."""

    def __init__(
        self,
        contexts: TlsContexts,
        inner: Callable[[], asyncio.Protocol],
        *,
        handshake_timeout: float = 5.0,
        allow: Callable[[str], bool] | None = None,
        on_refused: Callable[[str], None] | None = None,
        on_handshake_failed: Callable[[str, str], None] | None = None,
    ) -> None:
        self.contexts = contexts
        self._inner_factory = inner
        self.handshake_timeout = handshake_timeout
        self.allow = allow
        self.on_refused = on_refused
        self.on_handshake_failed = on_handshake_failed
        self.transport: asyncio.Transport | None = None
        self.conn: SSL.Connection | None = None
        self.inner: asyncio.Protocol | None = None
        self.closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._peer = "?"

    # -- below: TCP ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        host = str(peername[0]) if peername else ""
        self._peer = f"{host}:{peername[1]}" if peername else "?"
        if self.allow is not None and not self.allow(host):
            self.closing = True
            if self.on_refused is not None:
                self.on_refused(host)
            self.transport.abort()
            return
        self.conn = SSL.Connection(self.contexts.server, None)
        self.conn.set_accept_state()
        self._timer = asyncio.get_running_loop().call_later(
            self.handshake_timeout, self._handshake_timed_out
        )

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None or (self.closing and self.inner is None):
            return
        conn.bio_write(data)
        if self.inner is None and not self._handshake():
            return
        chunks = []
        while True:
            try:
                chunks.append(conn.recv(65536))
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:  # close_notify from the peer
                self._flush()
                self.close()
                break
            except SSL.Error as exc:
                log.info("TLS error, closing", extra={"peer": self._peer, "reason": str(exc)})
                self.abort()
                break
        self._flush()
        if self.inner is not None:
            for chunk in chunks:
                self.inner.data_received(chunk)

    def _handshake(self) -> bool:
        assert self.conn is not None
        try:
            self.conn.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return False
        except SSL.Error as exc:
            self._flush()  # the alert, so the peer learns why
            self._failed(_reason(exc))
            return False
        self._flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.inner = self._inner_factory()
        self.inner.connection_made(_PlainSide(self))
        return True

    def _failed(self, reason: str) -> None:
        log.info("TLS handshake failed", extra={"peer": self._peer, "reason": reason})
        if self.on_handshake_failed is not None:
            self.on_handshake_failed(self._peer, reason)
        self.abort()

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self.inner is None and not self.closing:
            self._failed("handshake timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    # -- above: the SIP stream ----------------------------------------------------------------

    def send_plain(self, data: bytes) -> None:
        if self.conn is None or self.closing:
            return
        view = memoryview(data)
        try:
            while view:
                sent = self.conn.send(view)
                view = view[sent:]
        except SSL.Error as exc:
            log.info("TLS send failed", extra={"peer": self._peer, "reason": str(exc)})
            self.abort()
            return
        self._flush()

    def _flush(self) -> None:
        if self.conn is None or self.transport is None:
            return
        while True:
            try:
                data = self.conn.bio_read(65536)
            except SSL.WantReadError:
                return
            if not data:
                return
            self.transport.write(data)

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.conn is not None and self.inner is not None:
            with contextlib.suppress(SSL.Error):
                self.conn.shutdown()  # close_notify
            self._flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def peer_certificate(self) -> crypto.X509 | None:
        return None if self.conn is None else self.conn.get_peer_certificate()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self.transport is None:
            return default
        return self.transport.get_extra_info(name, default)


def _reason(exc: SSL.Error) -> str:
    """The OpenSSL reason strings of a pyOpenSSL error, e.g. 'peer did not return a
    certificate'."""
    args = exc.args[0] if exc.args else None
    if isinstance(args, list):
        reasons = [str(item[2]) for item in args if isinstance(item, tuple) and len(item) == 3]
        if reasons:
            return "; ".join(reasons)
    return str(exc) or type(exc).__name__
