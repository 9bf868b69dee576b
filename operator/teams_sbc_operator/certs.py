"""The SBC certificate: checks a user (or cert-manager) would otherwise learn from Microsoft's
403s, and the throw-away development CA. Pure functions of PEM bytes and ``now``; no I/O.

What Microsoft requires of the certificate (docs: "Plan Direct Routing", "Configure an SBC for
multiple tenants"; ../docs/teams-direct-routing.md): it covers the SBC FQDN, and in the carrier
model every tenant's subdomain (a wildcard ``*.base`` does that), it carries both the serverAuth
and clientAuth extended key usages (Microsoft connects to the SBC and the SBC connects to
Microsoft with the same certificate), its key is the one the SBC holds, and it has not expired;
Microsoft's dashboard warns 30 days ahead.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from teams_sbc.pki import DEV_ORGANIZATION


class CertificateProblem(Exception):
    """The certificate cannot serve the SBC; ``reason`` is a condition reason, the message says
    what is wrong and what to do."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class CertificateReport:
    """What the check found; ``problems`` empty means the certificate serves every name."""

    not_after: datetime.datetime
    days_left: int
    dns_names: tuple[str, ...]
    issuer: str
    subject_cn: str | None
    uncovered: tuple[str, ...] = ()
    problems: tuple[tuple[str, str], ...] = field(default=())  # (reason, message)

    @property
    def ok(self) -> bool:
        return not self.problems

    def covers(self, name: str) -> bool:
        return name not in self.uncovered and any(matches(p, name) for p in self.dns_names)


# --- name matching (RFC 6125 section 6.4) -----------------------------------------------------


def matches(pattern: str, name: str) -> bool:
    """Does the certificate's DNS name ``pattern`` cover ``name``?

    RFC 6125 6.4.1: case-insensitive comparison of whole names. 6.4.3: a wildcard is only the
    complete left-most label (``*.example.com``), matches exactly one label (not the bare
    ``example.com``, not ``a.b.example.com``), and only when at least two labels follow it.
    Partial-label wildcards (``s*.example.com``), which 6.4.3 leaves to the client and the CA/B
    Forum's rules forbid, are not accepted.
    """
    pattern = pattern.lower().rstrip(".")
    name = name.lower().rstrip(".")
    if not pattern.startswith("*."):
        return "*" not in pattern and pattern == name
    rest = pattern[2:]
    if "*" in rest or rest.count(".") < 1:
        return False
    head, _, tail = name.partition(".")
    return bool(head) and tail == rest


# --- the check ----------------------------------------------------------------------------------


def load_chain(pem: bytes) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise CertificateProblem(
            "CertificateUnreadable", f"tls.crt holds no readable PEM certificate ({exc})"
        ) from exc
    return chain


def load_key(pem: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateProblem(
            "KeyUnreadable",
            f"tls.key holds no readable unencrypted PEM private key ({exc})",
        ) from exc


def _spki(public: PublicKeyTypes) -> bytes:
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_certificate(
    cert_pem: bytes,
    key_pem: bytes,
    names: Sequence[str],
    *,
    now: datetime.datetime,
    warning_days: int,
) -> CertificateReport:
    """Check a kubernetes.io/tls Secret's ``tls.crt`` (leaf first, then its chain) and
    ``tls.key`` against the names the SBC answers for. Unreadable input raises
    :class:`CertificateProblem`; everything else is reported, worst problem first."""
    chain = load_chain(cert_pem)
    leaf = chain[0]
    key = load_key(key_pem)
    try:
        dns_names = tuple(
            leaf.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.DNSName)
        )
    except x509.ExtensionNotFound:
        dns_names = ()
    cns = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else None
    not_after = leaf.not_valid_after_utc
    not_before = leaf.not_valid_before_utc
    days_left = int((not_after - now).total_seconds() // 86400)
    problems: list[tuple[str, str]] = []

    if _spki(key.public_key()) != _spki(leaf.public_key()):
        problems.append(
            (
                "KeyMismatch",
                "tls.key is not the private key of the certificate in tls.crt; "
                "put the matching pair in the Secret",
            )
        )
    if now >= not_after:
        problems.append(
            (
                "CertificateExpired",
                f"the certificate expired on {not_after:%Y-%m-%d %H:%M} UTC; renew it",
            )
        )
    elif now < not_before:
        problems.append(
            (
                "CertificateNotYetValid",
                f"the certificate is valid only from {not_before:%Y-%m-%d %H:%M} UTC",
            )
        )
    uncovered = tuple(n for n in names if not any(matches(p, n) for p in dns_names))
    if uncovered:
        more = f" and {len(uncovered) - 5} more" if len(uncovered) > 5 else ""
        shown = ", ".join(uncovered[:5]) + more
        problems.append(
            (
                "NamesNotCovered",
                f"the certificate's DNS names ({', '.join(dns_names) or 'none'}) do not cover "
                f"{shown}; issue it for the base FQDN and *.<base FQDN>",
            )
        )
    try:
        usages = set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = set()
    missing = [
        label
        for oid, label in (
            (ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
            (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
        )
        if oid not in usages
    ]
    if missing:
        problems.append(
            (
                "KeyUsageMissing",
                f"the certificate lacks the {' and '.join(missing)} extended key usage; "
                "Microsoft requires both (the SBC is TLS server and client with it): "
                "choose a CA that issues both",
            )
        )
    if not problems and days_left < warning_days:
        problems.append(
            (
                "CertificateExpiresSoon",
                f"the certificate expires in {days_left} days ({not_after:%Y-%m-%d} UTC), "
                f"fewer than {warning_days}; renew it",
            )
        )
    return CertificateReport(
        not_after=not_after,
        days_left=days_left,
        dns_names=dns_names,
        issuer=leaf.issuer.rfc4514_string(),
        subject_cn=cn,
        uncovered=uncovered,
        problems=tuple(problems),
    )


# --- the development CA -------------------------------------------------------------------------


@dataclass(frozen=True)
class PemPair:
    cert: bytes
    key: bytes


def _rsa_key() -> rsa.RSAPrivateKey:
    # RSA: Microsoft's TLS 1.2 suites for Direct Routing are all ECDHE-RSA.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(**on: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(
        (
            "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
            "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
        ),
        False,
    )  # fmt: skip
    flags.update(on)
    return x509.KeyUsage(**flags)


def new_dev_ca(label: str, now: datetime.datetime, days: int = 3650) -> PemPair:
    """A self-signed CA whose subject says it is not for Microsoft."""
    key = _rsa_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{label} dev CA (teams-sbc)"[:64]),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return PemPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_dev_certificate(
    ca: PemPair, fqdn: str, dns_names: Iterable[str], now: datetime.datetime, days: int = 397
) -> PemPair:
    """A leaf for the SBC signed by ``ca``: CN the base FQDN (when it fits in 64 characters),
    the given DNS names, serverAuth and clientAuth. ``cert`` holds the leaf then the CA."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    if not isinstance(ca_key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise CertificateProblem("DevCAUnusable", "the dev CA's key is neither RSA nor EC")
    key = _rsa_key()
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_ORGANIZATION)]
    if len(fqdn) <= 64:
        attributes.insert(0, x509.NameAttribute(NameOID.COMMON_NAME, fqdn))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return PemPair(cert.public_bytes(serialization.Encoding.PEM) + ca.cert, _key_pem(key))


def is_dev_certificate(cert_pem: bytes) -> bool:
    """Was this certificate made by, or signed by, a development CA (ours or teams_sbc.pki's)?"""
    leaf = load_chain(cert_pem)[0]
    orgs = [
        *leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME),
        *leaf.issuer.get_attributes_for_oid(NameOID.ORGANIZATION_NAME),
    ]
    return any(o.value == DEV_ORGANIZATION for o in orgs)


__all__ = [
    "CertificateProblem",
    "CertificateReport",
    "PemPair",
    "check_certificate",
    "is_dev_certificate",
    "issue_dev_certificate",
    "matches",
    "new_dev_ca",
]
