"""Reference fingerprints of `ldsm screen --reference`: cold and warm, as a user runs it.

Runs the README's example, ``ldsm screen CAND --reference perov_5/test.csv --cov-cutoffs
perov_5``, as a subprocess (``python -m flows.cli``, its own temporary Prefect API each time,
as a user sees it) on the first N crystals of Perov-5's validation split:

- cold: an empty ``$LDSM_HOME``, so the CrystalNN fingerprints of the reference's cells are
  computed (on every core, or on ``--reference-processes`` of them) and cached;
- warm: the same command again into a new folder, the fingerprints read from the cache.

Prints and records the wall time of each run, the time until the first line about the
reference and until the first fingerprint progress line, and the number of progress lines.
Then times the fingerprints alone (``pipeline.reference.fingerprints_in_parallel``) of the first
``--cells`` reference cells on 1 process and on every core, back to back, for the speed-up.
Writes the ``reference-fingerprints`` section of BENCHMARKS.md.

    .venv/bin/python benchmarks/bench_reference.py [--n 20] [--cells 256] [--serial]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED = Path(os.environ.get("LDSM_SHARED_DATA", ROOT.parent / "shared" / "datasets"))
REFERENCE = SHARED / "crystals" / "perov_5" / "test.csv"
CANDIDATES = SHARED / "crystals" / "perov_5" / "val.csv"


def screen(cand: Path, out: Path, home: Path, processes: int) -> dict:
    """One ``ldsm screen`` run: wall seconds, seconds to the first progress line, its lines."""
    env = {**os.environ, "LDSM_HOME": str(home), "PYTHONPATH": str(ROOT)}
    # A loaded machine can take longer than Prefect's default 20 s to start the temporary API.
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    command = [
        sys.executable, "-m", "flows.cli", "screen", str(cand), "--out", str(out),
        "--reference", str(REFERENCE), "--cov-cutoffs", "perov_5", "--no-posebusters",
        "--reference-processes", str(processes),
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    said, first, lines, output = None, None, [], []
    for line in proc.stdout:
        output.append(line)
        if "reference" in line and said is None:
            said = time.perf_counter() - start
        if "reference fingerprints" in line:
            first = first if first is not None else time.perf_counter() - start
            lines.append(line.strip())
    if proc.wait() != 0:
        print("".join(output[-40:]), file=sys.stderr)
        raise RuntimeError(f"ldsm screen failed ({proc.returncode}): {' '.join(command)}")
    return {"seconds": time.perf_counter() - start, "said": said, "first": first, "lines": lines}


def speedup(cells: int, cores: int) -> list[tuple[int, float]]:
    """Seconds for the fingerprints of the first ``cells`` reference cells, by process count."""
    from flows.screen import reference_structures
    from pipeline.reference import fingerprints_in_parallel

    structures = reference_structures(str(REFERENCE))[0][:cells]
    out = []
    for processes in (1, cores):
        start = time.perf_counter()
        fingerprints_in_parallel(structures, processes)
        out.append((processes, time.perf_counter() - start))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="candidate crystals (Perov-5 val)")
    parser.add_argument("--serial", action="store_true", help="also a cold run on 1 process")
    parser.add_argument("--cells", type=int, default=256, help="cells for the speed-up timing")
    args = parser.parse_args()
    from _report import write_section

    tmp = Path(tempfile.mkdtemp(prefix="ldsm_reference_"))
    csv.field_size_limit(2**31 - 1)
    with open(CANDIDATES, newline="") as f:
        reader = csv.DictReader(f)
        rows = [next(reader) for _ in range(args.n)]
    cand = tmp / "candidates.csv"
    with open(cand, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(REFERENCE, newline="") as f:
        n_ref = sum(1 for _ in csv.DictReader(f))
    cores = len(os.sched_getaffinity(0))
    runs = [("cold (empty $LDSM_HOME)", tmp / "home", 0), ("warm (cached)", tmp / "home", 0)]
    if args.serial:
        runs.insert(1, ("cold, 1 process", tmp / "home1", 1))
    results = []
    for k, (label, home, processes) in enumerate(runs):
        result = screen(cand, tmp / f"out{k}", home, processes)
        results.append((label, processes or cores, result))
        print(label, f"{result['seconds']:.0f} s", *result["lines"], sep="\n  ")
    load = os.getloadavg()[0]
    timed = speedup(args.cells, cores)
    print(timed)
    lines = [
        f"{args.n} Perov-5 candidates against the {n_ref} cells of Perov-5's test split "
        "(PoseBusters off: crystals only). Wall time of the whole command: Prefect start-up, "
        "reading the reference and matching the candidates against it included.",
        "",
        "| run | processes | seconds | first line on the reference after (s) | "
        "first fingerprint line after (s) | fingerprint lines |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def at(value) -> str:
        return "n/a" if value is None else f"{value:.0f}"

    for label, processes, r in results:
        lines.append(
            f"| {label} | {processes} | {r['seconds']:.0f} | {at(r['said'])} | "
            f"{at(r['first'])} | {len(r['lines'])} |"
        )
    (_, one), (_, many) = timed
    lines += [
        "",
        f"Fingerprints alone, first {args.cells} reference cells, back to back: "
        f"{one:.0f} s on 1 process, {many:.0f} s on {cores} ({one / many:.2f}x; spawned "
        "workers import pymatgen first).",
        "",
        f"{cores} cores shared with other jobs (load average {load:.1f} at the end), so the "
        "seconds are the machine's, not the code's. Before this change the cold run printed "
        "nothing for 160 s and ran on one process; the warm run reads the fingerprints from "
        "`$LDSM_HOME/screen/reference_fp_<key>.npz`, keyed by the cells' content and the "
        "fingerprint code, and spends its time on Prefect start-up and reading the reference.",
    ]
    body = "\n".join(lines)
    print(body)
    command = f"python benchmarks/bench_reference.py --n {args.n}" + (
        " --serial" if args.serial else ""
    )
    write_section(
        "reference-fingerprints", "screen --reference: reference fingerprints", command, body
    )


if __name__ == "__main__":
    main()
