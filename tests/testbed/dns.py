"""bind9's ``named`` as an authoritative primary that takes TSIG-signed RFC 2136 updates.

Everything named needs (config, zone file, journal, pid and lock files) lives in its own temp
directory, and ``controls { };`` keeps it from opening rndc's port 953 or reading /etc/bind's key,
so several servers can run side by side without root-only paths.
"""

from __future__ import annotations

import base64
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring

from tests.testbed.process import ManagedProcess, free_port_both, require_binary, wait_until


@dataclass(frozen=True)
class TsigKey:
    """A TSIG key as named's config and dnspython both need it."""

    name: str
    secret: str  # base64, as in named.conf
    algorithm: str = "hmac-sha256"

    @classmethod
    def generate(cls, name: str = "sbc-key.", algorithm: str = "hmac-sha256") -> TsigKey:
        """A fresh random 256-bit key (what ``tsig-keygen -a hmac-sha256`` would print)."""
        return cls(name, base64.b64encode(secrets.token_bytes(32)).decode(), algorithm)

    def keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        """The keyring dnspython's ``dns.update.UpdateMessage(keyring=...)`` takes."""
        return dict(dns.tsigkeyring.from_text({self.name: (self.algorithm, self.secret)}))

    def named_conf(self) -> str:
        return (
            f'key "{self.name}" {{\n\talgorithm {self.algorithm};\n\tsecret "{self.secret}";\n}};\n'
        )


def _zone_file(zone: str, records: list[str]) -> str:
    """SOA, NS and the NS's address, plus ``records`` (zone-file lines relative to ``zone``)."""
    lines = [
        "$TTL 60",
        f"$ORIGIN {zone}",
        f"@ IN SOA ns.{zone} hostmaster.{zone} 1 60 60 600 60",
        f"@ IN NS ns.{zone}",
        "ns IN A 127.0.0.1",
        *records,
    ]
    return "\n".join(lines) + "\n"


class DnsServer:
    """One ``named`` serving ``zone`` on UDP and TCP ``host:port``, updatable with ``key``."""

    def __init__(
        self,
        workdir: Path,
        *,
        name: str = "named",
        zone: str = "sbc.test.",
        host: str = "127.0.0.1",
        key: TsigKey | None = None,
        records: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        """``port``: where :meth:`start` listens (UDP and TCP); default, a port free then (a
        test restarting a server on the port it had gives it here)."""
        self.workdir = workdir
        self.name = name
        self.zone = zone if zone.endswith(".") else zone + "."
        self.host = host
        self.key = key or TsigKey.generate()
        #: Pre-existing records, so tests can check an update leaves unrelated data alone.
        self.records = records if records is not None else ["keep IN A 192.0.2.99"]
        self.port = port or 0
        self._fixed_port = port
        self.proc: ManagedProcess | None = None

    @property
    def key_name(self) -> str:
        return self.key.name

    @property
    def key_secret(self) -> str:
        return self.key.secret

    @property
    def key_algorithm(self) -> str:
        return self.key.algorithm

    def _write_config(self) -> Path:
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        zone_path = d / f"{self.zone.rstrip('.')}.zone"
        zone_path.write_text(_zone_file(self.zone, self.records))
        conf = d / "named.conf"
        body = (
            "options {\n"
            f'\tdirectory "{d}";\n'
            f'\tpid-file "{d}/named.pid";\n'
            f'\tlock-file "{d}/named.lock";\n'
            f'\tsession-keyfile "{d}/session.key";\n'
            f'\tmanaged-keys-directory "{d}";\n'
            f"\tlisten-on port {self.port} {{ {self.host}; }};\n"
            "\tlisten-on-v6 { none; };\n"
            "\trecursion no;\n"
            "\tdnssec-validation no;\n"
            "\tnotify no;\n"
            "};\n"
            "controls { };\n"
            f'zone "{self.zone}" {{\n'
            "\ttype primary;\n"
            f'\tfile "{zone_path}";\n'
            f'\tallow-update {{ key "{self.key.name}"; }};\n'
            "};\n"
        )
        conf.write_text(self.key.named_conf() + body)
        return conf

    def start(self, timeout: float = 20.0) -> DnsServer:
        named = require_binary("named")
        self.port = self._fixed_port or free_port_both(self.host)
        conf = self._write_config()
        # -g: foreground, log to stderr; -n 1: one worker is plenty for tests.
        args = [named, "-g", "-n", "1", "-c", str(conf)]
        self.proc = ManagedProcess(self.name, args, self.workdir, cwd=self.workdir)
        wait_until(
            self._answers_soa,
            timeout,
            f"{self.name} to answer SOA {self.zone} on UDP and TCP {self.host}:{self.port}",
            self.proc,
        )
        return self

    def _answers_soa(self) -> bool:
        # TCP first: until named listens it is refused at once, where UDP would wait for a timeout.
        return all(self._has_soa(tcp) for tcp in (True, False))

    def _has_soa(self, tcp: bool) -> bool:
        reply = self.query(self.zone, "SOA", tcp=tcp, timeout=0.3)
        return any(rrset.rdtype == dns.rdatatype.SOA for rrset in reply.answer)

    def query(
        self, qname: str, rdtype: str = "A", *, tcp: bool = False, timeout: float = 2.0
    ) -> dns.message.Message:
        """Ask this server directly (no resolver, no cache)."""
        request = dns.message.make_query(qname, rdtype)
        ask = dns.query.tcp if tcp else dns.query.udp
        return ask(request, self.host, port=self.port, timeout=timeout)

    def records_of(self, qname: str, rdtype: str = "A") -> set[str]:
        """The record data this server holds for ``qname``/``rdtype`` (empty set if none)."""
        reply = self.query(qname, rdtype)
        wanted = dns.rdatatype.from_text(rdtype)
        return {rd.to_text() for rrset in reply.answer if rrset.rdtype == wanted for rd in rrset}

    def exchange_unverified(
        self, message: dns.message.Message, timeout: float = 2.0
    ) -> dns.message.Message:
        """Send ``message`` over TCP and parse the reply WITHOUT checking its TSIG.

        dnspython raises on a reply that reports a TSIG error (BADSIG, BADKEY); this lets a test
        see what the server actually said, e.g. rcode NOTAUTH to an update signed with a wrong key.
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect((self.host, self.port))
            wire = message.to_wire()
            sock.sendall(len(wire).to_bytes(2, "big") + wire)
            length = int.from_bytes(_recv_exact(sock, 2), "big")
            return dns.message.from_wire(_recv_exact(sock, length), keyring=False)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return self.proc.stop()


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("DNS server closed the connection mid-reply")
        data += chunk
    return data
