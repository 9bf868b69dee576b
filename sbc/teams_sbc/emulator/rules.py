"""Microsoft's rules for what an SBC sends, one function each, in the order the emulator applies
them to a request that starts something (OPTIONS, INVITE). Pure functions: a parsed request and
the TLS peer's :class:`Identity` in, a :class:`Rejection` (status, what was wrong) or None out.

Each rule cites where it comes from: Microsoft's "Direct Routing - SIP protocol" page (MS-SIP),
"Plan Direct Routing" (MS-PLAN), "Direct Routing - media" (MS-MEDIA), or the seed article
"Making OpenSIPS work as MS Teams SBC" (SEED), as docs/emulator.md lists them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from teams_sbc.emulator.identity import Identity, trunk_configured
from teams_sbc.sip import Request, SipParseError, SipUri, TelUri, parse_uri
from teams_sbc.sip.headers import NameAddr, parse_name_addr, parse_name_addr_list

#: E.164 (ITU-T E.164): a leading +, a country code that does not start with 0, at most 15 digits.
E164 = re.compile(r"\+[1-9][0-9]{1,14}")

#: Q.850 causes Microsoft's responses carry in Reason, by status (MS-SIP: "Reason: Q.850;...").
Q850_CAUSES = {
    400: 95,  # invalid message, unspecified
    403: 21,  # call rejected
    404: 1,  # unallocated (unassigned) number
    416: 95,
    422: 100,  # invalid information element contents
    480: 18,  # no user responding
    481: 81,  # invalid call reference value
    486: 34,  # what Teams sends with 486 (seen in field reports), not the 17 carriers expect
    487: 31,  # normal, unspecified
    488: 88,  # incompatible destination
    500: 41,  # temporary failure
    503: 41,
    603: 21,
}


@dataclass(frozen=True)
class Rejection:
    """A request refused: the status, what was wrong (into the Reason text and the ladder) and
    the short name of the rule (for tests and counters)."""

    status: int
    text: str
    rule: str

    @property
    def cause(self) -> int:
        return Q850_CAUSES.get(self.status, 41)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def check_certificate(identity: Identity, require_cn: bool) -> Rejection | None:
    """The SBC's certificate must carry its FQDN in the Common Name (MS-SIP; a field report saw
    403 for a certificate with the name in a SAN only). Chain and CA were checked in the TLS
    handshake, which fails before any SIP when they are wrong."""
    if require_cn and identity.common_name is None:
        return Rejection(
            403,
            f"the certificate presented has no Common Name ({identity.describe()}); the SBC's "
            "FQDN must be in the CN and in a SAN",
            "certificate-cn",
        )
    return None


def check_uri_scheme(request: Request) -> Rejection | None:
    """SIPS URIs are not supported by Direct Routing (MS-SIP)."""
    if request.uri.lower().startswith("sips:"):
        return Rejection(416, "SIPS URIs are not supported by Direct Routing", "sips")
    return None


def check_replaces(request: Request) -> Rejection | None:
    """Direct Routing rejects SIP requests that have a Replaces header (MS-SIP)."""
    if "replaces" in request.headers:
        return Rejection(403, "Direct Routing rejects requests with a Replaces header", "replaces")
    return None


def _route_entries(request: Request, name: str) -> list[NameAddr]:
    entries: list[NameAddr] = []
    for line in request.headers.get_all(name):
        entries += parse_name_addr_list(line, name)
    return entries


def lr_on_entries(entries: Iterable[NameAddr]) -> list[str]:
    """The entries whose URI says ``;lr=<something>`` instead of ``;lr``."""
    bad = []
    for entry in entries:
        uri = entry.uri
        if isinstance(uri, SipUri):
            value = uri.param("lr")
            if value:  # "" is the bare ;lr, None is absent
                bad.append(str(entry))
    return bad


def check_loose_routing(request: Request) -> Rejection | None:
    """``;lr`` exactly: a Kamailio with ``enable_full_lr`` writes ``;lr=on``, which Teams rejects
    (SEED, "Kamailio and the lr parameter"). Checked in Record-Route and Route."""
    try:
        entries = _route_entries(request, "record-route") + _route_entries(request, "route")
    except SipParseError as exc:
        return Rejection(400, f"malformed Record-Route or Route: {exc.reason}", "route-syntax")
    bad = lr_on_entries(entries)
    if bad:
        return Rejection(
            400,
            f"loose-routing parameter must be ';lr', not a valued one: {bad[0]}",
            "lr-on",
        )
    return None


def routing_fqdn(request: Request) -> tuple[str, str] | Rejection:
    """Where Microsoft reads the SBC's FQDN: the top Record-Route when the request has one,
    else the Contact (SEED, "Should we use it in Contact or Record-Route headers?"; MS-SIP:
    "In Direct Routing the contact header is required"). Returns (header, host)."""
    try:
        record_route = _route_entries(request, "record-route")
        if record_route:
            header, entry = "Record-Route", record_route[0]
        else:
            contact = request.headers.get("contact")
            if contact is None:
                return Rejection(
                    403, "no Contact header: Direct Routing requires one", "contact-required"
                )
            header, entry = "Contact", parse_name_addr(contact, "Contact")
        uri = entry.uri
    except SipParseError as exc:
        return Rejection(400, f"malformed Contact or Record-Route: {exc.reason}", "contact-syntax")
    if not isinstance(uri, SipUri):
        return Rejection(403, f"{header} must be a sip: URI with the SBC's FQDN", "contact-fqdn")
    if uri.user == "":
        return Rejection(400, f"{header} URI has an '@' with an empty user part", "contact-syntax")
    return header, uri.bare_host.lower()


def check_fqdn(
    request: Request, identity: Identity, trunks: list[str]
) -> tuple[str, Rejection | None]:
    """The SBC's FQDN (see :func:`routing_fqdn`) must be a name, covered by the certificate the
    SBC presented (CN or SAN, wildcards as RFC 2818) and configured as a trunk (MS-SIP, "Contact
    header"; MS-PLAN, carrier model: tenant subdomains of the base). Returns (fqdn, rejection)."""
    found = routing_fqdn(request)
    if isinstance(found, Rejection):
        return "", found
    header, host = found
    if is_ip(host):
        return host, Rejection(
            403, f"{header} carries an IP address ({host}), not the SBC's FQDN", "fqdn-is-ip"
        )
    if not identity.covers(host):
        return host, Rejection(
            403,
            f"{header} host {host} is not covered by the TLS certificate presented "
            f"({identity.describe()})",
            "fqdn-not-in-certificate",
        )
    if not trunk_configured(trunks, host):
        return host, Rejection(
            403, f"{header} host {host} is not a configured SBC (trunk)", "fqdn-not-a-trunk"
        )
    return host, None


def user_number(uri_text: str) -> str | None:
    """The user part of a sip: URI, or the number of a tel: URI."""
    try:
        uri = parse_uri(uri_text)
    except SipParseError:
        return None
    if isinstance(uri, TelUri):
        return uri.number
    return uri.user


def check_e164(request: Request) -> Rejection | None:
    """Numbers in E.164 with a leading + in the Request-URI and To (MS-SIP examples; Teams looks
    users up by their E.164 number, so any other form finds nobody: 404)."""
    ruri_user = user_number(request.uri)
    if ruri_user is None or not E164.fullmatch(ruri_user):
        return Rejection(
            404,
            f"Request-URI user {ruri_user!r} is not an E.164 number with a leading +",
            "ruri-not-e164",
        )
    try:
        to_user = user_number(request.to_addr.uri_text)
    except SipParseError:
        to_user = None
    if to_user is None or not E164.fullmatch(to_user):
        return Rejection(
            404, f"To user {to_user!r} is not an E.164 number with a leading +", "to-not-e164"
        )
    return None


def check_ruri_host(request: Request, proxy_fqdns: Iterable[str]) -> Rejection | None:
    """The Request-URI keeps Microsoft's name (the SBC may override where the name resolves,
    never the name itself): anything else is not an address this proxy serves (RFC 3261
    8.2.2.1: 404)."""
    ruri = request.ruri
    names = {name.lower() for name in proxy_fqdns}
    if isinstance(ruri, SipUri) and ruri.bare_host.lower() not in names:
        return Rejection(
            404,
            f"Request-URI host {ruri.bare_host} is not a Microsoft SIP proxy name "
            f"({', '.join(sorted(names))})",
            "ruri-host",
        )
    return None
