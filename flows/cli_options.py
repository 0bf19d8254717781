"""Pieces of the ``ldsm`` command line that every sub-command's parser shares (argparse only).

The parsers of the sub-commands are grouped by what they do: :mod:`flows.cli_train` (``demo``,
``train``), :mod:`flows.cli_sample` (``generate``, ``design``, ``serve``) and
:mod:`flows.cli_data` (``ingest``, ``screen``); :mod:`flows.cli` puts them together. None of them
imports anything heavy, so ``ldsm --help`` answers without loading torch, RDKit or Prefect.
"""

from __future__ import annotations

import argparse

from pipeline.ranking import PROPERTIES, ExpressionError, parse_expression, parse_filter

CRYSTAL_DATASETS = ("perov-5", "carbon-24", "mp-20")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after every option but a required one ("(required)" instead); descriptions and
    examples keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required and action.option_strings:
            return f"{action.help} (required)"
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``ldsm CMD: error: ...``), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind, low, strict: bool):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < low or (strict and value == low):
            bound = f"> {low}" if strict else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


positive_int = _number(int, 1, strict=False)
nonnegative_int = _number(int, 0, strict=False)
positive_float = _number(float, 0.0, strict=True)
nonnegative_float = _number(float, 0.0, strict=False)


def fraction(text: str) -> float:
    """A float in [0, 1)."""
    value = _number(float, 0.0, strict=False)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be < 1, got {text}")
    return value


def atom_count(text: str) -> int | tuple[int, int]:
    """``--num-atoms``: one size ``N`` (>= 1), or an inclusive range ``LOW-HIGH`` (1 <= LOW <=
    HIGH) as ``(low, high)``."""
    low_text, dash, high_text = text.strip().partition("-")
    if not dash:
        return positive_int(text)
    try:
        low, high = int(low_text), int(high_text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected N or a range LOW-HIGH such as 12-18, got {text!r}"
        ) from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"range {text} must have 1 <= LOW <= HIGH")
    return low, high


def add_runner_options(parser: argparse.ArgumentParser) -> None:
    """``--workers`` and ``--dask-address`` (``flows.runners``) for a command that fans out."""
    parser.add_argument(
        "--workers",
        type=nonnegative_int,
        default=0,
        help="local Dask worker processes (0: a thread pool in this process)",
    )
    parser.add_argument(
        "--dask-address",
        default=None,
        help="scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786",
    )


def runner_options(args: argparse.Namespace) -> dict:
    """The values of :func:`add_runner_options` under the names the configs give them."""
    return {"workers": args.workers, "dask_address": args.dask_address}


def _checked(parse):
    """An argparse type: the text itself, once ``parse`` (:mod:`pipeline.ranking`) accepts it."""

    def check(text: str) -> str:
        try:
            return parse(text).text
        except ExpressionError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    check.__name__ = parse.__name__
    return check


def add_ranking_options(parser: argparse.ArgumentParser) -> None:
    """``--rank-by`` and ``--filter`` (:mod:`pipeline.ranking`), for ``screen`` and ``design``."""
    parser.add_argument(
        "--rank-by",
        type=_checked(parse_expression),
        metavar="EXPR",
        help="score to rank on, highest first: columns (" + ", ".join(PROPERTIES) + "), numbers, "
        '+ - * /, e.g. "qed - 0.1*sa" or "-xtb_relaxation_ev"; passing candidates always '
        "first (without it: then checks passed, then lowest xTB / CHGNet relaxation energy)",
    )
    parser.add_argument(
        "--filter",
        type=_checked(parse_filter),
        action="append",
        metavar="COND",
        help='threshold the passing candidates must meet, e.g. "qed>=0.5"; repeatable, '
        "applied in order",
    )


EXPRESSION_OPTIONS = ("--rank-by", "--filter")


def join_expression_values(argv: list[str]) -> list[str]:
    """``argv`` with ``--rank-by -xtb_gap`` written as ``--rank-by=-xtb_gap``: argparse takes a
    value that starts with a minus for an option, and a score to minimise starts with one."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in EXPRESSION_OPTIONS and arg.startswith("-") and arg[1:2] != "-":
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out
