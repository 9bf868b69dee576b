"""The emulator's sans-IO core on a virtual clock: exact times of the forked answer, of the 2xx
retransmissions and of the teardown when the ACK carries the wrong To-tag."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from teams_sbc.emulator import EmulatorConfig, EmulatorCore, Identity, MediaPlan, MediaStop
from teams_sbc.emulator.identity import name_matches, trunk_configured
from teams_sbc.media.srtp import SdesKey
from teams_sbc.sip import Request, Response, parse_message
from tests.emulator.peers import SBC_FQDN, invite, sbc_sdp
from tests.testbed.teams_emulator import EmulatorFactory

T1 = 0.05
T2 = 0.4


def make_core(factory: EmulatorFactory, **overrides: object) -> EmulatorCore:
    ports = itertools.count(40000, 2)
    config: EmulatorConfig = factory.config(trunks=[SBC_FQDN], sbc_address="127.0.0.1:5061",
                                            **overrides)
    counter = itertools.count()
    core = EmulatorCore(config, allocate_media=lambda host: next(ports),
                        token=lambda n: f"{next(counter):0{2 * n}x}")
    core.connection_opened(1, "sip", Identity(SBC_FQDN, (SBC_FQDN,)), ("127.0.0.1", 50000))
    return core


def drain(core: EmulatorCore) -> list[Request | Response]:
    out = [parse_message(o.data) for o in core.outbox]
    core.outbox.clear()
    return out


def run_until(core: EmulatorCore, until: float) -> list[tuple[float, Request | Response]]:
    """Fire every timer up to ``until``; what was sent, with the virtual time it left."""
    sent: list[tuple[float, Request | Response]] = []
    while (deadline := core.next_deadline()) is not None and deadline <= until:
        core.advance(deadline)
        sent += [(deadline, m) for m in drain(core)]
    return sent


def test_forked_answer_then_ack_with_a_provisional_tag_ends_in_bye(
    teams_emulator_factory: EmulatorFactory,
) -> None:
    core = make_core(teams_emulator_factory)
    key = SdesKey.generate()
    inv = invite(sdp=sbc_sdp(30000, [key]))
    core.receive(1, inv.text.encode(), now=100.0)
    (trying,) = drain(core)
    assert isinstance(trying, Response) and trying.status == 100

    timing = core.config.timing
    sent = run_until(core, 100.0 + timing.answer_after)
    statuses = [(round(t - 100.0, 6), m.status) for t, m in sent if isinstance(m, Response)]
    assert statuses == [
        (timing.ring_after, 180), (timing.ring_after, 180),
        (timing.progress_after, 183), (timing.answer_after, 200),
    ]
    ringing = [m for _, m in sent if isinstance(m, Response) and m.status == 180]
    progress = next(m for _, m in sent if isinstance(m, Response) and m.status == 183)
    ok = next(m for _, m in sent if isinstance(m, Response) and m.status == 200)
    tags = [m.to_tag for m in ringing]
    assert len(set(tags)) == 2, "each fork rings with its own To-tag"
    assert progress.to_tag == tags[0] and progress.body, "one 183 with SDP, from the first fork"
    assert ok.to_tag == tags[1] != progress.to_tag, "the 200 comes from another fork"
    assert b"RTP/SAVP" in ok.body and b"a=crypto:" in ok.body
    plans = [e for e in core.media_events if isinstance(e, MediaPlan)]
    assert plans and plans[-1].recv_key == key and plans[-1].remote == ("127.0.0.1", 30000)

    # The seed's voipswitch case: the ACK carries the first 180's To-tag.
    ack = (
        f"ACK {ok.headers.get('contact', ).strip('<>')} SIP/2.0\r\n"
        "Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKack1\r\n"
        f"From: {ok.headers.get('from')}\r\nTo: <sip:+14255550123@{SBC_FQDN}>;tag={tags[0]}\r\n"
        f"Call-ID: {inv.call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    )
    answered_at = 100.0 + timing.answer_after
    core.receive(1, ack.encode(), now=answered_at + 0.01)
    assert drain(core) == []
    record = core.record(inv.call_id)
    assert record.acks_ignored == 1 and record.state == "answered"

    later = run_until(core, answered_at + 64 * T1 + 1)
    retransmissions = [round(t - answered_at, 6) for t, m in later
                       if isinstance(m, Response) and m.status == 200]
    # RFC 3261 13.3.1.4: T1, then doubling up to T2, until 64*T1.
    expected, at, interval = [], T1, T1
    while at < 64 * T1:
        expected.append(round(at, 6))
        interval = min(2 * interval, T2)
        at += interval
    assert retransmissions == expected
    (bye_at, bye), = [(t, m) for t, m in later if isinstance(m, Request)]
    assert bye.method == "BYE" and round(bye_at - answered_at, 6) == 64 * T1
    assert bye.from_tag == tags[1], "the BYE is in the 200's dialog"
    assert 'cause=102' in (bye.headers.get("reason") or "")
    assert bye.uri == f"sip:+12065550100@{SBC_FQDN}:5061;transport=tls"
    assert record.failure is not None and "no ACK with the 200's To-tag" in record.failure
    assert any(isinstance(e, MediaStop) for e in core.media_events)


def test_ack_with_the_200s_tag_confirms(teams_emulator_factory: EmulatorFactory) -> None:
    core = make_core(teams_emulator_factory, forks=3)
    inv = invite(sdp=sbc_sdp(30000, [SdesKey.generate()]))
    core.receive(1, inv.text.encode(), now=0.0)
    sent = run_until(core, 1.0)
    ok = next(m for _, m in sent if isinstance(m, Response) and m.status == 200)
    assert len({m.to_tag for _, m in sent if isinstance(m, Response) and m.status == 180}) == 3
    ack = (
        f"ACK {ok.headers.get('contact', ).strip('<>')} SIP/2.0\r\n"
        "Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKack2\r\n"
        f"From: {ok.headers.get('from')}\r\nTo: {ok.headers.get('to')}\r\n"
        f"Call-ID: {inv.call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    )
    core.receive(1, ack.encode(), now=1.0)
    assert core.record(inv.call_id).state == "confirmed", core.record(inv.call_id).ladder_text()
    assert [m for _, m in run_until(core, 10.0)] == [], "no retransmission, no BYE"


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("sbc.example.test", "sbc.example.test", True),
        ("sbc.example.test", "SBC.Example.Test.", True),
        ("*.carrier.test", "t1.carrier.test", True),
        ("*.carrier.test", "carrier.test", False),
        ("*.carrier.test", "a.t1.carrier.test", False),
        ("t*.carrier.test", "t1.carrier.test", False),
    ],
)
def test_certificate_name_matching(pattern: str, name: str, matches: bool) -> None:
    assert name_matches(pattern, name) is matches


def test_trunks_with_a_carrier_base() -> None:
    assert trunk_configured(["*.carrier.test"], "t1.carrier.test")
    assert not trunk_configured(["*.carrier.test", "sbc.other.test"], "carrier.test")
    assert trunk_configured([], "anything.test")


def test_emulator_config_refuses_unknown_keys(tmp_path: Path) -> None:
    from teams_sbc.emulator import EmulatorConfigError, parse_emulator_config

    with pytest.raises(EmulatorConfigError, match="trunkz"):
        parse_emulator_config({"cert_file": "a", "key_file": "b", "ca_file": "c", "trunkz": []})
    with pytest.raises(EmulatorConfigError, match=r"E\.164"):
        parse_emulator_config({"cert_file": "a", "key_file": "b", "ca_file": "c",
                               "users": [{"number": "0123"}]})


def test_emulator_config_doc_is_current() -> None:
    from teams_sbc.emulator.config_doc import render

    path = Path(__file__).resolve().parents[2] / "docs" / "emulator-config.md"
    assert path.read_text() == render(), (
        "docs/emulator-config.md is stale: run "
        "`uv run python -m teams_sbc.emulator.config_doc > docs/emulator-config.md`"
    )
