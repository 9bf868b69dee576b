"""The certificate checks (teams_sbc_operator.certs) on real certificates made with cryptography:
what Microsoft would refuse is found before Microsoft refuses it."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from teams_sbc.pki import DEV_ORGANIZATION, DevCA
from teams_sbc_operator import certs

NOW = datetime.datetime.now(datetime.UTC)
BASE = "sbc1.sbc.test"
NAMES = [BASE, f"contoso.{BASE}", f"fabrikam.{BASE}"]


@pytest.mark.parametrize(
    ("pattern", "name", "covered"),
    [
        ("sbc.example.com", "sbc.example.com", True),
        ("SBC.Example.COM", "sbc.example.com.", True),  # 6.4.1: case-insensitive, root dot
        ("*.example.com", "sbc.example.com", True),
        ("*.example.com", "example.com", False),  # 6.4.3: exactly one label
        ("*.example.com", "a.sbc.example.com", False),
        ("*.com", "example.com", False),  # a wildcard needs two labels after it
        ("s*.example.com", "sbc.example.com", False),  # partial-label wildcard: not accepted
        ("sbc.*.com", "sbc.example.com", False),  # only the left-most label may be a wildcard
        ("*.*.example.com", "a.b.example.com", False),
        ("sbc.example.com", "sbc2.example.com", False),
    ],
)
def test_names_match_as_rfc_6125_says(pattern: str, name: str, covered: bool) -> None:
    assert certs.matches(pattern, name) is covered


def _pems(files: object) -> tuple[bytes, bytes]:
    return files.cert.read_bytes(), files.key.read_bytes()  # type: ignore[attr-defined]


def test_a_wildcard_certificate_with_both_usages_passes(tmp_path: Path) -> None:
    ca = DevCA(tmp_path)
    cert, key = _pems(ca.issue("sbc", BASE, dns_names=[BASE, f"*.{BASE}"], days=200))
    report = certs.check_certificate(cert, key, NAMES, now=NOW, warning_days=30)
    assert report.ok, report.problems
    assert report.dns_names == (BASE, f"*.{BASE}")
    assert report.days_left in (199, 200)
    assert report.subject_cn == BASE
    assert all(report.covers(n) for n in NAMES)
    assert "teams-sbc development CA" in report.issuer


def test_a_certificate_for_the_base_name_only_does_not_cover_tenants(tmp_path: Path) -> None:
    cert, key = _pems(DevCA(tmp_path).issue("sbc", BASE, dns_names=[BASE], days=200))
    report = certs.check_certificate(cert, key, NAMES, now=NOW, warning_days=30)
    assert [r for r, _ in report.problems] == ["NamesNotCovered"]
    assert report.uncovered == (f"contoso.{BASE}", f"fabrikam.{BASE}")
    message = report.problems[0][1]
    assert f"contoso.{BASE}" in message and "*.<base FQDN>" in message
    assert report.covers(BASE) and not report.covers(f"contoso.{BASE}")


def test_a_certificate_without_client_auth_is_refused(tmp_path: Path) -> None:
    """Several public CAs stopped issuing clientAuth in 2026; Microsoft still wants it."""
    files = DevCA(tmp_path).issue(
        "sbc", BASE, dns_names=[BASE, f"*.{BASE}"], client_auth=False, days=200
    )
    report = certs.check_certificate(*_pems(files), NAMES, now=NOW, warning_days=30)
    assert [r for r, _ in report.problems] == ["KeyUsageMissing"]
    assert "clientAuth" in report.problems[0][1] and "serverAuth" not in report.problems[0][1]


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path: Path) -> None:
    ca = DevCA(tmp_path)
    cert, _ = _pems(ca.issue("a", BASE, dns_names=[BASE, f"*.{BASE}"], days=200))
    _, other_key = _pems(ca.issue("b", BASE, dns_names=[BASE], days=200))
    report = certs.check_certificate(cert, other_key, NAMES, now=NOW, warning_days=30)
    assert [r for r, _ in report.problems] == ["KeyMismatch"]


def test_expiry_near_and_past(tmp_path: Path) -> None:
    cert, key = _pems(DevCA(tmp_path).issue("sbc", BASE, dns_names=[BASE, f"*.{BASE}"], days=10))
    report = certs.check_certificate(cert, key, NAMES, now=NOW, warning_days=30)
    assert [r for r, _ in report.problems] == ["CertificateExpiresSoon"]
    assert re.search(r"expires in (9|10) days", report.problems[0][1])
    later = NOW + datetime.timedelta(days=11)
    report = certs.check_certificate(cert, key, NAMES, now=later, warning_days=30)
    assert [r for r, _ in report.problems] == ["CertificateExpired"]


def test_unreadable_input_is_a_problem_not_a_crash() -> None:
    with pytest.raises(certs.CertificateProblem) as bad:
        certs.check_certificate(b"not a pem", b"", NAMES, now=NOW, warning_days=30)
    assert bad.value.reason == "CertificateUnreadable"


def test_the_dev_ca_issues_what_microsoft_would_ask_for_and_says_it_is_not_for_microsoft() -> None:
    ca = certs.new_dev_ca("ns/sbc1", NOW)
    leaf = certs.issue_dev_certificate(ca, BASE, [BASE, f"*.{BASE}"], NOW)
    report = certs.check_certificate(leaf.cert, leaf.key, NAMES, now=NOW, warning_days=30)
    assert report.ok, report.problems
    assert certs.is_dev_certificate(leaf.cert)
    chain = x509.load_pem_x509_certificates(leaf.cert)
    assert len(chain) == 2  # the leaf, then the CA
    chain[0].verify_directly_issued_by(chain[1])
    usages = chain[0].extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    orgs = chain[1].subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert orgs[0].value == DEV_ORGANIZATION and "not for Microsoft" in DEV_ORGANIZATION
    assert chain[0].public_key().key_size == 2048  # type: ignore[union-attr]
