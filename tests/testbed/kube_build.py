"""Build the Kubernetes parts of the test bed from the Go module proxy, once, into the user cache.

kube-apiserver, kube-controller-manager and kubectl come from one pinned ``k8s.io/kubernetes``
release; etcd is our three-line main around ``go.etcd.io/etcd/server/v3/etcdmain`` at the
version that release itself requires; helm is ``helm.sh/helm/v3/cmd/helm``, whose release is built
against the same ``k8s.io`` libraries. All five live in one Go module (``tests/testbed/go``, with a
committed ``go.mod``/``go.sum`` so every build uses the same sources) and are compiled by ONE
``go build``, so the shared libraries (client-go, apimachinery, grpc, ...) are compiled once.

``k8s.io/kubernetes`` is not meant to be consumed as a module: its go.mod requires each staging
module (``k8s.io/api``, ``k8s.io/client-go``, ...) at ``v0.0.0`` and replaces it with a folder of
its own repository. ``--update-module`` regenerates our go.mod, replacing each of those staging
modules with its published ``v0.Y.Z`` release, read from the go.mod that ``go mod download -json``
fetches.

Run ``uv run python -m tests.testbed.kube_build`` to build (a no-op taking milliseconds when the
cache is complete); the fixtures call :func:`ensure_built` themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.testbed.process import PartFailed, cache_dir

KUBERNETES_VERSION = "v1.37.2"
#: The etcd that k8s.io/kubernetes KUBERNETES_VERSION itself requires (go.etcd.io/etcd/server/v3).
ETCD_VERSION = "v3.7.0"
#: helm v3.22.0 is built against k8s.io/client-go v0.37, so it shares the module with the above.
HELM_VERSION = "v3.22.0"

GO = "/usr/local/go/bin/go"
MODULE_DIR = Path(__file__).resolve().parent / "go"
MODULE_PATH = "teams-sbc/testbed"
MARKER = ".built"


@dataclass(frozen=True)
class Component:
    """One binary: its name, the release it is built from, and the Go package of its main."""

    name: str
    version: str
    package: str

    @property
    def directory(self) -> Path:
        return cache_dir() / "bin" / f"{self.name}-{self.version}"

    @property
    def path(self) -> Path:
        return self.directory / self.name


COMPONENTS = (
    Component("kube-apiserver", KUBERNETES_VERSION, "k8s.io/kubernetes/cmd/kube-apiserver"),
    Component(
        "kube-controller-manager",
        KUBERNETES_VERSION,
        "k8s.io/kubernetes/cmd/kube-controller-manager",
    ),
    Component("kubectl", KUBERNETES_VERSION, "k8s.io/kubernetes/cmd/kubectl"),
    Component("etcd", ETCD_VERSION, f"{MODULE_PATH}/etcd"),
    Component("helm", HELM_VERSION, "helm.sh/helm/v3/cmd/helm"),
)


def binaries() -> dict[str, Path]:
    """Where each built binary lives (whether or not it is built yet)."""
    return {c.name: c.path for c in COMPONENTS}


def source_digest() -> str:
    """A digest of what the binaries are built from, so editing go.mod/go.sum/etcd's main or the
    link flags rebuilds even when the pinned release versions (the cache dir names) stay."""
    digest = hashlib.sha256(ldflags().encode())
    for name in ("go.mod", "go.sum", "etcd/main.go"):
        digest.update((MODULE_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


def _marker_text(component: Component, digest: str) -> str:
    return f"{component.package} {component.version} source {digest}\n"


def is_built() -> bool:
    """True when every binary is present with a marker (written only after a good build) that
    names the current sources."""
    digest = source_digest()
    for c in COMPONENTS:
        marker = c.directory / MARKER
        if not (c.path.is_file() and marker.is_file()):
            return False
        if marker.read_text() != _marker_text(c, digest):
            return False
    return True


def go_env() -> dict[str, str]:
    """The Go environment: the machine's toolchain only, caches kept under our cache dir."""
    go_cache = cache_dir() / "go"
    return {
        **os.environ,
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
        "GOMODCACHE": str(go_cache / "mod"),
        "GOCACHE": str(go_cache / "build"),
        # -modcacherw so the module cache can be removed with rm -rf like the rest of the cache.
        "GOFLAGS": "-modcacherw -buildvcs=false",
    }


def run_go(*args: str, cwd: Path = MODULE_DIR) -> subprocess.CompletedProcess[str]:
    """Run ``go`` in the build module; a failure raises with go's own output."""
    proc = subprocess.run(
        [GO, *args], cwd=cwd, env=go_env(), text=True, capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise PartFailed(f"go {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-8000:]}")
    return proc


def ldflags() -> str:
    """Strip symbols and stamp the versions the binaries report (kubectl version, helm version).

    Without the stamp kube-apiserver calls itself v0.0.0-master and helm assumes an old default
    Kubernetes version for ``helm template``/``helm lint``.
    """
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    flags.append(f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}")
    for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
        flags += [f"-X {pkg}.k8sVersionMajor={major}", f"-X {pkg}.k8sVersionMinor={minor}"]
    return " ".join(flags)


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    """Serialise builds between processes (two pytest runs must not build into the same dirs)."""
    lock_path = cache_dir() / "bin" / ".kube-build.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_module_pins() -> None:
    """Fail early when go.mod does not pin the versions this file names (edit one, regenerate)."""
    text = (MODULE_DIR / "go.mod").read_text()
    for module, version in (
        ("k8s.io/kubernetes", KUBERNETES_VERSION),
        ("go.etcd.io/etcd/server/v3", ETCD_VERSION),
        ("helm.sh/helm/v3", HELM_VERSION),
    ):
        if not re.search(
            rf"^(?:require)?\s*{re.escape(module)} {re.escape(version)}\b", text, re.MULTILINE
        ):
            raise PartFailed(
                f"{MODULE_DIR / 'go.mod'} does not require {module} {version}: run "
                "`uv run python -m tests.testbed.kube_build --update-module`"
            )


def build(force: bool = False) -> dict[str, Path]:
    """Build every component unless the cache already holds them; returns their paths."""
    if not force and is_built():
        return binaries()
    with build_lock():
        if not force and is_built():  # another process built them while we waited
            return binaries()
        check_module_pins()
        started = time.monotonic()
        run_go("mod", "download")
        downloaded = time.monotonic()
        print(f"kube_build: go mod download took {downloaded - started:.0f}s", flush=True)
        stage = cache_dir() / "bin" / ".kube-build-stage"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        run_go(
            "build",
            "-p", str(os.cpu_count() or 2),
            "-trimpath",
            "-ldflags", ldflags(),
            "-o", f"{stage}/",
            *(c.package for c in COMPONENTS),
        )  # fmt: skip
        compiled = time.monotonic()
        print(
            f"kube_build: go build of {', '.join(c.name for c in COMPONENTS)} took "
            f"{compiled - downloaded:.0f}s",
            flush=True,
        )
        for component in COMPONENTS:
            shutil.rmtree(component.directory, ignore_errors=True)
            component.directory.mkdir(parents=True)
            (stage / component.name).rename(component.path)
            (component.directory / MARKER).write_text(_marker_text(component, source_digest()))
        stage.rmdir()
        print(f"kube_build: total {time.monotonic() - started:.0f}s", flush=True)
    return binaries()


def prune_go_caches() -> None:
    """Drop the Go module and build caches (GBs) once the binaries are built, e.g. in CI images;
    the next version bump then downloads and compiles everything again."""
    for name in ("mod", "build"):
        shutil.rmtree(cache_dir() / "go" / name, ignore_errors=True)


def ensure_built() -> dict[str, Path]:
    """The fixtures' entry point: build when needed (slow only the first time)."""
    return build()


# --- regenerating the build module (only when a pinned version changes) ---------------------------


def staging_modules(kubernetes_version: str) -> list[str]:
    """The staging modules k8s.io/kubernetes requires at v0.0.0 and replaces with its folders."""
    info = json.loads(
        run_go("mod", "download", "-json", f"k8s.io/kubernetes@{kubernetes_version}").stdout
    )
    gomod = Path(info["GoMod"]).read_text()
    replaced = set(re.findall(r"^\s*(k8s\.io/[\w.-]+) => \./staging/", gomod, re.MULTILINE))
    required = set(re.findall(r"^\s*(k8s\.io/[\w.-]+) v0\.0\.0\b", gomod, re.MULTILINE))
    return sorted(replaced & required)


def render_gomod() -> str:
    """Our go.mod: the pins, and each staging module replaced by its published release."""
    go_version = run_go("env", "GOVERSION").stdout.strip().removeprefix("go")
    major_minor = ".".join(go_version.split(".")[:2])
    staging_version = "v0." + KUBERNETES_VERSION.lstrip("v").split(".", 1)[1]
    replaces = "\n".join(
        f"\t{m} => {m} {staging_version}" for m in staging_modules(KUBERNETES_VERSION)
    )
    return (
        "// Generated by `uv run python -m tests.testbed.kube_build --update-module`.\n"
        "// Builds the Kubernetes parts of the test bed (see docs/testing-kube.md).\n"
        f"module {MODULE_PATH}\n\n"
        f"go {major_minor}.0\n\n"
        "require (\n"
        f"\tgo.etcd.io/etcd/server/v3 {ETCD_VERSION}\n"
        f"\thelm.sh/helm/v3 {HELM_VERSION}\n"
        f"\tk8s.io/kubernetes {KUBERNETES_VERSION}\n"
        ")\n\n"
        # The `tool` lines keep `go mod tidy` from dropping the requirements of the mains we build.
        "tool (\n"
        + "".join(f"\t{c.package}\n" for c in COMPONENTS if not c.package.startswith(MODULE_PATH))
        + ")\n\n"
        f"replace (\n{replaces}\n)\n"
    )


def update_module() -> None:
    """Rewrite go.mod from the pinned versions and let ``go mod tidy`` complete it and go.sum."""
    (MODULE_DIR / "go.mod").write_text(render_gomod())
    (MODULE_DIR / "go.sum").unlink(missing_ok=True)
    run_go("mod", "tidy")
    check_module_pins()
    print(f"kube_build: regenerated {MODULE_DIR / 'go.mod'} and go.sum", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    parser.add_argument(
        "--update-module",
        action="store_true",
        help="regenerate tests/testbed/go/go.mod and go.sum from the pinned versions first",
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="remove the Go module and build caches afterwards (keeps only the binaries)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.update_module:
        update_module()
    paths = build(force=args.force)
    if args.prune:
        prune_go_caches()
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"kube_build: done in {time.monotonic() - started:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
