"""sip, sip2 and sip3 at once, one of them failed: refused connections, 503, or silence. The
emulator runs here as the pytest fixture runs it (its own thread and loop)."""

from __future__ import annotations

import pytest

from teams_sbc.media.srtp import SdesKey
from tests.emulator.peers import (
    SBC_FQDN,
    SipConnection,
    TestSbc,
    client_context,
    invite,
    options,
    run,
    sbc_sdp,
)
from tests.testbed.teams_emulator import EmulatorFactory


def test_sip2_answers_while_sip_refuses_connections(
    teams_emulator_factory: EmulatorFactory,
) -> None:
    pki = teams_emulator_factory.pki
    cert = pki.sbc_cert(SBC_FQDN)
    emu = teams_emulator_factory.start(trunks=[SBC_FQDN])
    addresses = {name: emu.address(name) for name in ("sip", "sip2", "sip3")}
    assert [host for host, _ in addresses.values()] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    emu.set_failure("sip", "refuse")

    async def main() -> None:
        ctx = client_context(pki.ca_file, cert)
        with pytest.raises(ConnectionRefusedError):
            await SipConnection.connect(addresses["sip"], ctx)
        conn = await SipConnection.connect(addresses["sip2"], ctx,
                                           server_hostname="sip2.pstnhub.microsoft.com")
        await conn.send(options(uri="sip:sip2.pstnhub.microsoft.com:5061;transport=tls"))
        assert (await conn.response()).status == 200
        conn.close()

    run(main())
    emu.set_failure("sip", "none")

    async def again() -> None:
        conn = await SipConnection.connect(addresses["sip"], client_context(pki.ca_file, cert))
        await conn.send(options())
        assert (await conn.response()).status == 200

    run(again())
    stats = emu.proxy_stats()
    assert (stats["sip"].options_answered_ok, stats["sip2"].options_answered_ok) == (1, 1)


def test_sip_answers_503_and_sip2_takes_the_call(teams_emulator_factory: EmulatorFactory) -> None:
    pki = teams_emulator_factory.pki
    cert = pki.sbc_cert(SBC_FQDN)
    emu = teams_emulator_factory.start(
        trunks=[SBC_FQDN],
        proxies=[{"name": "sip", "fqdn": "sip.pstnhub.microsoft.com", "failure": "503"},
                 {"name": "sip2", "fqdn": "sip2.pstnhub.microsoft.com", "host": "127.0.0.2"}],
    )
    key = SdesKey.generate()

    async def main() -> None:
        ctx = client_context(pki.ca_file, cert)
        conn = await SipConnection.connect(emu.address("sip"), ctx)
        await conn.send(options())
        response = await conn.response()
        assert (response.status, response.headers.get("retry-after")) == (503, "30")
        await conn.send(invite(sdp=sbc_sdp(30000, [key])).text)
        response = await conn.response(final=False)
        assert response.status == 503, "no 100 Trying first: the proxy is down"
        conn2 = await SipConnection.connect(emu.address("sip2"), ctx)
        inv = invite(sdp=sbc_sdp(30000, [key]),
                     ruri="sip:+14255550123@sip2.pstnhub.microsoft.com:5061;user=phone")
        await conn2.send(inv.text)
        assert (await conn2.response()).status == 200

    run(main())
    assert emu.proxy_stats()["sip"].failure_mode_hits == 2
    (call,) = emu.calls()
    assert call.proxy == "sip2" and call.state == "answered"


def test_silent_sip_and_the_emulators_own_calls_avoid_it(
    teams_emulator_factory: EmulatorFactory,
) -> None:
    pki = teams_emulator_factory.pki
    cert = pki.sbc_cert(SBC_FQDN)

    async def main() -> None:
        sbc = await TestSbc(pki.ca_file, cert).start()
        emu = teams_emulator_factory.start(trunks=[SBC_FQDN], sbc_address=sbc.address)
        try:
            emu.set_failure("sip", "silent")
            conn = await SipConnection.connect(emu.address("sip"),
                                               client_context(pki.ca_file, cert))
            await conn.send(options())
            with pytest.raises(TimeoutError):
                await conn.response(within=1.0)
            conn3 = await SipConnection.connect(emu.address("sip3"),
                                                client_context(pki.ca_file, cert))
            await conn3.send(options())
            assert (await conn3.response()).status == 200
            # Teams' own INVITE leaves from the first proxy that is not failed: sip2.
            call_id = emu.place_call("+14255550123", trunk=SBC_FQDN)
            assert emu.call(call_id).proxy == "sip2"
        finally:
            emu.stop()
            await sbc.close()

    run(main())
