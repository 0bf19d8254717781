"""The embedded defaults end to end: wall and CPU time of ``ldsm design`` with no options.

Runs the command as a user does (a fresh process, Prefect's ephemeral server included) into a
temporary folder, and writes its time and the screening metrics of its structures into
BENCHMARKS.md (section ``design``; ``--dataset perov-5``: ``ldsm design --dataset perov-5``, the
shipped crystal model, section ``design-perov-5``). The load average before the run is reported:
other jobs on the 2 cores slow the wall-clock time.

    python benchmarks/bench_design.py
    python benchmarks/bench_design.py --dataset perov-5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402
from pipeline.metrics import CRYSTAL_KEYS as CRYSTAL_METRICS  # noqa: E402

KEYS = ("atom_stability", "molecule_stability", "validity", "edm_validity", "uniqueness", "novelty")
CRYSTAL_KEYS = CRYSTAL_METRICS[1:7]  # validity, uniqueness, novelty and coverage (not "n")


def sdf_metrics(path: Path) -> dict:
    """EDM's atom / molecule stability and validity of the molecules in ``path``, read back with
    RDKit (elements and coordinates only, bonds ignored) and judged by EDM's distance tables
    (:mod:`pipeline.molecule_checks`), independently of the design's screening flow."""
    from rdkit import Chem

    from pipeline import molecule_checks as mc

    mols = list(Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False))
    if any(m is None for m in mols):
        raise SystemExit(f"{path}: a record RDKit cannot read")
    pairs = [
        (np.array([a.GetAtomicNum() for a in m.GetAtoms()]), m.GetConformer().GetPositions())
        for m in mols
    ]
    verdicts = mc.edm_stability_many(pairs)
    atoms, molecules = mc.stability_fractions(verdicts)
    valid = sum(mc.rdkit_validity(z, pos).ok for z, pos in pairs) / len(pairs)
    return {"n": len(pairs), "atom_stability": atoms, "molecule_stability": molecules,
            "edm_validity": valid}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ldsm", default=str(Path(sys.executable).with_name("ldsm")))
    parser.add_argument("--dataset", help="a crystal data set whose shipped model to design with")
    args = parser.parse_args(argv)
    options = ["--dataset", args.dataset] if args.dataset else []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "design"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(
            [args.ldsm, "design", *options, "--out", str(out)], check=True, capture_output=True
        )
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        metrics = json.loads((out / "metrics.json").read_text())
        sdf = None if args.dataset else sdf_metrics(out / "samples" / "samples.sdf")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    part, keys = ("crystals", CRYSTAL_KEYS) if args.dataset else ("molecules", KEYS)
    found = metrics[part]
    sampler = metrics["generation"]["sampler"]
    what = (
        f"`ldsm design --dataset {args.dataset}`: its shipped crystal model"
        if args.dataset
        else "`ldsm design` with no options: the shipped checkpoint `models/weights/qm9_egnn.pt`"
    )
    body = (
        f"{what}, {found['n']} {part} at {sampler['nfe']} NFE ({sampler['kind']}, grid power "
        f"{sampler.get('grid_power', 1.0):g}, noise scale {sampler.get('noise_scale', 1.0):g}), "
        f"sampled in {metrics['generation']['seconds']:.0f} s, then screening, report "
        "with plots. One fresh process, "
        f"Prefect's ephemeral server included; load average before the run {load:.1f} on 2 "
        "cores.\n\n"
        "| wall s | CPU s | " + " | ".join(keys) + " |\n"
        "|---:|---:|" + "---:|" * len(keys) + "\n"
        f"| {wall:.0f} | {cpu:.0f} | "
        + " | ".join("n/a" if found.get(k) is None else f"{100 * found[k]:.1f}" for k in keys)
        + " |"
    )
    if sdf is not None:
        body += (
            f"\n\nRead back from `samples/samples.sdf` with RDKit and judged by EDM's distance "
            f"tables apart from the screen: {sdf['n']} molecules, atom stability "
            f"{100 * sdf['atom_stability']:.1f} %, molecule stability "
            f"{100 * sdf['molecule_stability']:.1f} %, EDM validity {100 * sdf['edm_validity']:.1f} %."
        )
    print(body)
    write_section(
        f"design-{args.dataset}" if args.dataset else "design",
        f"design: the {args.dataset or 'embedded'} default end to end",
        "python " + " ".join(["benchmarks/bench_design.py", *(argv or sys.argv[1:])]),
        body,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
