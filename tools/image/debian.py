"""The base layer: a Debian root file system from ``mmdebstrap``, cached.

``mmdebstrap --variant=essential`` installs Debian's Essential set (dpkg, coreutils, libc...)
and the packages asked for, runs their maintainer scripts (ca-certificates builds
/etc/ssl/certs/ca-certificates.crt, python3 byte-compiles its standard library) and writes a
tar. It downloads from Debian's archive, so the tar and the layer made from it are cached under
``~/.cache/teams-sbc/images/`` by a key of everything that shapes them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tools.image.oci import Layer, copy_tar, write_layer

#: Where bases are kept between builds.
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "teams-sbc" / "images"

MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
#: Documentation, manual pages and translations are not needed at run time (copyrights stay).
DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
)
#: Bumped when the layer made from the same tar changes.
LAYER_FORMAT = 2

#: The user the images run as; numeric in the config (Kubernetes' runAsNonRoot needs that).
UID = 10001
USER = "teams-sbc"

#: Paths the layer leaves out: device nodes (runtimes mount /dev), apt's download cache,
#: debconf's and dpkg's backups.
_SKIP_PREFIXES = ("dev/", "var/cache/apt/", "var/lib/apt/lists/")
_SKIP_SUFFIXES = ("-old",)


@dataclass(frozen=True)
class BaseSpec:
    """One base file system: the suite and the packages beyond the Essential set."""

    name: str
    packages: tuple[str, ...]
    suite: str = "bookworm"

    @property
    def sources(self) -> tuple[str, ...]:
        return (
            f"deb {MIRROR} {self.suite} main",
            f"deb {MIRROR} {self.suite}-updates main",
            f"deb {SECURITY_MIRROR} {self.suite}-security main",
        )

    def command(self, output: Path) -> list[str]:
        return [
            "mmdebstrap",
            "--quiet",
            "--variant=essential",
            "--mode=root" if os.geteuid() == 0 else "--mode=unshare",
            f"--include={','.join(sorted(self.packages))}",
            *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
            self.suite,
            str(output),
            *self.sources,
        ]

    @property
    def key(self) -> str:
        """What the cache is keyed by: the command apart from where it writes."""
        text = json.dumps([self.command(Path("-"))[3:], LAYER_FORMAT, UID])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder of a cache entry at a time (tests and ``./dev image`` may overlap)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _log(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


def _with_user(text: bytes, line: str) -> bytes:
    if not text.endswith(b"\n"):
        text += b"\n"
    return text + line.encode() + b"\n"


def _skip(name: str) -> bool:
    return name.startswith(_SKIP_PREFIXES) or name.endswith(_SKIP_SUFFIXES)


def base_layer(spec: BaseSpec, *, refresh: bool = False, cache: Path = CACHE) -> Layer:
    """The base layer of ``spec``: from the cache, else built (``refresh``: always built)."""
    stem = cache / f"{spec.name}-{spec.suite}-{spec.key}"
    rootfs, layer_path, meta_path = (
        stem.with_suffix(".rootfs.tar"),
        stem.with_suffix(".layer.tar.gz"),
        stem.with_suffix(".json"),
    )
    with _locked(stem.with_suffix(".lock")):
        if not refresh and meta_path.exists() and layer_path.exists():
            meta = json.loads(meta_path.read_text())
            _log(f"base {spec.name}: cached ({layer_path})")
            return Layer.from_json(layer_path, meta["layer"])
        if refresh or not rootfs.exists():
            _log(f"base {spec.name}: mmdebstrap {spec.suite} + {', '.join(spec.packages)}")
            started = time.monotonic()
            partial = rootfs.with_suffix(".part.tar")
            partial.unlink(missing_ok=True)
            subprocess.run(spec.command(partial), check=True)
            partial.replace(rootfs)
            _log(f"base {spec.name}: done in {time.monotonic() - started:.0f}s")
        built = int(rootfs.stat().st_mtime)
        with tarfile.open(rootfs) as tar:
            passwd = tar.extractfile("./etc/passwd")
            group = tar.extractfile("./etc/group")
            assert passwd is not None and group is not None
            passwd_text, group_text = passwd.read(), group.read()
        replace = {
            "etc/passwd": _with_user(
                passwd_text, f"{USER}:x:{UID}:{UID}:{USER}:/nonexistent:/usr/sbin/nologin"
            ),
            "etc/group": _with_user(group_text, f"{USER}:x:{UID}:"),
            # Runtimes mount the pod's own over these; the build host's stay out.
            "etc/resolv.conf": b"",
            "etc/hostname": b"",
        }
        created_by = " ".join(spec.command(Path(f"{spec.name}.tar"))[2:])
        layer = write_layer(
            layer_path, copy_tar(rootfs, built, skip=_skip, replace=replace), created_by
        )
        meta_path.write_text(json.dumps({"layer": layer.to_json(), "built": built}, indent=1))
    # Bases of an older package list or format are not used again.
    for old in cache.glob(f"{spec.name}-{spec.suite}-*"):
        if not old.name.startswith(stem.name) and not old.name.endswith(".lock"):
            old.unlink(missing_ok=True)
    return layer
