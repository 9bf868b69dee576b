"""`teams-sbc demo`: the embedded default, end to end on loopback (docs/demo.md).

By default (or ``--teams``): a throw-away CA and certificates, rtpengine, the SBC
(``teams-sbc run``), the strict Teams emulator as Microsoft's sip, sip2 and sip3, and a carrier
trunk (sipp with RTP); calls both ways for two tenants, with SRTP towards Teams and RTP towards
the carrier. It prints a short ladder of each call and, as its last line, one JSON object; exit
status 0 only if every call succeeded. ``--sbc-only``: the SBC alone from ``examples/sbc.yaml``,
checked with OPTIONS over UDP and TCP (:mod:`teams_sbc.demo.standalone`).

Modules: ``bed`` (PKI, configs, starting the parts), ``carrier`` (sipp and its traces),
``calls`` (placing and judging the calls), ``report`` (ladders, media figures), ``children``
(processes that are always stopped), ``standalone`` (``--sbc-only``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

#: What ``teams-sbc demo`` runs without ``--teams`` or ``--sbc-only``: the whole picture.
DEFAULT_MODE = "teams"

#: Exit status when a prerequisite (sipp, rtpengine) is missing; 1 is "a call or part failed".
EXIT_MISSING = 2
EXIT_INTERRUPTED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--teams", dest="mode", action="store_const", const="teams",
        help="the SBC between the Teams emulator and a carrier trunk (sipp), with rtpengine, "
        "calls both ways for two tenants",
    )  # fmt: skip
    mode.add_argument(
        "--sbc-only", dest="mode", action="store_const", const="sbc-only",
        help="the SBC alone from examples/sbc.yaml, checked with OPTIONS over UDP and TCP",
    )
    parser.set_defaults(mode=DEFAULT_MODE)
    parser.add_argument(
        "--config", default=None, help="with --sbc-only: the config to run (examples/sbc.yaml)"
    )
    parser.add_argument(
        "--workdir", default=None, metavar="DIR",
        help="keep certificates, configs and logs here (default: a temporary folder, removed "
        "after a run where everything worked)",
    )  # fmt: skip
    parser.add_argument(
        "--ladder", choices=["short", "full"], default="short",
        help="'full' prints every message under its ladder line",
    )


def main(args: argparse.Namespace) -> int:
    if args.mode == "sbc-only":
        from teams_sbc.demo.standalone import run_demo

        return run_demo(args.config)
    if args.config is not None:
        print("teams-sbc demo: --config goes with --sbc-only", file=sys.stderr)
        return 2
    return run_teams_demo(args.workdir, full_ladder=args.ladder == "full")


class _Stop(Exception):
    """SIGTERM (or SIGHUP) arrived: stop like Ctrl-C."""


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def _say(text: str) -> None:
    print(f"==> {text}", file=sys.stderr, flush=True)


def run_teams_demo(workdir: str | None = None, *, full_ladder: bool = False) -> int:
    """The whole Teams demo; returns the exit status (0 only if every call succeeded)."""
    from teams_sbc.demo.bed import BASE_FQDN, TENANTS, Bed
    from teams_sbc.demo.children import DemoError, Missing

    began = time.monotonic()
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="teams-sbc-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    previous = {
        sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    bed = Bed(work, _say)
    summary: dict[str, Any] = {"ok": False, "calls_ok": 0, "calls_failed": 0}
    problems: list[str] = []
    code = 1
    ladders: list[str] = []
    try:
        bed.start()
        problems += bed.wait_keepalive()
        from teams_sbc.demo.calls import emulator_clock_offset, run_calls
        from teams_sbc.demo.report import ladder, media_totals

        results = run_calls(bed, _say)
        offset = emulator_clock_offset(bed)
        ladders = [ladder(r, offset, full=full_ladder) for r in results]
        teams = bed.emulator.summary()
        calls_ok = sum(1 for r in results if r.ok)
        summary.update(
            calls_ok=calls_ok,
            calls_failed=len(results) - calls_ok,
            calls_to_teams=sum(1 for r in results if r.planned.direction == "to-teams"),
            calls_from_teams=sum(1 for r in results if r.planned.direction == "from-teams"),
            **media_totals(results),
            options_from_sbc_ok=teams["options_answered_ok"],
            options_to_sbc_ok=teams["options_ok"],
            violations=teams["violations"],
            rejections=teams["rejections"],
            tls_handshake_failures=teams["handshake_failures"],
            calls=[
                {
                    "call": r.planned.index, "direction": r.planned.direction,
                    "tenant": r.planned.tenant.name, "call_id": r.call_id, "ok": r.ok,
                    "teams_proxy": r.teams.proxy if r.teams else None,
                    "trunk": r.teams.trunk if r.teams else None,
                    "problems": r.problems,
                }
                for r in results
            ],
        )  # fmt: skip
        code = 0 if calls_ok == len(results) and not problems else 1
    except Missing as exc:
        problems.append(str(exc))
        summary["failed_part"] = exc.part
        code = EXIT_MISSING
    except DemoError as exc:
        problems.append(str(exc).split("\n", 1)[0])
        summary["failed_part"] = exc.part
        print(f"teams-sbc demo: {exc.part} failed: {exc.message}", file=sys.stderr)
    except (KeyboardInterrupt, _Stop) as exc:
        problems.append(f"interrupted ({exc.args[0] if exc.args else 'SIGINT'})")
        code = EXIT_INTERRUPTED
    finally:
        stopped = _stop(bed)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for text in ladders:
        print(text)
    if code == 0 and stopped["left_running"]:
        problems.append(f"children still running after the end: {stopped['left_running']}")
        code = 1
    keep = bool(workdir) or code != 0
    summary.update(
        ok=code == 0,
        tenants={t.name: t.fqdn for t in TENANTS},
        trunk=BASE_FQDN,
        problems=problems,
        children_stopped=not stopped["left_running"],
        seconds=round(time.monotonic() - began, 1),
        workdir=str(work) if keep else None,
    )
    if problems:
        print("problems:", *problems, sep="\n  ", file=sys.stderr)
    if keep:
        print(f"teams-sbc demo: configs, certificates and logs are in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary), flush=True)
    return code


def _stop(bed: Any) -> dict[str, Any]:
    """Stop every part (a second Ctrl-C or SIGTERM must not cut this short); which children,
    if any, are somehow still alive afterwards."""
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        bed.stop()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    left = [child.part for child in bed.children.started if child.alive()]
    return {"left_running": left}
