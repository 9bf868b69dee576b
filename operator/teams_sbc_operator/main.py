"""`teams-sbc-operator`: run the kopf operator for TeamsTrunk and TeamsTenant resources."""

from __future__ import annotations

import argparse
import logging
import sys

import kopf

from teams_sbc_operator import __version__


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
    args = parser.parse_args(argv)
    if not args.namespace and not args.all_namespaces:
        parser.error("say which namespaces to watch: --namespace NS or --all-namespaces")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import teams_sbc_operator.handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        standalone=True,
        clusterwide=args.all_namespaces,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
