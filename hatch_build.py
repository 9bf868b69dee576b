"""Wheel build hook: with ``TEAMS_SBC_NATIVE=1``, the SIP core goes in compiled by mypyc.

    TEAMS_SBC_NATIVE=1 uv build --wheel

compiles the modules listed in ``tools/native_build.py`` (a copy of the package, in a temporary
folder) and adds their extension modules to the wheel next to the ``.py`` files, which stay in
it; the wheel is then tagged for this Python and platform. Without the variable the hook does
nothing and the wheel is pure Python, as is the editable install ``uv sync`` makes.
See docs/performance.md.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

ROOT = Path(__file__).resolve().parent
#: The stub packages of the dev dependencies that the compiled modules' imports need.
_STUBS = ("types-PyYAML", "types-pyOpenSSL")


def _enabled() -> bool:
    return os.environ.get("TEAMS_SBC_NATIVE", "") not in {"", "0"}


def _locked_version(name: str) -> str | None:
    """``name``'s version in uv.lock, so the wheel is compiled by the mypy the tests ran."""
    lock = ROOT / "uv.lock"
    if not lock.exists():
        return None
    normalised = re.sub(r"[-_.]+", "-", name).lower()  # as uv.lock spells names
    found = re.search(rf'\[\[package\]\]\nname = "{re.escape(normalised)}"\nversion = "([^"]+)"',
                      lock.read_text())
    return found.group(1) if found else None


class NativeBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def dependencies(self) -> list[str]:
        """mypyc, and what it type-checks against: the runtime dependencies and the stubs
        (as in the project's own mypy run), at the versions uv.lock pins."""
        if not (_enabled() and self.target_name == "wheel"):
            return []
        names = ["mypy", "setuptools", *_STUBS]
        for requirement in self.metadata.core.dependencies:
            found = re.match(r"[A-Za-z0-9_.\-]+", requirement)
            if found:
                names.append(found.group(0))
        pinned = []
        for name in names:
            locked = _locked_version(name)
            pinned.append(f"{name}=={locked}" if locked else name)
        return pinned

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if not (_enabled() and self.target_name == "wheel" and version == "standard"):
            return
        spec = importlib.util.spec_from_file_location(
            "native_build", ROOT / "tools" / "native_build.py"
        )
        assert spec is not None and spec.loader is not None
        native = importlib.util.module_from_spec(spec)
        sys.modules["native_build"] = native
        spec.loader.exec_module(native)
        self._work = Path(tempfile.mkdtemp(prefix="teams-sbc-native-"))
        native.compile_tree(self._work, ROOT / "sbc" / "teams_sbc")
        for path in sorted(self._work.rglob("*")):
            if path.suffix in {".so", ".pyd"}:
                # mypyc's shared library sits at the top; each module's next to its .py.
                relative = path.relative_to(self._work).as_posix()
                build_data["force_include"][str(path)] = relative
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        work = getattr(self, "_work", None)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
