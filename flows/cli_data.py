"""The ``ldsm ingest`` and ``ldsm screen`` parsers: reading data sets and candidate structures.
The defaults written here are the configs' own (``tests/test_cli.py`` holds them equal)."""

from __future__ import annotations

from pathlib import Path

from flows.cli_options import (
    add_ranking_options,
    add_runner_options,
    nonnegative_int,
    positive_int,
)

ROOT = Path(__file__).resolve().parents[1]
COV_CUTOFF_NAMES = ("carbon_24", "mp_20", "perov_5")  # pipeline.crystal_checks.COV_CUTOFFS
SCREEN = dict(chunk_size=256, reference_processes=0, posebusters_conformers=5)


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
        "--posebusters-conformers",
        type=positive_int,
        default=SCREEN["posebusters_conformers"],
        help="conformers in PoseBusters' energy-ratio reference ensemble (PoseBusters' own "
        "config: 50; 5 gave its verdicts on 100 valid QM9 molecules, 14x faster: BENCHMARKS.md)",
    )
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
    add_ranking_options(parser)
    parser.add_argument(
        "--chunk-size",
        type=positive_int,
        default=SCREEN["chunk_size"],
        help="candidates per task, at most (a small input is split so that every worker has one)",
    )
    parser.add_argument(
        "--reference-processes",
        type=nonnegative_int,
        default=SCREEN["reference_processes"],
        help="processes for the reference fingerprints (0: every core); cached by content",
    )
    add_runner_options(parser)
