"""Header names and value parsers: compact forms, lists, Via, name-addr, CSeq, numbers."""

from __future__ import annotations

import pytest

from teams_sbc.sip.errors import SipParseError
from teams_sbc.sip.headers import (
    COMPACT_FORMS,
    CSeq,
    NameAddr,
    Via,
    canonical_key,
    conventional_name,
    first_value_span,
    parse_content_length,
    parse_cseq,
    parse_header_params,
    parse_max_forwards,
    parse_name_addr,
    parse_name_addr_list,
    parse_via,
    parse_via_list,
    split_values,
)
from teams_sbc.sip.uri import SipUri, TelUri

# --- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("compact", "key"),
    [
        ("i", "call-id"),
        ("m", "contact"),
        ("e", "content-encoding"),
        ("l", "content-length"),
        ("c", "content-type"),
        ("f", "from"),
        ("s", "subject"),
        ("k", "supported"),
        ("t", "to"),
        ("v", "via"),
        ("o", "event"),
        ("u", "allow-events"),
        ("r", "refer-to"),
        ("b", "referred-by"),
        ("x", "session-expires"),
        ("a", "accept-contact"),
        ("j", "reject-contact"),
        ("d", "request-disposition"),
        ("y", "identity"),
        ("n", "identity-info"),
    ],
)
def test_compact_forms(compact: str, key: str) -> None:
    assert canonical_key(compact) == key
    assert canonical_key(compact.upper()) == key
    assert COMPACT_FORMS[compact] == key


def test_every_compact_form_is_tested() -> None:
    assert len(COMPACT_FORMS) == 20


@pytest.mark.parametrize("name", ["Via", "VIA", "via", "vIa", " Via "])
def test_names_are_case_insensitive(name: str) -> None:
    assert canonical_key(name) == "via"


@pytest.mark.parametrize(
    ("name", "spelled"),
    [
        ("call-id", "Call-ID"),
        ("i", "Call-ID"),
        ("CSEQ", "CSeq"),
        ("www-authenticate", "WWW-Authenticate"),
        ("mime-version", "MIME-Version"),
        ("rseq", "RSeq"),
        ("rack", "RAck"),
        ("min-se", "Min-SE"),
        ("v", "Via"),
        ("RECORD-ROUTE", "Record-Route"),
        ("content-length", "Content-Length"),
        ("p-asserted-identity", "P-Asserted-Identity"),
        ("X-MS-SBC-Host", "X-MS-SBC-Host"),
        ("x-custom-thing", "X-Custom-Thing"),
    ],
)
def test_conventional_name(name: str, spelled: str) -> None:
    assert conventional_name(name) == spelled


# --- lists ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "items"),
    [
        ("INVITE, ACK,OPTIONS ,  BYE", ["INVITE", "ACK", "OPTIONS", "BYE"]),
        ("a,,b, ,", ["a", "b"]),
        ("", []),
        (
            '"Smith, John" <sip:js@x.example>;tag=1, <sip:b@y.example>',
            ['"Smith, John" <sip:js@x.example>;tag=1', "<sip:b@y.example>"],
        ),
        (
            "<sip:a@x.example;p=1,2>, <sip:b@y.example>",
            ["<sip:a@x.example;p=1,2>", "<sip:b@y.example>"],
        ),
        ('"esc \\" , still" <sip:a@b>, c', ['"esc \\" , still" <sip:a@b>', "c"]),
        ('"unterminated, x', ['"unterminated, x']),
        ("<sip:open,x", ["<sip:open,x"]),
    ],
)
def test_split_values(value: str, items: list[str]) -> None:
    assert split_values(value) == items


def test_first_value_span_points_at_the_rest() -> None:
    value = "SIP/2.0/UDP a;branch=1 ,  SIP/2.0/UDP b;branch=2, SIP/2.0/UDP c"
    first, rest = first_value_span(value)
    assert first == "SIP/2.0/UDP a;branch=1"
    assert value[rest:] == "SIP/2.0/UDP b;branch=2, SIP/2.0/UDP c"
    assert first_value_span("only") == ("only", 4)
    assert first_value_span(" , , x") == ("x", 6)
    assert first_value_span('"a, b" <sip:x>, y') == ('"a, b" <sip:x>', 16)


# --- Via -----------------------------------------------------------------------------------


def test_via_basic() -> None:
    via = parse_via("SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bK776;received=192.0.2.9;rport=5062")
    assert via.protocol == "SIP/2.0"
    assert via.transport == "UDP"
    assert via.host == "192.0.2.5"
    assert via.port == 5060
    assert via.branch == "z9hG4bK776"
    assert via.received == "192.0.2.9"
    assert via.rport == 5062
    assert via.param("rport") == "5062"
    assert via.sent_by == "192.0.2.5:5060"


def test_via_rport_requested_versus_filled() -> None:
    requested = parse_via("SIP/2.0/UDP 192.0.2.5;rport;branch=z9hG4bK1")
    assert requested.has_param("rport")
    assert requested.param("rport") == ""
    assert requested.rport is None
    absent = parse_via("SIP/2.0/UDP 192.0.2.5;branch=z9hG4bK1")
    assert not absent.has_param("rport")
    assert absent.param("rport") is None
    assert absent.port is None


def test_via_params_are_ordered_and_case_insensitive() -> None:
    via = parse_via("SIP/2.0/tls sbc.example.com;Branch=z9hG4bKx;RPORT;ttl=16;maddr=224.2.0.1")
    assert via.transport == "TLS"
    assert [name for name, _ in via.params] == ["Branch", "RPORT", "ttl", "maddr"]
    assert via.branch == "z9hG4bKx"
    assert via.has_param("rport")


def test_via_with_odd_whitespace() -> None:
    via = parse_via("SIP  /   2.0 /TCP     hop2.example.net   ; branch  =   z9hG4bKhop2 ; rport")
    assert via.protocol == "SIP/2.0"
    assert via.transport == "TCP"
    assert via.host == "hop2.example.net"
    assert via.branch == "z9hG4bKhop2"
    assert via.has_param("rport")


def test_via_ipv6() -> None:
    via = parse_via("SIP/2.0/UDP [2001:db8::9:1]:5070;branch=z9hG4bKv6;received=2001:db8::9:255")
    assert via.host == "[2001:db8::9:1]"
    assert via.bare_host == "2001:db8::9:1"
    assert via.port == 5070
    assert via.received == "2001:db8::9:255"


def test_via_quoted_param() -> None:
    via = parse_via('SIP/2.0/UDP a.example;branch=z9hG4bK1;x="quoted; value"')
    assert via.param("x") == '"quoted; value"'


def test_via_str_and_with_param() -> None:
    text = "SIP/2.0/UDP 192.0.2.5:5060;rport;branch=z9hG4bK1"
    via = parse_via(text)
    assert str(via) == text
    answered = via.with_param("rport", "40000").with_param("received", "203.0.113.7")
    assert (
        str(answered)
        == "SIP/2.0/UDP 192.0.2.5:5060;rport=40000;branch=z9hG4bK1;received=203.0.113.7"
    )
    assert answered.rport == 40000
    assert str(via.without_param("rport")) == "SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bK1"
    assert via == parse_via(text)
    assert hash(via) == hash(parse_via(text))
    with pytest.raises(ValueError, match="bad header parameter"):
        via.with_param("received", "1.2.3.4;evil=1")


def test_via_built_from_parts() -> None:
    via = Via("SIP/2.0", "TLS", "sbc1.contoso.com", 5061, (("branch", "z9hG4bKabc"),))
    assert str(via) == "SIP/2.0/TLS sbc1.contoso.com:5061;branch=z9hG4bKabc"


def test_via_list() -> None:
    vias = parse_via_list(
        "SIP/2.0/UDP a.example;branch=z9hG4bK1, SIP/2.0/TCP b.example:5070;branch=z9hG4bK2"
    )
    assert [v.host for v in vias] == ["a.example", "b.example"]
    assert vias[1].transport == "TCP"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "SIP/2.0/UDP",
        "SIP/2.0 192.0.2.1",
        "SIP/2.0/UDP 192.0.2.1:99999",
        "SIP/2.0/UDP 192.0.2.1:abc",
        "SIP/2.0/UDP 2001:db8::1",
        "SIP/2.0/UDP 192.0.2.1;=x",
        "SIP/2.0/UDP 192.0.2.1;branch=a b",
    ],
)
def test_bad_via(value: str) -> None:
    with pytest.raises(SipParseError, match="Via"):
        parse_via(value)


# --- name-addr -----------------------------------------------------------------------------


def test_name_addr_quoted_display_with_escapes() -> None:
    addr = parse_name_addr(
        '"Wile E. \\"Genius\\" Coyote"  <sip:wile@acme.example.net>  ;   tag = 7734xyz'
    )
    assert addr.display_name == 'Wile E. "Genius" Coyote'
    assert addr.uri_text == "sip:wile@acme.example.net"
    assert addr.tag == "7734xyz"
    assert (
        str(addr) == '"Wile E. \\"Genius\\" Coyote"  <sip:wile@acme.example.net>  ;   tag = 7734xyz'
    )


def test_name_addr_unquoted_display() -> None:
    addr = parse_name_addr(
        "Alice Teams<sip:+14255550100@sip.pstnhub.microsoft.com:5061;user=phone>;tag=b3"
    )
    assert addr.display_name == "Alice Teams"
    uri = addr.uri
    assert isinstance(uri, SipUri)
    assert uri.param("user") == "phone"  # inside <>: a URI parameter
    assert not addr.has_param("user")
    assert addr.tag == "b3"


def test_addr_spec_params_belong_to_the_header() -> None:
    # RFC 3261 20.10: without <>, the ;params are header parameters, not URI parameters.
    addr = parse_name_addr("sip:alice@atlanta.example.com;tag=88sja8x;x=y")
    assert addr.uri_text == "sip:alice@atlanta.example.com"
    assert addr.tag == "88sja8x"
    assert addr.param("x") == "y"
    assert addr.display_name is None
    uri = addr.uri
    assert isinstance(uri, SipUri) and uri.params == ()


def test_name_addr_tel_uri() -> None:
    addr = parse_name_addr("<tel:+12015550100>;tag=tel-from")
    assert isinstance(addr.uri, TelUri)
    assert addr.tag == "tel-from"


def test_name_addr_with_tag_keeps_text() -> None:
    addr = parse_name_addr('"Bob"   <sip:bob@biloxi.example.com>')
    assert str(addr.with_tag("a6c85cf")) == '"Bob"   <sip:bob@biloxi.example.com>;tag=a6c85cf'
    assert str(parse_name_addr("sip:bob@b.example").with_tag("1")) == "sip:bob@b.example;tag=1"
    tagged = parse_name_addr("<sip:bob@b.example>;tag=1;x")
    assert str(tagged.with_tag("2")) == "<sip:bob@b.example>;tag=2;x"
    assert str(tagged.without_param("x")) == "<sip:bob@b.example>;tag=1"


def test_name_addr_with_uri_and_built() -> None:
    addr = parse_name_addr('"A \\\\ B" <sip:a@x.example>;tag=1')
    assert addr.display_name == "A \\ B"
    moved = addr.with_uri("sip:a@y.example")
    assert str(moved) == '"A \\\\ B" <sip:a@y.example>;tag=1'
    assert str(NameAddr("sip:z@z.example")) == "<sip:z@z.example>"
    with pytest.raises(ValueError, match="bad URI"):
        addr.with_uri("sip:a b")
    assert addr == parse_name_addr('"A \\\\ B" <sip:a@x.example>;tag=1')


def test_name_addr_list() -> None:
    routes = parse_name_addr_list(
        "<sip:sbc1.contoso.com:5061;transport=tls;lr;r2=on>, <sip:10.1.0.5:5060;lr;r2=on>"
    )
    assert [r.uri_text for r in routes] == [
        "sip:sbc1.contoso.com:5061;transport=tls;lr;r2=on",
        "sip:10.1.0.5:5060;lr;r2=on",
    ]


@pytest.mark.parametrize(
    "value",
    [
        "",
        '"unterminated <sip:a@b>',
        '"Name" sip:a@b',
        "<sip:a@b",
        "Name <>",
        "<not a uri>",
        "nouri",
        "<sip:a@b>;tag=a b",
        "Bad, Name <sip:a@b>",
    ],
)
def test_bad_name_addr(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_name_addr(value, "From")


def test_header_params_parser() -> None:
    assert parse_header_params(' ;a=1 ; b ;c="x;y"', "X") == (
        ("a", "1"),
        ("b", None),
        ("c", '"x;y"'),
    )
    assert parse_header_params("", "X") == ()
    with pytest.raises(SipParseError, match="in X header"):
        parse_header_params(";a=1;;", "X")


# --- numbers -------------------------------------------------------------------------------


def test_cseq() -> None:
    assert parse_cseq("4711 INVITE") == CSeq(4711, "INVITE")
    assert parse_cseq("  0017   INVITE ") == CSeq(17, "INVITE")
    assert parse_cseq(f"{2**31 - 1} BYE").number == 2**31 - 1
    for bad in [
        "",
        "INVITE",
        "1",
        "1INVITE",
        "-1 INVITE",
        f"{2**31} INVITE",
        "1 INV ITE",
        "x INVITE",
    ]:
        with pytest.raises(SipParseError, match="CSeq"):
            parse_cseq(bad)


def test_content_length_and_max_forwards() -> None:
    assert parse_content_length(" 0150 ") == 150
    assert parse_max_forwards("0042") == 42
    assert parse_max_forwards("0") == 0
    for bad in ["", "-1", "1.5", "12345678901", "0x10"]:
        with pytest.raises(SipParseError, match="Content-Length"):
            parse_content_length(bad)
    for bad in ["", "256", "300", "seventy"]:
        with pytest.raises(SipParseError, match="Max-Forwards"):
            parse_max_forwards(bad)
