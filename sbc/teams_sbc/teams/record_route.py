"""Record-Route towards and from Teams, and `;lr` exactly.

The seed article, "FQDN's in Record-Route headers - The July 2020 update": since July 2020 Teams
wants the SBC's FQDN in the Record-Route of INVITEs it sends us too, not only of those we send
it. For an INVITE from Teams, ``record_route_preset("IP:port", "SBC_FQDN:5061;transport=tls")``:
the inside address on top (it faces the carrier, the next hop), the FQDN below it (facing
Teams). For an INVITE to Teams the reverse: FQDN on top, inside address below. ``r2=on`` on both
when they differ; when the two would be identical, one entry without ``r2``. In the carrier
model the FQDN is the tenant's subdomain ("use the appropriate tenant-specific subdomain in the
Record-Route headers you add to INVITE requests").

The seed article, "Kamailio and the lr parameter": Teams rejects ``;lr=on`` (Kamailio's
``enable_full_lr``); every Route and Record-Route entry that reaches Teams says ``;lr``.
"""

from __future__ import annotations

from teams_sbc.sip.headers import parse_name_addr
from teams_sbc.sip.message import Message
from teams_sbc.sip.uri import SipUri, format_host


def fqdn_entry(fqdn: str, port: int, r2: bool) -> str:
    """Our Record-Route entry towards Teams: ``<sip:FQDN:port;transport=tls;lr[;r2=on]>``."""
    return f"<sip:{fqdn}:{port};transport=tls;lr{';r2=on' if r2 else ''}>"


def inside_entry(host: str, port: int, transport: str, r2: bool) -> str:
    """Our Record-Route entry towards the carrier: the inside listener's address."""
    params = "" if transport == "udp" else f";transport={transport}"
    return f"<sip:{format_host(host)}:{port}{params};lr{';r2=on' if r2 else ''}>"


def record_route_pair(from_teams: bool, fqdn: str, inside: str) -> list[str]:
    """The entries to put on top of the Record-Route set, top first.

    ``fqdn`` and ``inside`` are the entries built without ``r2`` (by :func:`fqdn_entry` and
    :func:`inside_entry`); from Teams the inside one goes on top, to Teams the FQDN one.
    """
    if fqdn == inside:
        return [fqdn]
    top, below = (inside, fqdn) if from_teams else (fqdn, inside)
    return [_with_r2(top), _with_r2(below)]


def _with_r2(entry: str) -> str:
    return entry[:-1] + ";r2=on>"


def replace_top_record_routes(msg: Message, count: int, entries: list[str]) -> None:
    """Swap the ``count`` topmost Record-Route entries (the ones the core just added) for
    ``entries``, top first."""
    headers = msg.headers
    for _ in range(count):
        headers.remove_first_value("record-route")
    for entry in reversed(entries):
        headers.prepend("Record-Route", entry)


def full_lr_to_lr(msg: Message) -> int:
    """Rewrite ``;lr=<anything>`` to ``;lr`` in every Record-Route and Route entry; returns
    how many entries changed. Entries already right keep their bytes."""
    changed = 0
    for name in ("record-route", "route"):
        values = msg.headers.values(name)
        if not values or not any("lr=" in v.lower() for v in values):
            continue
        fixed = []
        for value in values:
            new = _fix_entry(value)
            changed += new is not value
            fixed.append(new)
        msg.headers.replace(name, ", ".join(fixed))
    return changed


def _fix_entry(value: str) -> str:
    if "lr=" not in value.lower():
        return value
    addr = parse_name_addr(value, "Record-Route")
    uri = addr.uri
    if not isinstance(uri, SipUri) or uri.param("lr") in (None, ""):
        return value
    params = tuple((n, None) if n.lower() == "lr" else (n, v) for n, v in uri.params)
    return str(addr.with_uri(uri.with_params(params)))
