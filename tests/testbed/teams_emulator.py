"""pytest plugin: the strict Teams emulator (``teams_sbc.emulator``) as a test-bed part.

``teams_emulator_factory`` gives each test a throw-away PKI (a CA both sides trust, the
emulator's certificate, SBC certificates on demand) and starts emulators on free loopback ports
(sip on 127.0.0.1, sip2 on 127.0.0.2, sip3 on 127.0.0.3), stopped when the test ends. It runs
the same code as ``teams-sbc emulate-teams``, on a background thread
(:class:`~teams_sbc.emulator.EmulatorThread`); async tests can build a
:class:`~teams_sbc.emulator.TeamsEmulator` from ``factory.config(...)`` on their own loop.

```python
def test_options(teams_emulator_factory):
    emu = teams_emulator_factory.start(trunks=["sbc.example.test"], sbc_address="127.0.0.1:5061")
    host, port = emu.address("sip")
```
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from teams_sbc.emulator import EmulatorConfig, EmulatorThread, ProxyConfig, parse_emulator_config
from teams_sbc.pki import CertFiles, DevCA

#: The emulator's certificate names: Microsoft's proxies and their wildcard.
MICROSOFT_NAMES = (
    "sip.pstnhub.microsoft.com",
    "sip2.pstnhub.microsoft.com",
    "sip3.pstnhub.microsoft.com",
    "*.pstnhub.microsoft.com",
)

#: Loopback addresses of the three proxies: distinct hosts, as Microsoft's regions are.
PROXY_HOSTS = {"sip": "127.0.0.1", "sip2": "127.0.0.2", "sip3": "127.0.0.3"}


class TestPki:
    """A CA both sides trust, the emulator's certificate, and SBC certificates on demand."""

    __test__ = False  # not a test class

    def __init__(self, directory: Path, *, emulator_client_auth: bool = True) -> None:
        self.directory = directory
        self.ca = DevCA(directory / "ca", "teams-test-ca")
        self.emulator = self.ca.issue(
            "emulator", MICROSOFT_NAMES[0], dns_names=list(MICROSOFT_NAMES),
            client_auth=emulator_client_auth,
        )
        self._other_ca: DevCA | None = None

    @property
    def ca_file(self) -> Path:
        return self.ca.cert_path

    def sbc_cert(
        self,
        fqdn: str,
        *,
        name: str | None = None,
        common_name: str | None = None,
        sans: list[str] | None = None,
        client_auth: bool = True,
        wrong_ca: bool = False,
    ) -> CertFiles:
        """An SBC certificate: ``fqdn`` in CN and SAN unless told otherwise. ``common_name=""``
        leaves the CN out (SAN only)."""
        ca = self.other_ca if wrong_ca else self.ca
        label = name or re.sub(r"[^\w.-]+", "_", f"sbc-{fqdn}")
        if common_name == "":
            return _issue_without_cn(ca, label, sans if sans is not None else [fqdn])
        return ca.issue(
            label, common_name or fqdn, dns_names=sans if sans is not None else [fqdn],
            client_auth=client_auth,
        )

    @property
    def other_ca(self) -> DevCA:
        """A CA the emulator does not trust."""
        if self._other_ca is None:
            self._other_ca = DevCA(self.directory / "other-ca", "untrusted-ca")
        return self._other_ca


def _issue_without_cn(ca: DevCA, name: str, sans: list[str]) -> CertFiles:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from teams_sbc.pki import write_private_key

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "no CN")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    files = CertFiles(ca.directory / f"{name}.crt", ca.directory / f"{name}.key")
    files.cert.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + ca.cert.public_bytes(serialization.Encoding.PEM)
    )
    write_private_key(files.key, key)
    return files


class EmulatorFactory:
    """Builds emulator configs on the test PKI and starts emulators; stops them all at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pki = TestPki(directory / "pki")
        self.running: list[EmulatorThread] = []

    def config(self, **overrides: Any) -> EmulatorConfig:
        """An emulator config: the test PKI, sip/sip2/sip3 on 127.0.0.1-3 (free ports), fast
        test timing; ``overrides`` in the config file's own words (``timing={"t1": 0.05}``)."""
        raw: dict[str, Any] = {
            "proxies": [
                {"name": name, "fqdn": f"{name}.pstnhub.microsoft.com", "host": host}
                for name, host in PROXY_HOSTS.items()
            ],
            "cert_file": str(self.pki.emulator.cert),
            "key_file": str(self.pki.emulator.key),
            "ca_file": str(self.pki.ca_file),
        }
        timing = {"t1": 0.05, "t2": 0.4, "ring_after": 0.02, "progress_after": 0.05,
                  "answer_after": 0.15}
        timing.update(overrides.pop("timing", {}))
        raw["timing"] = timing
        raw.update(overrides)
        return parse_emulator_config(raw)

    def start(self, config: EmulatorConfig | None = None, **overrides: Any) -> EmulatorThread:
        emulator = EmulatorThread(config or self.config(**overrides)).start()
        self.running.append(emulator)
        return emulator

    def stop_all(self) -> None:
        for emulator in self.running:
            emulator.stop()
        self.running.clear()


@pytest.fixture
def teams_emulator_factory(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[EmulatorFactory]:
    safe = re.sub(r"[^\w.-]+", "_", f"teams-emulator-{request.node.name}")[:60]
    factory = EmulatorFactory(tmp_path_factory.mktemp(safe, numbered=True))
    try:
        yield factory
    finally:
        factory.stop_all()


__all__ = ["MICROSOFT_NAMES", "PROXY_HOSTS", "EmulatorFactory", "ProxyConfig", "TestPki"]
