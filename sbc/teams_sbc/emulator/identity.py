"""Who is on the other end of a TLS connection, as Microsoft's proxies judge it: the names in
the certificate the SBC presented, and whether they cover an FQDN.

Microsoft ("Direct Routing - SIP protocol", Contact header): the FQDN an SBC puts in its Contact
(or top Record-Route) must be in the Common Name or a Subject Alternative Name of the certificate
it presented, wildcards allowed as RFC 2818 section 3.1 describes. A field report saw 403 with a
certificate that had the name in a SAN only, so by default the Common Name must be there too
(``EmulatorConfig.require_cn``).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Identity:
    """The names of a peer's certificate, lower-cased."""

    common_name: str | None
    dns_names: tuple[str, ...]
    subject: str = ""
    serial: int = 0

    @classmethod
    def from_der(cls, der: bytes) -> Identity:
        cert = x509.load_der_x509_certificate(der)
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common = str(cns[0].value).lower() if cns else None
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names = tuple(n.lower() for n in san.value.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            names = ()
        return cls(common, names, cert.subject.rfc4514_string(), cert.serial_number)

    def covered_by_cn(self, fqdn: str) -> bool:
        return self.common_name is not None and name_matches(self.common_name, fqdn)

    def covered_by_san(self, fqdn: str) -> bool:
        return any(name_matches(pattern, fqdn) for pattern in self.dns_names)

    def covers(self, fqdn: str) -> bool:
        """The FQDN is in the CN or a SAN (either may be a wildcard)."""
        return self.covered_by_cn(fqdn) or self.covered_by_san(fqdn)

    def describe(self) -> str:
        sans = ", ".join(self.dns_names) or "none"
        return f"CN={self.common_name or '(none)'}, SAN DNS={sans}"


def name_matches(pattern: str, fqdn: str) -> bool:
    """RFC 2818 3.1 / RFC 6125 6.4.3: ``*`` stands for exactly one whole left-most label.

    ``*.base`` covers ``t1.base`` but neither ``base`` nor ``a.t1.base``; partial-label
    wildcards (``f*.base``) are not honoured, as browsers and Microsoft's checks today.
    """
    pattern = pattern.lower().rstrip(".")
    fqdn = fqdn.lower().rstrip(".")
    if not pattern.startswith("*."):
        return pattern == fqdn
    head, _, rest = fqdn.partition(".")
    return bool(head) and rest == pattern[2:] and "*" not in pattern[2:]


def trunk_configured(trunks: list[str], fqdn: str) -> bool:
    """Whether ``fqdn`` is a trunk of the tenant configuration (``*.base`` = any tenant
    subdomain of a carrier's base domain, Microsoft's "Configure an SBC for multiple
    tenants"). An empty list configures every name."""
    return not trunks or any(name_matches(t, fqdn) for t in trunks)
