"""Microsoft's rules for what the SBC sends, each one a request over real mutual TLS and the
exact response on the wire (status line, Q.850 cause in Reason), and no call where one is
refused."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from teams_sbc.media.srtp import SdesKey
from tests.emulator.conftest import emulator_and_sbc
from tests.emulator.peers import (
    SBC_FQDN,
    SipConnection,
    client_context,
    invite,
    options,
    run,
    sbc_sdp,
)
from tests.testbed.teams_emulator import EmulatorFactory

GOOD_SDP = sbc_sdp(30000, [SdesKey.generate()])
RR_FQDN = f"<sip:{SBC_FQDN}:5061;transport=tls;lr>"


@dataclass
class Case:
    text: str
    status: int
    reason_phrase: str
    cause: int
    says: str
    rule: str


def options_cases() -> dict[str, Case]:
    return {
        "IP address in Contact": Case(
            options(contact="<sip:192.0.2.10:5061;transport=tls>"), 403, "Forbidden", 21,
            "Contact carries an IP address (192.0.2.10)", "fqdn-is-ip"),
        "no Contact": Case(options(contact=None), 403, "Forbidden", 21,
                           "no Contact header", "contact-required"),
        "FQDN not a trunk": Case(
            options(contact="<sip:spare.example.test:5061;transport=tls>"), 403, "Forbidden", 21,
            "spare.example.test is not a configured SBC", "fqdn-not-a-trunk"),
        ";lr=on in Record-Route": Case(
            options(extra=[f"Record-Route: <sip:{SBC_FQDN}:5061;transport=tls;lr=on>"]), 400,
            "Bad Request", 95, "must be ';lr', not a valued one", "lr-on"),
    }


def invite_cases() -> dict[str, Case]:
    return {
        "IP address in Contact": Case(
            invite(contact="<sip:+12065550100@192.0.2.10:5061;transport=tls>", sdp=GOOD_SDP).text,
            403, "Forbidden", 21, "Contact carries an IP address", "fqdn-is-ip"),
        "IP address in the top Record-Route": Case(
            invite(sdp=GOOD_SDP, extra=["Record-Route: <sip:192.0.2.10:5061;transport=tls;lr>",
                                        f"Record-Route: {RR_FQDN}"]).text,
            403, "Forbidden", 21, "Record-Route carries an IP address", "fqdn-is-ip"),
        "Record-Route FQDN not in the certificate": Case(
            invite(sdp=GOOD_SDP, extra=[
                "Record-Route: <sip:other.example.test:5061;transport=tls;lr>"]).text,
            403, "Forbidden", 21, "other.example.test is not covered by the TLS certificate",
            "fqdn-not-in-certificate"),
        ";lr=on": Case(
            invite(sdp=GOOD_SDP, extra=[
                f"Record-Route: <sip:{SBC_FQDN}:5061;transport=tls;lr=on>"]).text,
            400, "Bad Request", 95, "not a valued one", "lr-on"),
        "number without +": Case(
            invite(number="14255550123", sdp=GOOD_SDP).text, 404, "Not Found", 1,
            "'14255550123' is not an E.164 number with a leading +", "ruri-not-e164"),
        "national number in To": Case(
            invite(to_number="04255550123", sdp=GOOD_SDP).text, 404, "Not Found", 1,
            "To user '04255550123' is not an E.164 number", "to-not-e164"),
        "Request-URI host not Microsoft's": Case(
            invite(sdp=GOOD_SDP, ruri="sip:+14255550123@52.114.76.76:5061;user=phone").text,
            404, "Not Found", 1, "52.114.76.76 is not a Microsoft SIP proxy name", "ruri-host"),
        "RTP/AVP": Case(
            invite(sdp=sbc_sdp(30000, [], protocol="RTP/AVP")).text, 488, "Not Acceptable Here",
            88, "audio is RTP/AVP: Teams requires SRTP", "sdp"),
        "no a=crypto": Case(
            invite(sdp=sbc_sdp(30000, [])).text, 488, "Not Acceptable Here", 88,
            "no usable a=crypto line", "sdp"),
        "no common codec": Case(
            invite(sdp=sbc_sdp(30000, [SdesKey.generate()], codecs="3 101")).text, 488,
            "Not Acceptable Here", 88, "no codec in common", "sdp"),
        "no SDP (delayed offer)": Case(
            invite().text, 488, "Not Acceptable Here", 88,
            "Direct Routing does not accept offers without SDP", "sdp"),
        "Replaces": Case(
            invite(sdp=GOOD_SDP, extra=["Replaces: abc@host;to-tag=1;from-tag=2"]).text, 403,
            "Forbidden", 21, "requests with a Replaces header", "replaces"),
        "Session-Expires below Min-SE": Case(
            invite(sdp=GOOD_SDP, extra=["Session-Expires: 60", "Supported: timer"]).text, 422,
            "Session Interval Too Small", 100, "below our Min-SE 90", "session-timer"),
    }


@pytest.mark.parametrize("name", list(options_cases()))
def test_options_refused(teams_emulator_factory: EmulatorFactory, name: str) -> None:
    check(teams_emulator_factory, options_cases()[name])


@pytest.mark.parametrize("name", list(invite_cases()))
def test_invite_refused(teams_emulator_factory: EmulatorFactory, name: str) -> None:
    check(teams_emulator_factory, invite_cases()[name])


def check(factory: EmulatorFactory, case: Case) -> None:
    pki = factory.pki
    cert = pki.sbc_cert(SBC_FQDN, sans=[SBC_FQDN, "spare.example.test"])

    async def main() -> None:
        async with emulator_and_sbc(factory, sbc_cert=cert, timing={"min_se": 90}) as (emu, sbc):
            conn = await SipConnection.connect(emu.address("sip"),
                                               client_context(pki.ca_file, cert))
            await conn.send(case.text)
            first = await conn.response(final=False)
            assert (first.status, first.reason) == (case.status, case.reason_phrase), \
                first.headers.get("reason")
            reason = first.headers.get("reason") or ""
            assert reason.startswith(f"Q.850;cause={case.cause};text=")
            assert case.says in reason, reason
            assert first.to_tag, "a final response carries a To-tag"
            if case.status == 422:
                assert first.headers.get("min-se") == "90"
            assert emu.proxy_stats()["sip"].rejections == {case.rule: 1}
            for call in emu.calls():
                assert call.state == "rejected" and call.final_status == case.status
                assert call.media is None, "no media for a refused call"
            assert sbc.requests("OPTIONS") == []
            conn.close()

    run(main())


def test_record_route_fqdn_wins_over_an_ip_contact(teams_emulator_factory: EmulatorFactory
                                                   ) -> None:
    """With a Record-Route, Microsoft reads the FQDN there, not in the Contact (seed)."""
    pki = teams_emulator_factory.pki
    cert = pki.sbc_cert(SBC_FQDN)

    async def main() -> None:
        async with emulator_and_sbc(teams_emulator_factory, sbc_cert=cert) as (emu, _):
            conn = await SipConnection.connect(emu.address("sip"),
                                               client_context(pki.ca_file, cert))
            inv = invite(contact="<sip:+12065550100@10.0.0.5:5060>", sdp=GOOD_SDP,
                         extra=[f"Record-Route: {RR_FQDN}", "Record-Route: <sip:10.0.0.1;lr>"])
            await conn.send(inv.text)
            trying = await conn.response(final=False)
            assert trying.status == 100
            ringing = await conn.response(final=False)
            assert ringing.status == 180
            # Microsoft's proxy records its own route on top of the SBC's.
            assert ringing.headers.get_all("record-route") == [
                f"<sip:sip.pstnhub.microsoft.com:{emu.address('sip')[1]};transport=tls;lr>",
                RR_FQDN, "<sip:10.0.0.1;lr>",
            ]
            assert emu.call(inv.call_id).trunk == SBC_FQDN

    run(main())


def test_unknown_user_gets_404(teams_emulator_factory: EmulatorFactory) -> None:
    pki = teams_emulator_factory.pki
    cert = pki.sbc_cert(SBC_FQDN)

    async def main() -> None:
        async with emulator_and_sbc(
            teams_emulator_factory, sbc_cert=cert,
            users=[{"number": "+14255550123"}],
        ) as (emu, _):
            conn = await SipConnection.connect(emu.address("sip"),
                                               client_context(pki.ca_file, cert))
            await conn.send(invite(number="+14255550999", sdp=GOOD_SDP).text)
            response = await conn.response()
            assert (response.status, response.reason) == (404, "Not Found")
            assert "no Teams user has the number +14255550999" in (
                response.headers.get("reason") or "")

    run(main())


def test_malformed_input_gets_clear_errors_and_the_emulator_goes_on(
    teams_emulator_factory: EmulatorFactory,
) -> None:
    pki = teams_emulator_factory.pki
    cert = pki.sbc_cert(SBC_FQDN)
    bad_from = invite(sdp=GOOD_SDP).text.replace("From: <sip:", "From: <<sip:", 1)
    bad_sdp = invite(sdp="v=0\r\nm=audio\r\n").text
    bad_key = invite(sdp=GOOD_SDP.replace("inline:", "inline:%%%", 1)).text

    async def main() -> None:
        async with emulator_and_sbc(teams_emulator_factory, sbc_cert=cert) as (emu, _):
            ctx = client_context(pki.ca_file, cert)
            conn = await SipConnection.connect(emu.address("sip"), ctx)
            answers = []
            for text in (bad_from, bad_sdp, bad_key):
                await conn.send(text)
                answers.append(await conn.response())
            assert [r.status for r in answers] == [400, 488, 488]
            assert "malformed SDP" in (answers[1].headers.get("reason") or "")
            assert "no usable a=crypto line" in (answers[2].headers.get("reason") or "")
            await conn.send(b"HELLO\r\n\r\n")  # no Content-Length on a stream: framing lost
            assert await conn.closed_by_peer(), "the emulator closes a stream it cannot frame"
            conn2 = await SipConnection.connect(emu.address("sip"), ctx)
            await conn2.send(options())
            assert (await conn2.response()).status == 200
            assert emu.summary()["internal_errors"] == 0

    run(main())
