"""Record-Route towards and from Teams, and `;lr` exactly.

The seed article, "FQDN's in Record-Route headers - The July 2020 update": since July 2020 Teams
wants the SBC's FQDN in the Record-Route of INVITEs it sends us too, not only of those we send
it. For an INVITE from Teams, ``record_route_preset("IP:port", "SBC_FQDN:5061;transport=tls")``:
the inside address on top (it faces the carrier, the next hop), the FQDN below it (facing
Teams). For an INVITE to Teams the reverse: FQDN on top, inside address below. ``r2=on`` on both
when they differ; when the two would be identical, one entry without ``r2``.

That is the core's own rule (sip/proxy.py, 16.6 step 4: one entry per listener crossed, the top
one facing the next hop, ``r2=on`` when there are two), with the Teams listener's entry naming
the FQDN. So this module does not build entries: it puts the tenant's FQDN into the one the
core made for the Teams listener, keeping its port and parameters. In the carrier
model the FQDN is the tenant's subdomain ("use the appropriate tenant-specific subdomain in the
Record-Route headers you add to INVITE requests").

The seed article, "Kamailio and the lr parameter": Teams rejects ``;lr=on`` (Kamailio's
``enable_full_lr``); every Route and Record-Route entry that reaches Teams says ``;lr``.
"""

from __future__ import annotations

from teams_sbc.sip.headers import parse_name_addr
from teams_sbc.sip.message import Message
from teams_sbc.sip.uri import SipUri


def entry_with_fqdn(entry: str, fqdn: str) -> str:
    """One of our Record-Route entries (``<sip:host:port;transport=tls;lr;r2=on;...>``) with
    its host replaced by ``fqdn``: port and every parameter kept (the core's ``r2=on`` and any
    parameter another layer carries in it)."""
    addr = parse_name_addr(entry, "Record-Route")
    uri = addr.uri
    if not isinstance(uri, SipUri):
        return entry
    return str(addr.with_uri(uri.with_host(fqdn, uri.port)))


def tenant_fqdn_in_record_route(msg: Message, added: int, from_teams: bool, fqdn: str) -> None:
    """Put the tenant's FQDN in the entry facing Teams among the ``added`` topmost entries the
    core just inserted (16.6 step 4: the top one faces the next hop, the second the previous
    hop). Two entries: from Teams the inside address stays on top and the FQDN entry is the
    second; to Teams the FQDN entry is on top. One entry (the request leaves by the listener it
    came in on): that one."""
    values = msg.headers.values("record-route")
    if added < 1 or len(values) < added:
        return
    index = 1 if added == 2 and from_teams else 0
    values[index] = entry_with_fqdn(values[index], fqdn)
    ours, rest = values[:added], values[added:]
    msg.headers.replace("record-route", *ours, *([", ".join(rest)] if rest else []))


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
