"""Mutual TLS as Microsoft does it, against real TLS clients with real certificates: TLS 1.2+
with Microsoft's ciphers, a client certificate demanded, chained to the trust bundle, with the
clientAuth purpose and a Common Name."""

from __future__ import annotations

import ssl

import pytest

from teams_sbc.config import MICROSOFT_CIPHERS
from teams_sbc.sip import Response
from tests.emulator.conftest import emulator_and_sbc
from tests.emulator.peers import (
    MS,
    SBC_FQDN,
    SipConnection,
    client_context,
    eventually,
    options,
    run,
)
from tests.testbed.teams_emulator import EmulatorFactory


@pytest.mark.parametrize("max_tls", ["1.2", "1.3"])
def test_good_certificate_gets_200_and_an_options_back(
    teams_emulator_factory: EmulatorFactory, max_tls: str
) -> None:
    pki = teams_emulator_factory.pki
    cert = pki.sbc_cert(SBC_FQDN)

    async def main() -> None:
        async with emulator_and_sbc(teams_emulator_factory, sbc_cert=cert) as (emu, sbc):
            conn = await SipConnection.connect(
                emu.address("sip"), client_context(pki.ca_file, cert, max_tls=max_tls)
            )
            assert conn.tls_version == ("TLSv1.2" if max_tls == "1.2" else "TLSv1.3")
            if max_tls == "1.2":
                cipher = conn.writer.get_extra_info("cipher")[0]
                assert cipher in MICROSOFT_CIPHERS.split(":")
            await conn.send(options())
            response = await conn.response()
            assert (response.status, response.reason) == (200, "OK")
            assert response.headers.get("allow") == "INVITE,ACK,OPTIONS,CANCEL,BYE,NOTIFY"
            assert (response.headers.get("server") or "").startswith("Microsoft.PSTNHub")
            # Microsoft then pings the FQDN the SBC gave, from its own name, header names in
            # upper case, over its own TLS connection presenting its certificate.
            await eventually(lambda: bool(sbc.requests("OPTIONS")), 3, "the emulator's OPTIONS")
            ping = sbc.requests("OPTIONS")[0]
            assert ping.uri == f"sip:{SBC_FQDN}:{sbc.port};transport=tls"
            assert ping.headers.get("contact") == f"<sip:{MS}:{emu.address('sip')[1]}>"
            assert b"\r\nCSEQ: 1 OPTIONS\r\n" in ping.to_bytes()
            assert "sip.pstnhub.microsoft.com" in (sbc.peer_names[0] or "")
            await eventually(lambda: any(r.ok for r in emu.options_results()), 3, "200")
            conn.close()

    run(main())


@pytest.mark.parametrize(
    ("case", "reason_part"),
    [
        ("no client certificate", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        ("untrusted CA", "self-signed certificate in certificate chain"),
        ("serverAuth only", "unsuitable certificate purpose"),
    ],
)
def test_handshake_refused(
    teams_emulator_factory: EmulatorFactory, case: str, reason_part: str
) -> None:
    pki = teams_emulator_factory.pki
    cert = {
        "no client certificate": None,
        "untrusted CA": pki.sbc_cert(SBC_FQDN, name="rogue", wrong_ca=True),
        "serverAuth only": pki.sbc_cert(SBC_FQDN, name="no-client-auth", client_auth=False),
    }[case]

    async def main() -> None:
        async with emulator_and_sbc(teams_emulator_factory) as (emu, _):
            # TLS 1.2: the client learns of the refusal in the handshake itself.
            with pytest.raises((ssl.SSLError, ConnectionError)):
                conn = await SipConnection.connect(
                    emu.address("sip"), client_context(pki.ca_file, cert, max_tls="1.2"))
                await conn.send(options())
                await conn.response(within=2)
            # TLS 1.3: the client may finish first; the emulator's alert ends it, no SIP back.
            conn = await SipConnection.connect(emu.address("sip"),
                                               client_context(pki.ca_file, cert))
            await conn.send(options())
            with pytest.raises((ssl.SSLError, ConnectionError, TimeoutError)):
                await conn.response(within=2)
            stats = emu.proxy_stats()["sip"]
            assert stats.handshake_failures == 2
            assert reason_part in (stats.last_handshake_error or "")
            assert stats.requests == 0
            assert emu.summary()["handshake_failures"] == 2

    run(main())


def test_certificate_with_another_name_gets_403(teams_emulator_factory: EmulatorFactory) -> None:
    pki = teams_emulator_factory.pki
    cert = pki.sbc_cert("other.example.test")

    async def main() -> None:
        async with emulator_and_sbc(teams_emulator_factory) as (emu, sbc):
            conn = await SipConnection.connect(emu.address("sip"),
                                               client_context(pki.ca_file, cert))
            await conn.send(options())  # Contact: sbc.example.test
            response = await conn.response()
            assert (response.status, response.reason) == (403, "Forbidden")
            reason = response.headers.get("reason") or ""
            assert reason.startswith("Q.850;cause=21;text=")
            assert "sbc.example.test is not covered by the TLS certificate" in reason
            assert "CN=other.example.test" in reason
            assert emu.proxy_stats()["sip"].rejections == {"fqdn-not-in-certificate": 1}
            assert sbc.requests("OPTIONS") == [], "no OPTIONS back to a refused SBC"

    run(main())


def test_certificate_without_common_name_gets_403(teams_emulator_factory: EmulatorFactory) -> None:
    """A field report saw Microsoft answer 403 to a certificate with the FQDN in a SAN only."""
    pki = teams_emulator_factory.pki
    cert = pki.sbc_cert(SBC_FQDN, name="san-only", common_name="")

    async def main() -> None:
        async with emulator_and_sbc(teams_emulator_factory) as (emu, _):
            conn = await SipConnection.connect(emu.address("sip"),
                                               client_context(pki.ca_file, cert))
            await conn.send(options())
            response = await conn.response()
            assert response.status == 403
            assert "has no Common Name" in (response.headers.get("reason") or "")

    run(main())


def test_wildcard_certificate_covers_tenant_subdomains_only(
    teams_emulator_factory: EmulatorFactory,
) -> None:
    """The carrier model: *.base covers each tenant's subdomain, not deeper names."""
    pki = teams_emulator_factory.pki
    cert = pki.sbc_cert("*.carrier.test", name="wildcard")

    async def main() -> None:
        async with emulator_and_sbc(teams_emulator_factory, trunks=["*.carrier.test"]) as (
            emu, _,
        ):
            conn = await SipConnection.connect(emu.address("sip2"),
                                               client_context(pki.ca_file, cert))
            results: dict[str, Response] = {}
            for host in ("tenant1.carrier.test", "a.tenant1.carrier.test", "carrier.test"):
                await conn.send(options(contact=f"<sip:{host}:5061;transport=tls>"))
                results[host] = await conn.response()
            assert {h: r.status for h, r in results.items()} == {
                "tenant1.carrier.test": 200, "a.tenant1.carrier.test": 403, "carrier.test": 403,
            }

    run(main())


def test_emulator_checks_the_sbcs_server_certificate(
    teams_emulator_factory: EmulatorFactory,
) -> None:
    """Connecting to the SBC, the emulator sends the SBC's FQDN as SNI and checks the SBC's
    certificate against it and the trust bundle; a mismatch is an error, not a connection."""
    pki = teams_emulator_factory.pki
    wrong = pki.sbc_cert("elsewhere.example.test")

    async def main() -> None:
        async with emulator_and_sbc(teams_emulator_factory, sbc_cert=wrong) as (emu, sbc):
            result = emu.send_options("sip", SBC_FQDN)
            await eventually(lambda: emu.options_results()[0].error is not None, 5, "an error")
            error = emu.options_results()[0].error or ""
            assert "Hostname mismatch" in error or "doesn't match" in error, error
            assert result.status is None and sbc.requests("OPTIONS") == []
        async with emulator_and_sbc(teams_emulator_factory, sbc_address="127.0.0.1:9") as (
            emu, _,
        ):
            emu.send_options("sip3", SBC_FQDN)
            await eventually(lambda: emu.options_results()[0].error is not None, 5, "an error")
            assert "refused" in (emu.options_results()[0].error or "").lower()

    run(main())
