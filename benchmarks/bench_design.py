"""The embedded default end to end: wall and CPU time of ``ldsm design`` with no options.

Runs the command as a user does (a fresh process, Prefect's ephemeral server included) into a
temporary folder, and writes its time and the screening metrics of its molecules into BENCHMARKS.md
(section ``design``). The load average before the run is reported: other jobs on the 2 cores slow
the wall-clock time.

    python benchmarks/bench_design.py
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_section  # noqa: E402

KEYS = ("atom_stability", "molecule_stability", "validity", "edm_validity", "uniqueness", "novelty")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ldsm", default=str(Path(sys.executable).with_name("ldsm")))
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "design"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run([args.ldsm, "design", "--out", str(out)], check=True, capture_output=True)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        metrics = json.loads((out / "metrics.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    mol = metrics["molecules"]
    gen = metrics["generation"]
    body = (
        "`ldsm design` with no options: the shipped checkpoint `models/weights/qm9_egnn.pt`, "
        f"{mol['n']} molecules at {gen['sampler']['nfe']} NFE ({gen['sampler']['kind']}), "
        "screening with PoseBusters, report with plots. One fresh process, Prefect's ephemeral "
        f"server included; load average before the run {load:.1f} on 2 cores.\n\n"
        "| wall s | CPU s | " + " | ".join(KEYS) + " |\n"
        "|---:|---:|" + "---:|" * len(KEYS) + "\n"
        f"| {wall:.0f} | {cpu:.0f} | " + " | ".join(f"{100 * mol[k]:.1f}" for k in KEYS) + " |"
    )
    print(body)
    write_section(
        "design",
        "design: the embedded default end to end",
        "python " + " ".join(["benchmarks/bench_design.py", *(argv or sys.argv[1:])]),
        body,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
