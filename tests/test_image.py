"""The container images (``./dev image``, tools/image/): built once per session from Debian's
archive (the base file systems cached in ~/.cache/teams-sbc/images/) and uv.lock, then checked as
a user meets them.

* Each archive is an OCI image layout: our own digest, size and diff_id checks, and skopeo
  (Debian's) reading it, copying it (which verifies every blob) and reporting the entry point,
  user and labels.
* The images run as a pod runs them: the layers unpacked in order (whiteouts honoured), the root
  file system mounted read-only, as user 10001 with no capabilities, the entry point as PID 1
  with the image's environment, the config and TLS files mounted read-only where the operator's
  Deployment mounts them (bubblewrap, host network). The SBC, configured as the operator
  renders it, answers sipp's OPTIONS, ``/healthz`` and ``/metrics``, and drains on SIGTERM;
  ``teams-sbc-operator --help`` runs; rtpengine, with the arguments the operator gives its
  sidecar, answers an ng ``ping``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from tools.image.build import NAMES, Built, build
from tools.native_build import NATIVE_MODULES

from teams_sbc.pki import DevCA
from teams_sbc_operator.model import Trunk
from teams_sbc_operator.render import workload
from teams_sbc_operator.render.sbc_config import (
    CONFIG_DIR,
    CONFIG_FILE,
    TLS_DIR,
    config_yaml,
    render_sbc_config,
)
from tests.operator.conftest import FAST, Kube, trunk_manifest
from tests.operator.conftest import _release as release_finalizers
from tests.testbed.kube import KubeCluster
from tests.testbed.process import (
    ManagedProcess,
    PartFailed,
    free_port,
    free_port_range,
    require_binary,
    wait_until,
)
from tests.testbed.rtpengine import NgClient
from tests.testbed.sipp import SippFactory, sip_options

PROJECT = Path(__file__).resolve().parents[1]
SCENARIOS = PROJECT / "tests" / "testbed" / "scenarios"
UID = 10001
#: urllib honours http_proxy; probes of loopback must not go through one.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- building -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Built]]:
    """All three archives, built as ``./dev image`` builds them (deleted after the session:
    they are a few hundred MB)."""
    require_binary("mmdebstrap")
    out = tmp_path_factory.mktemp("images")
    yield {image.name: image for image in build(PROJECT, out)}
    shutil.rmtree(out, ignore_errors=True)


# -- reading an OCI archive as the spec says (not with the builder's code) ------------------------


@dataclass
class Layout:
    index: dict[str, Any]
    manifest: dict[str, Any]
    config: dict[str, Any]
    blobs: dict[str, bytes]  # digest -> bytes (layers included)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_layout(path: Path) -> Layout:
    """The archive's index, its one manifest and config, every blob checked against its digest
    and the size its descriptor gives, and every layer's diff_id."""
    with tarfile.open(path) as tar:
        files = {
            m.name.removeprefix("./"): tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }
    assert json.loads(files.pop("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files.pop("index.json"))
    blobs: dict[str, bytes] = {}
    for name, data in files.items():
        assert name.startswith("blobs/sha256/"), name
        digest = "sha256:" + name.removeprefix("blobs/sha256/")
        assert _sha256(data) == digest, f"{name} does not match its digest"
        blobs[digest] = data

    def fetch(descriptor: Mapping[str, Any]) -> bytes:
        data = blobs[descriptor["digest"]]
        assert len(data) == descriptor["size"], descriptor
        return data

    assert index["schemaVersion"] == 2
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    (entry,) = index["manifests"]
    assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    manifest = json.loads(fetch(entry))
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    config = json.loads(fetch(manifest["config"]))
    diff_ids = []
    for layer in manifest["layers"]:
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        diff_ids.append(_sha256(gzip.decompress(fetch(layer))))
    assert config["rootfs"] == {"type": "layers", "diff_ids": diff_ids}
    referenced = {entry["digest"], manifest["config"]["digest"]}
    referenced |= {layer["digest"] for layer in manifest["layers"]}
    assert set(blobs) == referenced, "blobs nothing references"
    return Layout(index, manifest, config, blobs)


def unpack(path: Path, dest: Path) -> Layout:
    """The image's root file system at ``dest``: each layer in order over the ones before, a
    ``.wh.NAME`` deleting NAME and ``.wh..wh..opq`` emptying its directory (layer.md)."""
    layout = read_layout(path)
    dest.mkdir(parents=True, exist_ok=True)
    for descriptor in layout.manifest["layers"]:
        data = gzip.decompress(layout.blobs[descriptor["digest"]])
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                name = member.name.removeprefix("./").rstrip("/")
                if not name:
                    continue
                parent, _, base = name.rpartition("/")
                if base == ".wh..wh..opq":
                    for child in (dest / parent).iterdir():
                        _remove(child)
                    continue
                if base.startswith(".wh."):
                    _remove(dest / parent / base.removeprefix(".wh."))
                    continue
                target = dest / name
                if not member.isdir() and (target.exists() or target.is_symlink()):
                    _remove(target)
                tar.extract(member, dest, numeric_owner=True, filter="tar")
    return layout


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@pytest.fixture(scope="session")
def world_dir() -> Iterator[Path]:
    """A directory user 10001 can traverse (pytest's own tmp is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="teams-sbc-image-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def rootfs(images: dict[str, Built], world_dir: Path) -> dict[str, Path]:
    """Each image's root file system, unpacked (teams-sbc-operator shares teams-sbc's)."""
    out = {}
    for name in ("teams-sbc", "rtpengine"):
        out[name] = world_dir / f"rootfs-{name}"
        unpack(images[name].path, out[name])
    return out


# -- running an image as the pod does -----------------------------------------------------------


def sandbox(
    rootfs: Path,
    config: Mapping[str, Any],
    args: Sequence[str],
    *,
    binds: Mapping[str, Path] | None = None,
    env: Mapping[str, str] | None = None,
    entrypoint: Sequence[str] | None = None,
    tmpfs: Sequence[str] = (),
) -> list[str]:
    """The command running the image's entry point (or ``entrypoint``) with ``args``: as the
    image's user (really, outside too: setpriv before bubblewrap), no capabilities, the root
    file system and ``binds`` (container path -> host directory) read-only, a PID namespace
    with the entry point as PID 1, the image's Env plus ``env``, the host's network and
    resolver (kubelet mounts the pod's /etc/resolv.conf); ``tmpfs``: writable empty
    directories (emptyDir volumes)."""
    user, _, group = str(config["config"]["User"]).partition(":")
    mounts: list[str] = []
    for inside, outside in sorted((binds or {}).items()):
        # A runtime creates mount points in the root file system before making it read-only
        # (never through a link: that would leave the root file system).
        point = rootfs
        for part in Path(inside).parts[1:]:
            point = point / part
            assert not point.is_symlink(), f"{inside} passes the link {point}"
        point.mkdir(parents=True, exist_ok=True)
        mounts += ["--ro-bind", str(outside), inside]
    for inside in tmpfs:  # an emptyDir volume
        mounts += ["--tmpfs", inside]
    environment: list[str] = []
    for entry in config["config"].get("Env", []):
        key, _, value = entry.partition("=")
        environment += ["--setenv", key, value]
    for key, value in (env or {}).items():
        environment += ["--setenv", key, value]
    return [
        require_binary("setpriv"), f"--reuid={user}", f"--regid={group or user}",
        "--clear-groups", "--",
        require_binary("bwrap"),
        "--unshare-user", "--uid", user, "--gid", group or user,
        "--unshare-pid", "--unshare-ipc", "--as-pid-1", "--die-with-parent",
        "--ro-bind", str(rootfs), "/",
        "--proc", "/proc", "--dev", "/dev",
        "--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf",
        *mounts,
        "--cap-drop", "ALL",
        "--clearenv", *environment,
        "--chdir", config["config"].get("WorkingDir") or "/",
        "--",
        *(entrypoint if entrypoint is not None else config["config"]["Entrypoint"]),
        *args,
    ]  # fmt: skip


def run_in(
    rootfs: Path, config: Mapping[str, Any], args: Sequence[str], **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sandbox(rootfs, config, args, **kwargs),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def sbc_image_python(
    images: dict[str, Built], rootfs: dict[str, Path], *args: str
) -> subprocess.CompletedProcess[str]:
    """Debian's python3 in the SBC's image, sandboxed as the pod runs it, with ``args``."""
    config = read_layout(images["teams-sbc"].path).config
    return run_in(rootfs["teams-sbc"], config, list(args), entrypoint=["/usr/bin/python3"])


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    return []


def sandboxed_process(outer: int, executable: str) -> int:
    """The host PID of the process running ``executable`` in the sandbox started as ``outer``."""
    todo = [outer]
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if executable.encode() in argv[:3]:  # python3 -I SCRIPT
                return pid
        todo += _children(pid)
    raise PartFailed(f"no process runs {executable} under {outer}")


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with _DIRECT.open(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


# -- the archives -------------------------------------------------------------------------------


def _git_head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=PROJECT, check=True, capture_output=True, text=True
    ).stdout.strip()


EXPECTED = {
    "teams-sbc": ("ghcr.io/teams-sbc/teams-sbc", ["/usr/local/bin/teams-sbc"]),
    "teams-sbc-operator": (
        "ghcr.io/teams-sbc/teams-sbc-operator",
        ["/usr/local/bin/teams-sbc-operator"],
    ),
    "rtpengine": ("ghcr.io/teams-sbc/rtpengine", ["/usr/bin/rtpengine"]),
}


@pytest.mark.parametrize("name", NAMES)
def test_archive_is_an_oci_image_layout(images: dict[str, Built], name: str) -> None:
    layout = read_layout(images[name].path)
    repository, entrypoint = EXPECTED[name]
    (entry,) = layout.index["manifests"]
    tag = entry["annotations"]["org.opencontainers.image.ref.name"]
    assert entry["annotations"]["io.containerd.image.name"] == f"{repository}:{tag}"
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    assert entry["digest"] == images[name].manifest.digest
    config = layout.config["config"]
    assert config["Entrypoint"] == entrypoint
    assert config["User"] == f"{UID}:{UID}"
    labels = config["Labels"]
    assert labels["org.opencontainers.image.source"] == "https://github.com/teams-sbc/teams-sbc"
    assert labels["org.opencontainers.image.revision"].startswith(_git_head())
    if name == "rtpengine":
        # The tag the operator's default names (--rtpengine-image), from Debian's version.
        assert tag == "10.5"
        assert labels["org.opencontainers.image.version"].startswith("10.5.")
    else:
        import teams_sbc

        assert tag == labels["org.opencontainers.image.version"] == teams_sbc.__version__


def test_sbc_and_operator_share_their_layers(images: dict[str, Built]) -> None:
    """One pull of the SBC's layers serves the operator's image too."""
    sbc = read_layout(images["teams-sbc"].path).manifest["layers"]
    operator = read_layout(images["teams-sbc-operator"].path).manifest["layers"]
    assert sbc == operator and len(sbc) == 2


@pytest.mark.parametrize("name", NAMES)
def test_skopeo_reads_and_copies_the_archive(
    images: dict[str, Built], name: str, tmp_path: Path
) -> None:
    skopeo = require_binary("skopeo")
    source = f"oci-archive:{images[name].path}"
    inspect = json.loads(
        subprocess.run(
            [skopeo, "inspect", source], check=True, capture_output=True, text=True
        ).stdout
    )
    assert inspect["Digest"] == images[name].manifest.digest
    assert inspect["Architecture"] == "amd64" and inspect["Os"] == "linux"
    assert inspect["Labels"]["org.opencontainers.image.source"].endswith("/teams-sbc")
    config = json.loads(
        subprocess.run(
            [skopeo, "inspect", "--config", source], check=True, capture_output=True, text=True
        ).stdout
    )
    assert config["config"]["Entrypoint"] == EXPECTED[name][1]
    assert config["config"]["User"] == f"{UID}:{UID}"
    # A copy reads every blob and checks its digest, as a push to a registry does.
    subprocess.run(
        [skopeo, "copy", "--quiet", source, f"dir:{tmp_path / 'copy'}"],
        check=True,
        capture_output=True,
    )
    copied = read_layout(images[name].path).manifest["layers"]
    for layer in copied:
        assert (tmp_path / "copy" / layer["digest"].removeprefix("sha256:")).stat().st_size == (
            layer["size"]
        )


# -- the root file systems ----------------------------------------------------------------------


def test_sandbox_is_read_only_non_root_without_capabilities(
    images: dict[str, Built], rootfs: dict[str, Path]
) -> None:
    """What the SBC's container gets (readOnlyRootFilesystem, runAsNonRoot, drop ALL) is what
    the sandbox below gives it."""
    probe = (
        "import os, pathlib\n"
        "print(os.getuid(), os.getgid(), os.getpid())\n"
        "caps = [l for l in open('/proc/self/status') if l.startswith('Cap')]\n"
        "print(*sorted(set(l.split()[1] for l in caps)))\n"
        "try:\n    pathlib.Path('/usr/x').write_text('x')\n"
        "except OSError as e:\n    print(e.strerror)\n"
    )
    result = sbc_image_python(images, rootfs, "-c", probe)
    assert result.returncode == 0, result.stderr
    ids, caps, write = result.stdout.splitlines()
    assert ids == f"{UID} {UID} 1"
    assert caps == "0000000000000000"
    assert write == "Read-only file system"


def test_python_modules_are_compiled_in_the_image(
    images: dict[str, Built], rootfs: dict[str, Path]
) -> None:
    """Nothing is compiled at start (the pod could not cache it): every module of ours and of
    our dependencies loads from its pyc, and the SIP core's from the extension modules mypyc
    built (docs/performance.md), which Debian's Python 3.11 loads."""
    core = ["teams_sbc." + m.removesuffix(".py").replace("/", ".") for m in NATIVE_MODULES]
    probe = (
        f"import importlib, teams_sbc.cli, teams_sbc.app, teams_sbc_operator.main\n"
        f"for name in {core!r}:\n"
        "    print(name, importlib.import_module(name).__file__)\n"
    )
    result = sbc_image_python(images, rootfs, "-v", "-c", probe)
    assert result.returncode == 0, result.stderr[-3000:]
    site = "/usr/local/lib/python3.11/dist-packages/"
    loaded = [
        line
        for line in result.stderr.splitlines()
        if line.startswith(f"# code object from '{site}")
    ]
    from_source = [
        line
        for line in result.stderr.splitlines()
        if site in line and ("bytecode is stale" in line or "could not create" in line)
    ]
    assert len(loaded) > 100 and not from_source, (len(loaded), from_source[:5])
    assert any("/teams_sbc/sip/" in line and ".pyc" in line for line in loaded)
    files = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    for name, module in zip(core, NATIVE_MODULES, strict=True):  # e.g. sip/proxy.py
        extension = f"{site}teams_sbc/{module.removesuffix('.py')}.cpython-311-x86_64-linux-gnu.so"
        assert files[name] == extension, (name, files.get(name))


def test_sbc_trusts_the_system_roots(images: dict[str, Built], rootfs: dict[str, Path]) -> None:
    """The rendered config verifies Microsoft's proxies against the image's system bundle
    (DigiCert's roots, which sign Microsoft's SIP certificates)."""
    bundle = rootfs["teams-sbc"] / "etc/ssl/certs/ca-certificates.crt"
    text = bundle.read_text()
    assert text.count("BEGIN CERTIFICATE") > 100
    probe = (
        "import ssl\nctx = ssl.create_default_context("
        "cafile='/etc/ssl/certs/ca-certificates.crt')\n"
        "print(sorted({dict(x[0] for x in c['subject']).get('commonName', '') "
        "for c in ctx.get_ca_certs() if 'DigiCert' in str(c['subject'])}))"
    )
    result = sbc_image_python(images, rootfs, "-c", probe)
    assert result.returncode == 0, result.stderr
    assert "DigiCert Global Root G2" in result.stdout


# -- the SBC from its image ---------------------------------------------------------------------


def _trunk(carrier_port: int, teams_port: int, proxy_port: int) -> Trunk:
    return Trunk.from_body(
        {
            "metadata": {"name": "sbc1", "namespace": "carrier", "uid": "u-1", "generation": 1},
            "spec": {
                "fqdn": "sbc1.sbc.test",
                "carrier": {"address": "127.0.0.1", "port": 5060, "transport": "udp"},
                "certificate": {"secretName": "sbc1-tls"},
                "sbc": {"teamsPort": teams_port, "carrierPort": carrier_port},
                # Microsoft's proxies at a closed loopback port: no DNS, nothing answers; the
                # Teams listener takes connections from loopback instead of Microsoft's ranges.
                "teams": {
                    "allowSources": ["127.0.0.1/32"],
                    "proxies": [
                        {"name": name, "address": "127.0.0.1", "port": proxy_port}
                        for name in (
                            "sip.pstnhub.microsoft.com",
                            "sip2.pstnhub.microsoft.com",
                            "sip3.pstnhub.microsoft.com",
                        )
                    ],
                },
            },
        }
    )


@dataclass
class PodFiles:
    config_dir: Path
    tls_dir: Path


def pod_files(world_dir: Path, name: str, config: Mapping[str, Any]) -> PodFiles:
    """The ConfigMap and the TLS Secret as the pod's volumes hold them: ``config`` as
    ``sbc.yaml``, a certificate for sbc1.sbc.test, files 0644 in 0755 directories."""
    base = world_dir / name
    config_dir, tls_dir = base / "config", base / "tls"
    config_dir.mkdir(parents=True)
    (config_dir / CONFIG_FILE).write_text(config_yaml(dict(config)))
    ca = DevCA(base / "pki")
    cert = ca.issue("sbc1", "sbc1.sbc.test", dns_names=["sbc1.sbc.test"])
    tls_dir.mkdir()
    shutil.copy(cert.cert, tls_dir / "tls.crt")
    shutil.copy(cert.key, tls_dir / "tls.key")
    for directory in (base, config_dir, tls_dir):
        directory.chmod(0o755)
        for f in directory.iterdir():
            if f.is_file():
                f.chmod(0o644)
    return PodFiles(config_dir, tls_dir)


def _sbc_container(carrier_port: int) -> dict[str, Any]:
    """The teams-sbc container of the Deployment the operator renders."""
    deployment = workload.deployment(
        _trunk(carrier_port, 5061, 5062), sbc_image="sbc", rtpengine_image="rtp"
    )
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"config": CONFIG_DIR, "tls": TLS_DIR}
    return container


@contextlib.contextmanager
def sbc_from_image(
    images: dict[str, Built],
    rootfs: dict[str, Path],
    world_dir: Path,
    log_dir: Path,
    name: str,
    config: Mapping[str, Any],
    carrier_port: int,
    tmpfs: Sequence[str] = (),
) -> Iterator[ManagedProcess]:
    """The SBC from its image with ``config``, run with the container's args, env and mounts;
    yields once ``/healthz`` answers."""
    image = read_layout(images["teams-sbc"].path).config
    files = pod_files(world_dir, name, config)
    container = _sbc_container(carrier_port)
    command = sandbox(
        rootfs["teams-sbc"],
        image,
        container["args"],  # run --config /etc/teams-sbc/config/sbc.yaml
        binds={CONFIG_DIR: files.config_dir, TLS_DIR: files.tls_dir},
        env={"POD_NAME": "sbc1-abc", "POD_NAMESPACE": "carrier", "HOSTNAME": "sbc1-abc"},
        tmpfs=tmpfs,
    )
    assert {e["name"] for e in container["env"]} == {"POD_NAME", "POD_NAMESPACE"}
    proc = ManagedProcess(name, command, log_dir)
    try:
        http_port = int(config["http"]["port"])
        wait_until(
            lambda: http_get(http_port, "/healthz")[0] == 200,
            30,
            "the SBC from its image to answer GET /healthz",
            proc,
        )
        yield proc
        # SIGTERM to the SBC (PID 1 in its namespace, as in a container): it drains and ends.
        os.kill(sandboxed_process(proc.pid, container_entrypoint(image)), signal.SIGTERM)
        assert proc.wait(15) == 0, proc.log_tail()
    finally:
        proc.stop()


def test_sbc_with_the_operators_config_runs_from_its_image(
    images: dict[str, Built], rootfs: dict[str, Path], world_dir: Path, tmp_path: Path
) -> None:
    """The config the operator renders (the Teams edge, mutual TLS with the mounted
    certificate, the system trust bundle), on loopback with free ports instead of 0.0.0.0 and
    the defaults: the test shares the host's network."""
    carrier_port = free_port(socket.SOCK_DGRAM)
    teams_port, proxy_port, http_port = (free_port() for _ in range(3))
    config = render_sbc_config(_trunk(carrier_port, teams_port, proxy_port), [], None)
    for listener in config["listeners"]:
        listener["host"] = "127.0.0.1"
    config["http"] = {"host": "127.0.0.1", "port": http_port}
    config["drain_seconds"] = 1
    with sbc_from_image(
        images, rootfs, world_dir, tmp_path, "sbc-operator-config", config, carrier_port
    ) as proc:
        # The SIP listener answers from the image (a carrier OPTIONS for no tenant: no route).
        assert sip_options("127.0.0.1", carrier_port).startswith("SIP/2.0 ")
        # The Teams listener took the mounted certificate: it completes a TLS handshake.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with (
            socket.create_connection(("127.0.0.1", teams_port), timeout=5) as raw,
            ctx.wrap_socket(raw) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        served = x509.load_der_x509_certificate(der).extensions
        names = served.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == ["sbc1.sbc.test"]
        status, metrics = http_get(http_port, "/metrics")
        assert status == 200 and "sbc_teams_proxy_up" in metrics, metrics[:500]
        records = [json.loads(line) for line in proc.log_text().splitlines() if line[:1] == "{"]
        assert records, proc.log_tail()


def proxy_to_options_uas(
    sipp_factory: SippFactory, **extra: Any
) -> tuple[dict[str, Any], int, int]:
    """A sipp UAS answering OPTIONS, and the config of a plain proxy towards it on free loopback
    ports (one UDP listener, one route; ``extra`` keys added): (config, SIP port, HTTP port)."""
    uas = sipp_factory.uas(scenario=SCENARIOS / "uas_options.xml")
    carrier_port, http_port = free_port(socket.SOCK_DGRAM), free_port()
    config = {
        "listeners": [
            {"name": "carrier-udp", "transport": "udp", "host": "127.0.0.1", "port": carrier_port}
        ],
        "routes": [{"name": "uas", "next_hop": f"sip:{uas.address}"}],
        "http": {"host": "127.0.0.1", "port": http_port},
        "drain_seconds": 1,
        **extra,
    }
    return config, carrier_port, http_port


def test_sbc_proxies_sipp_options_from_its_image(
    images: dict[str, Built],
    rootfs: dict[str, Path],
    world_dir: Path,
    sipp_factory: SippFactory,
    tmp_path: Path,
) -> None:
    """The plain proxy (examples/sbc.yaml with a route): sipp's OPTIONS cross the SBC from the
    image to a sipp UAS and its 200 comes back."""
    config, carrier_port, http_port = proxy_to_options_uas(
        sipp_factory, logging={"level": "INFO", "format": "json"}
    )
    with sbc_from_image(
        images, rootfs, world_dir, tmp_path, "sbc-proxy-config", config, carrier_port
    ):
        run = sipp_factory.uac(
            f"127.0.0.1:{carrier_port}", calls=3, scenario=SCENARIOS / "uac_options.xml"
        )
        assert (run.stats.successful, run.stats.failed) == (3, 0), run.error_path
        status, metrics = http_get(http_port, "/metrics")
        assert status == 200
        assert 'sbc_sip_requests_total{method="OPTIONS"} 3.0' in metrics, metrics[:2000]


def container_entrypoint(config: Mapping[str, Any]) -> str:
    return str(config["config"]["Entrypoint"][0])


def test_operator_help_runs_from_its_image(
    images: dict[str, Built], rootfs: dict[str, Path]
) -> None:
    config = read_layout(images["teams-sbc-operator"].path).config
    # The chart runs `command: ["teams-sbc-operator"]`: found on the image's PATH.
    result = run_in(rootfs["teams-sbc"], config, ["--help"], entrypoint=["teams-sbc-operator"])
    assert result.returncode == 0, result.stderr
    assert "--sbc-image" in result.stdout and "--all-namespaces" in result.stdout
    version = run_in(rootfs["teams-sbc"], config, ["--version"])
    assert version.returncode == 0, version.stderr
    import teams_sbc_operator

    assert version.stdout.strip() == f"teams-sbc-operator {teams_sbc_operator.__version__}"


# -- rtpengine from its image -------------------------------------------------------------------


def test_rtpengine_from_its_image_answers_ping(
    images: dict[str, Built], rootfs: dict[str, Path], tmp_path: Path
) -> None:
    config = read_layout(images["rtpengine"].path).config
    ng_port = free_port(socket.SOCK_DGRAM)
    port_min = free_port_range(20)
    trunk = Trunk.from_body(
        {
            "metadata": {"name": "sbc1", "namespace": "carrier", "uid": "u-1", "generation": 1},
            "spec": {
                "fqdn": "sbc1.sbc.test",
                "carrier": {"address": "127.0.0.1"},
                "certificate": {"secretName": "sbc1-tls"},
                "media": {"portMin": port_min, "portMax": port_min + 19},
            },
        }
    )
    deployment = workload.deployment(trunk, sbc_image="sbc", rtpengine_image="rtp")
    sidecar = deployment["spec"]["template"]["spec"]["containers"][1]
    # Kubernetes expands $(POD_IP); the ng port is the pod's own loopback, here a free one.
    args = [
        a.replace("$(POD_IP)", "127.0.0.1").replace(
            f"127.0.0.1:{workload.RTPENGINE_NG_PORT}", f"127.0.0.1:{ng_port}"
        )
        for a in sidecar["args"]
    ]
    assert f"--listen-ng=127.0.0.1:{ng_port}" in args and "--table=-1" in args
    proc = ManagedProcess("rtpengine-image", sandbox(rootfs["rtpengine"], config, args), tmp_path)
    try:
        client = NgClient("127.0.0.1", ng_port, timeout=0.5)

        def pong() -> bool:
            try:
                return client.request("ping").get("result") == "pong"
            except TimeoutError:
                return False

        wait_until(pong, 15, "rtpengine from its image to answer ng ping", proc)
        assert "Startup complete" in proc.log_text()
    finally:
        proc.stop()


def test_sbc_workers_need_a_writable_tmp(
    images: dict[str, Built],
    rootfs: dict[str, Path],
    world_dir: Path,
    sipp_factory: SippFactory,
    tmp_path: Path,
) -> None:
    """``workers: 2``: the supervisor keeps its workers' sockets in a temporary directory, so on
    the read-only root it needs a writable /tmp (an emptyDir volume in a pod; the operator's
    Deployment renders one worker, which needs none)."""
    config, carrier_port, http_port = proxy_to_options_uas(sipp_factory, workers=2)
    image = read_layout(images["teams-sbc"].path).config
    files = pod_files(world_dir, "sbc-workers-no-tmp", config)
    without = subprocess.run(
        sandbox(
            rootfs["teams-sbc"],
            image,
            ["run", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
            binds={CONFIG_DIR: files.config_dir},
        ),
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    # A one-line error saying what to do, not a traceback.
    assert without.returncode == 2, without.stderr[-2000:]
    assert "needs a writable temporary directory" in without.stderr, without.stderr[-2000:]
    assert "mount a volume (an emptyDir) at /tmp" in without.stderr
    assert "Traceback" not in without.stderr, without.stderr[-2000:]
    with sbc_from_image(
        images, rootfs, world_dir, tmp_path, "sbc-workers", config, carrier_port, tmpfs=["/tmp"]
    ):
        run = sipp_factory.uac(
            f"127.0.0.1:{carrier_port}", calls=4, scenario=SCENARIOS / "uac_options.xml"
        )
        assert (run.stats.successful, run.stats.failed) == (4, 0), run.error_path
        assert 'sbc_worker_up{worker="1"} 1.0' in http_get(http_port, "/metrics")[1]


def test_rebuilding_gives_the_same_image(images: dict[str, Built], tmp_path: Path) -> None:
    """Sorted tars, fixed owners and times, unchecked-hash pycs: the same commit and uv.lock
    build the same layers, config and manifest (registries then store nothing new)."""
    (again,) = build(PROJECT, tmp_path, names=["teams-sbc"])
    assert again.manifest == images["teams-sbc"].manifest
    assert again.path.read_bytes() == images["teams-sbc"].path.read_bytes()
    again.path.unlink()


# -- the operator from its image, in a cluster ----------------------------------------------------


def test_operator_from_its_image_reconciles_a_trunk_in_cluster(
    images: dict[str, Built],
    rootfs: dict[str, Path],
    world_dir: Path,
    kube_cluster: KubeCluster,
    kube_namespace: str,
    tmp_path: Path,
) -> None:
    """The operator from its image as the chart runs it: read-only, uid 10001, in-cluster
    credentials (the chart's ServiceAccount and ClusterRole, a token mounted where kubelet mounts
    it, KUBERNETES_SERVICE_HOST/PORT). It reconciles a TeamsTrunk into a Deployment whose images
    are the ones built here, by default."""
    kube = Kube(kube_cluster, kube_namespace)
    release = f"img{kube_namespace[-8:]}"
    rbac = kube_cluster.helm(
        "template", release, str(PROJECT / "helm" / "teams-sbc"), "--namespace", kube_namespace,
        "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml",
    ).stdout  # fmt: skip
    (account,) = [
        d["metadata"]["name"]
        for d in yaml.safe_load_all(rbac)
        if d and d["kind"] == "ServiceAccount"
    ]
    kube.kubectl("apply", "-f", "-", input=rbac)
    proc: ManagedProcess | None = None
    try:
        secrets = world_dir / f"sa-{kube_namespace}"
        secrets.mkdir(mode=0o755)
        (secrets / "token").write_text(kube.kubectl("create", "token", account).strip())
        shutil.copy(kube_cluster.ca_cert, secrets / "ca.crt")
        (secrets / "namespace").write_text(kube_namespace)
        for f in secrets.iterdir():
            f.chmod(0o644)
        server = urllib.parse.urlsplit(kube_cluster.server)
        live, metrics = free_port(), free_port()
        image = read_layout(images["teams-sbc-operator"].path).config
        args = [
            "--namespace", kube_namespace,
            "--liveness", f"http://127.0.0.1:{live}/healthz",
            "--metrics", f"http://127.0.0.1:{metrics}/metrics",
            *FAST,
        ]  # fmt: skip
        command = sandbox(
            rootfs["teams-sbc"],
            image,
            args,
            # /var/run is a link to /run in Debian: the same directory kubelet mounts.
            binds={"/run/secrets/kubernetes.io/serviceaccount": secrets},
            env={
                "KUBERNETES_SERVICE_HOST": str(server.hostname),
                "KUBERNETES_SERVICE_PORT": str(server.port),
            },
        )
        proc = ManagedProcess("teams-sbc-operator-image", command, tmp_path)
        wait_until(
            lambda: http_get(live, "/healthz")[0] == 200,
            60,
            "the operator from its image to answer its liveness probe",
            proc,
        )
        kube.apply(
            trunk_manifest(
                kube_namespace, certificate={"devCA": True}, publicAddresses=["198.51.100.7"]
            )
        )
        kube.wait_condition("teamstrunk", "sbc1", "ConfigApplied", proc=proc)
        pod = kube.must("deployment", "sbc1-sbc")["spec"]["template"]["spec"]
        assert [c["image"] for c in pod["containers"]] == [
            str(images["teams-sbc"].ref),
            str(images["rtpengine"].ref),
        ]
        assert http_get(metrics, "/metrics")[0] == 200
    finally:
        if proc is not None:
            proc.stop()
        release_finalizers(kube_cluster, kube_namespace)
        kube_cluster.kubectl("delete", "--ignore-not-found", "-f", "-", input=rbac)
