"""Messages: parsing the recorded vectors, lossless serialisation, editing headers, errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from teams_sbc.sip import message as message_module
from teams_sbc.sip import uri as uri_module
from teams_sbc.sip.errors import MessageTooLarge, SipParseError, VersionNotSupported
from teams_sbc.sip.headers import CSeq
from teams_sbc.sip.message import (
    DEFAULT_MAX_FORWARDS,
    Header,
    Headers,
    Request,
    Response,
    error_response,
    make_response,
    parse_message,
)
from teams_sbc.sip.uri import SipUri, TelUri

VECTORS = Path(__file__).parent / "vectors"
VALID = sorted(VECTORS.glob("*.sip"))
INVALID = sorted((VECTORS / "invalid").glob("*.sip"))
# Vectors whose first serialisation is not byte-identical, on purpose (see message.py):
NORMALISED = {"bare_lf_bye.sip"}  # bare LF -> CRLF in the header section
NO_LENGTH = {"no_content_length_ack.sip"}  # Content-Length gets appended


def load(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def parse(data: bytes | str) -> Request | Response:
    if isinstance(data, str):
        data = data.replace("\n", "\r\n").encode()
    return parse_message(data)


def request(data: bytes | str) -> Request:
    msg = parse(data)
    assert isinstance(msg, Request)
    return msg


def response(data: bytes | str) -> Response:
    msg = parse(data)
    assert isinstance(msg, Response)
    return msg


SIMPLE = """\
INVITE sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds
Max-Forwards: 70
To: Bob <sip:bob@biloxi.example.com>
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.atlanta.example.com
CSeq: 314159 INVITE
Contact: <sip:alice@pc33.atlanta.example.com>
Content-Length: 0

"""


# --- the vectors -----------------------------------------------------------------------------


def test_there_are_vectors() -> None:
    assert len(VALID) >= 15
    assert len(INVALID) >= 10


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_vector_round_trips(path: Path) -> None:
    data = path.read_bytes()
    msg = parse_message(data)
    out = msg.to_bytes()
    if path.name in NORMALISED:
        assert out == data.replace(b"\n", b"\r\n")
    elif path.name in NO_LENGTH:
        assert out == data[:-2] + b"Content-Length: 0\r\n\r\n"
    else:
        assert out == data
    # Whatever the first pass did, the result is stable from then on.
    again = parse_message(out)
    assert again.to_bytes() == out
    assert bytes(again) == out


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_vector_accessors(path: Path) -> None:
    msg = parse_message(path.read_bytes())
    assert msg.call_id
    assert msg.top_via.branch and msg.top_via.branch.startswith("z9hG4bK")
    assert msg.vias[0] == msg.top_via
    assert isinstance(msg.cseq, CSeq)
    assert msg.from_tag
    assert msg.from_addr.uri is not None
    assert msg.to_addr.uri is not None
    if isinstance(msg, Request):
        assert msg.cseq.method == msg.method
        assert msg.ruri is not None
        assert msg.max_forwards is None or 0 <= msg.max_forwards <= 255


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_vector_status_and_partial(path: Path) -> None:
    status = int(path.name.split(".")[-2])
    with pytest.raises(SipParseError) as info:
        parse_message(path.read_bytes())
    err = info.value
    assert err.status == status
    assert err.is_request is True
    assert err.reason and "\r" not in err.reason and "\n" not in err.reason
    assert err.partial is not None
    answer = error_response(err)
    if "missing" in path.name:
        assert answer is None  # a response could not be matched without Via / Call-ID
        return
    assert answer is not None
    assert answer.status == status
    assert answer.reason == err.reason
    wire = answer.to_bytes()
    assert wire.split(b"\r\n")[1].startswith(b"Via: SIP/2.0/UDP")
    assert b"\r\nCall-ID: invalid-1@192.0.2.5\r\n" in wire
    assert wire.endswith(b"\r\nContent-Length: 0\r\n\r\n")


def test_teams_invite_details() -> None:
    data = load("teams_invite.sip")
    assert len(data) > 1500
    msg = request(data)
    assert msg.method == "INVITE"
    assert msg.uri == "sip:+14255550123@sbc1.contoso.com:5061;user=phone;transport=tls"
    ruri = msg.ruri
    assert isinstance(ruri, SipUri) and ruri.transport == "tls" and ruri.user == "+14255550123"
    assert msg.call_id == "9f6a1e2e7b8c4d3f9a0b1c2d3e4f5a6b"
    assert msg.cseq == CSeq(1, "INVITE")
    assert msg.top_via.transport == "TLS"
    assert msg.top_via.has_param("rport")
    assert msg.from_addr.display_name == "Alice Teams"
    assert msg.to_tag is None
    assert msg.max_forwards == 70
    assert msg.content_length == len(msg.body)
    assert msg.body.startswith(b"v=0\r\n") and b"a=candidate:" in msg.body
    assert msg.content_type == "application/sdp"
    # Upper-case names as Teams writes them, found by any spelling.
    assert msg.headers.get("x-ms-sbc-host") == "sbc1.contoso.com"
    assert msg.headers.values("Allow")[-1] == "PRACK"
    assert msg.headers[0].name == "FROM"
    pai = msg.headers.get("P-Asserted-Identity")
    assert pai == "<tel:+14255550100>"


def test_torture_vector_values() -> None:
    msg = request(load("torture_valid.sip"))
    headers = msg.headers
    assert msg.to_tag == "7734xyz"
    assert msg.to_addr.display_name == 'Wile E. "Genius" Coyote'
    assert msg.from_addr.display_name == "Road \\ Runner"
    assert msg.from_tag == "beepbeep1"
    assert msg.max_forwards == 42
    assert msg.cseq == CSeq(17, "INVITE")
    assert headers.get("subject") == ""
    assert headers.get("x-acme-note") == "first part of a long note and its second part"
    assert headers.get("X-Empty-List") == ";;,,;;,;"
    assert [v.branch for v in msg.vias] == ["z9hG4bKfold77", "z9hG4bKhop2", "z9hG4bKhop1"]
    assert msg.vias[1].host == "hop2.acme.example.net"
    contact = headers.values("contact")
    assert len(contact) == 1 and contact[0].endswith("q = 0.5")
    assert headers.values("route") == ["<sip:proxy.acme.example.net;lr;some=value;flag>"]
    assert len(msg.body) == msg.content_length
    ruri = msg.ruri
    assert isinstance(ruri, SipUri) and ruri.has_param("extraparam")


def test_tel_request_uri() -> None:
    msg = request(load("tel_invite.sip"))
    assert isinstance(msg.ruri, TelUri)
    assert msg.ruri.param("ext") == "1234"


def test_ipv6_vector() -> None:
    msg = request(load("ipv6_register.sip"))
    assert msg.top_via.host == "[2001:db8::9:1]"
    assert msg.top_via.port == 5070
    assert msg.top_via.received == "2001:db8::9:255"
    ruri = msg.ruri
    assert isinstance(ruri, SipUri) and ruri.bare_host == "2001:db8::10" and ruri.port == 5060
    contact = msg.headers.values("m")
    assert contact == [
        '"Alice (v6)" <sip:alice@[2001:db8::9:1]:5070;transport=udp>;expires=3600;q=0.7'
    ]


def test_record_route_values_across_lines() -> None:
    msg = response(load("teams_200_multi_rr.sip"))
    assert msg.status == 200 and msg.reason == "OK"
    assert msg.headers.values("Record-Route") == [
        "<sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr>",
        "<sip:sbc1.contoso.com:5061;transport=tls;lr;r2=on>",
        "<sip:10.1.0.5:5060;lr;r2=on>",
        "<sip:edge.carrier.example:5060;lr>",
    ]
    assert len(msg.headers.get_all("record-route")) == 3


def test_auth_headers_are_never_split() -> None:
    msg = response(load("auth_407.sip"))
    (challenge,) = msg.headers.values("Proxy-Authenticate")
    assert challenge.startswith("Digest realm=") and challenge.endswith("algorithm=MD5")
    assert msg.headers.values("www-authenticate") == ['Digest realm="b, c", nonce="x"']
    assert msg.headers.values("Date") == ["Thu, 26 Nov 2026 10:00:00 GMT"]


def test_compact_forms_in_a_message() -> None:
    msg = response(load("compact_ringing.sip"))
    assert msg.call_id == "compact-ringing-1@192.0.2.20"
    assert msg.to_tag == "cmp-t"
    assert msg.headers.values("supported") == ["100rel", "timer"]
    assert msg.content_length == 0
    refer = request(load("refer_compact.sip"))
    assert refer.headers.get(
        "Refer-To",
    ).startswith("<sip:carol@")  # type: ignore[union-attr]
    assert refer.headers.get("referred-by") == "<sip:alice@atlanta.example.com>"
    assert refer.headers.get("event") == "refer"


def test_more_unusual_but_valid() -> None:
    urn = "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
    instance = f'<sip:a@192.0.2.9;ob>;+sip.instance="<{urn}>";reg-id=1'
    text = SIMPLE.replace(
        "Contact: <sip:alice@pc33.atlanta.example.com>", f"Contact: {instance}, <sip:b@x>"
    )
    text = text.replace("Content-Length: 0", "Content-Length: 0\nl: 0\nX-Long: " + "z" * 5000)
    text = text.replace("To: Bob <sip:bob@biloxi.example.com>", "To: <http://bob.example/>")
    msg = request(text)
    assert msg.headers.values("contact") == [instance, "<sip:b@x>"]
    assert msg.content_length == 0
    assert len(msg.headers.get("x-long") or "") == 5000
    assert msg.to_tag is None  # the To URI is only parsed when someone asks for it
    with pytest.raises(SipParseError) as info:
        _ = msg.to_addr.uri
    assert info.value.status == 416
    folded_length = SIMPLE.replace("Content-Length: 0", "Content-Length:\n 0")
    assert request(folded_length).content_length == 0


# --- editing and serialising -------------------------------------------------------------------


def test_push_via_changes_only_that_line() -> None:
    data = load("sipp_uac_invite.sip")
    msg = request(data)
    msg.headers.prepend("via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKsbc1;rport")
    out = msg.to_bytes()
    first_line_end = data.index(b"\r\n") + 2
    assert out == (
        data[:first_line_end]
        + b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKsbc1;rport\r\n"
        + data[first_line_end:]
    )
    assert msg.top_via.branch == "z9hG4bKsbc1"  # cache invalidated
    assert len(msg.vias) == 2


def test_prepend_goes_above_existing_header_of_that_name() -> None:
    msg = response(load("teams_200_multi_rr.sip"))
    msg.headers.prepend("Record-Route", "<sip:new.example;lr>")
    keys = msg.headers.keys()
    assert keys.index("record-route") == 2  # after the two Vias, before the old Record-Routes
    assert msg.headers.values("record-route")[0] == "<sip:new.example;lr>"
    fresh = Headers([("To", "<sip:a@b>")])
    fresh.prepend("Via", "SIP/2.0/UDP x;branch=z9hG4bK1")
    assert fresh.keys() == ["via", "to"]


def test_pop_top_via_from_comma_joined_line() -> None:
    data = load("sipp_uas_200.sip")
    msg = response(data)
    popped = msg.headers.remove_first_value("via")
    assert popped == "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKproxy1;rport=5061;received=127.0.0.1"
    out = msg.to_bytes()
    assert out == data.replace(
        b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKproxy1;rport=5061;received=127.0.0.1, ",
        b"Via: ",
    )
    assert msg.top_via.branch == "z9hG4bK-12345-1-0"
    assert (
        msg.headers.remove_first_value("via")
        == "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-12345-1-0"
    )
    assert "via" not in msg.headers
    assert msg.headers.remove_first_value("via") is None


def test_pop_via_keeps_compact_name_and_folded_rest() -> None:
    msg = request(load("torture_valid.sip"))
    # The first Via line holds one value: the line goes.
    assert msg.headers.remove_first_value("Via") is not None
    assert msg.top_via.branch == "z9hG4bKhop2"
    # The compact "v:" line holds two (with a fold inside): the rest stays, name as written.
    msg.headers.remove_first_value("v")
    lines = [h.raw for h in msg.headers if h.key == "via"]
    assert lines == [b"v: SIP  /    2.0   / UDP  192.0.2.78   ; branch=\r\n z9hG4bKhop1"]
    assert msg.top_via.branch == "z9hG4bKhop1"
    assert parse_message(msg.to_bytes()).to_bytes() == msg.to_bytes()


def test_header_access_api() -> None:
    headers = request(SIMPLE).headers
    assert len(headers) == 8
    assert headers.get("call-id") == headers.get("i") == headers.get("CALL-ID")
    assert headers.get("absent") is None
    assert headers.get_all("absent") == []
    assert headers.values("absent") == []
    assert "From" in headers and "f" in headers and "x" not in headers and 5 not in headers
    assert headers.index("cseq") == 5 and headers.index("nope") == -1
    assert headers.count("via") == 1
    first = headers[0]
    assert first.key == "via" and first.name == "Via" and first.raw.startswith(b"Via: ")
    assert [h.key for h in headers][:3] == ["via", "max-forwards", "to"]
    assert headers.header_lines("to")[0].value == "Bob <sip:bob@biloxi.example.com>"
    assert "Headers(" in repr(headers) and "Header('via'" in repr(first)


def test_replace_set_remove_insert() -> None:
    msg = request(SIMPLE)
    headers = msg.headers
    headers.set("Max-Forwards", "69")
    assert headers.get("max-forwards") == "69" and headers.index("max-forwards") == 1
    headers.replace("Route", "<sip:p1.example;lr>", "<sip:p2.example;lr>")  # none before: appended
    assert headers.get_all("route") == ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]
    assert headers.remove("route") == 2 and headers.remove("route") == 0
    headers.insert("contact", "Record-Route", "<sip:rr.example;lr>")
    assert headers.keys()[headers.index("record-route") + 1] == "contact"
    headers.insert(0, "X-First", "1")
    assert headers[0].raw == b"X-First: 1"
    headers.insert("nothing-like-it", "X-Last", "2")
    assert headers[len(headers) - 1].raw == b"X-Last: 2"
    headers.append("Supported", "timer")
    headers.append_header(Header(headers[0].key, b"x-first:3"))
    assert headers.get_all("x-first") == ["1", "3"]
    headers.replace("x-first")
    assert "x-first" not in headers
    wire = msg.to_bytes()
    assert b"\r\nMax-Forwards: 69\r\n" in wire and b"\r\nSupported: timer\r\n" in wire


def test_modified_headers_use_conventional_names() -> None:
    msg = request(SIMPLE)
    msg.headers.set("i", "new-call-id")
    msg.headers.set("cseq", "314160 INVITE")
    msg.headers.set("www-authenticate", 'Digest realm="x"')
    wire = msg.to_bytes()
    assert b"\r\nCall-ID: new-call-id\r\n" in wire
    assert b"\r\nCSeq: 314160 INVITE\r\n" in wire
    assert b'\r\nWWW-Authenticate: Digest realm="x"\r\n' in wire


def test_header_injection_is_refused() -> None:
    headers = request(SIMPLE).headers
    with pytest.raises(ValueError, match="CR or LF"):
        headers.set("Subject", "hi\r\nVia: evil")
    with pytest.raises(ValueError, match="bad header name"):
        headers.append("Bad Name", "x")
    with pytest.raises(ValueError, match="bad header name"):
        Header.make("", "x")


def test_accessor_caches_follow_changes() -> None:
    msg = request(SIMPLE)
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert msg.cseq.number == 314159
    assert msg.from_tag == "1928301774"
    assert msg.to_tag is None
    msg.headers.set("Call-ID", "other")
    msg.headers.set("CSeq", "2 INVITE")
    msg.headers.set("To", "Bob <sip:bob@biloxi.example.com>;tag=xyz")
    msg.headers.set("From", "<sip:alice@atlanta.example.com>;tag=abc")
    assert msg.call_id == "other"
    assert msg.cseq == CSeq(2, "INVITE")
    assert msg.to_tag == "xyz"
    assert msg.from_tag == "abc"
    msg.headers.remove("call-id")
    with pytest.raises(SipParseError, match="Missing Call-ID"):
        _ = msg.call_id


def test_parsed_values_survive_changes_to_other_headers() -> None:
    msg = request(SIMPLE)
    via, call_id, cseq, to = msg.top_via, msg.call_id, msg.cseq, msg.to_addr
    msg.headers.set("Max-Forwards", "69")
    msg.headers.prepend("Record-Route", "<sip:p.example;lr>")
    assert msg.top_via is via and msg.call_id is call_id and msg.cseq is cseq
    assert msg.to_addr is to
    forwarded = msg.copy()  # a copy keeps them too, until its own headers change
    assert forwarded.top_via is via and forwarded.to_addr is to
    forwarded.headers.prepend("v", "SIP/2.0/UDP p.example;branch=z9hG4bKp1")
    assert forwarded.top_via.branch == "z9hG4bKp1" and msg.top_via is via
    assert forwarded.to_addr is to
    msg.headers.remove_first_value("Via")
    with pytest.raises(SipParseError, match="Missing Via"):
        _ = msg.top_via


def test_caches_stay_bounded_under_junk_names() -> None:
    """Header names, layouts and URIs are cached; junk from the network cannot grow them
    without bound, and the usual spellings stay known whatever came before."""
    for n in range(3000):
        junk = f"X-Junk-{n}-" + "y" * (n % 100)
        data = SIMPLE.replace("Max-Forwards: 70", f"{junk}: 1\n{junk.lower()}: 2")
        data = data.replace("sip:bob@biloxi", f"sip:bob{n}" + "b" * (n % 300) + "@biloxi")
        assert request(data).ruri
    assert len(message_module._NAME_CACHE) <= message_module._NAME_CACHE_MAX
    assert len(message_module._LAYOUTS) <= message_module._LAYOUTS_MAX
    assert len(uri_module._URI_CACHE) <= uri_module._URI_CACHE_MAX
    assert all(len(name) <= 1 + 64 + 1 for name in message_module._NAME_CACHE)
    assert message_module._NAME_CACHE[b"\nContent-Length:"] == "content-length"
    assert message_module._NAME_CACHE[b"\nv:"] == "via"


def test_max_forwards() -> None:
    msg = request(SIMPLE)
    assert msg.max_forwards == 70
    msg.headers.remove("max-forwards")
    assert msg.max_forwards is None
    assert DEFAULT_MAX_FORWARDS == 70
    msg.headers.set("Max-Forwards", "0")
    assert msg.max_forwards == 0
    msg.headers.set("Max-Forwards", "300")
    with pytest.raises(SipParseError, match="Max-Forwards"):
        _ = msg.max_forwards


def test_body_change_recomputes_content_length() -> None:
    msg = response(load("compact_ringing.sip"))  # "l: 0"
    msg.body = b"v=0\r\n"
    wire = msg.to_bytes()
    assert b"\r\nl: 0\r\n" not in wire
    assert wire.endswith(b"\r\nContent-Length: 5\r\n\r\nv=0\r\n")
    assert response(wire).body == b"v=0\r\n"
    assert msg.to_bytes() is wire  # cached until something changes


def test_missing_content_length_is_added() -> None:
    msg = request(load("no_content_length_ack.sip"))
    assert msg.content_length is None
    assert msg.to_bytes().endswith(b"CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")


def test_datagram_body_longer_than_content_length_is_truncated() -> None:
    data = SIMPLE.replace("\n", "\r\n").encode() + b"garbage after the message"
    msg = request(data)
    assert msg.body == b""
    assert msg.to_bytes() == SIMPLE.replace("\n", "\r\n").encode()


def test_content_length_missing_means_rest_of_datagram() -> None:
    msg = request(SIMPLE.replace("Content-Length: 0\n", "") + "hello")
    assert msg.body == b"hello"


def test_bare_lf_is_normalised() -> None:
    data = load("bare_lf_bye.sip")
    assert b"\r" not in data
    msg = request(data)
    assert msg.method == "BYE" and msg.to_tag == "lf-2"
    assert msg.to_bytes() == data.replace(b"\n", b"\r\n")


def test_bare_lf_body_is_left_alone() -> None:
    data = SIMPLE.replace("Content-Length: 0", "Content-Length: 5").encode() + b"a\nb\r\nc"
    msg = request(data)
    assert msg.body == b"a\nb\r\n"  # 5 bytes; the header section was normalised, not the body
    assert msg.to_bytes().endswith(b"Content-Length: 5\r\n\r\na\nb\r\n")


def test_mixed_line_ends_and_leading_crlf() -> None:
    data = b"\r\n\r\n" + SIMPLE.replace("\n", "\r\n", 3).encode()
    msg = request(data)
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert msg.to_bytes() == SIMPLE.replace("\n", "\r\n").encode()


def test_request_line_and_status_line_edits() -> None:
    msg = request(SIMPLE)
    msg.uri = "sip:bob@192.0.2.4:5060;transport=tcp"
    ruri = msg.ruri
    assert isinstance(ruri, SipUri) and ruri.port == 5060
    assert msg.to_bytes().startswith(b"INVITE sip:bob@192.0.2.4:5060;transport=tcp SIP/2.0\r\n")
    msg.ruri = ruri.with_param("lr")
    assert msg.uri.endswith(";transport=tcp;lr")
    msg.method = "OPTIONS"
    assert msg.to_bytes().startswith(b"OPTIONS sip:")
    with pytest.raises(ValueError, match="Request-URI"):
        msg.uri = "sip:a b"
    with pytest.raises(ValueError, match="method"):
        msg.method = "BAD METHOD"
    resp = response(load("sipp_uas_200.sip"))
    resp.status = 202
    resp.reason = "Accepted"
    assert resp.to_bytes().startswith(b"SIP/2.0 202 Accepted\r\n")
    with pytest.raises(ValueError, match="status"):
        resp.status = 99
    with pytest.raises(ValueError, match="CR or LF"):
        resp.reason = "x\r\n"


def test_build_request_from_scratch() -> None:
    req = Request(
        "OPTIONS",
        "sip:sip.pstnhub.microsoft.com:5061;transport=tls",
        [
            ("Via", "SIP/2.0/TLS sbc1.contoso.com:5061;branch=z9hG4bKopt1"),
            ("Max-Forwards", "70"),
            ("From", "<sip:sbc1.contoso.com>;tag=o1"),
            ("To", "<sip:sip.pstnhub.microsoft.com>"),
            ("Call-ID", "opt-1@sbc1.contoso.com"),
            ("CSeq", "1 OPTIONS"),
        ],
    )
    wire = req.to_bytes()
    assert wire.startswith(b"OPTIONS sip:sip.pstnhub.microsoft.com:5061;transport=tls SIP/2.0\r\n")
    assert wire.endswith(b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    back = request(wire)
    assert back.to_bytes() == wire
    assert repr(back) == "<Request OPTIONS sip:sip.pstnhub.microsoft.com:5061;transport=tls>"
    uri_obj = back.ruri
    built = Request("OPTIONS", uri_obj, back.headers.copy())
    assert built.ruri is uri_obj
    with pytest.raises(ValueError, match="method"):
        Request("", "sip:a@b")
    with pytest.raises(ValueError, match="status"):
        Response(700)
    assert repr(Response(180)) == "<Response 180 Ringing>"


def test_copy_is_independent() -> None:
    original = request(SIMPLE)
    wire = original.to_bytes()
    forwarded = original.copy()
    forwarded.headers.prepend("Via", "SIP/2.0/UDP proxy.example;branch=z9hG4bKp1")
    forwarded.headers.set("Max-Forwards", "69")
    assert original.to_bytes() == wire
    assert original.top_via.branch == "z9hG4bK776asdhds"
    assert forwarded.top_via.branch == "z9hG4bKp1"
    resp = response(load("sipp_uas_200.sip"))
    clone = resp.copy()
    clone.headers.remove_first_value("via")
    assert resp.to_bytes() == load("sipp_uas_200.sip")


def test_cached_bytes_never_outlive_a_change() -> None:
    original = request(SIMPLE)
    wire = original.to_bytes()
    copy = original.copy()
    for i in range(5):  # versions of the copy must never come back to the cached one
        copy.headers.set("X-Step", str(i))
    assert copy.to_bytes() != wire
    other = request(SIMPLE)
    other.headers = Headers([("Via", "SIP/2.0/UDP h;branch=z9hG4bK2")])
    assert other.to_bytes() != SIMPLE.replace("\n", "\r\n").encode()
    assert other.to_bytes().count(b"\r\n") == 4


# --- responses built by the core -------------------------------------------------------------


def test_make_response_copies_per_rfc_3261_8_2_6_2() -> None:
    req = request(load("teams_invite.sip"))
    resp = make_response(
        req,
        180,
        to_tag="sbc-tag-1",
        extra_headers=[("Contact", "<sip:sbc1.contoso.com:5061;transport=tls>")],
    )
    wire = resp.to_bytes()
    assert wire.startswith(b"SIP/2.0 180 Ringing\r\n")
    lines = wire.split(b"\r\n")
    assert lines[1] == (
        b"FROM: Alice Teams<sip:+14255550100@sip.pstnhub.microsoft.com:5061;user=phone>"
        b";tag=b3f0a1c2d4e5f6a7b8c9d0e1f2a3b4c5"
    )
    assert lines[2] == b"TO: <sip:+14255550123@sbc1.contoso.com;user=phone>;tag=sbc-tag-1"
    assert b"\r\nCSEQ: 1 INVITE\r\n" in wire
    assert b"\r\nVIA: SIP/2.0/TLS 52.114.76.76:5061;branch=z9hG4bKac1f2e3d4;rport\r\n" in wire
    assert (
        b"\r\nRECORD-ROUTE: <sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr>\r\n"
        in wire
    )
    assert wire.endswith(
        b"\r\nContact: <sip:sbc1.contoso.com:5061;transport=tls>\r\nContent-Length: 0\r\n\r\n"
    )
    assert response(wire).to_tag == "sbc-tag-1"


def test_make_response_all_vias_in_order_and_no_record_route_on_errors() -> None:
    req = request(load("torture_valid.sip"))
    resp = make_response(req, 486)
    assert resp.reason == "Busy Here"
    assert [v.branch for v in resp.vias] == ["z9hG4bKfold77", "z9hG4bKhop2", "z9hG4bKhop1"]
    assert "route" not in resp.headers and "record-route" not in resp.headers
    assert resp.to_tag == "7734xyz"  # already tagged: left alone
    tagged = make_response(req, 486, to_tag="other")
    assert tagged.to_tag == "7734xyz"


def test_make_response_100_trying_keeps_timestamp() -> None:
    req = request(SIMPLE.replace("Content-Length: 0", "Timestamp: 54\nContent-Length: 0"))
    trying = make_response(req, 100)
    assert trying.headers.get("timestamp") == "54"
    assert trying.to_tag is None
    assert "timestamp" not in make_response(req, 200, to_tag="t").headers


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "Empty"),
        (b"\r\n\r\n", 400, "Empty"),
        (b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n", 400, "blank line"),
        (
            SIMPLE.replace("SIP/2.0\n", "SIP/2.0\r\n", 1).replace(
                "Max-Forwards: 70", "Max-Forwards: 70\rX: y"
            ),
            400,
            "Bare CR",
        ),
        (SIMPLE.replace("Via:", " Via:"), 400, "Whitespace at the start"),
        (SIMPLE.replace("INVITE sip", "INVITE\tsip"), 400, "Request-Line"),
        (SIMPLE.replace("SIP/2.0\n", "SIP/2.0/x\n", 1), 400, "version"),
        (SIMPLE.replace("sip:bob@biloxi.example.com SIP", "bob@biloxi SIP"), 400, "Request-URI"),
        (
            SIMPLE.replace("Call-ID: a84b4c76e66710@pc33.atlanta.example.com", "Call-ID:   "),
            400,
            "Empty Call-ID",
        ),
        (SIMPLE.replace("UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds", ""), 400, "Via"),
        (
            SIMPLE.replace(" SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds", ","),
            400,
            "Empty Via",
        ),
        (SIMPLE.replace("To: Bob", "To: Bob\nt: x"), 400, "More than one To"),
        (SIMPLE.replace("Content-Length: 0", "Content-Length: x"), 400, "Content-Length"),
    ],
)
def test_request_errors(data: bytes | str, status: int, words: str) -> None:
    raw = data.replace("\n", "\r\n").encode() if isinstance(data, str) else data
    with pytest.raises(SipParseError, match=words) as info:
        parse_message(raw)
    assert info.value.status == status


def test_version_case_insensitive_and_505() -> None:
    msg = request(SIMPLE.replace("SIP/2.0\n", "sip/2.0\n", 1))
    assert msg.version == "SIP/2.0" or msg.version.upper() == "SIP/2.0"
    with pytest.raises(VersionNotSupported) as info:
        parse(SIMPLE.replace("SIP/2.0\n", "SIP/3.0\n", 1))
    assert info.value.status == 505
    assert info.value.partial is not None


def test_unknown_method_is_accepted() -> None:
    msg = request(SIMPLE.replace("INVITE", "NEWMETHOD"))
    assert msg.method == "NEWMETHOD" and msg.cseq.method == "NEWMETHOD"


def test_size_limits_are_513_with_partial() -> None:
    big = (
        SIMPLE.replace("Content-Length: 0", "Content-Length: 5000").encode().replace(b"\n", b"\r\n")
    )
    big += b"x" * 5000
    with pytest.raises(MessageTooLarge) as info:
        parse_message(big, max_size=4096)
    assert info.value.status == 513
    answer = error_response(info.value, warning_agent="sbc1.contoso.com")
    assert answer is not None and answer.status == 513
    assert answer.headers.get("warning") == f'399 sbc1.contoso.com "{info.value.reason}"'

    many = SIMPLE.replace("Content-Length: 0", "X-A: 1\n" * 50 + "Content-Length: 0")
    with pytest.raises(MessageTooLarge, match="header lines"):
        parse_message(many.replace("\n", "\r\n").encode(), max_headers=40)
    long = SIMPLE.replace("Content-Length: 0", "X-Long: " + "y" * 300 + "\nContent-Length: 0")
    with pytest.raises(MessageTooLarge, match="longer than"):
        parse_message(long.replace("\n", "\r\n").encode(), max_line=200)


def test_ack_and_responses_are_never_answered() -> None:
    ack = SIMPLE.replace("INVITE", "ACK").replace("Call-ID: ", "Call-ID:")
    with pytest.raises(SipParseError) as info:
        parse(ack.replace("CSeq: 314159 ACK", "CSeq: x ACK"))
    assert info.value.is_request is True
    assert error_response(info.value) is None

    bad_response = load("sipp_uas_200.sip").replace(b"CSeq: 1 INVITE", b"CSeq: INVITE")
    with pytest.raises(SipParseError) as info:
        parse_message(bad_response)
    assert info.value.is_request is False
    assert info.value.partial is None
    assert error_response(info.value) is None


@pytest.mark.parametrize(
    "status_line",
    [
        b"SIP/2.0 99 Too Low",
        b"SIP/2.0 700 Too High",
        b"SIP/2.0 2OO OK",
        b"SIP/2.0",
        b"SIP/3.0 200 OK",
    ],
)
def test_bad_status_lines(status_line: bytes) -> None:
    data = load("sipp_uas_200.sip").replace(b"SIP/2.0 200 OK", status_line, 1)
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.is_request is False


def test_response_without_reason_phrase() -> None:
    data = load("compact_ringing.sip").replace(b"SIP/2.0 180 Ringing", b"SIP/2.0 180 ")
    msg = response(data)
    assert msg.status == 180 and msg.reason == ""
    assert msg.to_bytes() == data


@pytest.mark.parametrize(
    "filler",
    [
        "X-Q: " + '"' * 60000,
        "X-A: " + "<" * 60000,
        "X-C: " + "a," * 30000,
        "X-E: " + '"\\' * 30000,
        "X-F: a" + "\n b" * 120,
        "Contact: " + "<sip:a@b>;p=1, " * 3000,
        "Via: SIP/2.0/UDP " + "a" * 60000,
    ],
)
def test_pathological_input_is_cheap(filler: str) -> None:
    text = SIMPLE.replace("Content-Length: 0", filler + "\nContent-Length: 0")
    data = text.replace("\n", "\r\n").encode()
    started = time.process_time()
    for _ in range(3):
        try:
            msg = parse_message(data, max_line=100_000)
        except SipParseError:
            continue
        for header in msg.headers:
            msg.headers.values(header.key)
        msg.headers.remove_first_value(msg.headers[len(msg.headers) - 2].key)
        msg.to_bytes()
    assert time.process_time() - started < 1.0


def test_bytearray_and_memoryview_input() -> None:
    data = load("sipp_uac_invite.sip")
    assert parse_message(bytearray(data)).to_bytes() == data
    assert parse_message(memoryview(data)).to_bytes() == data  # type: ignore[arg-type]


def test_garbage_is_not_a_request() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(b"\x00\x01\x02 hello\r\n\r\n")
    assert info.value.is_request is None
    assert error_response(info.value) is None
