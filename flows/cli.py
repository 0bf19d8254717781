"""The `ldsm` command line: one sub-command per flow.

Each sub-command lives in its own module exposing ``register(subparsers)``; this file only lists them.
"""

from __future__ import annotations

import argparse
import sys

from flows import demo, design, generate, ingest, screen, serve, train

COMMANDS = [demo, ingest, train, generate, screen, design, serve]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after every option; descriptions and examples keep their line breaks."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldsm",
        description="Molecule and materials design with local denoising score matching.",
        formatter_class=HelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(subparsers)
    for sub in subparsers.choices.values():
        sub.formatter_class = HelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
