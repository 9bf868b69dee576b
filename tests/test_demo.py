"""`teams-sbc demo`, run as a user runs it (a subprocess of the installed command), judged by
what it prints: the ladders, the closing JSON line and the exit status; and by what it leaves
behind (nothing may still run).

The Teams demo starts the real parts itself (rtpengine, sipp, `teams-sbc run`, the Teams
emulator) on free ports, so it runs beside the rest of the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.testbed.process import free_port, free_port_both, wait_until
from tests.testbed.sbc import teams_sbc_command

TENANT_FQDNS = {"contoso": "contoso.sbc.carrier.example", "fabrikam": "fab.sbc.carrier.example"}


def demo(*args: str, env: dict[str, str] | None = None, timeout: float = 150.0
         ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [*teams_sbc_command(), "demo", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
        check=False,
    )  # fmt: skip


def last_json(stdout: str) -> dict[str, Any]:
    lines = stdout.strip().splitlines()
    assert lines, "the demo printed nothing"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def processes_naming(text: str) -> list[str]:
    """Command lines of running processes that contain ``text`` (the demo's work folder is in
    every child's: the SBC's config, sipp's traces, rtpengine's pid file)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def call_block(stdout: str, index: int) -> str:
    """The ladder the demo printed for call ``index``."""
    marker = f"--- call {index}:"
    start = stdout.index(marker)
    end = stdout.find("--- call ", start + len(marker))
    if end < 0:  # the last call's ladder ends where the closing JSON line begins
        end = stdout.rindex("\n{")
    return stdout[start:end]


def test_teams_demo_calls_both_ways_for_both_tenants_with_media(tmp_path: Path) -> None:
    work = tmp_path / "work"
    # No mode flag: the README's `./dev demo` runs exactly this default.
    run = demo("--workdir", str(work), "--ladder", "full")
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    result = last_json(run.stdout)
    assert result["ok"] is True
    assert result["calls_ok"] == 4 and result["calls_failed"] == 0
    assert result["calls_to_teams"] == 2 and result["calls_from_teams"] == 2
    assert result["violations"] == 0 and result["rejections"] == {}
    assert result["tls_handshake_failures"] == 0
    # The OPTIONS handshake: the SBC's keepalive answered by sip, sip2 and sip3, and their
    # OPTIONS to the SBC's FQDN answered 200.
    assert result["options_from_sbc_ok"] >= 3 and result["options_to_sbc_ok"] >= 3
    # Media: SRTP that decrypted at Teams, and Teams' own packets back through the carrier.
    assert result["media_packets_to_teams"] > 100
    assert result["media_packets_from_teams"] > 100
    assert result["media_carrier_audio_to_teams"] > 100  # the carrier's tone, after the answer
    assert result["media_auth_failures"] == 0
    assert 0 <= result["media_loss_pct"] < 10
    assert result["children_stopped"] is True and result["problems"] == []

    # Tenants: calls to Teams carry the FQDN of the tenant the called number belongs to.
    calls = {c["call"]: c for c in result["calls"]}
    for call in calls.values():
        assert call["ok"], call
        assert call["trunk"] == TENANT_FQDNS[call["tenant"]], call
    assert {(c["direction"], c["tenant"]) for c in calls.values()} == {
        (d, t) for d in ("to-teams", "from-teams") for t in TENANT_FQDNS
    }

    # The ladders show both halves of every call, as they crossed the wire.
    for index, call in calls.items():
        block = call_block(run.stdout, index)
        assert block.rstrip().endswith("=> ok"), block
        if call["direction"] == "to-teams":
            assert "carrier --> SBC             INVITE" in block
            assert "SBC --> sip     INVITE sip:+" in block
            assert "SBC --> sip     ACK" in block and "carrier --> SBC             BYE" in block
        else:
            assert "SBC <-- sip     INVITE sip:+" in block
            assert "carrier <-- SBC             INVITE" in block
            assert "SBC <-- sip     BYE" in block and "carrier <-- SBC             BYE" in block
        assert "RTP/SAVP" in block and "RTP/AVP" in block  # SRTP to Teams, RTP to the carrier
        assert "a=crypto:" in block

    # Every part is gone; the work folder keeps what a user would look at.
    assert processes_naming(str(work)) == []
    for name in ("sbc.yaml", "emulator.yaml", "pki/demo-ca.crt", "logs/sbc.log",
                 "logs/rtpengine.log", "logs/teams-emulator.log"):  # fmt: skip
        assert (work / name).is_file(), name


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_teams_demo_interrupted_stops_every_part(tmp_path: Path, sig: signal.Signals) -> None:
    work = str(tmp_path / "work")
    proc = subprocess.Popen(
        [*teams_sbc_command(), "demo", "--teams", "--workdir", work],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # rtpengine, the carrier's sipp and the SBC are up: interrupt while the demo runs.
        wait_until(lambda: len(processes_naming(work)) >= 3, 60, "the demo's parts")
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr[-3000:]
    result = last_json(stdout)
    assert result["ok"] is False
    assert any("interrupted" in p for p in result["problems"]), result
    assert result["children_stopped"] is True
    assert processes_naming(work) == []


def test_teams_demo_names_a_missing_program(tmp_path: Path) -> None:
    # A PATH with rtpengine but without sipp.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    rtpengine = shutil.which("rtpengine")
    assert rtpengine is not None, "rtpengine-daemon is part of the test bed"
    (bin_dir / "rtpengine").symlink_to(rtpengine)
    run = demo("--teams", "--workdir", str(tmp_path / "work"), env={"PATH": str(bin_dir)})
    assert run.returncode == 2, run.stderr
    result = last_json(run.stdout)
    assert result["ok"] is False and result["failed_part"] == "sipp"
    assert "sip-tester" in result["problems"][0]
    assert "sip-tester" in run.stderr
    assert processes_naming(str(tmp_path / "work")) == []


def test_sbc_only_demo_from_a_config(tmp_path: Path) -> None:
    port = free_port_both()
    config = {
        "listeners": [
            {"name": "udp", "transport": "udp", "host": "127.0.0.1", "port": port},
            {"name": "tcp", "transport": "tcp", "host": "127.0.0.1", "port": port},
        ],
        "http": {"host": "127.0.0.1", "port": free_port(socket.SOCK_STREAM)},
        "drain_seconds": 0.5,
    }
    path = tmp_path / "sbc.yaml"
    path.write_text(yaml.safe_dump(config))
    run = demo("--sbc-only", "--config", str(path), timeout=60)
    assert run.returncode == 0, run.stderr
    result = last_json(run.stdout)
    assert result["ok"] is True and result["options_ok"] == 2 and result["sbc_exit_code"] == 0
    assert "200 (Allow: INVITE" in run.stdout


def test_demo_refuses_a_config_without_sbc_only() -> None:
    run = demo("--teams", "--config", "examples/sbc.yaml", timeout=30)
    assert run.returncode == 2
    assert "--config goes with --sbc-only" in run.stderr
