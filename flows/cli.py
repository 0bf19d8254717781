"""The `ldsm` command line: one sub-command per flow.

Each sub-command lives in its own module exposing ``register(subparsers)``; this file only lists them.
"""

from __future__ import annotations

import argparse
import sys

from flows import demo, design, generate, ingest, screen, serve, train

COMMANDS = [demo, ingest, train, generate, screen, design, serve]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldsm",
        description="Molecule and materials design with local denoising score matching.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
