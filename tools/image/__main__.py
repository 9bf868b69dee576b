"""``python -m tools.image [--out DIR] [--refresh] [NAME...]``: build the images' OCI archives
(``./dev image`` runs this)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tools.image.build import NAMES, build

PROJECT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev image", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"images to build (default: all of {NAMES})"
    )
    parser.add_argument(
        "--out", type=Path, default=PROJECT / "dist" / "images", help="where archives go"
    )
    parser.add_argument(
        "--refresh",
        action="store_true",
        help="download the Debian base file systems again instead of using the cache",
    )
    args = parser.parse_args(argv)
    for image in build(PROJECT, args.out, names=args.names or NAMES, refresh=args.refresh):
        size = image.path.stat().st_size / 1e6
        print(f"{image.path}  {image.ref}  {image.manifest.digest}  {size:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
