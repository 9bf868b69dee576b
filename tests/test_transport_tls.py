"""SIP over TLS on the SBC's listener: mutual TLS, TLS 1.2+, and certificates renewed on disk
reaching new connections while established ones go on."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop
from cryptography import x509

from teams_sbc.app import Sbc
from teams_sbc.config import parse_config
from teams_sbc.pki import CertFiles, DevCA
from teams_sbc.sip import Response, parse_message
from tests.testbed.process import free_port


@dataclass
class RunningSbc:
    sbc: Sbc
    loop: asyncio.AbstractEventLoop
    port: int
    ca: DevCA
    server_cert: CertFiles


@pytest.fixture
def tls_sbc(tmp_path: Path) -> Iterator[RunningSbc]:
    ca = DevCA(tmp_path / "pki")
    server = ca.issue("sbc", "sbc.example.test", dns_names=["sbc.example.test"])
    port = free_port()
    config = parse_config(
        {
            "listeners": [
                {
                    "name": "teams",
                    "transport": "tls",
                    "host": "127.0.0.1",
                    "port": port,
                    "advertise": "sbc.example.test",
                    "tls": {
                        "cert_file": str(server.cert),
                        "key_file": str(server.key),
                        "ca_file": str(ca.cert_path),
                    },
                }
            ],
            "http": {"port": 0},
            "tls_reload_seconds": 0.1,
        }
    )
    loop = uvloop.new_event_loop()
    sbc_holder: list[Sbc] = []
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            sbc = Sbc(config)
            await sbc.start()
            sbc_holder.append(sbc)
            started.set()

        loop.run_until_complete(main())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10), "the SBC did not start"
    running = RunningSbc(sbc_holder[0], loop, port, ca, server)
    yield running
    asyncio.run_coroutine_threadsafe(running.sbc.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _client_context(ca: DevCA, client: CertFiles | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    if client is not None:
        ctx.load_cert_chain(client.cert, client.key)
    return ctx


def _options(sock: ssl.SSLSocket) -> Response:
    host, lport = sock.getsockname()[:2]
    local = f"{host}:{lport}"
    port = sock.getpeername()[1]
    sock.sendall(
        (
            f"OPTIONS sip:sbc.example.test:{port};transport=tls SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS {local};branch=z9hG4bK{os.urandom(6).hex()}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:ping@{local}>;tag=abc\r\n"
            "To: <sip:sbc.example.test>\r\n"
            f"Call-ID: {os.urandom(8).hex()}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65535)
        assert chunk, "connection closed before a response"
        data += chunk
    msg = parse_message(data)
    assert isinstance(msg, Response)
    return msg


def _connect(running: RunningSbc, client: CertFiles | None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", running.port), timeout=5)
    return _client_context(running.ca, client).wrap_socket(raw, server_hostname="sbc.example.test")


def test_options_over_mutual_tls(tls_sbc: RunningSbc) -> None:
    client = tls_sbc.ca.issue("peer", "peer.example.test", dns_names=["peer.example.test"])
    with _connect(tls_sbc, client) as sock:
        assert sock.version() in {"TLSv1.2", "TLSv1.3"}
        response = _options(sock)
    assert response.status == 200
    assert "INVITE" in (response.headers.get("allow") or "")


def test_client_without_certificate_is_refused(tls_sbc: RunningSbc) -> None:
    """No client certificate: the handshake fails, or (TLS 1.3, where the client finishes first)
    the server's alert arrives on the first read. Either way no SIP gets through."""
    received = b""
    try:
        with _connect(tls_sbc, None) as sock:
            sock.sendall(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
            received = sock.recv(65535)
    except (ssl.SSLError, ConnectionError):
        pass
    assert received == b""


def test_tls_below_1_2_is_refused(tls_sbc: RunningSbc) -> None:
    client = tls_sbc.ca.issue("peer", "peer.example.test", dns_names=["peer.example.test"])
    ctx = _client_context(tls_sbc.ca, client)
    with warnings.catch_warnings():  # deliberately old: that is what is being refused
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    raw = socket.create_connection(("127.0.0.1", tls_sbc.port), timeout=5)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        ctx.wrap_socket(raw, server_hostname="sbc.example.test")
    raw.close()


def test_renewed_certificate_reaches_new_connections_only(tls_sbc: RunningSbc) -> None:
    client = tls_sbc.ca.issue("peer", "peer.example.test", dns_names=["peer.example.test"])
    old = _connect(tls_sbc, client)
    old_serial = x509.load_der_x509_certificate(
        old.getpeercert(binary_form=True) or b""
    ).serial_number
    # Renew: a new certificate and key written over the files the SBC was started with.
    renewed = tls_sbc.ca.issue("renewed", "sbc.example.test", dns_names=["sbc.example.test"])
    tls_sbc.server_cert.key.write_bytes(renewed.key.read_bytes())
    tls_sbc.server_cert.cert.write_bytes(renewed.cert.read_bytes())
    deadline = time.monotonic() + 5
    new_serial = old_serial
    while new_serial == old_serial and time.monotonic() < deadline:
        time.sleep(0.1)
        with _connect(tls_sbc, client) as sock:
            new_serial = x509.load_der_x509_certificate(
                sock.getpeercert(binary_form=True) or b""
            ).serial_number
            assert _options(sock).status == 200
    assert new_serial != old_serial, "the renewed certificate never reached a new connection"
    # The connection made before the renewal still carries SIP.
    assert _options(old).status == 200
    old.close()
