"""The certificate's objects: cert-manager's Certificate, and the dev CA's two Secrets."""

from __future__ import annotations

import base64
from typing import Any

from teams_sbc_operator.certs import PemPair
from teams_sbc_operator.model import Trunk
from teams_sbc_operator.render.objects import (
    NOT_FOR_MICROSOFT,
    dev_ca_secret_name,
    labels,
    metadata,
    sbc_name,
)

#: RFC 5280's upper bound for a subject common name.
MAX_CN = 64


def certificate_names(trunk: Trunk) -> list[str]:
    """The names the SBC certificate is issued for: the base FQDN and one wildcard for every
    tenant subdomain (Microsoft's carrier model)."""
    return [trunk.fqdn, f"*.{trunk.fqdn}"]


def cert_manager_certificate(trunk: Trunk) -> dict[str, Any]:
    """A ``cert-manager.io/v1`` Certificate for ``base`` and ``*.base`` with serverAuth and
    clientAuth (Microsoft requires both) and an RSA key (Microsoft's TLS 1.2 suites for Direct
    Routing are ECDHE-RSA); the CN carries the base FQDN too, as some Teams edges want it."""
    issuer = trunk.certificate.issuer
    assert issuer is not None
    spec: dict[str, Any] = {
        "secretName": trunk.certificate.secret_name,
        "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
        "dnsNames": certificate_names(trunk),
        "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
        "privateKey": {"algorithm": "RSA", "size": 2048, "rotationPolicy": "Always"},
        "secretTemplate": {"labels": labels(trunk)},
    }
    if len(trunk.fqdn) <= MAX_CN:
        spec["commonName"] = trunk.fqdn
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": metadata(trunk, sbc_name(trunk)),
        "spec": spec,
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def dev_ca_secret(trunk: Trunk, ca: PemPair) -> dict[str, Any]:
    meta = metadata(trunk, dev_ca_secret_name(trunk))
    meta["labels"] = {**meta["labels"], NOT_FOR_MICROSOFT: "true"}
    meta["annotations"] = {
        NOT_FOR_MICROSOFT: "a throw-away development CA made by teams-sbc-operator; "
        "Microsoft does not trust it"
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": _b64(ca.cert), "tls.key": _b64(ca.key)},
    }


def dev_certificate_secret(trunk: Trunk, leaf: PemPair, ca_cert: bytes) -> dict[str, Any]:
    meta = metadata(trunk, trunk.certificate.secret_name)
    meta["labels"] = {**meta["labels"], NOT_FOR_MICROSOFT: "true"}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": _b64(leaf.cert), "tls.key": _b64(leaf.key), "ca.crt": _b64(ca_cert)},
    }
