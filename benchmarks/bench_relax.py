"""Relaxation throughput: GFN2-xTB on generated molecules, CHGNet on generated crystals.

Draws ``--molecules`` samples of the shipped QM9 model and ``--crystals`` samples of the shipped
Perov-5 model (seed 0, 100 NFE, the defaults of ``ldsm generate``), then relaxes them in this
process exactly as ``ldsm design --relax xtb`` / ``--relax chgnet`` and the screen's ``--xtb`` /
``--chgnet`` do (:mod:`pipeline.relax`: ASE BFGS to 0.05 eV/A for molecules, CHGNet's FIRE to
0.1 eV/A for crystals). Reports wall and CPU seconds per structure (CPU time is the measure a
loaded machine does not distort), BFGS / FIRE steps, and what the relaxation changed: EDM atom
and molecule stability of the molecules before and after, the CHGNet energy per atom of the
crystals before and after. One thread (``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1`` for
tblite), so the numbers are per core. Writes the ``relaxation`` section of BENCHMARKS.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_relax.py [--molecules 20] [--crystals 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MOLECULES = ROOT / "models" / "weights" / "qm9_egnn.pt"
CRYSTALS = ROOT / "models" / "weights" / "perov-5_cspnet.pt"


def _samples(checkpoint: Path, n: int) -> list:
    from pipeline.generate import GenerateConfig, generate
    from pipeline.recipes import load_trained

    return generate(load_trained(checkpoint), GenerateConfig(n=n, seed=0)).structures


def _timed(fn, *args):
    """(result, wall s, CPU s) of ``fn(*args)`` in this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _stability(molecules) -> tuple[float, float]:
    from pipeline import keys as K
    from pipeline.molecule_checks import edm_stability_many, stability_fractions

    verdicts = edm_stability_many([(m[K.Z].numpy(), m[K.POS].numpy()) for m in molecules])
    atom, molecule = stability_fractions(verdicts)
    return 100 * atom, 100 * molecule


def molecules_row(n: int) -> str:
    from pipeline.relax import relax_molecules

    samples = _samples(MOLECULES, n)
    results, wall, cpu = _timed(relax_molecules, samples)
    done = [r for r in results if r.relaxed]
    atom0, mol0 = _stability(samples)
    atom1, mol1 = _stability([r.structure for r in results])
    steps = statistics.median(r.steps for r in done) if done else 0
    return (
        f"| molecules, GFN2-xTB (tblite) + BFGS, fmax 0.05 | {n} | {len(done)} | {wall:.1f} "
        f"| {cpu / n:.2f} | {n / cpu:.2f} | {steps:g} "
        f"| atom / molecule stability {atom0:.1f} / {mol0:.1f} -> {atom1:.1f} / {mol1:.1f} % |"
    )


def crystals_row(n: int) -> str:
    from pipeline.relax import relax_crystals

    samples = _samples(CRYSTALS, n)
    results, wall, cpu = _timed(relax_crystals, samples)
    done = [r for r in results if r.relaxed]
    before = statistics.mean(r.energy_per_atom for r in done) if done else float("nan")
    after = statistics.mean(r.relaxed_energy_per_atom for r in done) if done else float("nan")
    steps = statistics.median(r.steps for r in done) if done else 0
    return (
        f"| crystals, CHGNet + FIRE, fmax 0.1 | {n} | {len(done)} | {wall:.1f} | {cpu / n:.2f} "
        f"| {n / cpu:.2f} | {steps:g} "
        f"| CHGNet energy {before:.3f} -> {after:.3f} eV/atom (mean of the relaxed) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--molecules", type=int, default=20, help="QM9 samples to relax")
    parser.add_argument("--crystals", type=int, default=20, help="Perov-5 samples to relax")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    from _report import write_section

    torch.set_num_threads(1)
    rows = [molecules_row(args.molecules), crystals_row(args.crystals)]
    load = os.getloadavg()[0]
    body = "\n".join(
        [
            "| structures | n | relaxed | wall s | CPU s / structure | structures / CPU s "
            "| median steps | what changed |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
            *rows,
            "",
            f"Samples of the shipped models (`{MOLECULES.relative_to(ROOT)}`, "
            f"`{CRYSTALS.relative_to(ROOT)}`), seed 0, 100 NFE; relaxed one after another on "
            f"one thread. Load average at the end: {load:.1f} on {os.cpu_count()} cores, so the "
            "wall column is what a user saw then and CPU seconds are the load-independent "
            "measure. Crystals that fail CDVAE's structural check are not relaxed "
            "(`relaxed` counts those that were).",
        ]
    )
    command = (
        "OMP_NUM_THREADS=1 python benchmarks/bench_relax.py "
        f"--molecules {args.molecules} --crystals {args.crystals}"
    )
    write_section(
        "relaxation", "Relaxation throughput: xTB molecules, CHGNet crystals", command, body
    )
    print(body)


if __name__ == "__main__":
    main()
