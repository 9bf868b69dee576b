"""Throw-away certificate authorities for development, demos and tests (never for Microsoft).

Production certificates come from a CA in Microsoft's trusted root programme (the operator
validates them); this module makes the local stand-ins: a CA, SBC certificates with the FQDN in
CN and SAN and both serverAuth and clientAuth, and certificates for the Teams emulator.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: Marks every certificate made here, so nobody mistakes one for a real one.
DEV_ORGANIZATION = "teams-sbc development CA - not for Microsoft"


@dataclass(frozen=True)
class CertFiles:
    """A certificate (PEM, with the CA's certificate after it) and its private key."""

    cert: Path
    key: Path


def _new_key(kind: str) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def write_private_key(path: Path, key: PrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


class DevCA:
    """A CA whose key lives in ``directory`` (``<name>.crt``, ``<name>.key``)."""

    def __init__(self, directory: Path, name: str = "ca", key_type: str = "rsa") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.key = _new_key(key_type)
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_ORGANIZATION),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{name} (teams-sbc dev)"),
            ]
        )
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = directory / f"{name}.crt"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        write_private_key(directory / f"{name}.key", self.key)

    def issue(
        self,
        name: str,
        common_name: str,
        *,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        server_auth: bool = True,
        client_auth: bool = True,
        key_type: str = "rsa",
        days: float = 30,
        organizations: Sequence[str] = (),
    ) -> CertFiles:
        """A leaf certificate written as ``<name>.crt`` (chain included) and ``<name>.key``.

        SBC certificates for Teams carry the FQDN in CN and SAN and both extended key usages;
        ``server_auth``/``client_auth`` let tests make the certificates Microsoft now uses, which
        lack clientAuth.
        """
        key = _new_key(key_type)
        now = datetime.datetime.now(datetime.UTC)
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server_auth else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        files = CertFiles(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        files.cert.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + self.cert.public_bytes(serialization.Encoding.PEM)
        )
        write_private_key(files.key, key)
        return files
