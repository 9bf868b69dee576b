"""A and AAAA records for the SBC's names, written with RFC 2136 dynamic updates signed with TSIG
(RFC 8945), never touching a record the operator does not own.

Ownership: next to each name ``N`` it publishes, the operator keeps a TXT record at
``_teams-sbc-owner.N`` whose text names the trunk (``heritage=teams-sbc,owner=NS/TRUNK``). Every
update carries RFC 2136 prerequisites (section 2.4), which the server checks atomically with the
change itself:

- replacing the addresses of a name needs the owner TXT with exactly our text (2.4.2,
  "RRset exists (value dependent)");
- claiming a new name needs no A, no AAAA and no owner TXT there yet (2.4.3, "RRset does not
  exist"), and adds the addresses and the owner TXT in the same update;
- deleting needs our owner TXT, and removes the A, AAAA and the owner TXT together.

A failed prerequisite (NXRRSET, YXRRSET) means someone else's data: it is reported and left alone.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

OWNER_LABEL = "_teams-sbc-owner"


class DnsError(Exception):
    """The server could not be reached or would not take the update; ``reason`` is a condition
    reason and the message says what to check."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class DnsTarget:
    """Where and how to send updates: the zone's primary, its TSIG key, the TTL to write."""

    server: str
    port: int
    zone: str
    key_name: str
    key_secret: str  # base64, as in named.conf or tsig-keygen's output
    algorithm: str = "hmac-sha256"
    ttl: int = 300
    timeout: float = 3.0

    @property
    def where(self) -> str:
        return f"{self.server}:{self.port}"


@dataclass(frozen=True)
class Outcome:
    """What happened to one name: ``done`` (written, or removed, or already so) or refused with a
    reason and a message a person can act on."""

    name: str
    done: bool
    reason: str = ""
    message: str = ""


def owner_text(namespace: str, trunk: str) -> str:
    return f"heritage=teams-sbc,owner={namespace}/{trunk}"


def owner_name(name: str) -> str:
    return f"{OWNER_LABEL}.{name}"


def split_addresses(addresses: Sequence[str]) -> tuple[list[str], list[str]]:
    """IPv4 (for A) and IPv6 (for AAAA) addresses, each sorted."""
    v4 = sorted(a for a in addresses if ipaddress.ip_address(a).version == 4)
    v6 = sorted(a for a in addresses if ipaddress.ip_address(a).version == 6)
    return v4, v6


def _add_addresses(
    update: dns.update.UpdateMessage, fqdn: dns.name.Name, ttl: int, v4: list[str], v6: list[str]
) -> None:
    """Add ``fqdn``'s A records for ``v4`` and AAAA records for ``v6`` to ``update``."""
    for a in v4:
        update.add(fqdn, ttl, dns.rdatatype.A, a)
    for a in v6:
        update.add(fqdn, ttl, dns.rdatatype.AAAA, a)


class DnsUpdater:
    """Sends the updates for one trunk's names to one zone."""

    def __init__(self, target: DnsTarget, owner: str) -> None:
        self.target = target
        self.owner = owner
        self.zone = dns.name.from_text(target.zone)
        try:
            self.keyring = dns.tsigkeyring.from_text(
                {target.key_name: (target.algorithm, target.key_secret)}
            )
        except (ValueError, TypeError, dns.exception.DNSException) as exc:
            raise DnsError(
                "TSIGKeyInvalid", f"the TSIG secret is not a valid base64 key ({exc})"
            ) from exc
        self.key_name = dns.name.from_text(target.key_name)
        self._owner_rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, f'"{owner}"')

    def _message(self) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(
            self.zone,
            keyring=self.keyring,
            keyname=self.key_name,
            keyalgorithm=self.target.algorithm,
        )

    async def _send(self, update: dns.update.UpdateMessage) -> int:
        """Send over TCP (updates can be large; TCP fails fast when nothing listens)."""
        t = self.target
        try:
            host = await _resolve(t.server)
            reply = await dns.asyncquery.tcp(update, host, port=t.port, timeout=t.timeout)
        except dns.tsig.PeerError as exc:
            raise DnsError(
                "TSIGRefused",
                f"{t.where} refused the TSIG key {t.key_name!r} ({type(exc).__name__}): check "
                "the key name, algorithm and secret against the server's configuration",
            ) from exc
        except (dns.exception.Timeout, TimeoutError) as exc:
            raise DnsError(
                "DNSServerUnreachable", f"no answer from {t.where} within {t.timeout:g} s"
            ) from exc
        except (OSError, EOFError, ConnectionError) as exc:
            raise DnsError(
                "DNSServerUnreachable",
                f"cannot reach {t.where}: {exc.strerror or exc}"
                if isinstance(exc, OSError)
                else f"cannot reach {t.where}: {exc}",
            ) from exc
        except dns.exception.DNSException as exc:
            raise DnsError("DNSUpdateFailed", f"{t.where}: {exc}") from exc
        rcode = int(reply.rcode())
        if rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH, dns.rcode.NOTZONE):
            text = dns.rcode.to_text(dns.rcode.Rcode(rcode))
            raise DnsError(
                "DNSUpdateRefused",
                f"{t.where} answered {text} to an update of zone {t.zone}: check that it is the "
                f"zone's primary and allows updates signed with key {t.key_name!r}",
            )
        return rcode

    async def ensure(self, name: str, addresses: Sequence[str]) -> Outcome:
        """Make ``name``'s A and AAAA records exactly ``addresses`` if the name is ours or free."""
        v4, v6 = split_addresses(addresses)
        fqdn = dns.name.from_text(name)
        owner = dns.name.from_text(owner_name(name))
        ttl = self.target.ttl

        replace = self._message()
        replace.present(owner, self._owner_rdata)
        replace.delete(fqdn, dns.rdatatype.A)
        replace.delete(fqdn, dns.rdatatype.AAAA)
        _add_addresses(replace, fqdn, ttl, v4, v6)
        replace.replace(owner, ttl, self._owner_rdata)
        rcode = await self._send(replace)
        if rcode == dns.rcode.NOERROR:
            return Outcome(name, True)

        claim = self._message()
        claim.absent(owner, dns.rdatatype.TXT)
        claim.absent(fqdn, dns.rdatatype.A)
        claim.absent(fqdn, dns.rdatatype.AAAA)
        _add_addresses(claim, fqdn, ttl, v4, v6)
        claim.add(owner, ttl, self._owner_rdata)
        rcode = await self._send(claim)
        if rcode == dns.rcode.NOERROR:
            return Outcome(name, True)
        if rcode in (dns.rcode.YXRRSET, dns.rcode.NXRRSET, dns.rcode.YXDOMAIN):
            return Outcome(
                name,
                False,
                "RecordsNotOwned",
                f"{name} already has records this trunk did not write (no TXT "
                f"{owner_name(name)} naming it); they were left alone: remove them or "
                "choose another name",
            )
        return Outcome(
            name,
            False,
            "DNSUpdateFailed",
            f"{self.target.where} answered {dns.rcode.to_text(dns.rcode.Rcode(rcode))}",
        )

    async def remove(self, name: str) -> Outcome:
        """Delete ``name``'s A and AAAA records and its owner TXT, only if they are ours."""
        fqdn = dns.name.from_text(name)
        owner = dns.name.from_text(owner_name(name))
        update = self._message()
        update.present(owner, self._owner_rdata)
        update.delete(fqdn, dns.rdatatype.A)
        update.delete(fqdn, dns.rdatatype.AAAA)
        update.delete(owner, dns.rdatatype.TXT)
        rcode = await self._send(update)
        if rcode == dns.rcode.NOERROR:
            return Outcome(name, True)
        if rcode == dns.rcode.NXRRSET:
            # Not (or no longer) ours: nothing of ours to delete there.
            return Outcome(name, True, "NotOwned", f"{name} is not ours; left alone")
        return Outcome(
            name,
            False,
            "DNSUpdateFailed",
            f"{self.target.where} answered {dns.rcode.to_text(dns.rcode.Rcode(rcode))}",
        )


async def _resolve(server: str) -> str:
    """The address of the DNS server (a host name is looked up once per update)."""
    try:
        ipaddress.ip_address(server)
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(server, None)
        return str(infos[0][4][0])
    return server
