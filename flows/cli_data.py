"""The ``ldsm ingest`` and ``ldsm screen`` parsers: reading data sets and candidate structures.
The defaults written here are the configs' own (``tests/test_cli.py`` holds them equal)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.cli_options import add_runner_options, nonnegative_int, positive_int
from pipeline.ranking import PROPERTIES, ExpressionError, parse_expression, parse_filter

ROOT = Path(__file__).resolve().parents[1]
COV_CUTOFF_NAMES = ("carbon_24", "mp_20", "perov_5")  # pipeline.crystal_checks.COV_CUTOFFS
SCREEN = dict(chunk_size=256, reference_processes=0)


def _checked(parse):
    """An argparse type: the text itself, once ``parse`` (:mod:`pipeline.ranking`) accepts it."""

    def check(text: str) -> str:
        try:
            return parse(text).text
        except ExpressionError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    check.__name__ = parse.__name__
    return check


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


def _card_names() -> list[str]:
    return sorted(p.stem for p in (ROOT / "datasets").glob("*.y*ml"))


def add_ingest(sub) -> None:
    """The ``ldsm ingest`` parser."""
    parser = sub.add_parser(
        "ingest",
        help="read, check, split and cache a data set",
        description="Read, check, split and cache a data set (a card of datasets/ or any files).",
        epilog="example: ldsm ingest qm9 --summary-json runs/qm9.json\n"
        "         ldsm ingest perov-5 --path ../shared/datasets/crystals/perov_5\n"
        "         ldsm ingest my_structures/",
    )
    names = ", ".join(_card_names())
    parser.add_argument("name", help=f"data set ({names}) or a file / folder of structures")
    parser.add_argument("--path", help="source folder / file (CDVAE CSVs, QM9 archive, structures)")
    parser.add_argument("--summary-json", help="write the summary here as JSON")
    parser.add_argument("--no-cache", action="store_true", help="ignore and do not write the cache")


def add_screen(sub) -> None:
    """The ``ldsm screen`` parser (``flows.screen.ScreenConfig``)."""
    parser = sub.add_parser(
        "screen",
        help="validate and rank candidate molecules and crystals",
        description="Validate candidate molecules and crystals with the field's own checks.",
        epilog="example: ldsm screen samples/ --out runs/screen "
        "--reference ../shared/datasets/crystals/perov_5/test.csv",
    )
    parser.add_argument(
        "input",
        help="file or folder of SDF / XYZ / extxyz / CIF / CDVAE CSV / POSCAR (gzip, bz2, xz too)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--reference", help="reference (test) split for novelty and coverage")
    parser.add_argument("--train-smiles", help="file of training SMILES (one per line)")
    parser.add_argument(
        "--cov-cutoffs",
        choices=COV_CUTOFF_NAMES,
        help="CDVAE coverage cutoffs (None: guessed from the --reference path)",
    )
    parser.add_argument("--no-posebusters", action="store_true", help="skip PoseBusters")
    parser.add_argument(
        "--xtb",
        action="store_true",
        help="relax valid molecules with GFN2-xTB (seconds each): energies, HOMO-LUMO gap, "
        "dipole; relaxed structures in OUT/relaxed/molecules",
    )
    parser.add_argument(
        "--chgnet",
        action="store_true",
        help="relax crystals with CHGNet: energy per atom before and after; relaxed structures "
        "in OUT/relaxed/crystals",
    )
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
    parser.add_argument(
        "--chunk-size",
        type=positive_int,
        default=SCREEN["chunk_size"],
        help="candidates per task",
    )
    parser.add_argument(
        "--reference-processes",
        type=nonnegative_int,
        default=SCREEN["reference_processes"],
        help="processes for the reference fingerprints (0: every core); cached by content",
    )
    add_runner_options(parser)
