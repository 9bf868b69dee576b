"""The Teams edge against the strict Teams emulator (``teams_sbc.emulator``), end to end.

The real ``teams-sbc run`` sits between sipp (the carrier, over UDP) and the emulator playing
sip, sip2 and sip3 on 127.0.0.1-3, with mutual TLS on both sides from the emulator's test PKI.
Calls carry SDES-SRTP SDP end to end (sipp offers and answers RTP/SAVP with a key of its own),
since the emulator refuses plain RTP and media is not wired into the proxy here; what is proven
is the signalling Microsoft judges: the emulator's records say whether each call broke any of
its rules (``CallRecord.ok``, ``violations``, ``acks_ignored``, ``rejections``).

Both directions and both tenants: OPTIONS both ways and the Active state, calls answered and
hung up from either side, hold and resume from either side, CANCEL, failover when sip is
refused, the ACK's To-tag repaired, ``;lr=on`` rewritten, REFER absent from Allow, a wrong
certificate refused, Microsoft's serverAuth-only certificate accepted, and a certificate
rotated during a call with the call going on.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from teams_sbc.emulator import CallRecord, EmulatorThread
from teams_sbc.pki import CertFiles
from tests.media.sipp_bed import FAST_MEDIA, carrier_frames
from tests.teams import sbc_edge
from tests.teams.sbc_edge import sipp_errors
from tests.testbed.process import free_port, free_port_range, wait_until
from tests.testbed.rtpengine import Rtpengine
from tests.testbed.sbc import SbcFactory, SbcProcess
from tests.testbed.sipp import SippFactory, SippUas, UacRun
from tests.testbed.teams_emulator import EmulatorFactory, TestPki

SCENARIOS = Path(__file__).parent / "scenarios"
MEDIA_SCENARIOS = Path(__file__).resolve().parents[1] / "testbed" / "scenarios"
FQDN = sbc_edge.FQDN
CONTOSO = f"contoso.{FQDN}"
FAB = f"fab.{FQDN}"
NUMBERS = {CONTOSO: ("030123456", "+4930123456"), FAB: ("040555123", "+4940555123")}


@dataclass
class Edge:
    sbc: SbcProcess
    emu: EmulatorThread
    pki: TestPki
    cert: CertFiles
    uas: SippUas | None
    sipp: SippFactory

    def status(self) -> dict[str, Any]:
        code, body = self.sbc.http("/teams")
        assert code == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def states(self) -> list[str]:
        return [p["state"] for p in self.status()["proxies"]]

    def call_from_carrier(self, scenario: str, number: str, calls: int = 1) -> UacRun:
        return self.sipp.uac(
            self.sbc.address("carrier"), calls=calls, rate=2, scenario=SCENARIOS / scenario,
            extra_args=["-s", number],
        )  # fmt: skip

    def only_call(self) -> CallRecord:
        calls = self.emu.calls()
        assert len(calls) == 1, [c.call_id for c in calls]
        return calls[0]

    def assert_clean(self, record: CallRecord) -> None:
        """The emulator found nothing to object to in this call."""
        assert record.ok, (record.state, record.failure, record.violations, record.ladder_text())
        assert not record.violations and record.acks_ignored == 0
        assert self.emu.summary()["rejections"] == {}


class EdgeFactory:
    def __init__(
        self, emulators: EmulatorFactory, sbc_factory: SbcFactory, sipp: SippFactory
    ) -> None:
        self.emulators = emulators
        self.sbc_factory = sbc_factory
        self.sipp = sipp

    def __call__(
        self,
        *,
        uas_scenario: str | None = None,
        uas_args: list[str] | None = None,
        cert: CertFiles | None = None,
        pki: TestPki | None = None,
        emulator: dict[str, Any] | None = None,
        media: dict[str, Any] | None = None,
        sbc_env: dict[str, str] | None = None,
        sbc_config: dict[str, Any] | None = None,
        **teams: Any,
    ) -> Edge:
        pki = pki or self.emulators.pki
        cert = cert or pki.sbc_cert(FQDN, sans=[FQDN, f"*.{FQDN}"])
        port = free_port()
        overrides: dict[str, Any] = {
            "trunks": [FQDN, f"*.{FQDN}"],
            "sbc_address": f"127.0.0.1:{port}",
            "options_interval": 0.5,
            "cert_file": str(pki.emulator.cert),
            "key_file": str(pki.emulator.key),
            "ca_file": str(pki.ca_file),
            **(emulator or {}),
        }
        emu = self.emulators.start(**overrides)
        uas = None
        if uas_scenario is not None:
            scenario = SCENARIOS / uas_scenario
            if not scenario.exists():  # the media tests' carrier
                scenario = MEDIA_SCENARIOS / uas_scenario
            uas = self.sipp.uas(scenario=scenario, extra_args=uas_args or [])
        proxies = [
            {"name": f"{name}.pstnhub.microsoft.com", "address": host, "port": p}
            for name in ("sip", "sip2", "sip3")
            for host, p in [emu.address(name)]
        ]
        sbc = self.sbc_factory(
            listeners=sbc_edge.listeners(cert, pki.ca_file, port),
            teams=sbc_edge.teams_section(uas.address if uas else None, proxies, **teams),
            tls_reload_seconds=0.2,
            **({"media": media} if media else {}),
            env=sbc_env,
            **(sbc_config or {}),
        )
        return Edge(sbc, emu, pki, cert, uas, self.sipp)


@pytest.fixture
def edges(
    teams_emulator_factory: EmulatorFactory, sbc_factory: SbcFactory, sipp_factory: SippFactory
) -> Iterator[EdgeFactory]:
    yield EdgeFactory(teams_emulator_factory, sbc_factory, sipp_factory)


# -- OPTIONS ----------------------------------------------------------------------------------


def test_options_both_ways_and_every_proxy_active(edges: EdgeFactory) -> None:
    edge = edges()
    wait_until(lambda: edge.states() == ["up", "up", "up"], 10, "sip, sip2, sip3 up")
    # Microsoft's own OPTIONS, sent to the FQDN our OPTIONS gave, answered 200 with Contact.
    wait_until(lambda: edge.emu.summary()["options_ok"] >= 3, 10, "the emulator's OPTIONS ok")
    summary = edge.emu.summary()
    assert summary["handshake_failures"] == 0 and summary["rejections"] == {}
    assert summary["options_answered_ok"] == summary["options_received"] >= 3
    result = next(r for r in edge.emu.options_results() if r.ok)
    assert result.fqdn == FQDN
    assert result.contact is not None and f"sip:{FQDN}:" in result.contact
    assert result.allow is not None and "REFER" not in result.allow
    scrape = edge.sbc.metrics()
    for name in ("sip", "sip2", "sip3"):
        assert scrape.value("sbc_teams_proxy_up", proxy=f"{name}.pstnhub.microsoft.com") == 1


# -- calls to Teams ------------------------------------------------------------------------------


@pytest.mark.parametrize("tenant", [CONTOSO, FAB])
def test_call_to_teams_answered_and_ended_by_the_carrier(edges: EdgeFactory, tenant: str) -> None:
    edge = edges()
    national, e164 = NUMBERS[tenant]
    run = edge.call_from_carrier("uac_call_to_teams.xml", national)
    assert run.stats.successful == 1, sipp_errors(run)
    record = edge.only_call()
    edge.assert_clean(record)
    assert record.direction == "to-teams" and record.number == e164 and record.trunk == tenant
    assert record.ended_by == "sbc" and record.proxy == "sip"
    # The INVITE as Teams got it: REFER out of Allow, our identification.
    invite = next(e.message for e in record.ladder if e.arrow == "<-" and
                  e.message.startswith("INVITE "))  # fmt: skip
    allow = next(line for line in invite.split("\r\n") if line.lower().startswith("allow:"))
    assert "INVITE" in allow and "REFER" not in allow
    assert "X-MS-SBC: teams-sbc/" in invite


def test_call_to_teams_ended_by_teams(edges: EdgeFactory) -> None:
    edge = edges()
    runs: list[UacRun] = []
    caller = threading.Thread(
        target=lambda: runs.append(edge.call_from_carrier("uac_teams_hangs_up.xml", "030123456"))
    )
    caller.start()
    edge.emu.wait_until(lambda e: any(c.state == "confirmed" for c in e.calls()), 15,
                        "the call confirmed")  # fmt: skip
    edge.emu.hangup(edge.only_call().call_id)
    caller.join(30)
    assert runs and runs[0].stats.successful == 1, runs
    record = edge.emu.wait_call(edge.only_call().call_id, "ended")
    edge.assert_clean(record)
    assert record.ended_by == "emulator"


def test_hold_and_resume_from_the_carrier_reach_teams_as_inactive(edges: EdgeFactory) -> None:
    edge = edges()
    run = edge.call_from_carrier("uac_hold_resume.xml", "040555123")
    assert run.stats.successful == 1, sipp_errors(run)
    record = edge.only_call()
    edge.assert_clean(record)  # strict_hold: a=sendonly would have been 488 and a violation
    reinvites = [e.message for e in record.ladder if e.arrow == "<-" and
                 e.message.startswith("INVITE ") and "CSeq: 2 INVITE" in e.message]  # fmt: skip
    assert reinvites and "a=inactive" in reinvites[0] and "a=sendonly" not in reinvites[0]


def test_cancel_of_a_call_to_teams(edges: EdgeFactory) -> None:
    edge = edges(emulator={"users": [{"number": "+4930123999", "behaviour": "no-answer"}],
                           "unknown_numbers": "answer"})  # fmt: skip
    run = edge.call_from_carrier("uac_cancel_teams.xml", "030123999")
    assert run.stats.successful == 1, sipp_errors(run)
    record = edge.emu.wait_call(edge.only_call().call_id, "cancelled")
    assert not record.violations


def test_busy_teams_user_reaches_the_carrier_as_cause_17(edges: EdgeFactory) -> None:
    edge = edges(emulator={"users": [{"number": "+4930123777", "behaviour": "busy"}],
                           "unknown_numbers": "answer"})  # fmt: skip
    run = edge.call_from_carrier("uac_busy_teams.xml", "030123777")  # sipp checks cause=17
    assert run.stats.successful == 1, sipp_errors(run)
    record = edge.emu.wait_call(edge.only_call().call_id, "rejected")
    assert record.final_status == 486 and not record.violations


def test_ack_with_a_180s_tag_is_repaired_and_the_call_lives(edges: EdgeFactory) -> None:
    edge = edges()
    run = edge.call_from_carrier("uac_ack_with_180_tag.xml", "030123456")
    assert run.stats.successful == 1, sipp_errors(run)
    record = edge.only_call()
    edge.assert_clean(record)  # the emulator would ignore a wrong ACK and tear the call down
    # Teams forked: the first 180 (whose tag the carrier used) is not the 200's device.
    assert record.provisional_tags[0] != record.answered_tag
    # Each ACK sipp sends (again for each 200 retransmitted meanwhile) is repaired.
    assert edge.sbc.metrics().value("sbc_teams_ack_repairs_total") >= 1


def test_failover_when_sip_refuses(edges: EdgeFactory) -> None:
    edge = edges()
    wait_until(lambda: edge.states() == ["up", "up", "up"], 10, "all proxies up")
    edge.emu.set_failure("sip", "refuse")
    run = edge.call_from_carrier("uac_call_to_teams.xml", "030123456")
    assert run.stats.successful == 1, sipp_errors(run)
    record = edge.only_call()
    edge.assert_clean(record)
    assert record.proxy == "sip2"
    wait_until(lambda: edge.states()[0] == "down", 10, "sip marked down")
    # While sip is down new calls go to sip2 first.
    run = edge.call_from_carrier("uac_call_to_teams.xml", "040555123")
    assert run.stats.successful == 1 and all(c.proxy == "sip2" for c in edge.emu.calls())


def test_failover_when_sip_answers_503(edges: EdgeFactory) -> None:
    edge = edges()
    edge.emu.set_failure("sip", "503")
    run = edge.call_from_carrier("uac_call_to_teams.xml", "030123456")
    assert run.stats.successful == 1, sipp_errors(run)
    ok = [c for c in edge.emu.calls() if c.ok]
    assert len(ok) == 1 and ok[0].proxy == "sip2"
    # Whether the call or a keepalive met the 503 first, its Retry-After keeps sip out of new
    # calls (and a call that met it moved on to sip2).
    assert edge.status()["proxies"][0]["retry_after_seconds"] > 0


# -- calls from Teams ------------------------------------------------------------------------------


@pytest.mark.parametrize("tenant", [CONTOSO, FAB])
def test_call_from_teams_held_resumed_and_ended_by_teams(edges: EdgeFactory, tenant: str) -> None:
    edge = edges(uas_scenario="uas_srtp.xml")
    call_id = edge.emu.place_call(NUMBERS[tenant][1], trunk=tenant)
    edge.emu.wait_call(call_id, "confirmed", timeout=10)
    edge.emu.hold(call_id, "inactive")
    edge.emu.wait_until(lambda e: e.call(call_id).hold_direction == "inactive", 10, "held")
    edge.emu.resume(call_id)
    edge.emu.wait_until(lambda e: e.call(call_id).hold_direction == "sendrecv", 10, "resumed")
    edge.emu.hangup(call_id)
    record = edge.emu.wait_call(call_id, "ended")
    edge.assert_clean(record)
    assert record.direction == "from-teams" and record.trunk == tenant
    assert edge.uas is not None
    wait_until(lambda: edge.uas is not None and edge.uas.stats().successful >= 1, 10,
               "the carrier's UAS to finish the call")  # fmt: skip


def test_call_from_teams_ended_by_the_carrier(edges: EdgeFactory) -> None:
    edge = edges(uas_scenario="uas_srtp_hangs_up.xml")
    call_id = edge.emu.place_call("+4930123456", trunk=CONTOSO)
    record = edge.emu.wait_call(call_id, "ended", timeout=15)
    edge.assert_clean(record)
    assert record.ended_by == "sbc"


def test_microsofts_serverauth_only_certificate_is_accepted(
    edges: EdgeFactory, tmp_path: Path
) -> None:
    """Microsoft's 2026 certificates lack clientAuth: the SBC's TLS server takes them."""
    pki = TestPki(tmp_path / "pki-2026", emulator_client_auth=False)
    edge = edges(uas_scenario="uas_srtp.xml", pki=pki)
    call_id = edge.emu.place_call("+4930123456", trunk=CONTOSO, hangup_after=0.3)
    record = edge.emu.wait_call(call_id, "ended", timeout=15)
    edge.assert_clean(record)
    assert edge.sbc.metrics().value("sbc_tls_handshake_failures_total", listener="teams") == 0


# -- certificates -------------------------------------------------------------------------------


def test_a_certificate_from_another_ca_is_refused_by_microsoft(edges: EdgeFactory) -> None:
    pki_cert = None
    edge = edges(cert=pki_cert or None)  # first a good one, to compare
    wait_until(lambda: edge.states() == ["up", "up", "up"], 10, "all proxies up")
    bad = edges.emulators.pki.sbc_cert(FQDN, name="wrong-ca", sans=[FQDN, f"*.{FQDN}"],
                                       wrong_ca=True)  # fmt: skip
    other = edges(cert=bad)
    wait_until(lambda: other.states() == ["down", "down", "down"], 10, "all proxies down")
    assert other.emu.summary()["handshake_failures"] >= 1
    assert all(p["last_error"] for p in other.status()["proxies"])


def test_certificate_rotated_during_a_call(edges: EdgeFactory) -> None:
    edge = edges(uas_scenario="uas_srtp.xml")
    call_id = edge.emu.place_call("+4930123456", trunk=CONTOSO)
    edge.emu.wait_call(call_id, "confirmed", timeout=10)
    renewed = edge.pki.sbc_cert(FQDN, name="renewed", sans=[FQDN, f"*.{FQDN}"])
    edge.cert.key.write_bytes(renewed.key.read_bytes())
    edge.cert.cert.write_bytes(renewed.cert.read_bytes())
    wait_until(
        lambda: any(r.get("msg") == "TLS certificate reloaded" for r in edge.sbc.log_records()),
        10, "the SBC to reload its certificate",
    )  # fmt: skip
    # New connections get the new certificate.
    assert _served_serial(edge) == _serial_of(renewed)
    # The call made before goes on: hold, resume and hang up over its connections.
    edge.emu.hold(call_id, "inactive")
    edge.emu.wait_until(lambda e: e.call(call_id).hold_direction == "inactive", 10, "held")
    edge.emu.hangup(call_id)
    record = edge.emu.wait_call(call_id, "ended")
    edge.assert_clean(record)


def _serial_of(cert: CertFiles) -> int:
    return x509.load_pem_x509_certificate(cert.cert.read_bytes()).serial_number


def _served_serial(edge: Edge) -> int:
    """The serial of the certificate the SBC's Teams listener serves a new connection."""
    ctx = ssl.create_default_context(cafile=str(edge.pki.ca_file))
    ctx.load_cert_chain(edge.pki.emulator.cert, edge.pki.emulator.key)
    with (
        socket.create_connection(("127.0.0.1", edge.sbc.port("teams")), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=CONTOSO) as sock,
    ):
        der = sock.getpeercert(binary_form=True) or b""
    return x509.load_der_x509_certificate(der).serial_number


# -- with media: rtpengine between RTP and Teams' SRTP -----------------------------------------


def _media_args(edge_sipp: SippFactory) -> list[str]:
    """sipp's media: plain RTP on loopback, echoing what arrives; its stream file in place."""
    (edge_sipp.log_dir / "carrier.pcmu").write_bytes(b"".join(carrier_frames()))
    return ["-mi", "127.0.0.1", "-mp", str(free_port_range(4, "127.0.0.1")), "-rtp_echo"]


def test_call_from_teams_with_srtp_through_rtpengine_both_ways(
    edges: EdgeFactory, rtpengine_factory: Callable[..., Rtpengine]
) -> None:
    """The whole chain: the emulator's SRTP (Microsoft's SDP: candidates, MKI key) through
    rtpengine to the carrier's plain RTP and back; the emulator decrypts the carrier's echo of
    its own test pattern."""
    engine = rtpengine_factory()
    edge = edges(
        uas_scenario="uas_carrier_media.xml",
        uas_args=_media_args(edges.sipp),
        media={"rtpengines": [{"address": engine.ng_address}], **FAST_MEDIA},
    )
    call_id = edge.emu.place_call("+4940555123", trunk=FAB)
    edge.emu.wait_call(call_id, "confirmed", timeout=10)
    stats = edge.emu.wait_media(call_id, sent=20, decrypted=20, timeout=10)
    assert stats.auth_failures == 0 and stats.payload_ok > 0  # its pattern, echoed intact
    edge.emu.hangup(call_id)
    record = edge.emu.wait_call(call_id, "ended")
    edge.assert_clean(record)
    assert record.trunk == FAB


def test_call_to_teams_with_rtp_through_rtpengine_both_ways(
    edges: EdgeFactory, rtpengine_factory: Callable[..., Rtpengine]
) -> None:
    engine = rtpengine_factory()
    edge = edges(media={"rtpengines": [{"address": engine.ng_address}], **FAST_MEDIA})
    run = edges.sipp.uac(
        edge.sbc.address("carrier"), calls=1, scenario=SCENARIOS / "uac_media_to_teams.xml",
        extra_args=["-s", "030123456", *_media_args(edges.sipp)],
    )  # fmt: skip
    assert run.stats.successful == 1, sipp_errors(run)
    record = edge.only_call()
    edge.assert_clean(record)
    assert record.media is not None
    # The carrier's RTP reached Teams as SRTP that decrypts; Teams' pattern came back intact
    # through the carrier's echo.
    assert record.media.decrypted > 0 and record.media.auth_failures == 0
    assert record.media.payload_ok > 0
    # Teams forks (the 183 and the 200 come with different To-tags): after the 200 the
    # answering fork still gets the carrier's audio and its own comes back, not just the
    # early-media packets (docs/media.md, "Forked answers").
    assert record.media.payload_ok >= 0.8 * record.media.sent, record.media
    assert record.media.payload_other > 0, record.media  # the carrier's own RTP, decrypted
