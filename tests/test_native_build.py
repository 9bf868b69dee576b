"""The mypyc build of the SIP core (tools/native_build.py, docs/performance.md).

``./dev test`` runs pytest twice: the whole suite on the plain-Python source, then the SIP core's
unit tests, the sipp end-to-end proxy tests and this file with ``PYTHONPATH`` set to the
compiled tree and ``TEAMS_SBC_NATIVE_PASS=1``. The tests here check that each pass runs what it
claims to run, and that the build never leaves compiled files in the clone.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path

from tools import native_build

from tests.testbed.sbc import SbcFactory

REPO = Path(__file__).resolve().parent.parent
NATIVE_PASS = os.environ.get("TEAMS_SBC_NATIVE_PASS") == "1"


def _module_name(module: str) -> str:
    return "teams_sbc." + module.removesuffix(".py").replace("/", ".")


def test_no_compiled_modules_in_the_source_tree() -> None:
    # An extension module next to a .py wins the import: an editable install would run it,
    # stale, after the next edit. The build only ever writes into the cache.
    found = [
        p.relative_to(REPO).as_posix()
        for top in ("sbc", "operator", "tests", "bench", "tools")
        for pattern in ("*.so", "*.pyd")
        for p in (REPO / top).rglob(pattern)
    ]
    assert found == []


def test_this_pass_imports_what_it_claims() -> None:
    for module in native_build.NATIVE_MODULES:
        loaded = importlib.import_module(_module_name(module))
        path = Path(loaded.__file__ or "")
        if NATIVE_PASS:
            assert path.suffix in {".so", ".pyd"}, path
            # ... compiled from the sources as they are now, not an older build.
            assert path.parents[2] == native_build.cache_root() / native_build.build_key(), path
        else:
            assert path == native_build.SOURCE / module, path
    errors = importlib.import_module("teams_sbc.sip.errors")  # kept interpreted on purpose
    assert Path(errors.__file__ or "").suffix == ".py"


def test_the_sbc_process_runs_the_compiled_core(sbc_factory: SbcFactory) -> None:
    # The `teams-sbc run` the sipp tests talk to maps the compiled modules in the native pass,
    # and none of them in the plain pass.
    sbc = sbc_factory()
    assert sbc.proc is not None
    maps = Path(f"/proc/{sbc.proc.pid}/maps").read_text()
    loaded = {Path(line.split()[-1]).name for line in maps.splitlines() if ".so" in line}
    proxy_so = {name for name in loaded if name.startswith("proxy.cpython")}
    if NATIVE_PASS:
        assert proxy_so, sorted(loaded)
    else:
        assert not proxy_so, sorted(loaded)


def test_build_reuses_the_cache_and_leaves_only_the_tree() -> None:
    folder = native_build.build()
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*.so")}
    assert native_build.build() == folder
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.so")} == stamps  # not rebuilt
    package = folder / "teams_sbc"
    for module in native_build.NATIVE_MODULES:
        assert native_build.compiled_files(package, module), module
        assert (package / module).read_bytes() == (native_build.SOURCE / module).read_bytes()
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".so")) == [
        "teams_sbc"
    ]


def test_build_key_follows_every_source_file(tmp_path: Path) -> None:
    copy = tmp_path / "teams_sbc"
    shutil.copytree(native_build.SOURCE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    key = native_build.build_key(copy)
    assert native_build.build_key(copy) == key
    # Not only the compiled modules: they are type-checked against the others.
    config = copy / "config.py"
    config.write_text(config.read_text() + "\n# edited\n")
    assert native_build.build_key(copy) != key
