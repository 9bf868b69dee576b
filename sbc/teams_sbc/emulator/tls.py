"""TLS for the emulator: Microsoft's contexts, and a stream protocol that runs the handshake
itself (``ssl.SSLObject`` over memory BIOs) so a refused handshake is an event the emulator
records (who, why), not a line in the event loop's log. Works the same on uvloop and asyncio.

Microsoft's side of mutual TLS ("Plan Direct Routing", shared doc "Certificates and mutual
TLS"): TLS 1.2 at least, ECDHE-RSA with AES-GCM or AES-CBC-SHA2; the SBC must present a
certificate that chains to a trusted root, with the clientAuth purpose (required since 2024:
the ``ssl`` module's server side refuses a certificate without it, which is exactly the check).
When the emulator connects to the SBC it presents its own certificate and checks the SBC's
against the trust bundle and the SBC's FQDN (SNI and hostname check).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import cast

from teams_sbc.emulator.config import EmulatorConfig
from teams_sbc.emulator.identity import Identity
from teams_sbc.sip.framing import FramingError, KeepAlivePing, StreamFramer

log = logging.getLogger("teams_sbc.emulator.tls")


def _context(purpose: int, config: EmulatorConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.max_tls_version == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(config.ciphers)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(config.cert_file, config.key_file)
    ctx.load_verify_locations(cafile=config.ca_file)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(config: EmulatorConfig) -> ssl.SSLContext:
    """Demands a client certificate that chains to ``ca_file`` and has the clientAuth purpose."""
    return _context(ssl.PROTOCOL_TLS_SERVER, config)


def client_context(config: EmulatorConfig) -> ssl.SSLContext:
    """Presents the emulator's certificate; checks the SBC's chain and name."""
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT, config)
    ctx.check_hostname = True
    return ctx


def _describe(exc: BaseException) -> str:
    """OpenSSL's reason and, for a refused certificate, why (``unsuitable certificate
    purpose``, ``unable to get local issuer certificate``...)."""
    reason = getattr(exc, "reason", None) or type(exc).__name__
    detail = getattr(exc, "verify_message", None)
    return f"{reason} ({detail})" if detail else f"{reason} ({exc})"


class TlsStream(asyncio.Protocol):
    """One TLS connection carrying SIP, framed by Content-Length.

    Callbacks: ``on_ready(stream)`` after the handshake (``stream.identity`` is the peer's
    certificate), ``on_message(stream, bytes)`` per SIP message, ``on_failed(stream, reason)``
    when the handshake fails or times out, ``on_closed(stream)`` when the connection ends.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None,
        on_ready: Callable[[TlsStream], None],
        on_message: Callable[[TlsStream, bytes], None],
        on_failed: Callable[[TlsStream, str], None],
        on_closed: Callable[[TlsStream], None],
        handshake_timeout: float = 5.0,
        max_size: int = 65535,
    ) -> None:
        self.context = context
        self.server_side = server_side
        self.server_hostname = server_hostname
        self.on_ready = on_ready
        self.on_message = on_message
        self.on_failed = on_failed
        self.on_closed = on_closed
        self.handshake_timeout = handshake_timeout
        self.framer = StreamFramer(max_size)
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] = ("", 0)
        self.identity: Identity | None = None
        self.version: str | None = None
        self.cipher: str | None = None
        self.ready = False
        self.failed: str | None = None
        self.conn_id = 0
        self.proxy = ""
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl: ssl.SSLObject | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        self.peer = (str(peer[0]), int(peer[1]))
        self.local = (str(local[0]), int(local[1]))
        self._ssl = self.context.wrap_bio(
            self._in, self._out, server_side=self.server_side,
            server_hostname=self.server_hostname,
        )
        self._timer = asyncio.get_running_loop().call_later(
            self.handshake_timeout, self._handshake_timed_out
        )
        if not self.server_side:
            self._handshake()

    def _handshake_timed_out(self) -> None:
        if not self.ready and self.failed is None:
            self._fail(f"TLS handshake not finished after {self.handshake_timeout:g}s")

    def _fail(self, reason: str) -> None:
        self.failed = reason
        self._flush()  # the alert, if OpenSSL wrote one
        if self._timer is not None:
            self._timer.cancel()
        self.on_failed(self, reason)
        if not self.done.done():
            self.done.set_exception(ConnectionError(reason))
            self.done.exception()  # retrieved here: nobody need await it
        if self.transport is not None:
            self.transport.close()

    def _flush(self) -> None:
        data = self._out.read()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _handshake(self) -> None:
        assert self._ssl is not None
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            self._fail(f"TLS handshake failed: {_describe(exc)}")
            return
        self._flush()
        if self._timer is not None:
            self._timer.cancel()
        self.ready = True
        self.version = self._ssl.version()
        cipher = self._ssl.cipher()
        self.cipher = cipher[0] if cipher else None
        der = self._ssl.getpeercert(binary_form=True)
        self.identity = Identity.from_der(der) if der else None
        if not self.done.done():
            self.done.set_result(None)
        self.on_ready(self)
        self._read()

    def data_received(self, data: bytes) -> None:
        if self.failed is not None:
            return
        self._in.write(data)
        if not self.ready:
            self._handshake()
        else:
            self._read()

    def _read(self) -> None:
        assert self._ssl is not None
        chunks: list[bytes] = []
        closed = False
        while True:
            try:
                chunk = self._ssl.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                closed = True
                break
            except ssl.SSLError as exc:
                log.warning("TLS error from %s: %s", self.peer, exc)
                closed = True
                break
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
        self._flush()  # TLS 1.3 may answer key updates
        for chunk in chunks:
            for event in self.framer.feed(chunk):
                if isinstance(event, bytes):
                    self.on_message(self, event)
                elif isinstance(event, KeepAlivePing):
                    self.write(b"\r\n")  # RFC 5626 4.4.1 pong
                elif isinstance(event, FramingError):
                    log.warning("closing %s: %s", self.peer, event.reason)
                    if event.response is not None:
                        self.write(event.response)
                    closed = True
                    break
        if closed:
            self.close()

    def write(self, data: bytes) -> None:
        if self._ssl is None or not self.ready or self.transport is None:
            raise ConnectionError("TLS connection not ready")
        if self.transport.is_closing():
            raise ConnectionError("TLS connection closing")
        self._ssl.write(data)
        self._flush()

    @property
    def is_open(self) -> bool:
        return self.ready and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self._ssl is not None and self.ready:
                with contextlib.suppress(ssl.SSLError, ssl.SSLWantReadError):
                    self._ssl.unwrap()
                self._flush()
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self.done.done():
            reason = f"connection closed before the TLS handshake finished ({exc or 'EOF'})"
            self.failed = self.failed or reason
            self.on_failed(self, reason)
            self.done.set_exception(ConnectionError(reason))
            self.done.exception()
        self.on_closed(self)
