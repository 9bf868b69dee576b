"""Contact towards Teams carries the tenant's FQDN; Contact from Teams is never altered.

Microsoft ("Direct Routing - SIP protocol", Contact and Record-Route): Teams checks that the
Contact (or, when present, the top Record-Route) of what the SBC sends names the FQDN of a trunk
it knows, covered by the SBC's certificate; in the carrier model, the tenant's subdomain. The
carrier's Contact (``sip:gw@10.0.0.20:5060``) cannot go to Teams as it is, so the SBC sends
``<sip:gw@tenant.sbc.example:5061;transport=tls;tsc=<the original URI, base64url>>``. Teams
uses it as the remote target, so its in-dialog requests come back with it as Request-URI:
:func:`restore_request_uri` puts the carrier's URI back. No per-call state: any replica can.

The seed article, "Don't mess with the received Contact header": the Contact Teams sends carries
the call's routing data. Nothing here ever touches a Contact in a message from Teams.
"""

from __future__ import annotations

import base64
import binascii

from teams_sbc.sip.errors import SipParseError
from teams_sbc.sip.headers import parse_name_addr
from teams_sbc.sip.message import Message, Request
from teams_sbc.sip.uri import SipUri, parse_uri

#: The URI parameter that carries the carrier's Contact URI.
PARAM = "tsc"


def _encode(uri: str) -> str:
    return base64.urlsafe_b64encode(uri.encode("utf-8", "surrogateescape")).decode().rstrip("=")


def _decode(token: str) -> str | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        return raw.decode("utf-8", "surrogateescape")
    except (binascii.Error, ValueError):
        return None


def contact_towards_teams(msg: Message, fqdn: str, port: int) -> bool:
    """Rewrite every Contact of a message going to Teams to name ``fqdn:port`` over TLS,
    carrying the original URI; returns whether anything changed. ``*`` (REGISTER) and
    Contacts that already name ``fqdn`` are left alone."""
    values = msg.headers.values("contact")
    if not values:
        return False
    out = []
    changed = False
    for value in values:
        if value.strip() == "*":
            out.append(value)
            continue
        addr = parse_name_addr(value, "Contact")
        uri = addr.uri
        if isinstance(uri, SipUri) and uri.bare_host.lower() == fqdn and uri.port == port:
            out.append(value)
            continue
        user = uri.user if isinstance(uri, SipUri) else None
        new = SipUri(
            "sip",
            fqdn,
            user,
            None,
            port,
            (("transport", "tls"), (PARAM, _encode(str(uri)))),
        )
        out.append(str(addr.with_uri(new)))
        changed = True
    if changed:
        msg.headers.replace("contact", *out)
    return changed


def original_uri(uri: SipUri) -> str | None:
    """The carrier's URI a rewritten Contact carries, or None if ``uri`` is not one."""
    token = uri.param(PARAM)
    if not token:
        return None
    text = _decode(token)
    if text is None:
        return None
    try:
        parse_uri(text)
    except SipParseError:
        return None
    return text


def restore_request_uri(req: Request) -> bool:
    """A request from Teams addressed to a Contact we rewrote goes to the carrier's URI
    again. Returns whether the Request-URI changed."""
    uri = req.ruri
    if not isinstance(uri, SipUri) or not uri.has_param(PARAM):
        return False
    text = original_uri(uri)
    if text is None:
        return False
    req.uri = text
    return True
