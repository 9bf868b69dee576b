"""The certificate as the operator handles it, on the real API server: a Secret the user keeps,
a cert-manager Certificate the operator writes (the test plays cert-manager and writes the
Secret), and the development CA. Conditions, events, status fields and the metric."""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from teams_sbc.pki import DevCA
from teams_sbc_operator import certs
from tests.operator.conftest import (
    Kube,
    Operator,
    tenant_manifest,
    tls_secret,
    trunk_manifest,
)

BASE = "sbc1.sbc.test"


def test_user_secret_missing_then_bad_then_good(
    kube: Kube, operator: Operator, tmp_path: Path
) -> None:
    ns = kube.namespace
    kube.apply(trunk_manifest(ns), tenant_manifest(ns, "contoso"))
    cond = kube.wait_condition(
        "teamstrunk", "sbc1", "CertificateReady", "False", reason="SecretNotFound",
        proc=operator.proc,
    )  # fmt: skip
    assert "sbc1-tls" in cond["message"] and f"*.{BASE}" in cond["message"]
    assert kube.condition("teamstrunk", "sbc1", "Ready")["status"] == "False"  # type: ignore[index]

    # A certificate without clientAuth: refused with the reason, and an event says so.
    ca = DevCA(tmp_path)
    bad = ca.issue("bad", BASE, dns_names=[BASE, f"*.{BASE}"], client_auth=False, days=200)
    kube.apply(tls_secret(ns, "sbc1-tls", bad.cert.read_bytes(), bad.key.read_bytes()))
    cond = kube.wait_condition(
        "teamstrunk", "sbc1", "CertificateReady", "False", reason="KeyUsageMissing",
        proc=operator.proc,
    )  # fmt: skip
    assert "clientAuth" in cond["message"]
    assert "clientAuth" in kube.wait_event("sbc1", "KeyUsageMissing", operator.proc)["message"]

    # The renewed certificate: the Secret changing is enough, nobody touches the trunk.
    good = ca.issue("good", BASE, dns_names=[BASE, f"*.{BASE}"], days=200)
    kube.apply(tls_secret(ns, "sbc1-tls", good.cert.read_bytes(), good.key.read_bytes()))
    cond = kube.wait_condition(
        "teamstrunk", "sbc1", "CertificateReady", reason="DevelopmentCertificate",
        proc=operator.proc,
    )  # fmt: skip
    status = kube.status("teamstrunk", "sbc1")
    assert status["certificate"]["daysLeft"] in (199, 200)
    assert status["certificate"]["dnsNames"] == [BASE, f"*.{BASE}"]
    assert status["certificate"]["secretName"] == "sbc1-tls"
    row = kube.kubectl("get", "tstrunk", "sbc1", "--no-headers").split()
    assert row[5] in ("199", "200")  # the Cert-Days column
    tenant = kube.wait_condition(
        "teamstenant", "contoso", "CertificateReady", reason="Covered", proc=operator.proc
    )
    assert f"contoso.{BASE}" in tenant["message"]
    days = operator.metrics()[
        f'teams_sbc_operator_certificate_days_left{{namespace="{ns}",trunk="sbc1"}}'
    ]
    assert days in (199.0, 200.0)


def test_certificate_that_does_not_cover_tenants(
    kube: Kube, operator: Operator, tmp_path: Path
) -> None:
    ns = kube.namespace
    only_base = DevCA(tmp_path).issue("sbc", BASE, dns_names=[BASE], days=90)
    kube.apply(
        tls_secret(ns, "sbc1-tls", only_base.cert.read_bytes(), only_base.key.read_bytes()),
        trunk_manifest(ns),
        tenant_manifest(ns, "contoso"),
    )
    cond = kube.wait_condition(
        "teamstrunk", "sbc1", "CertificateReady", "False", reason="NamesNotCovered",
        proc=operator.proc,
    )  # fmt: skip
    assert f"contoso.{BASE}" in cond["message"]
    tenant = kube.wait_condition(
        "teamstenant", "contoso", "CertificateReady", "False", reason="NameNotCovered",
        proc=operator.proc,
    )  # fmt: skip
    assert f"contoso.{BASE}" in tenant["message"]


def test_cert_manager_certificate_then_its_secret(
    kube: Kube, operator: Operator, tmp_path: Path
) -> None:
    ns = kube.namespace
    kube.apply(
        trunk_manifest(
            ns, certificate={"issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"}}
        )
    )
    cond = kube.wait_condition(
        "teamstrunk", "sbc1", "CertificateReady", "False", reason="CertificateIssuing",
        proc=operator.proc,
    )  # fmt: skip
    assert "sbc1-sbc" in cond["message"]
    certificate = kube.must("certificate", "sbc1-sbc")
    spec = certificate["spec"]
    assert spec["dnsNames"] == [BASE, f"*.{BASE}"]
    assert spec["commonName"] == BASE
    assert {"server auth", "client auth"} <= set(spec["usages"])
    assert spec["secretName"] == "sbc1-tls"
    assert spec["issuerRef"] == {
        "name": "letsencrypt", "kind": "ClusterIssuer", "group": "cert-manager.io"
    }  # fmt: skip
    assert spec["privateKey"]["algorithm"] == "RSA"
    (owner,) = certificate["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("TeamsTrunk", "sbc1", True)

    # cert-manager's part, played by the test: report progress, then write the Secret.
    kube.patch_status(
        "certificate", "sbc1-sbc",
        {"conditions": [{"type": "Ready", "status": "False", "reason": "Issuing",
                         "message": "Issuing certificate as Secret does not exist"}]},
    )  # fmt: skip
    ca = DevCA(tmp_path)
    issued = ca.issue("sbc", BASE, dns_names=spec["dnsNames"], days=90)
    kube.apply(tls_secret(ns, "sbc1-tls", issued.cert.read_bytes(), issued.key.read_bytes()))
    kube.wait_condition("teamstrunk", "sbc1", "CertificateReady", proc=operator.proc)
    assert kube.status("teamstrunk", "sbc1")["certificate"]["daysLeft"] in (89, 90)


def test_dev_ca_mode_makes_a_certificate_labelled_not_for_microsoft(
    kube: Kube, operator: Operator
) -> None:
    ns = kube.namespace
    kube.apply(trunk_manifest(ns, certificate={"devCA": True}), tenant_manifest(ns, "contoso"))
    cond = kube.wait_condition(
        "teamstrunk", "sbc1", "CertificateReady", reason="DevelopmentCertificate",
        proc=operator.proc,
    )  # fmt: skip
    assert "Microsoft does not trust" in cond["message"]
    ca_secret = kube.must("secret", "sbc1-dev-ca")
    leaf_secret = kube.must("secret", "sbc1-tls")
    for secret in (ca_secret, leaf_secret):
        assert secret["metadata"]["labels"]["sbc.teams-sbc.io/not-for-microsoft"] == "true"
        assert secret["metadata"]["ownerReferences"][0]["name"] == "sbc1"
        assert secret["type"] == "kubernetes.io/tls"
    pem = base64.b64decode(leaf_secret["data"]["tls.crt"])
    chain = x509.load_pem_x509_certificates(pem)
    ca = x509.load_pem_x509_certificate(base64.b64decode(ca_secret["data"]["tls.crt"]))
    chain[0].verify_directly_issued_by(ca)
    names = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [BASE, f"*.{BASE}"]
    eku = chain[0].extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
    assert certs.is_dev_certificate(pem)
    assert "not for Microsoft" in kube.wait_event("sbc1", "DevCACreated", operator.proc)["message"]
    kube.wait_event("sbc1", "DevCertificateIssued", operator.proc)
    kube.wait_condition("teamstenant", "contoso", "CertificateReady", proc=operator.proc)

    # The operator restarts: the same CA and certificate stay (nothing re-issued).
    rv = (ca_secret["metadata"]["resourceVersion"], leaf_secret["metadata"]["resourceVersion"])
    operator.restart()
    operator.wait_passes(1)
    kube.wait_condition("teamstrunk", "sbc1", "CertificateReady", proc=operator.proc)
    after = (
        kube.must("secret", "sbc1-dev-ca")["metadata"]["resourceVersion"],
        kube.must("secret", "sbc1-tls")["metadata"]["resourceVersion"],
    )
    assert after == rv


def test_dev_ca_mode_does_not_overwrite_a_secret_it_did_not_make(
    kube: Kube, operator: Operator, tmp_path: Path
) -> None:
    ns = kube.namespace
    files = DevCA(tmp_path).issue("sbc", BASE, dns_names=[BASE], days=90)
    kube.apply(tls_secret(ns, "sbc1-tls", files.cert.read_bytes(), files.key.read_bytes()))
    kube.apply(trunk_manifest(ns, certificate={"devCA": True}))
    cond = kube.wait_condition(
        "teamstrunk", "sbc1", "CertificateReady", "False", reason="SecretNotOwned",
        proc=operator.proc,
    )  # fmt: skip
    assert "secretName" in cond["message"]
    data = kube.must("secret", "sbc1-tls")["data"]
    assert base64.b64decode(data["tls.crt"]) == files.cert.read_bytes()
