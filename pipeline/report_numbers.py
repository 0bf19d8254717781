"""The numbers a run's report prints and plots, each from one function a test can recompute.

- the training loss of ``metrics.csv`` and its exponential moving average (:func:`ema`);
- atoms per structure, generated against reference (:func:`atom_count_table`);
- molecules: lengths of the bonds that EDM's distance tables see (the same rule as the stability
  check, :func:`pipeline.molecule_checks.edm_bond_orders`), by element pair;
- crystals: mass density in g/cm^3 from pymatgen of the valid crystals (CDVAE: structurally and
  compositionally valid, the set ``metrics.json``'s ``wdist_density`` uses).

A structure that cannot be measured (non-finite coordinates, a degenerate cell) is counted as
such (:func:`unmeasurable`), never a crash: generated samples are exactly where such structures
appear. Structures are records (:class:`pipeline.structures.Record`, or a generated ``Data``)
with the fields of :mod:`pipeline.keys`.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline import keys as K
from pipeline import molecule_checks as mc
from pipeline.structures import Record


def ema(values: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Exponential moving average ``m_k = (1 - alpha) m_{k-1} + alpha v_k``, ``m_0 = v_0``.

    ``values``: (n,) finite floats -> (n,). A bias-free start (``m_0 = v_0``) keeps the first
    points on the curve instead of pulling them towards zero.
    """
    values = np.asarray(values, dtype=np.float64)
    out = np.empty_like(values)
    for k, v in enumerate(values):
        # m + alpha (v - m): the same average, exact for a constant sequence
        out[k] = v if k == 0 else out[k - 1] + alpha * (v - out[k - 1])
    return out


def read_metrics_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a training ``metrics.csv`` as float arrays (empty cells become NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = rows[0].keys() if rows else []
    return {
        c: np.array([float(r[c]) if r.get(c) not in (None, "") else math.nan for r in rows])
        for c in columns
    }


def atom_counts(structures: list[Record]) -> np.ndarray:
    """(n,) int64 atoms per structure."""
    return np.array([len(d[K.Z]) for d in structures], dtype=np.int64)


def atom_count_table(
    generated: list[Record], reference: list[Record]
) -> dict[int, tuple[int, int]]:
    """``{atoms: (generated structures, reference structures)}`` over every size either set has."""
    gen, ref = Counter(atom_counts(generated).tolist()), Counter(atom_counts(reference).tolist())
    return {n: (gen.get(n, 0), ref.get(n, 0)) for n in sorted(set(gen) | set(ref))}


def _hill(symbol: str) -> tuple[int, str]:
    """Hill order: C, then H, then the rest alphabetically (so pairs read "C-H", "H-O")."""
    return ({"C": 0, "H": 1}.get(symbol, 2), symbol)


def bond_lengths(structures: list[Record]) -> dict[str, np.ndarray]:
    """EDM-bonded pair distances in Angstrom by element pair (``"C-H"``, symbols in Hill order).

    A pair is bonded when EDM's tables give it a bond order > 0 at its distance. Molecules with
    non-finite coordinates contribute nothing (they are counted by :func:`unmeasurable`).
    """
    out: dict[str, list[float]] = {}
    for d in structures:
        z, pos = np.asarray(d[K.Z]), np.asarray(d[K.POS], dtype=np.float64)
        if not np.isfinite(pos).all():
            continue
        orders = mc.edm_bond_orders(z, pos)
        ii, jj = np.nonzero(np.triu(orders, 1))
        lengths = np.linalg.norm(pos[ii] - pos[jj], axis=1)
        for i, j, length in zip(ii.tolist(), jj.tolist(), lengths.tolist(), strict=True):
            a, b = sorted((mc.symbol(int(z[i])), mc.symbol(int(z[j]))), key=_hill)
            out.setdefault(f"{a}-{b}", []).append(length)
    return {k: np.asarray(v) for k, v in sorted(out.items())}


def unmeasurable(structures: list[Record]) -> int:
    """How many structures have non-finite coordinates (no bond length, no density)."""
    return sum(not bool(np.isfinite(np.asarray(d[K.POS])).all()) for d in structures)


def pooled(lengths: dict[str, np.ndarray], pair: str) -> np.ndarray:
    """The lengths of one element pair, or of all pairs together for ``pair == "all"``."""
    if pair == "all":
        return np.concatenate(list(lengths.values())) if lengths else np.zeros(0)
    return lengths.get(pair, np.zeros(0))


def bond_length_summary(
    generated: dict[str, np.ndarray], reference: dict[str, np.ndarray]
) -> dict[str, dict[str, float | int | None]]:
    """Per element pair (and ``"all"``): count and mean length of generated and reference bonds."""
    out = {}
    for pair in ["all", *sorted(set(generated) | set(reference))]:
        row = {}
        for label, lengths in (("generated", generated), ("reference", reference)):
            values = pooled(lengths, pair)
            row[f"{label}_n"] = int(values.size)
            row[f"{label}_mean"] = float(values.mean()) if values.size else None
        out[pair] = row
    return out


def valid_crystals(structures: list[Record]) -> list[Record]:
    """The crystals that pass CDVAE's structural and compositional checks (the screen's ``valid``,
    :func:`pipeline.metrics.check_crystals`), in order."""
    from pipeline.crystal_checks import compositional_validity, structural_validity

    out = []
    for d in structures:
        lattice = np.asarray(d[K.LATTICE], dtype=np.float64).reshape(3, 3)
        frac, z = np.asarray(d[K.FRAC], dtype=np.float64), np.asarray(d[K.Z])
        if structural_validity(lattice, frac, z).ok and compositional_validity(z).ok:
            out.append(d)
    return out


def densities(structures: list[Record]) -> np.ndarray:
    """(m,) mass densities in g/cm^3 (pymatgen) of the crystals that make a valid cell."""
    from pipeline.crystal_checks import density, to_structure

    out = []
    for d in structures:
        lattice = np.asarray(d[K.LATTICE]).reshape(3, 3)
        s = to_structure(lattice, np.asarray(d[K.FRAC]), np.asarray(d[K.Z]))
        if s is not None and s.volume > 0 and math.isfinite(s.density):
            out.append(density(s))
    return np.asarray(out, dtype=np.float64)


def density_summary(generated: np.ndarray, reference: np.ndarray) -> dict[str, float | int | None]:
    """Counts, means and standard deviations of two density samples, and their 1-D Wasserstein
    distance (the CDVAE metric, :func:`pipeline.crystal_checks.wdist`)."""
    from pipeline.crystal_checks import wdist

    out: dict[str, float | int | None] = {}
    for label, values in (("generated", generated), ("reference", reference)):
        out[f"{label}_n"] = int(values.size)
        out[f"{label}_mean"] = float(values.mean()) if values.size else None
        out[f"{label}_std"] = float(values.std()) if values.size else None
    out["wdist"] = wdist(generated.tolist(), reference.tolist())
    return out


def density_axis(generated: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """The plotted density range: the reference's range joined with the 1st to 99th percentile of
    the generated values, so that a few absurd samples cannot stretch the axis."""
    parts = [reference] if reference.size else []
    if generated.size:
        parts.append(np.percentile(generated, [1, 99]))
    both = np.concatenate(parts) if parts else np.array([0.0, 1.0])
    low, high = float(both.min()), float(both.max())
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def drawable_molecules(structures: list[Record], limit: int = 24) -> tuple[list, list[str]]:
    """Up to ``limit`` sanitised RDKit molecules (heavy atoms, 2-D coordinates) and their names,
    in input order; molecules RDKit cannot sanitise with EDM bonds are left out."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mols, names = [], []
    for d in structures:
        if len(mols) == limit:
            break
        mol, _ = mc.sanitized_mol(np.asarray(d[K.Z]), np.asarray(d[K.POS]))
        if mol is None:
            continue
        mol = Chem.RemoveHs(mol)
        AllChem.Compute2DCoords(mol)
        mols.append(mol)
        names.append(str(getattr(d, K.NAME, "")))
    return mols, names


def read_screen_rows(path: str | Path) -> list[dict]:
    """The rows of a screen's ``screen.csv`` in its (rank) order: ``rank``, ``score`` and the
    columns of :data:`pipeline.ranking.PROPERTIES` as floats (None where empty), ``passed`` as a
    bool, the rest as text."""
    from pipeline.ranking import PROPERTIES

    numeric = {"rank", "score", *PROPERTIES}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, text in row.items():
            if key in numeric:
                row[key] = float(text) if text else None
        row["passed"] = row.get("passed") == "True"
    return rows


__all__ = [
    "atom_count_table",
    "atom_counts",
    "bond_length_summary",
    "bond_lengths",
    "densities",
    "density_axis",
    "density_summary",
    "drawable_molecules",
    "ema",
    "pooled",
    "read_metrics_csv",
    "read_screen_rows",
    "unmeasurable",
    "valid_crystals",
]
