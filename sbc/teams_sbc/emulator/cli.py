"""``teams-sbc emulate-teams``: Microsoft's SIP proxies on your machine, as strict as Microsoft.

Run it against an SBC before pointing the SBC at Microsoft: it answers the SBC's OPTIONS and
INVITEs (refusing what Microsoft refuses, with the reason in the Reason header), pings the SBC
back, and with ``--call`` places Teams calls through the SBC, with SRTP both ways. The last line
on stdout is one JSON object (see docs/emulator.md); logs are JSON on stderr. Exit status 0 when
every call it placed succeeded and no call broke a rule.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from teams_sbc.emulator.config import EmulatorConfig
    from teams_sbc.emulator.server import TeamsEmulator

log = logging.getLogger("teams_sbc.emulator")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML emulator config (docs/emulator.md); flags override")
    parser.add_argument("--trunk", action="append", default=[], metavar="FQDN",
                        help="SBC FQDN configured as a trunk (repeat; '*.base' for tenants)")
    parser.add_argument("--sbc-address", metavar="IP[:PORT]",
                        help="where the SBC's Teams listener is (its names keep resolving here)")
    parser.add_argument("--proxy", action="append", default=[], metavar="NAME=IP[:PORT]",
                        help="where proxy sip, sip2 or sip3 listens (default 127.0.0.1, free port)")
    parser.add_argument("--fail", action="append", default=[], metavar="NAME=MODE",
                        help="make a proxy fail: refuse, 503 or silent")
    parser.add_argument("--cert", help="the emulator's certificate (PEM, chain included)")
    parser.add_argument("--key", help="its private key")
    parser.add_argument("--ca", help="trust bundle for the SBC's certificate")
    parser.add_argument("--pki-dir", metavar="DIR",
                        help="make (or reuse) a throw-away CA, the emulator's certificate and one "
                             "for each --trunk here, when --cert is not given")
    parser.add_argument("--call", action="append", default=[], metavar="E164",
                        help="place a Teams call to this number through the SBC (repeat)")
    parser.add_argument("--hold", action="store_true", help="hold and resume each call")
    parser.add_argument("--call-seconds", type=float, default=2.0,
                        help="how long each placed call stays up (default 2)")
    parser.add_argument("--run-seconds", type=float, default=None,
                        help="stop after this long (default: when the calls are done; without "
                             "--call, on SIGINT/SIGTERM)")
    parser.add_argument("--ladder", nargs="?", const="short", choices=["short", "full"],
                        help="print each call's ladder; 'full' adds every message as sent")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _dev_pki(directory: Path, trunks: list[str]) -> dict[str, str]:
    """A CA, the emulator's certificate (Microsoft's names) and SBC certificates, made once and
    reused on later runs, so an SBC can be set up to trust them."""
    from teams_sbc.emulator.config import COMMERCIAL_PROXIES
    from teams_sbc.pki import DevCA

    directory.mkdir(parents=True, exist_ok=True)
    cert, key, ca = directory / "emulator.crt", directory / "emulator.key", directory / "ca.crt"
    if not (cert.exists() and key.exists() and ca.exists()):
        dev = DevCA(directory, "ca")
        names = [fqdn for _, fqdn in COMMERCIAL_PROXIES] + ["*.pstnhub.microsoft.com"]
        dev.issue("emulator", names[0], dns_names=names, client_auth=True)
        for trunk in trunks:
            label = "sbc-" + trunk.replace("*", "wildcard")
            dev.issue(label, trunk, dns_names=[trunk])
    return {"cert_file": str(cert), "key_file": str(key), "ca_file": str(ca)}


def build_config(args: argparse.Namespace) -> EmulatorConfig:
    from teams_sbc.emulator.config import (
        COMMERCIAL_PROXIES,
        EmulatorConfigError,
        load_emulator_config,
        parse_emulator_config,
        parse_host_port,
    )

    raw: dict[str, Any] = {}
    if args.config:
        raw = load_emulator_config(args.config).model_dump(exclude_unset=True)
    if args.trunk:
        raw["trunks"] = args.trunk
    if args.sbc_address:
        raw["sbc_address"] = args.sbc_address
    if args.cert or args.key or args.ca:
        if not (args.cert and args.key and args.ca):
            raise EmulatorConfigError("--cert, --key and --ca go together")
        raw.update(cert_file=args.cert, key_file=args.key, ca_file=args.ca)
    elif "cert_file" not in raw:
        if not args.pki_dir:
            raise EmulatorConfigError(
                "no certificate: give --cert/--key/--ca, a config with them, or --pki-dir DIR "
                "for a throw-away CA")
        raw.update(_dev_pki(Path(args.pki_dir), list(raw.get("trunks", []))))
    proxies = {p["name"]: dict(p) for p in raw.get("proxies", [])} or {
        name: {"name": name, "fqdn": fqdn} for name, fqdn in COMMERCIAL_PROXIES
    }
    for item in args.proxy:
        name, _, where = item.partition("=")
        if name not in proxies:
            raise EmulatorConfigError(f"--proxy {item}: no proxy named {name!r}")
        try:
            host, port = parse_host_port(where)
        except ValueError as exc:
            raise EmulatorConfigError(f"--proxy {item}: {exc}") from None
        proxies[name].update(host=host, port=port or 0)
    for item in args.fail:
        name, _, mode = item.partition("=")
        if name not in proxies:
            raise EmulatorConfigError(f"--fail {item}: no proxy named {name!r}")
        proxies[name]["failure"] = mode
    raw["proxies"] = list(proxies.values())
    return parse_emulator_config(raw, source=args.config or "flags")


async def _run(config: EmulatorConfig, args: argparse.Namespace) -> dict[str, Any]:
    from teams_sbc.emulator.server import TeamsEmulator

    emulator = TeamsEmulator(config)
    await emulator.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        print(json.dumps({"event": "listening", "proxies": {
            name: f"{host}:{port}" for name, (host, port) in emulator.addresses.items()},
            "ca_file": config.ca_file, "cert_file": config.cert_file}), file=sys.stderr)
        calls = [asyncio.create_task(_one_call(emulator, number, args)) for number in args.call]
        waiters: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
        if calls and args.run_seconds is None:
            waiters.append(asyncio.create_task(asyncio.wait(calls)))
        if args.run_seconds is not None:
            waiters.append(asyncio.create_task(asyncio.sleep(args.run_seconds)))
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in [*waiters, *calls]:
            task.cancel()
        if args.ladder:
            for record in emulator.calls():
                print(f"--- {record.direction} {record.number} via {record.proxy}: "
                      f"{record.state}{' (' + record.failure + ')' if record.failure else ''}")
                print(record.ladder_text(full=args.ladder == "full"))
                if record.media is not None:
                    m = record.media
                    print(f"  media {m.local} <-> {m.remote}: sent {m.sent}, received "
                          f"{m.received}, decrypted {m.decrypted} ({m.payload_ok} with the test "
                          f"pattern), failed authentication {m.auth_failures}")
        summary = emulator.summary()
        summary["calls_placed"] = len(args.call)
        summary["calls_placed_ok"] = sum(
            1 for c in emulator.calls() if c.direction == "from-teams" and c.ok)
        return summary
    finally:
        await emulator.stop()


async def _one_call(emulator: TeamsEmulator, number: str, args: argparse.Namespace) -> None:
    from teams_sbc.emulator.core import CallOptions
    from teams_sbc.emulator.server import FINAL_STATES

    timeout = 64 * emulator.config.timing.t1 + emulator.config.timing.answer_after + 30
    call_id = await emulator.place_call(number, CallOptions())
    try:
        record = await emulator.wait_call(call_id, "confirmed", *FINAL_STATES, within=timeout)
        if record.state != "confirmed":
            return
        if args.hold:
            await asyncio.sleep(args.call_seconds / 3)
            emulator.hold(call_id)
            await asyncio.sleep(args.call_seconds / 3)
            emulator.resume(call_id)
            await asyncio.sleep(args.call_seconds / 3)
        else:
            await asyncio.sleep(args.call_seconds)
        if emulator.core.record(call_id).state == "confirmed":
            emulator.hangup(call_id)
        await emulator.wait_call(call_id, *FINAL_STATES, within=64 * emulator.config.timing.t1)
    except TimeoutError as exc:
        log.warning("call did not finish: %s", exc, extra={"call_id": call_id})


def main(args: argparse.Namespace) -> int:
    from teams_sbc.emulator.config import EmulatorConfigError
    from teams_sbc.logs import setup_logging

    setup_logging(args.log_level, "json")
    try:
        config = build_config(args)
    except EmulatorConfigError as exc:
        print(f"teams-sbc emulate-teams: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        summary = uvloop.run(_run(config, args))
    except OSError as exc:
        print(f"teams-sbc emulate-teams: cannot listen: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, sort_keys=True))
    if summary["calls_failed"] or summary["calls_placed_ok"] < len(args.call):
        return 1
    return 0
