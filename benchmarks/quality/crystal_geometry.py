"""Local geometry of generated crystals against a data split: the diagnosis behind the symmetric
lattice (BENCHMARKS quality-carbon-24, 2026-12-01).

For the first ``--n`` structures of each set, the 10th / 50th / 90th percentiles of the volume
per atom (A^3), the mean nearest-neighbour distance per cell (A, pymatgen neighbours within 3 A),
the cell angles (degrees) and the coordination within ``--bond`` A per atom averaged per cell.

    python -m benchmarks.quality.crystal_geometry RUN/samples.extxyz \
        ../shared/datasets/crystals/carbon_24/val.csv --n 300
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from ase.io import read
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor


def geometry(structures: list, bond: float) -> dict[str, np.ndarray]:
    """Per-cell volume per atom, mean nearest-neighbour distance and coordination, and all
    cell angles, of pymatgen ``structures``."""
    volume, nearest, coordination, angles = [], [], [], []
    for s in structures:
        neighbours = s.get_all_neighbors(3.0)
        volume.append(s.volume / len(s))
        nearest.append(
            np.mean([min((n.nn_distance for n in ns), default=3.0) for ns in neighbours])
        )
        coordination.append(np.mean([sum(n.nn_distance < bond for n in ns) for ns in neighbours]))
        angles += list(s.lattice.angles)
    return {
        "volume per atom": np.array(volume),
        "mean nearest neighbour": np.array(nearest),
        f"coordination < {bond:g} A": np.array(coordination),
        "cell angles": np.array(angles),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samples", help="generated crystals (extxyz, as ldsm generate writes)")
    parser.add_argument("data", help="a CDVAE CSV split with a cif column")
    parser.add_argument("--n", type=int, default=300, help="structures of each set")
    parser.add_argument("--bond", type=float, default=1.75, help="coordination cut-off, A")
    args = parser.parse_args(argv)
    generated = [AseAtomsAdaptor.get_structure(a) for a in read(args.samples, index=":")]
    data = [Structure.from_str(c, fmt="cif") for c in pd.read_csv(args.data).cif[: args.n]]
    sets = {
        "data": geometry(data, args.bond),
        "generated": geometry(generated[: args.n], args.bond),
    }
    print("| quantity | set | p10 | p50 | p90 |\n|---|---|---:|---:|---:|")
    for key in sets["data"]:
        for name, values in sets.items():
            p10, p50, p90 = np.percentile(values[key], [10, 50, 90])
            print(f"| {key} | {name} | {p10:.2f} | {p50:.2f} | {p90:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
