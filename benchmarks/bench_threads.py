"""Training seconds per step against torch threads, with and without a competing busy process.

Each measurement is a user's command, ``ldsm train --out TMP --steps S --threads T`` on the
embedded QM9 default recipe, run in a fresh process; the seconds per step are the median
difference of the ``seconds`` column of its ``metrics.csv`` after the first ``--skip`` logged
rows (start-up and the first steps are not counted). The thread counts alternate within each
repeat so that they see the same machine. "Loaded" adds one busy-looping process per core
minus one (what a second training run or a test suite does to a 2-core machine), which is where
torch's default (one thread per core) collapses: its threads wait for each other at every
operation while a core is taken. Writes the ``threads`` section of BENCHMARKS.md.

    .venv/bin/python benchmarks/bench_threads.py [--steps 60] [--repeats 2]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

LDSM = Path(sys.executable).parent / "ldsm"


def seconds_per_step(threads: int, steps: int, skip: int) -> float:
    """Median wall seconds per logged training step of one ``ldsm train`` run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        subprocess.run(
            [str(LDSM), "train", "--out", str(out), "--steps", str(steps)]
            + ["--threads", str(threads), "--checkpoint-every", str(steps)],
            check=True,
            capture_output=True,
        )
        with open(out / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r["seconds"]]
        steps_ = [int(r["step"]) for r in rows][skip:]
        seconds = [float(r["seconds"]) for r in rows][skip:]
        per_step = [
            (seconds[i + 1] - seconds[i]) / (steps_[i + 1] - steps_[i])
            for i in range(len(seconds) - 1)
        ]
        return statistics.median(per_step)


def busy_processes(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--skip", type=int, default=1, help="logged rows not counted")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    counts = sorted({1, cores})
    rows = []
    for label, extra in (("as is", 0), (f"+{cores - 1} busy process(es)", cores - 1)):
        load = os.getloadavg()[0]
        busy = busy_processes(extra)
        try:
            times = {t: [] for t in counts}
            for _ in range(args.repeats):
                for t in counts:
                    times[t].append(seconds_per_step(t, args.steps, args.skip))
        finally:
            for p in busy:
                p.kill()
                p.wait()
        med = {t: statistics.median(v) for t, v in times.items()}
        cells = " | ".join(f"{med[t]:.3f}" for t in counts)
        ratio = med[counts[-1]] / med[1]
        rows.append(f"| {label} (load {load:.1f} before) | {cells} | {ratio:.2f} |")
        print(rows[-1], flush=True)
    header = " | ".join(f"{t} thread(s), s/step" for t in counts)
    body = (
        f"`ldsm train` on the embedded QM9 default, {args.steps} steps, median s/step after the "
        f"first {args.skip} logged row(s), {args.repeats} alternating repeats. A ratio above 1: "
        f"{counts[-1]} threads is slower than 1.\n\n"
        f"| machine | {header} | ratio {counts[-1]} / 1 |\n|---|"
        + "---|" * (len(counts) + 1)
        + "\n"
        + "\n".join(rows)
    )
    write_section(
        "threads",
        "Training threads under load",
        "python benchmarks/bench_threads.py " + " ".join(sys.argv[1:]),
        body,
    )


if __name__ == "__main__":
    main()
