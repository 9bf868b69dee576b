"""Names, labels and owner references shared by every object a TeamsTrunk owns."""

from __future__ import annotations

from typing import Any

from teams_sbc_operator.model import API_VERSION, GROUP, Trunk

FIELD_MANAGER = "teams-sbc-operator"
TRUNK_LABEL = f"{GROUP}/trunk"
#: Marks the development CA's objects: never to be paired with Microsoft.
NOT_FOR_MICROSOFT = f"{GROUP}/not-for-microsoft"


def sbc_name(trunk: Trunk) -> str:
    """Deployment, Service and PodDisruptionBudget (and cert-manager's Certificate)."""
    return f"{trunk.name}-sbc"


def config_map_name(trunk: Trunk) -> str:
    return f"{trunk.name}-sbc-config"


def dev_ca_secret_name(trunk: Trunk) -> str:
    return f"{trunk.name}-dev-ca"


def selector_labels(trunk: Trunk) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "teams-sbc",
        "app.kubernetes.io/instance": trunk.name,
        "app.kubernetes.io/component": "sbc",
    }


def labels(trunk: Trunk) -> dict[str, str]:
    return {
        **selector_labels(trunk),
        "app.kubernetes.io/part-of": "teams-sbc",
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        TRUNK_LABEL: trunk.name,
    }


def owner_reference(trunk: Trunk) -> dict[str, Any]:
    """The trunk as controller of the object: the garbage collector deletes the object with the
    trunk, and kubectl shows who made it."""
    return {
        "apiVersion": API_VERSION,
        "kind": "TeamsTrunk",
        "name": trunk.name,
        "uid": trunk.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(trunk: Trunk, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": trunk.namespace,
        "labels": labels(trunk),
        "ownerReferences": [owner_reference(trunk)],
        **extra,
    }
