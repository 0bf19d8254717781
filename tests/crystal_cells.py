"""Real crystal cells shared by the crystal tests (rock salt, fcc copper, wurtzite)."""

from __future__ import annotations

from ase.build import bulk

from pipeline.structure_set import to_data
from pipeline.structures import make_crystal


def ase_crystal(atoms, name: str):
    """``atoms`` as a crystal ``Data`` (what a network's batch is made of)."""
    crystal = make_crystal(atoms.numbers, atoms.get_scaled_positions(), atoms.cell.array, name=name)
    return to_data(crystal)


def real_cells() -> list:
    """Real cells as ``Data``: cubic perovskite-like, oblique primitive fcc, hexagonal wurtzite."""
    return [
        ase_crystal(bulk("NaCl", "rocksalt", a=5.64), "nacl"),
        ase_crystal(bulk("Cu", "fcc", a=3.61), "cu"),
        ase_crystal(bulk("ZnO", "wurtzite", a=3.25, c=5.2), "zno"),
    ]
