"""The three images the Helm chart and the operator name, and how each is put together.

=========================================  =========================================
``ghcr.io/teams-sbc/teams-sbc:VERSION``     Debian python3 + ca-certificates, the app;
                                            entry point ``teams-sbc``
``ghcr.io/teams-sbc/teams-sbc-operator``    the same layers; entry point
                                            ``teams-sbc-operator``
``ghcr.io/teams-sbc/rtpengine:10.5``        Debian's rtpengine-daemon; entry point
                                            ``/usr/bin/rtpengine``
=========================================  =========================================

All run as user 10001 and work with a read-only root file system.
"""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
import tempfile
import tomllib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tools.image.app import BIN, build_app
from tools.image.debian import UID, BaseSpec, base_layer
from tools.image.oci import (
    Descriptor,
    ImageConfig,
    ImageRef,
    Layer,
    copy_tree,
    write_archive,
    write_layer,
)

REGISTRY = "ghcr.io/teams-sbc"
SOURCE = "https://github.com/teams-sbc/teams-sbc"
PYTHON_BASE = BaseSpec("python", ("python3", "ca-certificates"))
RTPENGINE_BASE = BaseSpec("rtpengine", ("rtpengine-daemon",))
#: Every image's archive in the output directory.
NAMES = ("teams-sbc", "teams-sbc-operator", "rtpengine")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PYTHON_ENV = (f"PATH={PATH}", "LANG=C.UTF-8", "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1")
#: Where the operator's Deployment mounts the SBC's config (render/sbc_config.py).
DEFAULT_SBC_CONFIG = "/etc/teams-sbc/config/sbc.yaml"


@dataclass(frozen=True)
class Built:
    """One archive written."""

    name: str
    ref: ImageRef
    path: Path
    manifest: Descriptor


def project_version(project: Path) -> str:
    return str(tomllib.loads((project / "pyproject.toml").read_text())["project"]["version"])


def git(project: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=project, check=True, capture_output=True, text=True
    ).stdout.strip()


def source_date(project: Path) -> int:
    """SOURCE_DATE_EPOCH if set, else the time of the commit built."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    return int(git(project, "log", "-1", "--format=%ct"))


def revision(project: Path) -> str:
    """The commit, with ``-dirty`` when the tree differs from it."""
    head = git(project, "rev-parse", "HEAD")
    dirty = git(project, "status", "--porcelain", "--untracked-files=no")
    return f"{head}-dirty" if dirty else head


def debian_version(layer: Layer, package: str) -> str:
    """``package``'s version in a base layer, from dpkg's status file."""
    with tarfile.open(layer.path) as tar:
        status = tar.extractfile("var/lib/dpkg/status")
        assert status is not None
        text = status.read().decode()
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != " "
        )
        if fields.get("Package") == package:
            return fields["Version"]
    raise SystemExit(f"image: {package} is not in {layer.path.name}")


def _labels(version: str, rev: str, created: str, title: str, description: str) -> dict[str, str]:
    return {
        "org.opencontainers.image.source": SOURCE,
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": rev,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.title": title,
        "org.opencontainers.image.description": description,
        "org.opencontainers.image.licenses": "Apache-2.0",
    }


def build(
    project: Path,
    out: Path,
    *,
    names: Sequence[str] = NAMES,
    refresh: bool = False,
) -> list[Built]:
    """The archives of ``names`` in ``out`` (``NAME.oci.tar``)."""
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        raise SystemExit(f"image: no image named {', '.join(unknown)} (known: {', '.join(NAMES)})")
    epoch = source_date(project)
    created = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    rev = revision(project)
    version = project_version(project)
    user = f"{UID}:{UID}"
    built: list[Built] = []

    def archive(name: str, ref: ImageRef, layers: Sequence[Layer], config: ImageConfig) -> None:
        path = out / f"{name}.oci.tar"
        manifest = write_archive(path, ref, layers, config, created, epoch)
        built.append(Built(name, ref, path, manifest))

    # Both bases at once: on a fresh machine each is a minute of downloads and dpkg.
    specs = [
        spec
        for spec, wanted in (
            (PYTHON_BASE, {"teams-sbc", "teams-sbc-operator"}),
            (RTPENGINE_BASE, {"rtpengine"}),
        )
        if wanted & set(names)
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        layers = pool.map(lambda spec: base_layer(spec, refresh=refresh), specs)
        bases = dict(zip(specs, layers, strict=True))
    if PYTHON_BASE in bases:
        base = bases[PYTHON_BASE]
        with tempfile.TemporaryDirectory(prefix="teams-sbc-image-") as tmp:
            tree = build_app(project, Path(tmp))
            app = write_layer(
                Path(tmp) / "app.tar.gz",
                copy_tree(tree / "usr", "usr", epoch),
                f"teams-sbc {version} ({rev}) and its uv.lock dependencies",
            )
            if "teams-sbc" in names:
                archive(
                    "teams-sbc",
                    ImageRef(f"{REGISTRY}/teams-sbc", version),
                    [base, app],
                    ImageConfig(
                        entrypoint=[f"{BIN}/teams-sbc"],
                        cmd=["run", "--config", DEFAULT_SBC_CONFIG],
                        user=user,
                        env=PYTHON_ENV,
                        labels=_labels(
                            version,
                            rev,
                            created,
                            "teams-sbc",
                            "Session Border Controller for Microsoft Teams Direct Routing",
                        ),
                        exposed_ports=["5060/udp", "5060/tcp", "5061/tcp", "8080/tcp"],
                    ),
                )
            if "teams-sbc-operator" in names:
                archive(
                    "teams-sbc-operator",
                    ImageRef(f"{REGISTRY}/teams-sbc-operator", version),
                    [base, app],
                    ImageConfig(
                        entrypoint=[f"{BIN}/teams-sbc-operator"],
                        cmd=["--all-namespaces"],
                        user=user,
                        env=PYTHON_ENV,
                        labels=_labels(
                            version,
                            rev,
                            created,
                            "teams-sbc-operator",
                            "Kubernetes operator of TeamsTrunk and TeamsTenant resources",
                        ),
                        exposed_ports=["8080/tcp", "9090/tcp"],
                    ),
                )
    if RTPENGINE_BASE in bases:
        base = bases[RTPENGINE_BASE]
        full = debian_version(base, "rtpengine-daemon")
        match = re.match(r"(?:\d+:)?(\d+\.\d+)", full)
        if match is None:
            raise SystemExit(f"image: cannot read rtpengine-daemon's version {full!r}")
        archive(
            "rtpengine",
            ImageRef(f"{REGISTRY}/rtpengine", match.group(1)),
            [base],
            ImageConfig(
                entrypoint=["/usr/bin/rtpengine"],
                cmd=["--help"],
                user=user,
                env=(f"PATH={PATH}",),
                labels=_labels(
                    full,
                    rev,
                    created,
                    "rtpengine",
                    f"Debian {RTPENGINE_BASE.suite}'s rtpengine-daemon (userspace forwarding)",
                ),
            ),
        )
    return built
