"""PoseBusters throughput before and after, and the verdicts each ensemble size changes.

The fixed set: the first N molecules of EDM's QM9 test split that are valid as the screen judges
them (RDKit's perceived bonds, sanitised, ``pipeline.molecule_checks.perceived_mol``), plus one
strained copy of each (Gaussian noise of 0.1, 0.2, 0.3 or 0.4 Angstrom on every coordinate in
turn, seed 0), so that the energy ratio has poses on both sides of its threshold.

Every run starts a fresh process (PoseBusters keeps reference ensembles per InChI inside a
process, which would favour whichever run came second) and times the N valid molecules, cold:

- before: ``PoseBusters(config="mol").bust``, one process, as the screen called it until now;
- conformers K: :func:`pipeline.molecule_3d_checks.posebusters_checks` with K conformers in the
  energy ratio's reference ensemble, one process (the run at ``--conformers`` fills a verdict cache);
- spread: the same at ``--conformers``, in chunks over 2 worker processes (as ``ldsm screen
  --workers 2`` spreads its chunks), workers started before the clock;
- cached: the same at ``--conformers`` again, every verdict read from the cache (a screen run again).

Molecules per second are wall time; CPU seconds per molecule add every process's CPU time, the
measure that a loaded machine does not distort. Agreement: verdicts (pass / fail, failing checks,
energy ratio applicable or not) equal to the "before" run, on the valid and on the strained set.
Writes the ``posebusters`` section of BENCHMARKS.md.

    nice python benchmarks/bench_posebusters.py [--n 200] [--conformers 10] [--sizes 20,10,5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

NOISE = (0.1, 0.2, 0.3, 0.4)  # Angstrom, per coordinate, one per strained copy in turn


def fixed_set(n: int) -> tuple[list[bytes], list[bytes]]:
    """(valid, strained): the first ``n`` valid molecules of QM9's test split and a strained copy
    of each, as RDKit binary blobs (they cross process boundaries with their conformers)."""
    from rdkit import Chem

    from pipeline import molecule_checks as mc
    from pipeline import qm9

    data = qm9.load_qm9()
    valid = []
    for index in data.splits["test"]:
        record = data.structures[int(index)]
        mol, _ = mc.perceived_mol(record.z.numpy(), record.pos.numpy())
        if mol is not None:
            valid.append(mol)
        if len(valid) == n:
            break
    rng = np.random.default_rng(0)
    strained = []
    for k, mol in enumerate(valid):
        copy = Chem.Mol(mol)
        conformer = copy.GetConformer()
        noise = rng.normal(scale=NOISE[k % len(NOISE)], size=(mol.GetNumAtoms(), 3))
        pos = conformer.GetPositions() + noise
        for atom, xyz in enumerate(pos):
            conformer.SetAtomPosition(atom, xyz.tolist())
        strained.append(copy)
    return [m.ToBinary() for m in valid], [m.ToBinary() for m in strained]


def _verdicts(blobs: list[bytes], conformers: int | None, cache: str | None) -> list[tuple]:
    """Verdicts as (ok, reason) of ``blobs``: PoseBusters' "mol" config as it comes with
    ``conformers=None``, else :func:`posebusters_checks`."""
    from posebusters import PoseBusters
    from rdkit import Chem, RDLogger

    from pipeline import molecule_3d_checks as m3d

    RDLogger.DisableLog("rdApp.*")
    mols = [Chem.Mol(b) for b in blobs]
    if conformers is None:
        buster = PoseBusters(config="mol")
        table = buster.bust(mols, None, None, full_report=True)
        verdicts = m3d.read_posebusters_table(table, buster.config)
    else:
        verdicts = m3d.posebusters_checks(mols, conformers, cache)
    return [(v.ok, v.reason) for v in verdicts]


def _timed(blobs: list[bytes], conformers: int | None, cache: str | None) -> tuple:
    """(verdicts, wall s, CPU s) of :func:`_verdicts` in this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    verdicts = _verdicts(blobs, conformers, cache)
    return verdicts, time.perf_counter() - wall, time.process_time() - cpu


def _warm(_: int) -> None:
    """Import the checks in a worker before the clock starts."""
    import posebusters  # noqa: F401

    from pipeline import molecule_3d_checks  # noqa: F401

    time.sleep(1.0)  # hold this worker so that the other one takes the other warm-up


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def one_process(valid, strained, conformers, cache=None) -> dict:
    """A fresh process times the valid set, then judges the strained set (not timed)."""
    with _pool(1) as pool:
        pool.submit(_warm, 0).result()
        verdicts, wall, cpu = pool.submit(_timed, valid, conformers, cache).result()
        strained_verdicts = pool.submit(_verdicts, strained, conformers, cache).result()
    return dict(verdicts=verdicts, strained=strained_verdicts, wall=wall, cpu=cpu)


def spread(valid, conformers, workers: int = 2, chunk: int = 25) -> dict:
    """The valid set in chunks over ``workers`` fresh, warmed-up processes."""
    chunks = [valid[k : k + chunk] for k in range(0, len(valid), chunk)]
    with _pool(workers) as pool:
        list(pool.map(_warm, range(workers)))
        wall = time.perf_counter()
        results = list(pool.map(_timed, chunks, [conformers] * len(chunks), [None] * len(chunks)))
        wall = time.perf_counter() - wall
    verdicts = [v for vs, _, _ in results for v in vs]
    return dict(verdicts=verdicts, wall=wall, cpu=sum(c for _, _, c in results))


def judgement(verdict: tuple) -> tuple:
    """What a verdict decides: pass or fail, the failing checks, and whether the energy ratio
    applied (the reference energy's printed value left out)."""
    ok, reason = verdict
    return ok, reason.split(";")[0], "not applicable: internal_energy" in reason


def agreement(run: list[tuple], before: list[tuple]) -> int:
    return sum(judgement(a) == judgement(b) for a, b in zip(run, before, strict=True))


def main() -> None:
    from pipeline.molecule_3d_checks import POSEBUSTERS_CONFORMERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="valid QM9 test molecules")
    parser.add_argument("--conformers", type=int, default=POSEBUSTERS_CONFORMERS)
    parser.add_argument(
        "--sizes", default="20,10,5", help="ensemble sizes to compare with the 50 of 'before'"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.conformers not in sizes:
        sizes.append(args.conformers)

    from _report import write_section

    os.environ["OMP_NUM_THREADS"] = "1"
    valid, strained = fixed_set(args.n)
    cache = str(Path(tempfile.mkdtemp(prefix="ldsm_pb_")) / "verdicts.sqlite")
    runs = {}

    def record(label: str, run: dict) -> None:
        runs[label] = run
        print(f"{label}: {run['wall']:.1f} s wall, {run['cpu']:.1f} s CPU", file=sys.stderr)

    record("before: PoseBusters `mol` config, 1 process", one_process(valid, strained, None))
    for size in sizes:
        use_cache = cache if size == args.conformers else None
        record(f"{size} conformers, 1 process", one_process(valid, strained, size, use_cache))
    record(f"{args.conformers} conformers, 2 processes", spread(valid, args.conformers))
    record(
        f"{args.conformers} conformers, cached verdicts",
        one_process(valid, strained, args.conformers, cache),
    )

    before = runs["before: PoseBusters `mol` config, 1 process"]
    n = len(valid)
    lines = [
        f"{n} valid QM9 test molecules (EDM split, perceived bonds) and {n} strained copies "
        f"(noise {', '.join(map(str, NOISE))} A in turn); every run a fresh process, cold "
        f"except the last. The machine's {os.cpu_count()} cores were shared with other jobs "
        f"(load average {os.getloadavg()[0]:.1f} at the end): wall rates are what a user saw, "
        "CPU seconds per molecule are the load-independent measure.",
        "",
        "| run | wall s | molecules / s | CPU s / molecule | speed-up (wall) | CPU / before "
        "| same verdicts (valid) | same verdicts (strained) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, run in runs.items():
        same_strained = (
            f"{agreement(run['strained'], before['strained'])} / {n}" if "strained" in run else "-"
        )
        lines.append(
            f"| {label} | {run['wall']:.1f} | {n / run['wall']:.1f} | {run['cpu'] / n:.3f} | "
            f"{before['wall'] / run['wall']:.1f}x | {run['cpu'] / before['cpu']:.2f} | "
            f"{agreement(run['verdicts'], before['verdicts'])} / {n} | {same_strained} |"
        )
    passing = sum(ok for ok, _ in before["verdicts"])
    passing_strained = sum(ok for ok, _ in before["strained"])
    lines += [
        "",
        f"Before: {passing} / {n} valid molecules and {passing_strained} / {n} strained copies pass.",
    ]
    chosen = runs[f"{args.conformers} conformers, 1 process"]
    for name in ("verdicts", "strained"):
        for k, (now, then) in enumerate(zip(chosen[name], before[name], strict=True)):
            if judgement(now) != judgement(then):
                lines.append(
                    f"- {args.conformers} conformers changed {name} molecule {k}: "
                    f"before `{then[1][:120]}`, now `{now[1][:120]}`."
                )
    body = "\n".join(lines)
    print(body)
    command = (
        f"nice python benchmarks/bench_posebusters.py --n {args.n} "
        f"--conformers {args.conformers} --sizes {args.sizes}"
    )
    write_section("posebusters", "PoseBusters throughput", command, body)


if __name__ == "__main__":
    main()
