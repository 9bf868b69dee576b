"""`teams-sbc-operator`: run the kopf operator for TeamsTrunk and TeamsTenant resources."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from urllib.parse import urlsplit

import kopf

from teams_sbc_operator import __version__


class KopfContext(logging.Filter):
    """kopf attaches its settings and the object's reference to its log records; keep the
    object (as ``object``: "Kind namespace/name") and drop the rest from the JSON lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        ref = record.__dict__.pop("k8s_ref", None)
        for noise in ("settings", "k8s_skip"):
            record.__dict__.pop(noise, None)
        if isinstance(ref, dict):
            record.__dict__["object"] = (
                f"{ref.get('kind')} {ref.get('namespace', '')}/{ref.get('name')}".replace(" /", " ")
            )
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="teams-sbc-operator", description=__doc__)
    parser.add_argument("--version", action="version", version=f"teams-sbc-operator {__version__}")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument("--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument(
        "--liveness", default="http://0.0.0.0:8080/healthz", help="kopf's liveness endpoint"
    )
    parser.add_argument(
        "--metrics",
        default="http://0.0.0.0:9090/metrics",
        help="where Prometheus scrapes the operator's metrics ('' for none)",
    )
    parser.add_argument(
        "--sbc-image",
        default=f"ghcr.io/teams-sbc/teams-sbc:{__version__}",
        help="teams-sbc image for trunks without spec.sbc.image",
    )
    parser.add_argument(
        "--rtpengine-image",
        default="ghcr.io/teams-sbc/rtpengine:10.5",
        help="rtpengine image for trunks without spec.sbc.rtpengineImage",
    )
    parser.add_argument(
        "--debounce",
        type=float,
        default=0.5,
        help="seconds to gather changes into one pass over a trunk",
    )
    parser.add_argument(
        "--resync",
        type=float,
        default=300.0,
        help="seconds between passes over an unchanged trunk (certificate expiry, DNS drift)",
    )
    parser.add_argument(
        "--dns-retry",
        type=float,
        default=5.0,
        help="first delay before retrying an unreachable DNS server (doubles up to 300 s)",
    )
    parser.add_argument("--log-format", choices=["json", "text"], default="json")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if not args.namespace and not args.all_namespaces:
        parser.error("say which namespaces to watch: --namespace NS or --all-namespaces")

    from teams_sbc.logs import setup_logging

    setup_logging(args.log_level.upper(), args.log_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(KopfContext())
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    # kopf says "Handler ... succeeded" for every watch event; failures still show.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)

    from teams_sbc_operator import handlers  # registers the handlers

    handlers.SETTINGS = dataclasses.replace(
        handlers.SETTINGS,
        sbc_image=args.sbc_image,
        rtpengine_image=args.rtpengine_image,
        debounce=args.debounce,
        resync=args.resync,
        dns_retry_min=args.dns_retry,
    )
    if args.metrics:
        from prometheus_client import start_http_server

        where = urlsplit(args.metrics)
        start_http_server(where.port or 9090, where.hostname or "0.0.0.0")

    kopf.run(
        standalone=True,
        clusterwide=args.all_namespaces,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
