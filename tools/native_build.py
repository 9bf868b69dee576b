"""Compile the SBC's sans-IO SIP core with mypyc, outside the source tree.

The source stays plain Python that also runs uncompiled; this module builds the compiled form:

    uv run python tools/native_build.py          # prints the folder to put on PYTHONPATH

:func:`build` copies ``sbc/teams_sbc`` into ``~/.cache/teams-sbc/native/<key>/teams_sbc`` (or
under ``$TEAMS_SBC_NATIVE_CACHE``), compiles :data:`NATIVE_MODULES` there (the ``.so`` files land
next to the copied ``.py`` files, mypyc's shared library at the folder's root) and returns the
folder. ``<key>`` hashes every source file of the package, the module list, the Python version
and ABI, and mypy's version: an unchanged tree reuses the cache in milliseconds, any edit builds
anew. Nothing is ever written into the clone, so an editable install never runs stale
compiled code.

Used by ``bench/sip_proxy.py`` and ``bench/proxy_core_bench.py`` (compiled by default, ``--pure``
for plain Python), by ``./dev test`` (the compiled pass) and by ``hatch_build.py`` (the
production wheel with ``TEAMS_SBC_NATIVE=1``). See docs/performance.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "sbc" / "teams_sbc"

#: The modules compiled, relative to the package: the SIP core and what it runs per message.
#: Everything else (the asyncio drivers, config, the Teams policy, the operator) stays Python,
#: and so does sip/errors.py: its exception classes' class-level ``default_status`` does not
#: survive compilation, and errors are off the hot path.
NATIVE_MODULES: tuple[str, ...] = (
    "sip/uri.py",
    "sip/headers.py",
    "sip/message.py",
    "sip/framing.py",
    "sip/transaction.py",
    "sip/peer.py",
    "sip/media.py",
    "sip/proxy.py",
)

#: How many built trees the cache keeps (the newest); older ones are removed after a build.
KEEP = 4

_SETUP = """\
from setuptools import setup
from mypyc.build import mypycify

setup(
    name="teams_sbc_native",
    ext_modules=mypycify(
        ["--config-file", "mypy_native.ini", *{paths!r}], opt_level="3", debug_level="0"
    ),
)
"""


class NativeBuildError(RuntimeError):
    """mypyc or the C compiler failed; the message holds their output."""


def cache_root() -> Path:
    """Where compiled trees live: ``$TEAMS_SBC_NATIVE_CACHE``, else the XDG cache."""
    explicit = os.environ.get("TEAMS_SBC_NATIVE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "teams-sbc" / "native"


def _source_files(source: Path) -> list[Path]:
    return sorted(
        p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts
        and p.suffix not in {".pyc", ".so"}
    )


def build_key(source: Path = SOURCE) -> str:
    """What the compiled tree depends on: the sources, the module list, Python, mypy."""
    digest = hashlib.sha256()
    for path in _source_files(source):
        digest.update(path.relative_to(source).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    digest.update(repr(NATIVE_MODULES).encode())
    digest.update(_SETUP.encode() + _mypy_config().encode())
    digest.update(sys.version.encode())
    digest.update(str(sysconfig.get_config_var("EXT_SUFFIX")).encode())
    digest.update(metadata.version("mypy").encode())
    tag = sys.implementation.cache_tag or "py"
    return f"{tag}-{digest.hexdigest()[:20]}"


def compile_tree(dest: Path, source: Path = SOURCE) -> None:
    """Copy the package ``source`` to ``dest/teams_sbc`` and compile it there, in place."""
    package = dest / "teams_sbc"
    shutil.copytree(
        source, package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")
    )
    paths = [f"teams_sbc/{module}" for module in NATIVE_MODULES]
    (dest / "setup_native.py").write_text(_SETUP.format(paths=paths))
    (dest / "mypy_native.ini").write_text(_mypy_config())
    env = {**os.environ, "MYPYPATH": str(dest)}
    env.pop("PYTHONPATH", None)  # the copy, not another tree, is what mypyc type-checks
    result = subprocess.run(
        [sys.executable, "setup_native.py", "build_ext", "--inplace"],
        cwd=dest,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise NativeBuildError(
            f"mypyc build failed ({result.returncode}) in {dest}:\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    for leftover in ("build", "setup_native.py", "mypy_native.ini", ".mypy_cache"):
        path = dest / leftover
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    missing = [m for m in NATIVE_MODULES if not compiled_files(package, m)]
    if missing:
        raise NativeBuildError(f"mypyc produced no extension for {missing} in {dest}")


def _mypy_config() -> str:
    """The project's mypy settings that matter to mypyc: which imports have no types."""
    lines = ["[mypy]", f"python_version = {sys.version_info.major}.{sys.version_info.minor}"]
    pyproject = REPO / "pyproject.toml"
    if pyproject.exists():
        config = tomllib.loads(pyproject.read_text())
        for override in config.get("tool", {}).get("mypy", {}).get("overrides", []):
            if override.get("ignore_missing_imports"):
                modules = override["module"]
                names = modules if isinstance(modules, list) else [modules]
                lines += [f"[mypy-{','.join(names)}]", "ignore_missing_imports = True"]
    return "\n".join(lines) + "\n"


def compiled_files(package: Path, module: str) -> list[Path]:
    """The extension file(s) built for ``module`` (``sip/proxy.py``) under ``package``."""
    stem = Path(module).with_suffix("")
    return sorted((package / stem.parent).glob(f"{stem.name}.*.so")) + sorted(
        (package / stem.parent).glob(f"{stem.name}.*.pyd")
    )


def build(source: Path = SOURCE, cache: Path | None = None) -> Path:
    """The folder holding a compiled copy of ``source`` (build it unless cached).

    Put the folder first on ``PYTHONPATH``: ``import teams_sbc`` then loads the copy, with the
    modules of :data:`NATIVE_MODULES` compiled. Safe to call from several processes at once:
    each builds in a temporary folder and the first to finish publishes it.
    """
    root = cache or cache_root()
    key = build_key(source)
    final = root / key
    if (final / "teams_sbc").is_dir():
        os.utime(final)  # recently used: kept by the pruning below
        return final
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        compile_tree(work, source)
        try:
            work.rename(final)
        except OSError:
            if not (final / "teams_sbc").is_dir():
                raise
            # Another process published the same key first: use it.
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    _prune(root, keep=final)
    return final


def _prune(root: Path, keep: Path) -> None:
    trees = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in trees[KEEP:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".*-*"):  # a build killed half-way, over an hour ago
        if stale.is_dir() and time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="the teams_sbc package")
    parser.add_argument("--cache", type=Path, default=None, help="instead of the XDG cache")
    args = parser.parse_args()
    started = time.monotonic()
    folder = build(args.source, args.cache)
    print(f"compiled in {time.monotonic() - started:.1f} s", file=sys.stderr)
    print(folder)


if __name__ == "__main__":
    main()
