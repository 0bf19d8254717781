"""GFN2-xTB relaxation of molecules (tblite): real xTB, analytic and known answers."""

from __future__ import annotations

import csv

import numpy as np
from ase.build import molecule

from pipeline.molecule_checks import edm_stability
from pipeline.relax import relax_molecule, relax_molecules, write_relaxed_molecules, xtb_properties
from pipeline.structures import make_molecule


def test_stretched_h2_relaxes_to_the_gfn2_bond_length_and_loses_energy():
    """H2 from 1.0 A ends at the minimum of GFN2-xTB's own energy curve (a scan of single points
    every 0.002 A: about 0.775 A, experiment 0.741 A), the energy falls, the gap opens and the
    dipole of a homonuclear molecule is zero."""
    h2 = make_molecule(np.array([1, 1]), np.array([[0.0, 0, 0], [1.0, 0, 0]]), name="h2")
    r = relax_molecule(h2, fmax=0.01)
    assert r.relaxed and r.reason == "ok" and r.steps > 0
    pos = r.structure.pos
    scan = np.arange(0.70, 0.85, 0.002)
    curve = [xtb_properties(np.array([1, 1]), np.array([[0, 0, 0], [d, 0, 0]]))[0] for d in scan]
    assert abs(np.linalg.norm(pos[1] - pos[0]) - scan[int(np.argmin(curve))]) < 0.003
    assert r.xtb_relaxed_energy < r.xtb_energy
    assert r.xtb_gap > 5 and abs(r.xtb_dipole) < 1e-6
    # Both atoms move the same distance, towards each other: the RMSD after superposition is
    # half the shortening of the bond.
    shortening = 1.0 - np.linalg.norm(pos[1] - pos[0])
    assert abs(r.rmsd - shortening / 2) < 1e-6


def test_water_dipole_and_a_distorted_ethanol_made_stable():
    water = molecule("H2O")
    _, gap, dipole = xtb_properties(water.numbers, water.positions)
    assert 1.5 < dipole < 2.6 and gap > 5  # experiment 1.85 D
    ethanol = molecule("CH3CH2OH")
    rng = np.random.default_rng(0)
    shaken = ethanol.positions + rng.normal(0, 0.15, ethanol.positions.shape)
    data = make_molecule(ethanol.numbers, shaken, name="ethanol")
    assert not edm_stability(ethanol.numbers, shaken).ok
    r = relax_molecule(data)
    assert r.relaxed and edm_stability(ethanol.numbers, r.structure.pos).ok


def test_failures_are_kept_with_their_reason_and_written(tmp_path):
    lone = make_molecule(np.array([6]), np.zeros((1, 3)), name="lone")
    h2 = make_molecule(np.array([1, 1]), np.array([[0.0, 0, 0], [0.9, 0, 0]]), name="h2")
    lines = []
    results = relax_molecules([lone, h2], log=lines.append)
    assert [r.name for r in results] == ["lone", "h2"]
    assert not results[0].relaxed and results[0].reason == "not relaxed: fewer than 2 atoms"
    assert results[0].structure is lone
    assert lines[-1] == "xTB relaxation: 2 of 2 molecules"
    summary = write_relaxed_molecules(results, tmp_path)
    assert summary["n"] == 2 and summary["relaxed"] == 1 and summary["converged"] == 1
    assert (tmp_path / "samples.sdf").read_text().count("$$$$") == 2
    with open(tmp_path / "relax.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert rows["lone"]["relaxed"] == "False" and float(rows["h2"]["xtb_gap"]) > 5
