"""SIP, SIPS and tel URIs (RFC 3261 19.1, RFC 3966): parsing, exact round trip, building."""

from __future__ import annotations

import pytest

from teams_sbc.sip.errors import SipParseError, SipUriError, UnsupportedUriScheme
from teams_sbc.sip.uri import SipUri, TelUri, format_host, parse_uri, unescape


def sip(text: str) -> SipUri:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    return uri


def test_full_sip_uri_parts() -> None:
    uri = sip(
        "sip:alice:secret@atlanta.example.com:5070;transport=tcp;lr?subject=hi&priority=urgent"
    )
    assert uri.scheme == "sip"
    assert uri.user == "alice"
    assert uri.password == "secret"
    assert uri.host == "atlanta.example.com"
    assert uri.port == 5070
    assert uri.params == (("transport", "tcp"), ("lr", None))
    assert uri.headers == (("subject", "hi"), ("priority", "urgent"))
    assert uri.transport == "tcp"
    assert uri.lr
    assert uri.host_port == "atlanta.example.com:5070"


def test_teams_request_uri() -> None:
    uri = sip("sip:+14255550123@sbc1.contoso.com:5061;user=phone;transport=tls")
    assert uri.user == "+14255550123"
    assert uri.param("user") == "phone"
    assert uri.transport == "tls"
    assert not uri.lr


@pytest.mark.parametrize(
    "text",
    [
        "sip:example.com",
        "SIP:Alice@Example.COM;Transport=UDP",
        "sips:bob@biloxi.example.com:5061",
        "sip:user;par=u%40example.net@example.com",
        "sip:%61lice@atlanta.example.com;transport=UDP",
        "sip:I%20have%20spaces@example.net",
        "sip:+1-212-555-1212:1234@gateway.com;user=phone",
        "sip:[2001:db8::10]",
        "sip:alice@[2001:db8::9:1]:5070;maddr=[2001:db8::1];lr",
        "sip:192.0.2.1:5060;lr;r2=on",
        "sip:api-du-a-usea.pstnhub.microsoft.com:443;x-i=3f2b1c4d;x-c=9f6a/d/8/b4e2",
        "sip:carol@cleveland.example.org?Replaces=12345%40192.0.2.6%3Bto-tag%3D7743",
        "sip:host.example.com.;lr",
        "sip:_sip._udp.example.com",
        "tel:+1-201-555-0123;ext=1234;isub=abc",
        "tel:7042;phone-context=example.com",
        "TEL:+358-555-1234567;postd=pp22",
    ],
)
def test_str_round_trips_exactly(text: str) -> None:
    assert str(parse_uri(text)) == text


def test_scheme_is_lower_cased_but_text_kept() -> None:
    uri = sip("SIPS:Bob@Biloxi.Example.COM")
    assert uri.scheme == "sips"
    assert uri.host == "Biloxi.Example.COM"  # as written; comparing hosts is the caller's rule
    assert str(uri) == "SIPS:Bob@Biloxi.Example.COM"


def test_escapes_are_preserved_and_can_be_decoded() -> None:
    uri = sip("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u%40example.net"
    assert unescape(uri.user) == "user;par=u@example.net"


def test_ipv6_reference() -> None:
    uri = sip("sip:alice@[2001:db8::9:1]:5070;transport=udp")
    assert uri.host == "[2001:db8::9:1]"
    assert uri.bare_host == "2001:db8::9:1"
    assert uri.port == 5070
    assert sip("sip:[::1]").port is None


def test_param_names_are_case_insensitive_and_order_kept() -> None:
    uri = sip("sip:gw.example.net;Transport=TCP;LR;maddr=10.0.0.1;x=1")
    assert uri.param("transport") == "TCP"
    assert uri.transport == "tcp"
    assert uri.has_param("lr") and uri.lr
    assert uri.param("lr") == ""  # present without a value
    assert uri.param("absent") is None
    assert uri.maddr == "10.0.0.1"
    assert [name for name, _ in uri.params] == ["Transport", "LR", "maddr", "x"]


def test_with_helpers_render_new_text() -> None:
    uri = sip("sip:alice@atlanta.example.com;transport=udp")
    assert str(uri.with_param("lr")) == "sip:alice@atlanta.example.com;transport=udp;lr"
    assert str(uri.with_param("TRANSPORT", "tls")) == "sip:alice@atlanta.example.com;transport=tls"
    assert str(uri.without_param("transport")) == "sip:alice@atlanta.example.com"
    assert str(uri.with_host("2001:db8::1", 5062)) == "sip:alice@[2001:db8::1]:5062;transport=udp"
    assert str(uri.with_port(5080)) == "sip:alice@atlanta.example.com:5080;transport=udp"
    assert str(uri.with_user(None)) == "sip:atlanta.example.com;transport=udp"
    assert (
        str(uri.with_user("+14255550100")) == "sip:+14255550100@atlanta.example.com;transport=udp"
    )
    assert str(uri.with_scheme("SIPS")) == "sips:alice@atlanta.example.com;transport=udp"
    assert str(uri.with_params((("lr", None),))) == "sip:alice@atlanta.example.com;lr"
    # The original is untouched (values are immutable).
    assert str(uri) == "sip:alice@atlanta.example.com;transport=udp"


def test_with_param_keeps_escapes_of_other_parts() -> None:
    uri = sip("sip:%61lice@atlanta.example.com;x=%41")
    assert str(uri.with_param("lr")) == "sip:%61lice@atlanta.example.com;x=%41;lr"


def test_without_headers() -> None:
    uri = sip("sip:carol@cleveland.example.org?Replaces=abc&x=y")
    assert str(uri.without_headers()) == "sip:carol@cleveland.example.org"
    plain = sip("sip:carol@cleveland.example.org")
    assert plain.without_headers() is plain


def test_structural_equality() -> None:
    assert sip("sip:a@b.example;lr") == sip("sip:a@b.example;lr")
    assert sip("sip:a@b.example;lr") != sip("sip:a@b.example")


@pytest.mark.parametrize(
    ("text", "number", "is_global", "digits"),
    [
        ("tel:+1-201-555-0123", "+1-201-555-0123", True, "+12015550123"),
        ("tel:7042;phone-context=example.com", "7042", False, "7042"),
        ("tel:+44(0)20.7946.0000", "+44(0)20.7946.0000", True, "+44020794600" + "00"),
    ],
)
def test_tel_uri(text: str, number: str, is_global: bool, digits: str) -> None:
    uri = parse_uri(text)
    assert isinstance(uri, TelUri)
    assert uri.scheme == "tel"
    assert uri.number == number
    assert uri.is_global is is_global
    assert uri.digits == digits


def test_tel_uri_params() -> None:
    uri = parse_uri("tel:+1-201-555-0123;EXT=1234")
    assert isinstance(uri, TelUri)
    assert uri.param("ext") == "1234"
    assert str(uri.with_param("isub", "x")) == "tel:+1-201-555-0123;EXT=1234;isub=x"
    assert str(uri.without_param("ext")) == "tel:+1-201-555-0123"


@pytest.mark.parametrize("text", ["im:bob@example.net", "http://example.com/", "urn:service:sos"])
def test_unknown_scheme_is_416(text: str) -> None:
    with pytest.raises(UnsupportedUriScheme) as info:
        parse_uri(text)
    assert info.value.status == 416
    assert isinstance(info.value, SipParseError)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sip",
        "alice@example.com",
        "1sip:example.com",
        "sip:",
        "sip:alice@",
        "sip:alice@exa mple.com",
        "sip:alice@example.com:99999",
        "sip:alice@example.com:port",
        "sip:alice@[2001:db8::zz]",
        "sip:alice@[2001:db8::1",
        "sip:alice@[2001:db8::1]x",
        "sip:ali<ce@example.com",
        "sip:alice@example.com;=x",
        "sip:alice@example.com;a b=c",
        "sip:alice@example.com?=x",
        "sip:alice@example.com;x=%zz",
        "tel:",
        "tel:+",
        "tel:12 34",
    ],
)
def test_bad_uris_are_400(text: str) -> None:
    with pytest.raises(SipUriError) as info:
        parse_uri(text)
    assert info.value.status == 400
    assert not isinstance(info.value, UnsupportedUriScheme)


def test_building_rejects_bad_parts() -> None:
    uri = sip("sip:alice@example.com")
    with pytest.raises(SipUriError):
        uri.with_param("a b")
    with pytest.raises(SipUriError):
        uri.with_host("exa mple.com")
    with pytest.raises(SipUriError):
        uri.with_port(70000)
    with pytest.raises(SipUriError):
        uri.with_user("al@ice")
    with pytest.raises(UnsupportedUriScheme):
        uri.with_scheme("tel")


def test_built_from_parts() -> None:
    uri = SipUri("sip", "sbc1.contoso.com", port=5061, params=(("transport", "tls"), ("lr", None)))
    assert str(uri) == "sip:sbc1.contoso.com:5061;transport=tls;lr"
    assert parse_uri(str(uri)) == uri


def test_format_host() -> None:
    assert format_host("2001:db8::1") == "[2001:db8::1]"
    assert format_host("[2001:db8::1]") == "[2001:db8::1]"
    assert format_host("192.0.2.1") == "192.0.2.1"
    assert format_host("sbc.example.com") == "sbc.example.com"
