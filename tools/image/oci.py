"""OCI image layout, written by hand: layers as gzipped tars, a config, a manifest, and an
``index.json`` naming the image, all in one tar (the "oci-archive" that ``skopeo copy
oci-archive:FILE docker://...``, ``podman load`` and ``ctr import`` take).

The spec: https://github.com/opencontainers/image-spec (image-layout.md, manifest.md,
config.md, layer.md). Digests are sha256 of the bytes as stored; a layer's ``diff_id`` is the
sha256 of its uncompressed tar. Tars are written with sorted names, fixed owners and clamped
mtimes, and gzip without a name or time, so the same input gives the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
#: The tag, in index.json (what ``oci-archive:FILE:TAG`` selects).
REF_NAME = "org.opencontainers.image.ref.name"
#: The full name containerd (``ctr import``) and Docker give the image on import.
CONTAINERD_NAME = "io.containerd.image.name"

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Descriptor:
    """What a manifest or index says of a blob."""

    media_type: str
    digest: str
    size: int

    def to_json(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Layer:
    """A gzipped layer tar on disk and its two digests."""

    path: Path
    digest: str  # of the gzip bytes
    size: int
    diff_id: str  # of the tar
    created_by: str

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(MEDIA_LAYER_GZIP, self.digest, self.size)

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "size": self.size,
            "diff_id": self.diff_id,
            "created_by": self.created_by,
        }

    @classmethod
    def from_json(cls, path: Path, data: Mapping[str, Any]) -> Layer:
        return cls(path, data["digest"], data["size"], data["diff_id"], data["created_by"])


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to ``sink``."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha.update(view)
        self.size += len(view)
        self.sink.write(view)
        return len(view)

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha.hexdigest()}"


#: Adds a layer's members: called with a function that writes one member.
MemberSource = Callable[[Callable[[tarfile.TarInfo, IO[bytes] | None], None]], None]


def write_layer(path: Path, fill: MemberSource, created_by: str) -> Layer:
    """A gzipped layer at ``path`` holding what ``fill`` adds, with its digests."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with tmp.open("wb") as raw:
        outer = _HashingWriter(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=outer, mtime=0, compresslevel=6) as gz:
            inner = _HashingWriter(gz)  # type: ignore[arg-type]
            with tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT) as tar:

                def add(info: tarfile.TarInfo, data: IO[bytes] | None) -> None:
                    tar.addfile(info, data)

                fill(add)
    tmp.replace(path)
    return Layer(path, outer.digest, outer.size, inner.digest, created_by)


def normalized(info: tarfile.TarInfo, mtime: int) -> tarfile.TarInfo:
    """``info`` with owner names dropped and its mtime clamped to ``mtime``."""
    info.uname = ""
    info.gname = ""
    info.mtime = min(int(info.mtime), mtime)
    info.pax_headers = {}
    return info


def copy_tar(
    source: Path,
    mtime: int,
    *,
    skip: Callable[[str], bool] = lambda name: False,
    replace: Mapping[str, bytes] | None = None,
) -> MemberSource:
    """The members of the tar at ``source`` in their order (mmdebstrap writes them sorted),
    normalized, without those ``skip`` names, with the contents in ``replace`` (by name
    without the leading ``./``) instead of the file's own."""
    replacements = dict(replace or {})

    def fill(add: Callable[[tarfile.TarInfo, IO[bytes] | None], None]) -> None:
        with tarfile.open(source, mode="r|*") as tar:
            for member in tar:
                name = member.name.removeprefix("./").rstrip("/")
                if not name or skip(name):
                    continue
                info = normalized(member, mtime)
                info.name = name
                if info.isfile() and name in replacements:
                    data = replacements.pop(name)
                    info.size = len(data)
                    add(info, io.BytesIO(data))
                elif info.isfile():
                    add(info, tar.extractfile(info))
                else:
                    add(info, None)
        if replacements:
            raise ValueError(f"not in {source.name}: {sorted(replacements)}")

    return fill


def _parents(name: str) -> Iterator[str]:
    parts = name.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def copy_tree(root: Path, prefix: str, mtime: int) -> MemberSource:
    """Everything under the directory ``root`` at ``prefix`` in the image (with the parent
    directories, mode 0755), sorted, owned by root, files 0644 or 0755 when executable."""
    prefix = prefix.strip("/")

    def entries() -> list[tuple[str, Path]]:
        found: list[tuple[str, Path]] = [(prefix, root)]
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            base = Path(dirpath)
            rel = base.relative_to(root).as_posix()
            inner = prefix if rel == "." else f"{prefix}/{rel}"
            found.extend((f"{inner}/{n}", base / n) for n in [*dirnames, *filenames])
        return sorted(found)

    def fill(add: Callable[[tarfile.TarInfo, IO[bytes] | None], None]) -> None:
        for parent in _parents(prefix):
            add(_dir_info(parent, mtime), None)
        for name, path in entries():
            st = path.lstat()
            if stat.S_ISDIR(st.st_mode):
                add(_dir_info(name, mtime), None)
                continue
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                info.mode = 0o777
                add(info, None)
                continue
            info.size = st.st_size
            info.mode = 0o755 if st.st_mode & 0o111 else 0o644
            with path.open("rb") as f:
                add(info, f)

    return fill


def _dir_info(name: str, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = mtime
    return info


@dataclass
class ImageConfig:
    """The parts of the image config (config.md) that we set."""

    entrypoint: Sequence[str]
    cmd: Sequence[str] = ()
    user: str = ""
    env: Sequence[str] = ()
    working_dir: str = "/"
    labels: Mapping[str, str] = field(default_factory=dict)
    exposed_ports: Sequence[str] = ()


@dataclass(frozen=True)
class ImageRef:
    """Where the image goes: ``repository:tag``."""

    repository: str
    tag: str

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}"


def _json_bytes(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _blob(data: bytes, media_type: str) -> tuple[Descriptor, bytes]:
    return Descriptor(media_type, f"sha256:{hashlib.sha256(data).hexdigest()}", len(data)), data


def image_blobs(
    layers: Sequence[Layer], config: ImageConfig, created: str
) -> tuple[Descriptor, bytes, Descriptor, bytes]:
    """The config and manifest of an image of ``layers``: (config, its bytes, manifest, its
    bytes)."""
    body: dict[str, Any] = {
        "Entrypoint": list(config.entrypoint),
        "WorkingDir": config.working_dir,
        "Labels": dict(config.labels),
    }
    if config.cmd:
        body["Cmd"] = list(config.cmd)
    if config.user:
        body["User"] = config.user
    if config.env:
        body["Env"] = list(config.env)
    if config.exposed_ports:
        body["ExposedPorts"] = {p: {} for p in config.exposed_ports}
    config_desc, config_bytes = _blob(
        _json_bytes(
            {
                "created": created,
                "architecture": "amd64",
                "os": "linux",
                "config": body,
                "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
                "history": [
                    {"created": created, "created_by": layer.created_by} for layer in layers
                ],
            }
        ),
        MEDIA_CONFIG,
    )
    manifest_desc, manifest_bytes = _blob(
        _json_bytes(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": config_desc.to_json(),
                "layers": [layer.descriptor.to_json() for layer in layers],
                "annotations": dict(config.labels),
            }
        ),
        MEDIA_MANIFEST,
    )
    return config_desc, config_bytes, manifest_desc, manifest_bytes


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = mtime
    tar.addfile(info, io.BytesIO(data))


def write_archive(
    path: Path,
    ref: ImageRef,
    layers: Sequence[Layer],
    config: ImageConfig,
    created: str,
    mtime: int,
) -> Descriptor:
    """The oci-archive at ``path`` (written aside and renamed); returns the manifest's
    descriptor."""
    config_desc, config_bytes, manifest_desc, manifest_bytes = image_blobs(layers, config, created)
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            manifest_desc.to_json(
                platform={"architecture": "amd64", "os": "linux"},
                annotations={REF_NAME: ref.tag, CONTAINERD_NAME: str(ref)},
            )
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        tmp = Path(f.name)
        try:
            with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                _add_bytes(tar, "oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"}), mtime)
                _add_bytes(tar, "index.json", _json_bytes(index), mtime)
                for name in ("blobs", "blobs/sha256"):
                    tar.addfile(_dir_info(name, mtime))
                blobs: dict[str, tuple[Path | bytes, int]] = {
                    config_desc.digest: (config_bytes, config_desc.size),
                    manifest_desc.digest: (manifest_bytes, manifest_desc.size),
                }
                for layer in layers:
                    blobs[layer.digest] = (layer.path, layer.size)
                for digest in sorted(blobs):
                    content, size = blobs[digest]
                    name = "blobs/sha256/" + digest.removeprefix("sha256:")
                    if isinstance(content, bytes):
                        _add_bytes(tar, name, content, mtime)
                        continue
                    info = tarfile.TarInfo(name)
                    info.size = size
                    info.mode = 0o644
                    info.mtime = mtime
                    with content.open("rb") as data:
                        tar.addfile(info, data)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    tmp.chmod(0o644)
    tmp.replace(path)
    return manifest_desc


def sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
    return f"sha256:{sha.hexdigest()}"
