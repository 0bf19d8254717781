"""Ingest speed and memory: full QM9 from the installed qm9pack wheel, cold and from the cache.

Each measurement runs in a fresh Python process (so peak memory is its own) with a temporary
``$LDSM_HOME``: "cold" parses the sources, checks every structure, draws the split and writes the
cache entry (``pipeline.datasets.load_dataset``, the work of ``ldsm ingest`` without the Prefect
server start-up); "cached" is the second call, which hashes the sources and loads the entry.
Perov-5 (val + test CSVs, 7,572 CIFs from ../shared) is measured the same way when present.
Times exclude interpreter and library imports; peak RSS is the process's, baseline the RSS after
imports. Writes the `ingest` section of BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CHILD = """
import json, resource, sys, time
from pipeline import datasets as D
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
ds = D.load_dataset(sys.argv[1])
first = ds.structures[int(ds.splits[next(iter(ds.splits))][0])]  # touch one record
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_mb": peak, "base_mb": base,
                  "structures": len(ds.structures),
                  "splits": {k: len(v) for k, v in ds.splits.items()}}))
"""


def measure(name: str, home: str) -> dict:
    env = {**os.environ, "LDSM_HOME": home, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, name], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from _report import write_section

    from pipeline.datasets import shared_data_dir

    names = ["qm9"]
    if (shared_data_dir() / "crystals" / "perov_5").exists():
        names.append("perov-5")
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory() as home:
            cold = measure(name, home)
            cached = measure(name, home)
            entry = next(Path(home, "ingest").glob(f"{name}-*.pt"))
            size_mb = entry.stat().st_size / 2**20
        for phase, r in (("cold (parse + check + split + cache write)", cold), ("cached", cached)):
            rows.append(
                f"| {name} | {phase} | {r['structures']:,} | "
                + ", ".join(f"{k} {v:,}" for k, v in r["splits"].items())
                + f" | {r['seconds']:.2f} | {r['peak_mb']:.0f} ({r['base_mb']:.0f}) | {size_mb:.0f} |"
            )
        rows.append(
            f"| {name} | cold / cached time ratio | | | {cold['seconds'] / cached['seconds']:.1f}x | | |"
        )
    table = "\n".join(
        [
            "| data set | run | structures | splits | seconds | peak RSS MB (after imports) | cache MB |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    print(table)
    write_section(
        "ingest",
        "ingest",
        "python benchmarks/bench_ingest.py",
        table
        + "\n\nAims (issue 3): full QM9 processed in under a minute, re-loaded from cache in under "
        "5 s. Cached time includes hashing the 225 MB of source CSVs (the cache key).",
    )


if __name__ == "__main__":
    main()
