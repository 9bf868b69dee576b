"""The normalisations on messages crossing the Teams edge, one function per policy.

Each is a named policy in :class:`~teams_sbc.teams.config.Policy` with its default and source
in docs/policies.md; the proxy decides where each applies (towards Teams or the carrier) and
calls it. Every function edits the message in place and says whether it changed anything.
"""

from __future__ import annotations

import re

from teams_sbc.media.sdp import hold_as_inactive
from teams_sbc.sip.headers import parse_name_addr
from teams_sbc.sip.message import Message, Request, Response
from teams_sbc.sip.uri import SipUri, TelUri
from teams_sbc.teams.config import NumberRules
from teams_sbc.teams.numbers import to_e164

_CAUSE = re.compile(r"cause\s*=\s*[0-9]+", re.IGNORECASE)


def strip_refer(msg: Message) -> bool:
    """Policy ``refer: strip``. The seed article, "REFER handling and putting calls on hold":
    without REFER in our Allow, Teams never sends us a REFER (whose Refer-To may have a blank
    user part) and handles transfers itself with re-INVITEs and new calls."""
    values = msg.headers.values("allow")
    kept = [v for v in values if v.strip().upper() != "REFER"]
    if len(kept) == len(values):
        return False
    msg.headers.replace("allow", ", ".join(kept))
    return True


def identify(msg: Message, product: str, x_ms_sbc: str) -> None:
    """Policy ``identify``: ``X-MS-SBC: teams-sbc/<edition>/<version>`` (the header certified
    SBCs send; teams-direct-routing.md: identification) and our User-Agent on requests, Server
    on responses."""
    for name, value in (
        ("X-MS-SBC", x_ms_sbc),
        ("User-Agent" if isinstance(msg, Request) else "Server", product),
    ):
        if name in msg.headers:
            msg.headers.set(name, value)
        else:  # new lines go above Content-Length, where a reader expects the headers to end
            msg.headers.insert("content-length", name, value)


def _e164_addr(value: str, rules: NumberRules, what: str) -> str | None:
    addr = parse_name_addr(value, what)
    uri = addr.uri
    if isinstance(uri, SipUri) and uri.user:
        number = to_e164(uri.user, rules)
        if number is None or number == uri.user:
            return None
        return str(addr.with_uri(uri.with_user(number)))
    if isinstance(uri, TelUri):
        number = to_e164(uri.number, rules)
        if number is None or number == uri.number:
            return None
        return str(addr.with_uri(f"tel:{number}"))
    return None


def numbers_to_e164(req: Request, rules: NumberRules, *, ruri: bool = True) -> bool:
    """Policy ``e164``. Microsoft, "Direct Routing - SIP protocol": numbers in the
    Request-URI, From and To in E.164 with `+` (and ``user=phone`` in the Request-URI).
    P-Asserted-Identity too, since Teams may show it. Names (``alice``) stay as they are.
    ``ruri=False`` leaves the Request-URI (an in-dialog request's is Teams' own Contact)."""
    changed = False
    uri = req.ruri
    if ruri and isinstance(uri, SipUri) and uri.user:
        number = to_e164(uri.user, rules)
        if number is not None:
            new = uri.with_user(number)
            if new.param("user") != "phone":
                new = new.with_param("user", "phone")
            if new != uri:
                req.ruri = new
                changed = True
    for name, what in (("from", "From"), ("to", "To")):
        value = req.headers.get(name)
        if value is not None:
            new_value = _e164_addr(value, rules, what)
            if new_value is not None:
                req.headers.set(what, new_value)
                changed = True
    pai = req.headers.values("p-asserted-identity")
    if pai:
        fixed = [_e164_addr(v, rules, "P-Asserted-Identity") or v for v in pai]
        if fixed != pai:
            req.headers.replace("p-asserted-identity", *fixed)
            changed = True
    return changed


def pai_to_from(req: Request) -> bool:
    """Policy ``pai_to_from``. Microsoft: Teams shows the From as the caller; where a carrier
    puts the real caller only in P-Asserted-Identity, copy its user part (the number) into
    From. The From tag and host stay."""
    pai = req.headers.values("p-asserted-identity")
    if not pai:
        return False
    source = parse_name_addr(pai[0], "P-Asserted-Identity").uri
    if isinstance(source, SipUri):
        number = source.user
    elif isinstance(source, TelUri):
        number = source.number
    else:
        number = None
    sender = req.from_addr
    uri = sender.uri
    if not number or not isinstance(uri, SipUri) or uri.user == number:
        return False
    req.headers.set("From", str(sender.with_uri(uri.with_user(number))))
    return True


def restore_from_to(resp: Response, original: Request) -> bool:
    """Responses going back to the carrier carry the From and To it sent (the To with the
    answerer's tag), whatever the normalisations showed Teams (RFC 3261 8.2.6.2: copied from
    the request the carrier sent)."""
    changed = False
    sent_from = original.headers.get("from")
    if sent_from is not None and resp.headers.get("from") != sent_from:
        resp.headers.set("From", sent_from)
        changed = True
    sent_to = original.headers.get("to")
    if sent_to is not None:
        tag = resp.to_tag
        to = parse_name_addr(sent_to, "To")
        if tag is not None and to.tag is None:
            to = to.with_tag(tag)
        text = str(to)
        if resp.headers.get("to") != text:
            resp.headers.set("To", text)
            changed = True
    return changed


def busy_cause_17(resp: Response) -> bool:
    """Policy ``busy_cause_17``. teams-direct-routing.md, rejections: a 486 maps to Q.850 cause
    17 (user busy), so the carrier's network shows busy. Teams' own Q.850 reason on a 486
    (cause 34 has been seen) gets cause 17, its text (Microsoft's correlation id) kept; without
    one, ``Reason: Q.850;cause=17;text="User busy"`` is added."""
    if resp.status != 486:
        return False
    values = resp.headers.values("reason")
    q850 = [v for v in values if v.strip().lower().startswith("q.850")]
    if not q850:
        resp.headers.append("Reason", 'Q.850;cause=17;text="User busy"')
        return True
    fixed = [_CAUSE.sub("cause=17", v) if v in q850 else v for v in values]
    if fixed == values:
        return False
    resp.headers.replace("reason", *fixed)
    return True


def early_media_to_ringing(resp: Response) -> bool:
    """Policy ``early_media_183_to_180``. teams-direct-routing.md: Teams sends one 183 with SDP
    whose early media is often silence; towards a carrier that then plays nothing, a 180
    without SDP makes it play its own ringback."""
    if resp.status != 183 or not resp.body:
        return False
    resp.status = 180
    resp.reason = "Ringing"
    resp.body = b""
    resp.headers.remove("content-type")
    return True


def hold_inactive(msg: Message) -> bool:
    """Policy ``hold_inactive``. Microsoft, "Direct Routing - media" (hold): Teams understands
    hold only as ``a=inactive``; a carrier's ``a=sendonly``, ``a=recvonly`` become inactive."""
    if not msg.body or not (msg.content_type or "").lower().startswith("application/sdp"):
        return False
    text = msg.body.decode("utf-8", "surrogateescape")
    new = hold_as_inactive(text)
    if new == text:
        return False
    msg.body = new.encode("utf-8", "surrogateescape")
    return True


__all__ = [
    "busy_cause_17",
    "early_media_to_ringing",
    "hold_inactive",
    "identify",
    "numbers_to_e164",
    "pai_to_from",
    "restore_from_to",
    "strip_refer",
]
