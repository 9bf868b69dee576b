"""The demo's set-up on loopback: a throw-away PKI, rtpengine, the SBC, the Teams emulator (sip,
sip2, sip3) and the carrier's sipp, every config written to the work folder.

Nothing binds a fixed port: each part gets ports the kernel says are free, and the emulator's
three proxies are 127.0.0.1, 127.0.0.2 and 127.0.0.3 (distinct hosts, as Microsoft's regions
are), so the demo can run beside the test suite. The SBC keeps Microsoft's names in everything
it sends; only the addresses they resolve to are overridden (`teams.proxies[].address`), which
is how a carrier's staging points an SBC at the emulator too (docs/demo.md).
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from teams_sbc.config import ConfigError, parse_config
from teams_sbc.demo.carrier import HOST, Sipp, start_answering, write_tone
from teams_sbc.demo.children import Child, Children, PartFailed, free_port, free_udp_range, require
from teams_sbc.logs import JsonFormatter
from teams_sbc.pki import CertFiles, DevCA

#: The trunk's base FQDN (the carrier's SBC in Microsoft's carrier model); `.example` is
#: reserved (RFC 2606), so nothing here can leak to a real name.
BASE_FQDN = "sbc.carrier.example"

#: Microsoft's proxies as the emulator plays them: name, FQDN, loopback address.
PROXIES = (
    ("sip", "sip.pstnhub.microsoft.com", "127.0.0.1"),
    ("sip2", "sip2.pstnhub.microsoft.com", "127.0.0.2"),
    ("sip3", "sip3.pstnhub.microsoft.com", "127.0.0.3"),
)

#: Seconds each answered call stays up (media flows meanwhile).
HOLD_SECONDS = 3.0

#: The ng cookie's prefix of the demo's readiness probe.
_PING = b" d7:command4:pinge"

#: urllib honours http_proxy; probes of loopback never go through one.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class DemoTenant:
    """One Microsoft 365 customer of the carrier: a subdomain of the base FQDN and numbers."""

    name: str
    label: str
    numbers: str  # the tenant's block, in the config's own words
    teams_user: str  # a Teams user the carrier calls
    teams_caller: str  # a Teams user who calls out
    carrier_number: str  # a PSTN number behind the carrier
    policy: str

    @property
    def fqdn(self) -> str:
        return f"{self.label}.{BASE_FQDN}"


TENANTS = (
    DemoTenant(
        "contoso", "contoso", "+4930123400-+4930123499",
        teams_user="+4930123442", teams_caller="+4930123401", carrier_number="+4989555010",
        policy="default",
    ),
    DemoTenant(
        "fabrikam", "fab", "+4940555",
        teams_user="+4940555123", teams_caller="+4940555100", carrier_number="+4969555020",
        policy="ringback",
    ),
)  # fmt: skip


@dataclass
class Pki:
    """The throw-away CA and what it signed."""

    ca: Path
    sbc: CertFiles  # the trunk's certificate: the base FQDN and every tenant under it
    microsoft: CertFiles  # the emulator's: Microsoft's proxy names, no clientAuth (as in 2026)


def make_pki(directory: Path) -> Pki:
    """A CA both sides trust, the SBC's certificate (CN the base FQDN, SANs the base and
    ``*.base``, so both tenants are covered, as Microsoft's carrier model wants) and Microsoft's
    (serverAuth only, like Microsoft's newer certificates, which the SBC must still accept)."""
    ca = DevCA(directory, "demo-ca")
    sbc = ca.issue("sbc", BASE_FQDN, dns_names=[BASE_FQDN, f"*.{BASE_FQDN}"])
    names = [fqdn for _, fqdn, _ in PROXIES] + ["*.pstnhub.microsoft.com"]
    microsoft = ca.issue("microsoft", names[0], dns_names=names, client_auth=False)
    return Pki(ca.cert_path, sbc, microsoft)


def sbc_config(
    pki: Pki, *, teams_port: int, carrier_port: int, http_port: int,
    proxies: dict[str, tuple[str, int]], carrier: str, rtpengine: str,
) -> dict[str, Any]:
    """The SBC's config file (docs/config.md) for the demo, as a mapping."""
    return {
        "listeners": [
            {
                "name": "teams", "transport": "tls", "host": HOST, "port": teams_port,
                "advertise": BASE_FQDN,
                "tls": {
                    "cert_file": str(pki.sbc.cert), "key_file": str(pki.sbc.key),
                    "ca_file": str(pki.ca),  # the trust bundle for Microsoft's certificates
                },
            },
            {"name": "carrier", "transport": "udp", "host": HOST, "port": carrier_port},
        ],
        "http": {"host": HOST, "port": http_port},
        "logging": {"level": "INFO", "format": "json"},
        "drain_seconds": 1.0,
        "teams": {
            "fqdn": BASE_FQDN,
            "teams_listener": "teams",
            "carrier_listener": "carrier",
            "carrier": {"next_hop": f"sip:{carrier}", "tcp_allowed": False},
            "proxies": [
                {"name": fqdn, "address": proxies[name][0], "port": proxies[name][1]}
                for name, fqdn, _ in PROXIES
            ],
            "tenants": [
                {"name": t.name, "label": t.label, "numbers": [t.numbers], "policy": t.policy}
                for t in TENANTS
            ],
            "policies": {
                "ringback": {"early_media_183_to_180": True, "pai_to_from": True},
            },
            # Microsoft's own source ranges would refuse the emulator on loopback.
            "allow_sources": ["127.0.0.0/8"],
        },
        "media": {"rtpengines": [{"address": rtpengine}], "teams_listeners": ["teams"]},
    }  # fmt: skip


def emulator_config(pki: Pki, sbc_address: str) -> dict[str, Any]:
    """The Teams emulator's config (docs/emulator-config.md) for the demo."""
    return {
        "proxies": [{"name": name, "fqdn": fqdn, "host": host} for name, fqdn, host in PROXIES],
        "cert_file": str(pki.microsoft.cert),
        "key_file": str(pki.microsoft.key),
        "ca_file": str(pki.ca),
        "trunks": [BASE_FQDN, f"*.{BASE_FQDN}"],
        "sbc_address": sbc_address,
        "users": [{"number": t.teams_user} for t in TENANTS],
        "timing": {"ring_after": 0.1, "progress_after": 0.3, "answer_after": 1.0},
        "media": {"packets": 50},
    }


def _http(port: int, path: str) -> tuple[int, str]:
    try:
        with _DIRECT.open(f"http://{HOST}:{port}{path}", timeout=1.0) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def _ng_pong(port: int) -> bool:
    cookie = secrets.token_hex(6).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        sock.sendto(cookie + _PING, (HOST, port))
        reply = sock.recv(4096)
    return reply.startswith(cookie) and b"pong" in reply


def _udp_bound(port: int) -> bool:
    """Whether something has bound UDP ``port`` on the demo's host (sipp, once it runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


class Bed:
    """Every part of the demo, started in order by :meth:`start`; :meth:`stop` ends them all."""

    def __init__(self, work: Path, say: Callable[[str], None]) -> None:
        self.work = work
        self.say = say
        self.children = Children(work / "logs")
        (work / "logs").mkdir(parents=True, exist_ok=True)
        self.pki: Pki | None = None
        self.sbc: Child | None = None
        self.rtpengine: Child | None = None
        self.carrier: Sipp | None = None
        self.emulator: Any = None  # an EmulatorThread once started
        self.teams_port = 0
        self.carrier_port = 0
        self.http_port = 0
        self._emulator_log: logging.Handler | None = None

    @property
    def carrier_target(self) -> str:
        """Where the carrier sends its calls: the SBC's carrier listener."""
        return f"{HOST}:{self.carrier_port}"

    def start(self) -> None:
        require("sipp", "sip-tester")  # before anything starts: a clear error, nothing to undo
        rtpengine = require("rtpengine", "rtpengine-daemon")
        self.say("throw-away CA: the SBC's certificate (base FQDN and *.base) and Microsoft's")
        self.pki = make_pki(self.work / "pki")
        write_tone(self.work)
        self.teams_port = free_port(socket.SOCK_STREAM, HOST)
        self.carrier_port = free_port(socket.SOCK_DGRAM, HOST)
        self.http_port = free_port(socket.SOCK_STREAM, HOST)

        self.say("carrier trunk: sipp answering calls from Teams, RTP streamed and echoed")
        self.carrier = start_answering(self.children, self.work)
        port = self.carrier.port
        self.carrier.child.wait_for(lambda: _udp_bound(port), 10, f"sipp to bind {HOST}:{port}")

        self.say("rtpengine: userspace forwarding on loopback")
        self.rtpengine, ng_port = self._start_rtpengine(rtpengine)

        self.say("Teams emulator: sip, sip2, sip3 on 127.0.0.1-3 (mutual TLS, SRTP)")
        self.emulator = self._start_emulator()
        proxies = {name: self.emulator.address(name) for name, _, _ in PROXIES}

        self.say(f"SBC: teams-sbc run (Teams TLS on {HOST}:{self.teams_port} as {BASE_FQDN})")
        raw = sbc_config(
            self.pki, teams_port=self.teams_port, carrier_port=self.carrier_port,
            http_port=self.http_port, proxies=proxies, carrier=f"{HOST}:{self.carrier.port}",
            rtpengine=f"{HOST}:{ng_port}",
        )  # fmt: skip
        path = self.work / "sbc.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        try:
            parse_config(raw, source=str(path))
        except ConfigError as exc:
            raise PartFailed("SBC config", str(exc)) from None
        self.sbc = self.children.start(
            "sbc",
            [sys.executable, "-m", "teams_sbc.cli", "run", "--config", str(path)],
            env={"PYTHONUNBUFFERED": "1"},
        )
        self.sbc.wait_for(lambda: _http(self.http_port, "/readyz")[0] == 200, 30, "/readyz")

    def _start_rtpengine(self, binary: str) -> tuple[Child, int]:
        ng_port = free_port(socket.SOCK_DGRAM, HOST)
        low = free_udp_range(40, HOST)
        child = self.children.start(
            "rtpengine",
            [
                binary, "--config-file=none", f"--interface={HOST}",
                f"--listen-ng={HOST}:{ng_port}", "--table=-1", "--foreground",
                "--log-stderr", "--log-level=6", f"--port-min={low}", f"--port-max={low + 39}",
                "--delete-delay=0", "--timeout=30",
                f"--pidfile={self.work / 'logs' / 'rtpengine.pid'}",
                f"--b2b-url=http://{HOST}:{self.http_port}/rtpengine/timeout",
                "--xmlrpc-format=2",
            ],
        )  # fmt: skip
        child.wait_for(lambda: _ng_pong(ng_port), 20, f"an ng ping answered on {HOST}:{ng_port}")
        return child, ng_port

    def _start_emulator(self) -> Any:
        from teams_sbc.emulator import EmulatorThread, parse_emulator_config

        assert self.pki is not None
        raw = emulator_config(self.pki, f"{HOST}:{self.teams_port}")
        (self.work / "emulator.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        handler = logging.FileHandler(self.work / "logs" / "teams-emulator.log")
        handler.setFormatter(JsonFormatter())
        logger = logging.getLogger("teams_sbc.emulator")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        self._emulator_log = handler
        try:
            return EmulatorThread(parse_emulator_config(raw, source="emulator.yaml")).start()
        except OSError as exc:
            raise PartFailed("Teams emulator", f"cannot listen: {exc}") from exc

    def wait_keepalive(self, timeout: float = 10.0) -> list[str]:
        """Until each of Microsoft's proxies has answered an OPTIONS of the SBC with 200;
        the proxies that have not, as problems."""
        deadline = time.monotonic() + timeout
        missing: list[str] = []
        while True:
            stats = self.emulator.proxy_stats()
            missing = [name for name, _, _ in PROXIES if stats[name].options_answered_ok < 1]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        problems = []
        for name in missing:
            s = stats[name]
            detail = (
                f"TLS refused: {s.last_handshake_error}"
                if s.handshake_failures
                else f"{s.options_received} OPTIONS received"
                + (f", rejected: {json.dumps(s.rejections)}" if s.rejections else "")
            )
            problems.append(
                f"OPTIONS keepalive: {name} (Teams emulator) got no good OPTIONS from the SBC "
                f"within {timeout:g}s ({detail})"
            )
        return problems

    def sbc_status(self) -> str:
        """The SBC's readiness, as /readyz says it."""
        try:
            return _http(self.http_port, "/readyz")[1].strip()
        except OSError as exc:
            return f"unreachable: {exc}"

    def stop(self) -> dict[str, int | None]:
        """Stop the emulator and every child (in reverse order); their exit codes."""
        if self.emulator is not None:
            self.emulator.stop()
        codes = self.children.stop_all()
        if self._emulator_log is not None:
            logging.getLogger("teams_sbc.emulator").removeHandler(self._emulator_log)
            self._emulator_log.close()
        return codes
