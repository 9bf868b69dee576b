"""What the two end-to-end beds of the Teams edge share (test_edge_e2e.py with scripted
Microsoft proxies, test_emulator_e2e.py with the Teams emulator): the SBC's listeners and
``teams`` section around them, and sipp's errors for an assertion message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from teams_sbc.pki import CertFiles
from tests.testbed.sipp import UacRun

FQDN = "sbc.carrier.test"


def listeners(cert: CertFiles, ca_file: Path, port: int | None = None) -> list[dict[str, Any]]:
    """The SBC's mutual-TLS "teams" listener (``cert``, trusting ``ca_file``; ``port``: a free
    one when None) and its UDP "carrier" listener, both on 127.0.0.1."""
    teams: dict[str, Any] = {
        "name": "teams",
        "transport": "tls",
        "host": "127.0.0.1",
        **({"port": port} if port is not None else {}),
        "advertise": FQDN,
        "tls": {"cert_file": str(cert.cert), "key_file": str(cert.key), "ca_file": str(ca_file)},
    }
    return [teams, {"name": "carrier", "transport": "udp", "host": "127.0.0.1"}]


def teams_section(
    carrier: str | None, proxies: list[dict[str, Any]], **teams: Any
) -> dict[str, Any]:
    """The ``teams`` section: ``proxies`` in failover order, tenants contoso (+4930123) and
    fabrikam (label fab, +4940555), fast OPTIONS and failover; calls to the carrier go to
    ``carrier`` (``host:port``; None: a port where nothing answers). ``teams``: overrides."""
    return {
        "fqdn": FQDN,
        "teams_listener": "teams",
        "carrier_listener": "carrier",
        "carrier": {"next_hop": f"sip:{carrier or '127.0.0.1:9'}"},
        "proxies": proxies,
        "options_interval": 0.5,
        "options_timeout": 1.0,
        "failover_timeout": 1.0,
        "tenants": [
            {"name": "contoso", "numbers": ["+4930123"]},
            {"name": "fabrikam", "label": "fab", "numbers": ["+4940555"]},
        ],
        "policies": {"default": {"numbers": {"country_code": "49"}}},
        "allow_sources": ["127.0.0.0/8"],
        **teams,
    }


def sipp_errors(run: UacRun) -> str:
    """What sipp said went wrong, for the assertion message."""
    errors = run.error_path.read_text() if run.error_path.exists() else ""
    return f"{run.stats}\n{errors[-3000:]}"
