"""The SBC pods and what they need: the ConfigMap with the SBC's config, the Deployment (the
teams-sbc container and an rtpengine sidecar), the Service, the PodDisruptionBudget, and the
SBC's ServiceAccount with a Role that lets it annotate its own Pod (teams_sbc.podstatus)."""

from __future__ import annotations

from typing import Any

from teams_sbc_operator.model import GROUP, Trunk
from teams_sbc_operator.render.objects import (
    config_map_name,
    labels,
    metadata,
    sbc_name,
    selector_labels,
)
from teams_sbc_operator.render.sbc_config import (
    CONFIG_DIR,
    CONFIG_FILE,
    DRAIN_SECONDS,
    HTTP_PORT,
    TLS_DIR,
)

#: rtpengine's ng control port, on the pod's loopback only.
RTPENGINE_NG_PORT = 2223
#: Before SIGTERM, the pod leaves the Service's endpoints and load balancers; new connections
#: stop arriving while this runs, then the SBC drains what is open.
PRESTOP_SECONDS = 5
#: On the pod template when the SBC runs several worker processes: the count. The SBC cannot take
#: a change of ``workers`` over while running (teams_sbc.reload: restart_required), so the
#: template changes with it and the Deployment rolls the pods.
WORKERS_ANNOTATION = f"{GROUP}/workers"
#: On the pod template: teams_sbc.reload.restart_digest of the SBC's config.
RESTART_ANNOTATION = f"{GROUP}/restart-config"
#: Where the supervisor keeps its workers' control sockets (Python's tempfile: /tmp), writable
#: on the otherwise read-only root file system. A few sockets: a small limit, in memory.
TMP_DIR = "/tmp"
TMP_SIZE_LIMIT = "16Mi"


def config_map(trunk: Trunk, config_text: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(trunk, config_map_name(trunk)),
        "data": {CONFIG_FILE: config_text},
    }


#: What the SBC may do with the API server: read and annotate the pods of its namespace (it
#: writes its Microsoft proxies' state on its own Pod; render/reachability.py reads it). Kubernetes
#: RBAC cannot narrow this to the pod's own name, which it does not know before it exists.
SBC_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]},
]


def service_account(trunk: Trunk) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(trunk, sbc_name(trunk)),
    }


def role(trunk: Trunk) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(trunk, sbc_name(trunk)),
        "rules": SBC_RULES,
    }


def role_binding(trunk: Trunk) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(trunk, sbc_name(trunk)),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": sbc_name(trunk),
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": sbc_name(trunk), "namespace": trunk.namespace}
        ],
    }


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _carrier_protocols(trunk: Trunk) -> list[str]:
    return ["UDP"] if trunk.carrier.transport == "udp" else ["TCP"]


def deployment(
    trunk: Trunk, *, sbc_image: str, rtpengine_image: str, restart_digest: str | None = None
) -> dict[str, Any]:
    """The SBC pods. The pod template does not change when tenants do: the config arrives
    through the mounted ConfigMap (not a subPath, which would never update), so adding a tenant
    rolls out nothing. A change of ``workers``, which needs a restart, changes the template (its
    annotation, the /tmp volume) and so rolls the pods."""
    sbc = trunk.sbc
    ports: list[dict[str, Any]] = [
        {"name": "sip-teams", "containerPort": sbc.teams_port, "protocol": "TCP"},
        *(
            {"name": f"sip-carrier-{p.lower()}", "containerPort": sbc.carrier_port, "protocol": p}
            for p in _carrier_protocols(trunk)
        ),
        {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
    ]
    container: dict[str, Any] = {
        "name": "teams-sbc",
        "image": sbc.image or sbc_image,
        "args": ["run", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        # The pod it runs in, for the annotation with Microsoft's state (teams_sbc.podstatus).
        "env": [
            _field_env("POD_NAME", "metadata.name"),
            _field_env("POD_NAMESPACE", "metadata.namespace"),
        ],
        "ports": ports,
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 30,
        },
        # Drain: the pod leaves the endpoints first, then SIGTERM makes the SBC refuse new calls
        # and finish open transactions for drain_seconds.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if sbc.resources:
        container["resources"] = sbc.resources
    template_meta: dict[str, Any] = {"labels": labels(trunk)}
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(trunk)}},
        {"name": "tls", "secret": {"secretName": trunk.certificate.secret_name}},
    ]
    if sbc.workers > 1:
        # Only then: a single process needs no temporary directory, and the pods of a trunk
        # with one worker keep the template they had (an operator upgrade restarts nothing).
        container["volumeMounts"].append({"name": "tmp", "mountPath": TMP_DIR})
        volumes.append(
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": TMP_SIZE_LIMIT}}
        )
        template_meta["annotations"] = {WORKERS_ANNOTATION: str(sbc.workers)}
    if restart_digest is not None:
        # What the SBC cannot take over from a changed ConfigMap (listeners, timers, media,
        # Microsoft's proxies...: teams_sbc.reload.restart_reasons) changes the template and
        # rolls the pods; tenants, numbers, policies and routes are reloaded in place.
        template_meta.setdefault("annotations", {})[RESTART_ANNOTATION] = restart_digest
    rtpengine: dict[str, Any] = {
        "name": "rtpengine",
        "image": sbc.rtpengine_image or rtpengine_image,
        "args": [
            "--foreground",
            "--log-stderr",
            "--table=-1",
            "--interface=$(POD_IP)",
            f"--listen-ng=127.0.0.1:{RTPENGINE_NG_PORT}",
            f"--port-min={trunk.media_port_min}",
            f"--port-max={trunk.media_port_max}",
        ],
        "env": [_field_env("POD_IP", "status.podIP")],
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": sbc_name(trunk),
        "containers": [container, rtpengine],
        "terminationGracePeriodSeconds": PRESTOP_SECONDS + DRAIN_SECONDS + 5,
        "volumes": volumes,
        "enableServiceLinks": False,
    }
    if sbc.host_network:
        pod_spec["hostNetwork"] = True
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    if sbc.node_selector:
        pod_spec["nodeSelector"] = sbc.node_selector
    if sbc.tolerations:
        pod_spec["tolerations"] = sbc.tolerations
    # One SBC per node where it can be: losing a node loses one replica.
    pod_spec["topologySpreadConstraints"] = [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule" if sbc.host_network else "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(trunk)},
        }
    ]
    # With host networking two pods cannot share a node's ports: replace one at a time.
    rolling = (
        {"maxUnavailable": 1, "maxSurge": 0}
        if sbc.host_network
        else {"maxUnavailable": 0, "maxSurge": 1}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(trunk, sbc_name(trunk)),
        "spec": {
            "replicas": sbc.replicas,
            "selector": {"matchLabels": selector_labels(trunk)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": rolling},
            "template": {"metadata": template_meta, "spec": pod_spec},
        },
    }


def service(trunk: Trunk) -> dict[str, Any]:
    sbc = trunk.sbc
    ports: list[dict[str, Any]] = [
        {"name": "sip-teams", "port": sbc.teams_port, "targetPort": "sip-teams", "protocol": "TCP"},
        *(
            {
                "name": f"sip-carrier-{p.lower()}",
                "port": sbc.carrier_port,
                "targetPort": f"sip-carrier-{p.lower()}",
                "protocol": p,
            }
            for p in _carrier_protocols(trunk)
        ),
    ]
    spec: dict[str, Any] = {
        "type": sbc.service_type,
        "selector": selector_labels(trunk),
        "ports": ports,
    }
    if sbc.service_type != "ClusterIP":
        # Keep the client's source address: the SBC allows Microsoft's ranges only.
        spec["externalTrafficPolicy"] = "Local"
    meta = metadata(trunk, sbc_name(trunk))
    if sbc.service_annotations:
        meta["annotations"] = sbc.service_annotations
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def pod_disruption_budget(trunk: Trunk) -> dict[str, Any]:
    """Voluntary evictions (node drains) take one SBC pod at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(trunk, sbc_name(trunk)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(trunk)}},
    }
