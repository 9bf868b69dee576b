"""Calls both ways over real mutual TLS with real SRTP: the emulator calling a test UAS (the SBC's
side) and answering the SBC's INVITEs as Teams does; media decrypted in both directions with the
keys from the SDP."""

from __future__ import annotations

import asyncio

from teams_sbc.emulator import CallOptions
from teams_sbc.media.sdp import media_descriptions
from teams_sbc.media.srtp import SdesKey
from teams_sbc.sip import Request, Response
from tests.emulator.conftest import emulator_and_sbc
from tests.emulator.peers import (
    SBC_FQDN,
    SipConnection,
    SrtpPeer,
    build_request,
    client_context,
    eventually,
    invite,
    run,
    sbc_sdp,
)
from tests.testbed.teams_emulator import EmulatorFactory

NUMBER = "+14255550123"


def test_call_from_teams_with_srtp_both_ways_hold_and_bye(
    teams_emulator_factory: EmulatorFactory,
) -> None:
    """The SBC record-routes twice (inside address, then its FQDN facing Teams, r2=on)."""

    async def main() -> None:
        async with emulator_and_sbc(teams_emulator_factory, sbc_kwargs={"record_route": [
            "<sip:10.0.0.1:5060;lr;r2=on>", f"<sip:{SBC_FQDN}:5061;transport=tls;lr;r2=on>",
        ]}, media={"packets": 40}) as (emu, sbc):
            call_id = await emu.place_call(NUMBER, CallOptions(trunk=SBC_FQDN, proxy="sip2"))
            record = await emu.wait_call(call_id, "confirmed", within=5)
            (incoming,) = sbc.calls.values()
            invite_bytes = incoming.conn.raw[0]
            # Teams' INVITE: over 1,500 bytes, candidates, several keys, its codecs, timers.
            assert len(invite_bytes) > 1500 and record.invite_bytes == len(invite_bytes)
            text = invite_bytes.decode()
            assert text.startswith(f"INVITE sip:{NUMBER}@{SBC_FQDN}:{sbc.port};user=phone;"
                                   "transport=tls SIP/2.0\r\n")
            assert "\r\nSESSION-EXPIRES: 1800\r\n" in text and "\r\nMIN-SE: 90\r\n" in text
            assert "\r\nRECORD-ROUTE: <sip:sip2.pstnhub.microsoft.com:" in text
            assert "\r\nVIA: SIP/2.0/TLS 127.0.0.2:" in text, "sent from sip2's own address"
            (audio,) = media_descriptions(incoming.invite.body.decode())
            assert audio.protocol == "RTP/SAVP"
            assert len(audio.attribute_values("crypto")) >= 3
            assert any("|1:1" in c for c in audio.attribute_values("crypto")), "an MKI key"
            assert len(audio.attribute_values("candidate")) >= 8
            rtpmaps = " ".join(audio.attribute_values("rtpmap"))
            for codec in ("SILK/16000", "G722/8000", "PCMU/8000", "PCMA/8000",
                          "telephone-event/8000", "CN/8000"):
                assert codec in rtpmaps
            # The ACK: the 200's To-tag, routed by the SBC's Record-Route reversed.
            await eventually(lambda: bool(incoming.acks), 3, "the ACK")
            ack = incoming.acks[0]
            assert ack.to_tag == "uas1"
            assert ack.headers.get_all("route") == [
                f"<sip:{SBC_FQDN}:5061;transport=tls;lr;r2=on>, <sip:10.0.0.1:5060;lr;r2=on>"]
            assert ack.uri == f"sip:{NUMBER}@{SBC_FQDN}:{sbc.port};transport=tls"
            # SRTP both ways: the UAS decrypts the emulator's pattern, and the other way round.
            media = incoming.media
            assert media is not None
            await media.send_pattern(30)
            stats = await emu.wait_media(call_id, sent=40, decrypted=30, within=5)
            await eventually(lambda: media.pattern_ok >= 40, 3, "the UAS to decrypt 40")
            assert stats.payload_ok == 30 and stats.auth_failures == 0
            assert media.failures == 0 and media.decrypted == 40
            # Hold as Teams does (music on hold: sendonly), then resume, then hang up.
            emu.hold(call_id, "sendonly")
            await eventually(lambda: len(sbc.requests("INVITE")) == 2, 3, "the hold re-INVITE")
            hold = sbc.requests("INVITE")[1]
            assert b"a=sendonly" in hold.body and hold.cseq.number == 2
            await eventually(lambda: len(incoming.acks) == 2, 3, "the re-INVITE's ACK")
            assert incoming.acks[1].cseq.number == 2
            emu.resume(call_id)
            await eventually(lambda: len(incoming.acks) == 3, 3, "resume's ACK")
            assert b"a=sendrecv" in sbc.requests("INVITE")[2].body
            emu.hangup(call_id)
            record = await emu.wait_call(call_id, "ended", within=3)
            assert len(incoming.byes) == 1 and incoming.byes[0].cseq.number == 4
            assert record.ok and record.ended_by == "emulator" and not record.violations
            assert record.proxy == "sip2"
            assert emu.summary()["calls_ok"] == 1
            # The ladder keeps every message as it crossed the wire.
            assert record.ladder[0].message.encode() == invite_bytes
            received_200 = next(e for e in record.ladder if e.text.startswith("200 OK with SDP"))
            assert received_200.arrow == "<-" and "Record-Route: <sip:10.0.0.1" in \
                received_200.message
            assert "          | SIP/2.0 200 OK" in record.ladder_text(full=True)

    run(main())


def test_2xx_with_lr_on_or_without_fqdn_fails_the_call(
    teams_emulator_factory: EmulatorFactory,
) -> None:
    async def main() -> None:
        async with emulator_and_sbc(teams_emulator_factory, sbc_kwargs={"record_route": [
            f"<sip:{SBC_FQDN}:5061;transport=tls;lr=on>"]}) as (emu, sbc):
            call_id = await emu.place_call(NUMBER, trunk=SBC_FQDN)
            record = await emu.wait_call(call_id, "failed", "ended", within=5)
            assert record.state == "failed"
            assert "valued lr parameter" in (record.failure or "")
            (incoming,) = sbc.calls.values()
            await eventually(lambda: bool(incoming.acks and incoming.byes), 3, "ACK then BYE")
            assert "valued lr parameter" in (incoming.byes[0].headers.get("reason") or "")
        async with emulator_and_sbc(teams_emulator_factory, sbc_kwargs={"record_route": [
            "<sip:10.0.0.1:5061;transport=tls;lr>"]}) as (emu, sbc):
            call_id = await emu.place_call(NUMBER, trunk=SBC_FQDN)
            record = await emu.wait_call(call_id, "failed", "ended", within=5)
            assert record.failure == "2xx Record-Route carries 10.0.0.1, not the SBC's FQDN"

    run(main())


def test_refused_call_and_unreachable_sbc(teams_emulator_factory: EmulatorFactory) -> None:
    async def main() -> None:
        async with emulator_and_sbc(teams_emulator_factory,
                                    sbc_kwargs={"answer": "486"}) as (emu, sbc):
            call_id = await emu.place_call(NUMBER, trunk=SBC_FQDN)
            record = await emu.wait_call(call_id, within=5)
            assert (record.state, record.final_status) == ("rejected", 486)
            await eventually(lambda: bool(sbc.calls[call_id].acks), 3, "ACK of the 486")
            ack = sbc.calls[call_id].acks[0]
            assert ack.to_tag == "uas1" and ack.top_via.branch == \
                sbc.calls[call_id].invite.top_via.branch
        async with emulator_and_sbc(teams_emulator_factory, sbc_address="127.0.0.1:9") as (
            emu, _,
        ):
            call_id = await emu.place_call(NUMBER, trunk=SBC_FQDN)
            record = await emu.wait_call(call_id, within=5)
            assert record.state == "failed"
            assert (record.failure or "").startswith("cannot reach the SBC")

    run(main())


async def _call_teams(conn: SipConnection, media: SrtpPeer, sbc_port: int,
                      **kwargs: object) -> tuple[str, list[Response], Request | None]:
    """INVITE from the SBC; every response up to the 200."""
    inv = invite(sdp=sbc_sdp(media.port, [media.key]), port=sbc_port, **kwargs)  # type: ignore[arg-type]
    await conn.send(inv.text)
    responses: list[Response] = []
    while not responses or responses[-1].status < 200:
        message = await conn.receive(within=3)
        assert isinstance(message, Response)
        responses.append(message)
    return inv.call_id, responses, None


def _ack(inv_call_id: str, ok: Response, tag: str | None, cseq: int = 1) -> str:
    contact = (ok.headers.get("contact") or "").strip("<>")
    to = (ok.headers.get("to") or "").split(";tag=")[0]
    return build_request(
        "ACK", contact, call_id=inv_call_id, from_tag=ok.from_tag or "",
        to=f"{to};tag={tag}", from_=(ok.headers.get("from") or "").split(";tag=")[0],
        cseq=cseq, contact=None,
        extra=[f"Route: {r}" for r in ok.headers.get_all("record-route")[:1]],
    )


def test_call_to_teams_forks_then_srtp_both_ways_and_bye_from_the_sbc(
    teams_emulator_factory: EmulatorFactory,
) -> None:
    pki = teams_emulator_factory.pki
    cert = pki.sbc_cert(SBC_FQDN)

    async def main() -> None:
        async with emulator_and_sbc(teams_emulator_factory, sbc_cert=cert) as (emu, sbc):
            conn = await SipConnection.connect(emu.address("sip"),
                                               client_context(pki.ca_file, cert))
            media = await SrtpPeer.open()
            call_id, responses, _ = await _call_teams(conn, media, sbc.port)
            assert [r.status for r in responses] == [100, 180, 180, 183, 200]
            tags = [r.to_tag for r in responses[1:]]
            assert tags[0] != tags[1], "two devices ring"
            assert tags[2] == tags[0] and tags[3] == tags[1], "183 from one fork, 200 from another"
            ok = responses[-1]
            assert ok.headers.get("require") is None  # our INVITE had no Session-Expires
            (answer,) = media_descriptions(ok.body.decode())
            (their_key,) = [SdesKey.parse("crypto:" + v) for v in answer.attribute_values("crypto")]
            assert answer.protocol == "RTP/SAVP" and their_key.tag == media.key.tag
            media.use(their_key, ("127.0.0.1", answer.port), media.key.tag)
            await conn.send(_ack(call_id, ok, ok.to_tag))
            await emu.wait_call(call_id, "confirmed", within=3)
            await media.send_pattern(25)
            stats = await emu.wait_media(call_id, sent=20, decrypted=25, within=5)
            await eventually(lambda: media.pattern_ok >= 20, 3, "the emulator's SRTP")
            assert stats.payload_ok == 25 and media.failures == 0
            # The SBC hangs up: BYE in the 200's dialog, to Teams' Contact.
            bye = build_request(
                "BYE", (ok.headers.get("contact") or "").strip("<>"), call_id=call_id,
                from_tag=ok.from_tag or "", from_=(ok.headers.get("from") or "").split(";tag=")[0],
                to=ok.headers.get("to") or "", cseq=2, contact=None)
            await conn.send(bye)
            response = await conn.response()
            assert response.status == 200
            record = await emu.wait_call(call_id, "ended", within=3)
            assert record.ended_by == "sbc" and record.ok
            media.close()

    run(main())


def test_ack_with_a_provisional_to_tag_is_ignored_and_the_call_torn_down(
    teams_emulator_factory: EmulatorFactory,
) -> None:
    """The seed's voipswitch case: ACK with the first 180's To-tag. Teams ignores it, keeps
    retransmitting its 200, and after 64*T1 ends the call with BYE."""
    pki = teams_emulator_factory.pki
    cert = pki.sbc_cert(SBC_FQDN)

    async def main() -> None:
        async with emulator_and_sbc(teams_emulator_factory, sbc_cert=cert) as (emu, sbc):
            t1 = emu.config.timing.t1
            conn = await SipConnection.connect(emu.address("sip"),
                                               client_context(pki.ca_file, cert))
            media = await SrtpPeer.open()
            call_id, responses, _ = await _call_teams(conn, media, sbc.port)
            first_180, ok = responses[1], responses[-1]
            await conn.send(_ack(call_id, ok, first_180.to_tag))
            loop = asyncio.get_running_loop()
            sent_ack = loop.time()
            # The 200 keeps coming (RFC 3261 13.3.1.4), identical.
            again = await conn.receive(within=2)
            assert isinstance(again, Response) and again.status == 200
            assert again.to_bytes() == ok.to_bytes()
            await eventually(lambda: bool(sbc.requests("BYE")), 64 * t1 + 3, "Teams' BYE")
            waited = loop.time() - sent_ack
            assert waited > 64 * t1 - 0.5, f"BYE after {waited:.2f}s, before 64*T1"
            (bye,) = sbc.requests("BYE")
            assert bye.uri == f"sip:+12065550100@{SBC_FQDN}:{sbc.port};transport=tls"
            assert bye.from_tag == ok.to_tag and bye.to_tag == ok.from_tag
            reason = bye.headers.get("reason") or ""
            assert "cause=102" in reason and f"the 200's To-tag {ok.to_tag}" in reason
            assert "1 ACK(s) with another To-tag ignored" in reason
            record = await emu.wait_call(call_id, "failed", within=3)
            assert record.acks_ignored == 1 and not record.ok
            assert record.violations == [
                f"ACK To-tag {first_180.to_tag} is not the 200's ({ok.to_tag})"]
            notes = [e.text for e in record.ladder if e.arrow == "!!"]
            assert any(n.startswith(f"ignored: ACK To-tag {first_180.to_tag}") for n in notes)
            media.close()

    run(main())


def test_cancel_busy_hold_rules_and_untouched_contact(
    teams_emulator_factory: EmulatorFactory,
) -> None:
    pki = teams_emulator_factory.pki
    cert = pki.sbc_cert(SBC_FQDN)
    users = [{"number": "+14255550101", "behaviour": "no-answer"},
             {"number": "+14255550102", "behaviour": "busy"},
             {"number": NUMBER}]

    async def main() -> None:
        async with emulator_and_sbc(teams_emulator_factory, sbc_cert=cert, users=users) as (
            emu, sbc,
        ):
            conn = await SipConnection.connect(emu.address("sip"),
                                               client_context(pki.ca_file, cert))
            media = await SrtpPeer.open()
            # CANCEL while it rings: 200 for the CANCEL, 487 for the INVITE.
            inv = invite(number="+14255550101", sdp=sbc_sdp(media.port, [media.key]))
            await conn.send(inv.text)
            while (await conn.response(final=False)).status != 180:
                pass
            await conn.send(inv.text.replace("INVITE sip:", "CANCEL sip:", 1)
                            .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
                            .split("Content-Type:")[0] + "Content-Length: 0\r\n\r\n")
            statuses = set()
            while statuses != {200, 487}:
                response = await conn.response(final=False)
                if response.status >= 200:
                    statuses.add(response.status)
            assert (await emu.wait_call(inv.call_id)).state == "cancelled"
            # Busy: 486 with the Q.850 cause Teams sends (34), not the 17 carriers expect.
            busy = invite(number="+14255550102", sdp=sbc_sdp(media.port, [media.key]))
            await conn.send(busy.text)
            response = await conn.response()
            assert response.status == 486
            assert (response.headers.get("reason") or "").startswith("Q.850;cause=34;")
            # A held call: sendonly is refused (Teams understands only a=inactive).
            call_id, responses, _ = await _call_teams(conn, media, sbc.port)
            ok = responses[-1]
            await conn.send(_ack(call_id, ok, ok.to_tag))
            await emu.wait_call(call_id, "confirmed")
            contact = (ok.headers.get("contact") or "").strip("<>")
            common = {"call_id": call_id, "from_tag": ok.from_tag or "",
                      "from_": (ok.headers.get("from") or "").split(";tag=")[0],
                      "to": ok.headers.get("to") or "", "contact": f"<sip:{SBC_FQDN}:5061>"}
            held = sbc_sdp(media.port, [media.key], direction="sendonly", version=2)
            await conn.send(build_request("INVITE", contact, cseq=2, body=held, **common))
            response = await conn.response()
            assert response.status == 488
            assert "a=sendonly; Teams understands only a=inactive" in (
                response.headers.get("reason") or "")
            inactive = sbc_sdp(media.port, [media.key], direction="inactive", version=3)
            await conn.send(build_request("INVITE", contact, cseq=3, body=inactive, **common))
            response = await conn.response()
            assert response.status == 200 and b"a=inactive" in response.body
            await conn.send(_ack(call_id, response, ok.to_tag, cseq=3))
            # An in-dialog request whose Request-URI lost Teams' routing data (x-i, x-c).
            altered = contact.split(";x-i=")[0]
            await conn.send(build_request("BYE", altered, cseq=4, **common))
            response = await conn.response()
            assert response.status == 404
            record = emu.call(call_id)
            assert any("routing data was altered" in v for v in record.violations)
            assert any("a=sendonly" in v for v in record.violations)
            media.close()

    run(main())


def test_session_expires_without_refresh_ends_the_call(
    teams_emulator_factory: EmulatorFactory,
) -> None:
    """RFC 4028 10: the side that does not refresh sends BYE before the session expires."""
    pki = teams_emulator_factory.pki
    cert = pki.sbc_cert(SBC_FQDN)

    async def main() -> None:
        async with emulator_and_sbc(teams_emulator_factory, sbc_cert=cert,
                                    timing={"min_se": 2}) as (emu, sbc):
            conn = await SipConnection.connect(emu.address("sip"),
                                               client_context(pki.ca_file, cert))
            media = await SrtpPeer.open()
            call_id, responses, _ = await _call_teams(
                conn, media, sbc.port, extra=["Session-Expires: 3", "Supported: timer"])
            ok = responses[-1]
            assert ok.headers.get("session-expires") == "3;refresher=uac"
            assert ok.headers.get("require") == "timer"
            await conn.send(_ack(call_id, ok, ok.to_tag))
            await emu.wait_call(call_id, "confirmed")
            # One refresh (UPDATE) keeps it up...
            contact = (ok.headers.get("contact") or "").strip("<>")
            await conn.send(build_request(
                "UPDATE", contact, call_id=call_id, from_tag=ok.from_tag or "",
                from_=(ok.headers.get("from") or "").split(";tag=")[0],
                to=ok.headers.get("to") or "", cseq=2, contact=f"<sip:{SBC_FQDN}:5061>",
                extra=["Session-Expires: 3;refresher=uac"]))
            assert (await conn.response()).status == 200
            # ... then silence: BYE at 3 - min(32, 3/3) = 2 s after the refresh.
            await eventually(lambda: bool(sbc.requests("BYE")), 5, "the BYE")
            assert "session expired" in (sbc.requests("BYE")[0].headers.get("reason") or "")
            record = await emu.wait_call(call_id, "failed")
            assert record.refreshes == 1
            media.close()

    run(main())
