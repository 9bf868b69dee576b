"""The app layer: teams-sbc and its locked dependencies for the image's Python, byte-compiled.

The dependencies are the ones uv.lock pins (``uv export --frozen --no-dev``, hashes checked),
as wheels for the image's platform: Debian bookworm's CPython 3.11 on glibc 2.36. They go to
``/usr/local/lib/python3.11/dist-packages``, which Debian's python3 has on its path. Every
module is compiled at build time (unchecked-hash pycs, valid whatever the files' mtimes): the
root file system is read-only in the pod, so Python could not cache them there.

The SIP core goes in compiled by mypyc (docs/performance.md): the extension modules of
``tools/native_build.py``'s build of the same sources (cached by their hash, so a rebuild of the
image takes the same bytes) are laid next to the wheel's ``.py`` files, which stay for tracebacks.
They are built for CPython 3.11 on glibc 2.36, as the image's Python is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_36"
SITE = f"/usr/local/lib/python{PYTHON_VERSION}/dist-packages"
BIN = "/usr/local/bin"
#: The interpreter compiling for the image: Debian's own, the image's (bookworm).
BUILD_PYTHON = "/usr/bin/python3"


def uv_command() -> list[str]:
    """The uv that runs us (``uv run`` says which in UV), else the one on PATH."""
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        raise SystemExit("image: uv is needed to build the app layer (./dev installs it)")
    return [found]


def project_scripts(project: Path) -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml: command name -> ``module:function``."""
    data = tomllib.loads((project / "pyproject.toml").read_text())
    return dict(data["project"]["scripts"])


def wrapper(target: str) -> str:
    """An entry point for ``module:function`` run by the image's python3. ``-I`` (isolated):
    no user site, no PYTHON* variables, no current directory on the path."""
    module, function = target.split(":")
    return (
        "#!/usr/bin/python3 -I\n"
        f"import sys\nfrom {module} import {function}\n"
        f"sys.exit({function}())\n"
    )


def _run(args: list[str], cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True)


def add_native_core(project: Path, site: Path) -> list[Path]:
    """Lay the mypyc-compiled SIP core of ``project`` over the installed package in ``site``;
    the files added, relative to ``site``."""
    from tools.native_build import build as native_build

    compiled = native_build(project / "sbc" / "teams_sbc")
    added = []
    for library in sorted(compiled.rglob("*.so")):
        relative = library.relative_to(compiled)
        if relative.parts[0] == "teams_sbc" and not (site / relative).with_name(
            relative.name.split(".")[0] + ".py"
        ).exists():
            raise SystemExit(f"image: {relative} has no module in the installed package")
        shutil.copyfile(library, site / relative)
        added.append(relative)
    if not added:
        raise SystemExit(f"image: no compiled modules in {compiled}")
    return added


def build_app(project: Path, work: Path) -> Path:
    """The app layer's tree (``work/root``, holding ``usr/local/...``), from the project at
    ``project`` and its uv.lock."""
    uv = uv_command()
    root = work / "root"
    if root.exists():
        shutil.rmtree(root)
    site = root / SITE.lstrip("/")
    wheels = work / "wheel"
    shutil.rmtree(wheels, ignore_errors=True)
    requirements = work / "requirements.txt"
    _run(
        [
            *uv, "export", "--frozen", "--no-dev", "--no-emit-project", "--no-header",
            "--quiet", "--format", "requirements-txt", "--output-file", str(requirements),
        ],
        project,
    )  # fmt: skip
    _run([*uv, "build", "--wheel", "--quiet", "--out-dir", str(wheels)], project)
    install = [
        *uv, "pip", "install", "--quiet", "--target", str(site),
        "--python-platform", PLATFORM, "--python-version", PYTHON_VERSION,
        "--no-deps", "--no-installer-metadata", "--only-binary", ":all:",
    ]  # fmt: skip
    _run([*install, "--require-hashes", "--requirement", str(requirements)], project)
    _run([*install, *map(str, sorted(wheels.glob("*.whl")))], project)
    add_native_core(project, site)
    # uv's scripts name the build host's interpreter; ours follow.
    shutil.rmtree(site / "bin", ignore_errors=True)
    _run(
        [
            BUILD_PYTHON, "-m", "compileall", "-q", "-j", "0",
            "--invalidation-mode", "unchecked-hash", "-d", SITE, str(site),
        ],
        project,
    )  # fmt: skip
    bin_dir = root / BIN.lstrip("/")
    bin_dir.mkdir(parents=True)
    for name, target in sorted(project_scripts(project).items()):
        script = bin_dir / name
        script.write_text(wrapper(target))
        script.chmod(0o755)
    return root
