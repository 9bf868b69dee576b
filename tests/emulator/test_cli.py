"""``teams-sbc emulate-teams`` as a carrier runs it: its own throw-away PKI, flags, a call
through a TLS peer standing in for the SBC, and the JSON summary as the last line."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from teams_sbc.pki import CertFiles
from tests.emulator.peers import SBC_FQDN, SipConnection, TestSbc, client_context, options, run
from tests.testbed.process import free_port


def emulate(*args: str) -> list[str]:
    return [sys.executable, "-m", "teams_sbc.cli", "emulate-teams", *args]


def test_cli_makes_a_pki_answers_options_and_prints_a_summary(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    port = free_port(host="127.0.0.2")

    async def main() -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            *emulate("--pki-dir", str(pki), "--trunk", SBC_FQDN, "--sbc-address", "127.0.0.1:9",
                     "--proxy", f"sip2=127.0.0.2:{port}", "--fail", "sip3=503",
                     "--run-seconds", "3"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stderr is not None
            while b'"event": "listening"' not in (line := await proc.stderr.readline()):
                assert line, "the emulator exited before listening"
            listening = json.loads(line)
            assert listening["proxies"]["sip2"] == f"127.0.0.2:{port}"
            cert = CertFiles(pki / f"sbc-{SBC_FQDN}.crt", pki / f"sbc-{SBC_FQDN}.key")
            conn = await SipConnection.connect(("127.0.0.2", port),
                                               client_context(pki / "ca.crt", cert),
                                               server_hostname="sip2.pstnhub.microsoft.com")
            await conn.send(options())
            assert (await conn.response()).status == 200
            host, sip3 = listening["proxies"]["sip3"].split(":")
            conn3 = await SipConnection.connect((host, int(sip3)),
                                                client_context(pki / "ca.crt", cert))
            await conn3.send(options())
            assert (await conn3.response()).status == 503
            out, err = await asyncio.wait_for(proc.communicate(), 10)
            return proc.returncode or 0, out, err
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    code, out, err = run(main())
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert code == 0, err.decode()[-2000:]
    assert summary["options_received"] == summary["options_answered_ok"] == 1
    assert summary["proxies"]["sip3"]["failure_mode_hits"] == 1
    assert summary["calls"] == 0 and summary["calls_failed"] == 0
    assert {p.name for p in pki.iterdir()} >= {"ca.crt", "emulator.crt", "emulator.key",
                                                f"sbc-{SBC_FQDN}.crt"}


def test_cli_places_a_call_with_srtp_and_hold(tmp_path: Path) -> None:
    """The PKI made by a first run is reused by the second, as a carrier's SBC would keep it."""
    pki = tmp_path / "pki"

    async def main() -> tuple[int, bytes, bytes, TestSbc]:
        first = await asyncio.create_subprocess_exec(
            *emulate("--pki-dir", str(pki), "--trunk", SBC_FQDN, "--run-seconds", "0"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        assert await first.wait() == 0
        cert = CertFiles(pki / f"sbc-{SBC_FQDN}.crt", pki / f"sbc-{SBC_FQDN}.key")
        sbc = await TestSbc(pki / "ca.crt", cert, auto_media=30).start()
        proc = await asyncio.create_subprocess_exec(
            *emulate("--pki-dir", str(pki), "--trunk", SBC_FQDN, "--sbc-address", sbc.address,
                     "--fail", "sip=refuse", "--call", "+14255550123", "--hold",
                     "--call-seconds", "1.5", "--ladder", "full"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
            await sbc.close()
        return proc.returncode or 0, out, err, sbc

    code, out, err, sbc = run(main())
    lines = out.decode().strip().splitlines()
    summary = json.loads(lines[-1])
    assert code == 0, out.decode()[-3000:] + err.decode()[-2000:]
    assert summary["calls_placed"] == summary["calls_placed_ok"] == summary["calls_ok"] == 1
    assert summary["media_packets_sent"] > 0
    assert summary["media_packets_decrypted"] == summary["media_payload_ok"] == 30
    (call,) = sbc.calls.values()
    assert call.media is not None and call.media.pattern_ok > 0
    assert len(sbc.requests("INVITE")) == 3, "the call, hold, resume"
    assert b"a=sendonly" in sbc.requests("INVITE")[1].body
    assert len(call.byes) == 1
    ladder = "\n".join(lines[:-1])
    assert "--- from-teams +14255550123 via sip2: ended" in ladder
    assert "INVITE sip:+14255550123@sbc.example.test" in ladder
    assert "          | CSEQ: 1 INVITE" in ladder, "--ladder full shows the messages"


def test_cli_refuses_bad_flags(tmp_path: Path) -> None:
    async def main() -> tuple[int, bytes]:
        proc = await asyncio.create_subprocess_exec(
            *emulate("--trunk", SBC_FQDN), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        proc2 = await asyncio.create_subprocess_exec(
            *emulate("--pki-dir", str(tmp_path), "--fail", "sip4=refuse"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err2 = await proc2.communicate()
        assert proc2.returncode == 2
        assert b"no proxy named 'sip4'" in err2
        return proc.returncode or 0, err

    code, err = run(main())
    assert code == 2
    assert b"no certificate: give --cert/--key/--ca" in err
