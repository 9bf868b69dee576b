"""The demo's child processes: started with a log file each, stopped for sure.

Every child runs in a session of its own (a Ctrl-C in the terminal reaches the demo, which then
stops them in order) and, where util-linux's ``setpriv`` is there, with a parent-death signal,
so even a demo killed with SIGKILL leaves nothing running behind. A part that cannot start
raises :class:`PartFailed` naming the part, with the end of its log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class DemoError(Exception):
    """Something the demo needs is wrong; ``part`` names it (sipp, rtpengine, the SBC...)."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(f"{part}: {message}")
        self.part = part
        self.message = message


class Missing(DemoError):
    """A program the demo runs is not installed."""


class PartFailed(DemoError):
    """A part did not start, or died, or did not do what it should in time."""


def require(program: str, package: str) -> str:
    """The path of ``program`` on PATH, or :class:`Missing` saying which package brings it."""
    path = shutil.which(program)
    if path is None:
        raise Missing(
            program,
            f"`{program}` is not on PATH; install the Debian package {package} "
            "(`./dev setup` does, as root)",
        )
    return path


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port of ``host`` (IPv4 or IPv6) free for ``kind`` right now (the kernel picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_udp_range(count: int, host: str = "127.0.0.1") -> int:
    """The first (even) port of ``count`` consecutive UDP ports free right now."""
    for _ in range(200):
        base = free_port(socket.SOCK_DGRAM, host) & ~1
        if base + count > 65535:
            continue
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind((host, port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise PartFailed("ports", f"no {count} consecutive free UDP ports on {host}")


def _pdeathsig_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL --`` when available: the child dies with the demo."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


class Child:
    """One running program with its log file (stdout and stderr)."""

    def __init__(
        self,
        part: str,
        args: Sequence[str],
        log_dir: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.part = part
        self.args = list(args)
        self.log_path = log_dir / f"{part.replace(' ', '-')}.log"
        with self.log_path.open("ab") as log:
            log.write(("$ " + " ".join(self.args) + "\n").encode())
        self._log = self.log_path.open("ab")
        try:
            self.popen = subprocess.Popen(
                [*_pdeathsig_prefix(), *self.args],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        except OSError as exc:
            self._log.close()
            raise PartFailed(part, f"cannot run {self.args[0]}: {exc}") from exc

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def failed(self, what: str) -> PartFailed:
        """A :class:`PartFailed` for this part, with its exit status and the end of its log."""
        status = "" if self.alive() else f" (exited with {self.popen.returncode})"
        return PartFailed(
            self.part,
            f"{what}{status}\n--- last lines of {self.log_path} ---\n{self.log_tail()}",
        )

    def wait_for(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``check`` until it holds; :class:`PartFailed` if the child dies or time runs
        out (a ``check`` that raises OSError counts as not yet)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise self.failed(f"died while waiting for {what}")
            with contextlib.suppress(OSError):
                if check():
                    return
            if time.monotonic() > deadline:
                raise self.failed(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM to its process group, SIGKILL after ``grace`` seconds; its exit code."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(5)
        self._log.close()
        return self.popen.returncode


class Children:
    """Every child the demo started, stopped in reverse order (whatever happened)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Child] = []

    def start(
        self, part: str, args: Sequence[str], *, cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Child:
        child = Child(part, args, self.log_dir, cwd=cwd, env=env)
        self.started.append(child)
        return child

    def stop_all(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for child in reversed(self.started):
            codes[child.part] = child.stop()
        return codes

    def pids(self) -> list[int]:
        return [child.pid for child in self.started]
