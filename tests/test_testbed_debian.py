"""Smoke tests of the test bed's Debian-packaged parts: each one really starts and really works."""

from __future__ import annotations

import re
from collections.abc import Callable

import dns.query
import dns.rcode
import dns.tsig
import dns.update
import pytest

from tests.testbed.dns import DnsServer, TsigKey
from tests.testbed.kamailio import Kamailio
from tests.testbed.rtpengine import Rtpengine
from tests.testbed.sipp import SippFactory, Transport, sip_options

PLAIN_SDP = (
    "v=0\r\n"
    "o=- 1 1 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 8 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=sendrecv\r\n"
)


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sipp_uac_completes_calls_against_sipp_uas(
    sipp_factory: SippFactory, transport: Transport
) -> None:
    uas = sipp_factory.uas(transport=transport)

    run = sipp_factory.uac(uas.address, calls=5, rate=20, transport=transport)

    assert (run.stats.successful, run.stats.failed) == (5, 0), run.stats
    assert run.stats.all_ok


def test_sipp_uas_answers_options(sipp_factory: SippFactory) -> None:
    uas = sipp_factory.uas()

    assert sip_options(uas.host, uas.port).startswith("SIP/2.0 200")


def test_rtpengine_answers_ping(rtpengine: Rtpengine) -> None:
    assert rtpengine.client().request("ping") == {"result": "pong"}


def test_rtpengine_offer_to_srtp_and_delete(rtpengine: Rtpengine) -> None:
    ng = rtpengine.client()
    call = {"call-id": "smoke-call-1", "from-tag": "tag-a"}

    offer = ng.command(
        "offer",
        {**call, "sdp": PLAIN_SDP, "transport-protocol": "RTP/SAVP", "DTLS": "off"},
    )

    sdp = offer["sdp"]
    media = re.search(r"^m=audio (\d+) (\S+) ", sdp, re.MULTILINE)
    assert media is not None, sdp
    assert media.group(2) == "RTP/SAVP"
    assert rtpengine.port_min <= int(media.group(1)) <= rtpengine.port_max
    assert re.search(r"^a=crypto:\d+ \S+ inline:", sdp, re.MULTILINE), sdp
    assert "a=fingerprint" not in sdp
    assert ng.list_calls() == ["smoke-call-1"]

    ng.command("delete", call)

    assert ng.list_calls() == []


def _add_a_record(
    server: DnsServer, key: TsigKey, host: str, address: str
) -> dns.update.UpdateMessage:
    update = dns.update.UpdateMessage(server.zone, keyring=key.keyring())
    update.add(host, 60, "A", address)
    return update


def test_dns_update_signed_with_tsig_is_applied(dns_server: DnsServer) -> None:
    update = _add_a_record(dns_server, dns_server.key, "a", "192.0.2.10")

    reply = dns.query.tcp(update, dns_server.host, port=dns_server.port, timeout=5)

    assert reply.rcode() == dns.rcode.NOERROR
    assert dns_server.records_of("a.sbc.test.") == {"192.0.2.10"}
    assert dns_server.records_of("keep.sbc.test.") == {"192.0.2.99"}


def test_dns_update_with_wrong_key_is_refused(dns_server: DnsServer) -> None:
    wrong = TsigKey.generate(name=dns_server.key_name)  # right name, wrong secret
    update = _add_a_record(dns_server, wrong, "b", "192.0.2.11")

    reply = dns_server.exchange_unverified(update)

    assert reply.rcode() == dns.rcode.NOTAUTH
    assert reply.tsig_error == dns.rcode.BADSIG
    assert dns_server.records_of("b.sbc.test.") == set()


def test_dns_update_with_wrong_key_raises_in_dnspython(dns_server: DnsServer) -> None:
    """What a dnspython client (like the operator) sees: the signature error, not a reply."""
    wrong = TsigKey.generate(name=dns_server.key_name)
    update = _add_a_record(dns_server, wrong, "c", "192.0.2.12")

    with pytest.raises(dns.tsig.PeerBadSignature):
        dns.query.tcp(update, dns_server.host, port=dns_server.port, timeout=5)
    assert dns_server.records_of("c.sbc.test.") == set()


def test_kamailio_relays_calls_between_sipp_agents(
    sipp_factory: SippFactory, kamailio_factory: Callable[..., Kamailio]
) -> None:
    uas = sipp_factory.uas()
    proxy = kamailio_factory(uas_port=uas.port)

    run = sipp_factory.uac(proxy.address, calls=5, rate=20, trace_messages=True)

    assert (run.stats.successful, run.stats.failed) == (5, 0), run.stats
    # The UAC only talked to the proxy, yet its 200s name the UAS as Contact: relayed answers.
    assert run.message_path is not None
    trace = run.message_path.read_text(errors="replace")
    assert trace.count(f"Contact: <sip:{uas.address};transport=UDP>") >= 5, trace[-3000:]
