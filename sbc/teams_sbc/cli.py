"""`teams-sbc`: the SBC and its tools."""

from __future__ import annotations

import argparse
import sys

from teams_sbc import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="teams-sbc", description=__doc__)
    parser.add_argument("--version", action="version", version=f"teams-sbc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the SBC from a config file (docs/config.md)")
    run.add_argument("--config", required=True, help="path of the YAML config file")

    check = sub.add_parser("check-config", help="validate a config file and print it resolved")
    check.add_argument("--config", required=True)

    from teams_sbc import demo as demo_cli

    demo = sub.add_parser(
        "demo",
        help="the embedded default: run the SBC locally and prove it works",
        description=demo_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo_cli.add_arguments(demo)

    from teams_sbc.emulator import cli as emulator_cli

    emulate = sub.add_parser(
        "emulate-teams",
        help="play Microsoft's SIP proxies (sip, sip2, sip3), as strict as Microsoft",
        description=emulator_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    emulator_cli.add_arguments(emulate)

    args = parser.parse_args(argv)
    from teams_sbc.config import ConfigError, load_config

    if args.command in ("run", "check-config"):
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"teams-sbc: {exc}", file=sys.stderr)
            return 2
        if args.command == "check-config":
            print(config.model_dump_json(indent=2))
            return 0
        if config.workers > 1:
            import tempfile

            from teams_sbc.workers.supervisor import run_supervisor

            try:  # the supervisor keeps its workers' control sockets in a temporary directory
                tempfile.gettempdir()
            except OSError as exc:
                print(
                    f"teams-sbc: workers: {config.workers} needs a writable temporary directory "
                    f"for the workers' control sockets ({exc}); set TMPDIR, or on a read-only "
                    "root file system mount a volume (an emptyDir) at /tmp",
                    file=sys.stderr,
                )
                return 2

            return run_supervisor(config, args.config)
        from teams_sbc.app import run_forever

        return run_forever(config, args.config)
    if args.command == "emulate-teams":
        return emulator_cli.main(args)
    if args.command == "demo":
        return demo_cli.main(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
