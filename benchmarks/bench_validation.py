"""Throughput of each validation check (molecules/s, structures/s) -> BENCHMARKS.md `validation`.

Usage: .venv/bin/python benchmarks/bench_validation.py [--quick]

Molecules are QM9 (qm9pack CSVs, the first molecules of EDM's test split), crystals Perov-5's test
split from ../shared/datasets (LDSM_SHARED_DATA). Every timing is one pass after a warm-up of a few
items; the SMACT cache is cleared before the compositional check so it is timed cold.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_molecule_checks import qm9_test_split  # noqa: E402  (QM9 reader shared with the tests)

from pipeline import crystal_checks as cc  # noqa: E402
from pipeline import crystal_fingerprints as cfp  # noqa: E402
from pipeline import molecule_3d_checks as m3d  # noqa: E402
from pipeline import molecule_checks as mc  # noqa: E402
from pipeline.relax import relax_molecule  # noqa: E402
from pipeline.structures import make_molecule  # noqa: E402

SHARED = Path(os.environ.get("LDSM_SHARED_DATA", ROOT / "../shared/datasets"))


def rate(fn, items, warmup: int = 3) -> float:
    """Items per second of ``fn(items)`` (one call over the whole list)."""
    fn(items[:warmup])
    start = time.perf_counter()
    fn(items)
    return len(items) / (time.perf_counter() - start)


def molecule_rates(n: int) -> list[tuple[str, int, float]]:
    mols = [(z, p) for z, p, _ in qm9_test_split()[:n]]
    small = mols[: max(n // 5, 10)]
    valid = [mc.sanitized_mol(z, p)[0] for z, p in mols[:50]]
    valid = [m for m in valid if m is not None]

    def edm_and_rdkit(ms):
        mc.edm_stability_many(ms)
        return [mc.rdkit_validity(z, p) for z, p in ms]

    rows = [
        ("EDM stability (batched)", len(mols), rate(mc.edm_stability_many, mols)),
        ("EDM stability (one by one)", len(small),
         rate(lambda ms: [mc.edm_stability(z, p) for z, p in ms], small)),
        ("RDKit validity (EDM bonds)", len(mols),
         rate(lambda ms: [mc.rdkit_validity(z, p) for z, p in ms], mols)),
        ("EDM stability + RDKit validity", len(mols), rate(edm_and_rdkit, mols)),
        ("rdDetermineBonds validity", len(small),
         rate(lambda ms: [mc.determine_bonds_validity(z, p) for z, p in ms], small)),
        ("PoseBusters (mol config)", len(valid), rate(m3d.posebusters_checks, valid, warmup=2)),
        ("GFN2-xTB relaxation", 3,
         rate(lambda ms: [relax_molecule(make_molecule(z, p, name='b')) for z, p in ms], mols[:3],
              warmup=1)),
    ]  # fmt: skip
    return rows


def crystal_rates(n: int) -> list[tuple[str, int, float]]:
    path = SHARED / "crystals" / "perov_5" / "test.csv"
    if not path.exists():
        print(f"skipping crystals: {path} absent")
        return []
    from pymatgen.core import Structure

    with open(path) as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = [Structure.from_str(r["cif"], fmt="cif") for r in list(csv.DictReader(f))[:n]]
    arrays = [(s.lattice.matrix, s.frac_coords, np.array(s.atomic_numbers)) for s in structures]

    def comp(items):
        cc._smact_validity.cache_clear()
        return [cc.compositional_validity(a[2]) for a in items]

    def both(items):
        cc._smact_validity.cache_clear()
        return [(cc.structural_validity(*a), cc.compositional_validity(a[2])) for a in items]

    small = structures[: max(n // 4, 10)]
    rows = [
        ("structural validity", len(arrays),
         rate(lambda items: [cc.structural_validity(*a) for a in items], arrays)),
        ("compositional validity (SMACT, cold cache)", len(arrays), rate(comp, arrays)),
        ("structural + compositional validity", len(arrays), rate(both, arrays)),
        ("uniqueness (StructureMatcher, bucketed)", len(small), rate(cc.unique_mask, small)),
        ("CrystalNN fingerprint", 40,
         rate(lambda ss: [cfp.structure_fingerprint(s) for s in ss], structures[:40])),
    ]  # fmt: skip
    return rows


def write_section(table: str, command: str) -> None:
    """Replace (or append) the `validation` section of BENCHMARKS.md."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = (
        "<!-- begin validation -->\n## validation\n\n"
        f"Command: `{command}`. Machine: 2-core CPU, torch 2.13 CPU (shared, noisy). "
        f"Date: {datetime.date.today().isoformat()}.\n\n{table}\n<!-- end validation -->"
    )
    pattern = re.compile(r"<!-- begin validation -->.*?<!-- end validation -->", re.S)
    text = pattern.sub(section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text + ("" if text.endswith("\n") else "\n"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sets (smoke run)")
    args = parser.parse_args()
    n_mol, n_cry = (500, 200) if args.quick else (5000, 2000)
    lines = ["| check | items | per second |", "| --- | --- | --- |"]
    for kind, rows in (("molecules", molecule_rates(n_mol)), ("structures", crystal_rates(n_cry))):
        lines += [f"| {name} | {count} | {r:,.1f} {kind}/s |" for name, count, r in rows]
    table = "\n".join(lines)
    print(table)
    command = "python benchmarks/bench_validation.py" + (" --quick" if args.quick else "")
    write_section(table, command)


if __name__ == "__main__":
    main()
