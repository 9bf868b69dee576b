"""`teams-sbc demo --sbc-only`: the SBC alone on loopback, checked end to end.

It starts the SBC as its own process from `examples/sbc.yaml` (exactly as `teams-sbc run` would),
waits until `/readyz` says ready, talks SIP to it over every listener, reads its metrics, stops it
with SIGTERM (a drain) and prints a short ladder of what crossed the wire, then one JSON line with
the results. Exit status 0 only if everything worked.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from teams_sbc.config import ConfigError, Listener, SbcConfig, load_config
from teams_sbc.sip import Response, SipParseError, parse_message

DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "examples" / "sbc.yaml"


@dataclass
class Results:
    options_ok: int = 0
    options_failed: int = 0
    ladder: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _options(listener: Listener, local_host: str) -> bytes:
    branch = "z9hG4bK" + secrets.token_hex(8)
    call_id = secrets.token_hex(12) + "@demo"
    host = listener.advertised_host
    transport = listener.transport.upper()
    return (
        f"OPTIONS sip:{host}:{listener.port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {local_host};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:demo@{local_host}>;tag={secrets.token_hex(4)}\r\n"
        f"To: <sip:{host}:{listener.port}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        f"Contact: <sip:demo@{local_host}>\r\n"
        "Accept: application/sdp\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _exchange(listener: Listener, timeout: float = 2.0) -> bytes:
    """Send one OPTIONS to a listener and return the raw final response."""
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    if listener.transport == "udp":
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.connect((listener.host, listener.port))
            sock.send(_options(listener, f"{sock.getsockname()[0]}:{sock.getsockname()[1]}"))
            return sock.recv(65535)
    with socket.create_connection((listener.host, listener.port), timeout=timeout) as sock:
        local = f"{sock.getsockname()[0]}:{sock.getsockname()[1]}"
        sock.sendall(_options(listener, local))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65535)
            if not chunk:
                break
            data += chunk
        return data


def _http(config: SbcConfig, path: str) -> tuple[int, str]:
    url = f"http://{config.http.host}:{config.http.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=1.0) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_ready(proc: subprocess.Popen[bytes], config: SbcConfig, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the SBC exited with {proc.returncode} before it was ready")
        try:
            if _http(config, "/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the SBC did not become ready in time")


def run_demo(config_path: str | None = None) -> int:
    path = Path(config_path) if config_path else DEFAULT_CONFIG
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"teams-sbc demo: {exc}", file=sys.stderr)
        return 2
    results = Results()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "teams_sbc.cli", "run", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    exit_code: int | None = None
    try:
        _wait_ready(proc, config)
        results.ladder.append(f"sbc ready: {_http(config, '/readyz')[1].strip()}")
        for listener in config.listeners:
            try:
                raw = _exchange(listener)
                msg = parse_message(raw)
            except (OSError, SipParseError) as exc:
                results.options_failed += 1
                results.problems.append(f"{listener.name}: {exc}")
                continue
            ok = isinstance(msg, Response) and msg.status == 200
            results.options_ok += ok
            results.options_failed += not ok
            line = msg.status if isinstance(msg, Response) else "?"
            allow = msg.headers.get("allow") or "-"
            results.ladder.append(
                f"demo -> sbc [{listener.name} {listener.transport}]  OPTIONS\n"
                f"demo <- sbc [{listener.name} {listener.transport}]  {line} (Allow: {allow})"
            )
        status, metrics = _http(config, "/metrics")
        counted = [m for m in metrics.splitlines() if m.startswith("sbc_sip_requests_total")]
        results.ladder.append("metrics: " + (", ".join(counted) or f"HTTP {status}"))
    except RuntimeError as exc:
        results.problems.append(str(exc))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            exit_code = proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            results.problems.append("the SBC did not exit within 40 s of SIGTERM")
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    for line in results.ladder:
        print(line)
    if results.problems:
        print("problems:", *results.problems, sep="\n  ", file=sys.stderr)
        print("--- SBC log ---\n" + stderr[-4000:], file=sys.stderr)
    ok = not results.problems and results.options_failed == 0 and exit_code == 0
    print(
        json.dumps(
            {
                "ok": ok,
                "options_ok": results.options_ok,
                "options_failed": results.options_failed,
                "sbc_exit_code": exit_code,
                "config": str(path),
            }
        )
    )
    return 0 if ok else 1
