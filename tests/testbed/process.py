"""Start, wait for, log and stop one real program of the test bed.

A part that cannot start raises :class:`PartFailed` carrying the tail of its log, so the run fails
loudly with the reason instead of skipping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from teams_sbc.demo.children import PartFailed as DemoPartFailed
from teams_sbc.demo.children import free_port, free_udp_range

#: Every part started during the current test, so a failing test's report can show their logs.
RUNNING: list[ManagedProcess] = []


class PartFailed(RuntimeError):
    """A part of the test bed could not start or died; the message carries its log."""


def free_port_both(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP (SIP listens on both)."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM, host)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, port))
        except OSError:
            continue
        return port
    raise PartFailed("no port free for both TCP and UDP")


def free_port_range(count: int, host: str = "127.0.0.1") -> int:
    """The first port of ``count`` consecutive UDP ports that are free now (even first port)."""
    try:
        return free_udp_range(count, host)
    except DemoPartFailed as exc:
        raise PartFailed(str(exc)) from exc


def scrape_flat(port: int, timeout: float = 3.0) -> dict[str, float]:
    """The Prometheus text at ``http://127.0.0.1:port/metrics`` as {'name{labels}': value}."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def require_binary(name: str) -> str:
    """The path of an installed program; fails (never skips) when it is missing."""
    path = shutil.which(name) or (
        name if os.path.isabs(name) and os.access(name, os.X_OK) else None
    )
    if path is None:
        raise PartFailed(
            f"{name!r} is not installed: run the README's test command, which installs the test bed"
        )
    return path


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    proc: ManagedProcess | None = None,
    interval: float = 0.05,
) -> None:
    """Poll ``check`` until true; fail with ``what`` (and the log) on timeout or death."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise PartFailed(
                f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}\n"
                + proc.log_tail()
            )
        try:
            if check():
                return
        except Exception as exc:  # a probe that cannot connect yet
            last_error = exc
        time.sleep(interval)
    detail = f" (last error: {last_error!r})" if last_error else ""
    log = ("\n" + proc.log_tail()) if proc is not None else ""
    raise PartFailed(f"timed out after {timeout:.0f}s waiting for {what}{detail}{log}")


def tcp_open(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=0.5):
        return True


class ManagedProcess:
    """One running program with its log file."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdin: int | None = subprocess.DEVNULL,
    ) -> None:
        self.name = name
        self.args = list(args)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self._log.write(("$ " + " ".join(self.args) + "\n").encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=stdin,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        RUNNING.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        if not self._log.closed:  # still running; a stopped process's log is closed and complete
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_text().splitlines()[-lines:]
        return f"--- last {len(text)} lines of {self.log_path} ---\n" + "\n".join(text)

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()
        with contextlib.suppress(ValueError):
            RUNNING.remove(self)
        return self.popen.returncode

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)


@contextlib.contextmanager
def running(proc: ManagedProcess) -> Iterator[ManagedProcess]:
    try:
        yield proc
    finally:
        proc.stop()


def cache_dir() -> Path:
    """Where built test-bed binaries live, outside any clone (XDG cache, keyed by version below)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "teams-sbc"
    path.mkdir(parents=True, exist_ok=True)
    return path
