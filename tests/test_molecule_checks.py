"""Molecule validators against analytic cases, broken molecules and the QM9 ground truth."""

from __future__ import annotations

import csv
import json
import re
from functools import cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from ase.collections import g2

from pipeline import molecule_3d_checks as m3d
from pipeline import molecule_checks as mc
from pipeline.verdict import Verdict


@cache
def qm9() -> list[tuple[np.ndarray, np.ndarray, str]]:
    """All 130,831 QM9 molecules as (z (N,), pos (N, 3) Angstrom, SMILES) from the qm9pack CSVs."""
    from rdkit import Chem

    pt = Chem.GetPeriodicTable()
    csv.field_size_limit(1 << 30)
    out = []
    # By path: importing qm9pack itself needs pkg_resources.
    folder = Path(find_spec("qm9pack").submodule_search_locations[0]) / "data"
    for part in ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv"):
        with (folder / part).open() as f:
            for row in csv.DictReader(f):
                # The CSVs write Mathematica-style numbers: "1.*^-6" and "0."
                xyz = re.sub(r"\.(?=[,\]])", ".0", row["XYZ_Ang"].replace("*^", "e"))
                elements = row["Elements"].strip("[]").replace("'", "").split(",")
                z = np.array([pt.GetAtomicNumber(e.strip()) for e in elements])
                out.append((z, np.array(json.loads(xyz)), row["SMILES"]))
    return out


def qm9_test_split() -> list[tuple[np.ndarray, np.ndarray, str]]:
    """EDM's split: numpy seed 0 permutation, the last 13,083 molecules are the test split."""
    data = qm9()
    # RandomState(0) is the stream of EDM's np.random.seed(0), the legacy generator it used.
    perm = np.random.RandomState(0).permutation(len(data))
    return [data[k] for k in perm[len(data) - 13083 :]]


def ase_mol(name: str) -> tuple[np.ndarray, np.ndarray]:
    atoms = molecule(name)
    return atoms.numbers.copy(), atoms.positions.copy()


def test_bond_orders_follow_edm_thresholds():
    # C-C thresholds: single < 154+10 pm, double < 134+5 pm, triple < 120+3 pm.
    for d, order in [
        (1.53, 1),
        (1.639, 1),
        (1.64, 0),
        (1.385, 2),
        (1.39, 1),
        (1.225, 3),
        (1.23, 2),
    ]:
        orders = mc.edm_bond_orders([6, 6], [[0, 0, 0], [d, 0, 0]])
        assert orders[0, 1] == orders[1, 0] == order, d
    # H-H has no double bond in the tables: however short, it stays single.
    assert mc.edm_bond_orders([1, 1], [[0, 0, 0], [0.3, 0, 0]])[0, 1] == 1
    # A pair missing from the tables (Na) is no bond.
    assert mc.edm_bond_orders([11, 6], [[0, 0, 0], [1.0, 0, 0]])[0, 1] == 0


def test_g2_molecules_are_stable_and_valid():
    names = ["CH4", "C2H6", "C2H4", "C2H2", "H2O", "NH3", "HCN", "CH3OH", "CH3CHO"]
    for name in names:
        z, pos = ase_mol(name)
        v = mc.edm_stability(z, pos)
        assert v.ok and v.reason == "ok" and v.n_stable_atoms == v.n_atoms == len(z), name
        val = mc.rdkit_validity(z, pos)
        assert val.ok and val.n_fragments == 1, name
    assert mc.rdkit_validity(*ase_mol("C2H4")).smiles == "C=C"
    assert mc.rdkit_validity(*ase_mol("HCN")).smiles == "C#N"
    # EDM's tables have no aromatic bond: ideal benzene (1.40 A, above the 1.39 A double-bond
    # threshold) is six single C-C bonds, so EDM calls it unstable and sanitisation then fails.
    benzene = mc.edm_stability(*ase_mol("C6H6"))
    assert not benzene.ok and benzene.n_stable_atoms == 6


def test_broken_molecules_are_flagged_with_the_right_reason():
    z, pos = ase_mol("CH3OH")
    merged = pos.copy()
    merged[1] = merged[0]  # O on top of C
    v = mc.edm_stability(z, merged)
    assert not v.ok and "merged" in v.reason and "0.00 A" in v.reason

    stretched = pos.copy()
    h = int(np.flatnonzero(z == 1)[0])
    c = int(np.flatnonzero(z == 6)[0])
    direction = (stretched[h] - stretched[c]) / np.linalg.norm(stretched[h] - stretched[c])
    stretched[h] = stretched[c] + 3.0 * direction
    v = mc.edm_stability(z, stretched)
    assert not v.ok and f"atom {h} (H) has valence 0, allowed 1" in v.reason
    assert f"atom {c} (C) has valence 3, allowed 4" in v.reason
    assert v.n_stable_atoms == len(z) - 2
    val = mc.rdkit_validity(z, stretched)
    assert mc.connectivity(val).ok is False

    nan = pos.copy()
    nan[2, 1] = np.nan
    for verdict in (mc.edm_stability(z, nan), mc.rdkit_validity(z, nan)):
        assert not verdict.ok and verdict.reason == "non-finite coordinates"
    assert mc.edm_stability([], np.zeros((0, 3))).reason == "empty molecule"
    assert mc.rdkit_validity([], np.zeros((0, 3))).reason == "empty molecule"
    assert "invalid atomic number" in mc.edm_stability([0, 6], pos[:2]).reason
    assert "shape mismatch" in mc.edm_stability([6], pos).reason
    assert "no EDM valence" in mc.edm_stability([11, 17], [[0, 0, 0], [2.4, 0, 0]]).reason
    assert not mc.determine_bonds_validity(z, nan).ok


def test_batched_stability_equals_one_by_one():
    data = qm9()[:400:3]
    mols = [(z, p) for z, p, _ in data]
    z, pos = ase_mol("CH3OH")
    mols += [(z, np.full_like(pos, np.nan)), ([], np.zeros((0, 3))), (z, pos * 0.5)]
    batched = mc.edm_stability_many(mols, chunk=16)
    assert batched == [mc.edm_stability(z, p) for z, p in mols]


def test_whole_qm9_matches_edm_published_stability():
    verdicts = mc.edm_stability_many([(z, p) for z, p, _ in qm9()])
    atom, mol = mc.stability_fractions(verdicts)
    assert len(verdicts) == 130831
    assert abs(100 * atom - 99.36) < 0.3
    assert abs(100 * mol - 95.28) < 0.3


def test_qm9_test_split_is_rdkit_valid_and_smiles_agree():
    data = qm9_test_split()[:2000]
    edm = [mc.rdkit_validity(z, p) for z, p, _ in data]
    rd = [mc.determine_bonds_validity(z, p) for z, p, _ in data]
    # EDM's distance bonds carry no formal charges, so zwitterions and nitro groups fail to sanitise
    # (97.6 % here; EDM reports 97.7 % for QM9 itself). rdDetermineBonds fails on other molecules
    # (strained rings it over-connects), and the two opinions together accept 99.95 %.
    assert np.mean([v.ok for v in edm]) > 0.965
    assert np.mean([v.ok for v in rd]) > 0.95
    assert np.mean([a.ok or b.ok for a, b in zip(edm, rd, strict=True)]) > 0.995
    same = [v.smiles == mc.canonicalize_smiles(s) for v, (_, _, s) in zip(edm, data, strict=True)]
    assert np.mean(same) > 0.9
    assert mc.uniqueness([v.smiles for v in edm]) > 0.99


def test_uniqueness_and_novelty_follow_edm_definitions():
    smiles = ["C", "C", "O", None, "CC"]
    assert mc.uniqueness(smiles) == pytest.approx(3 / 4)
    train = {mc.canonicalize_smiles("C"), mc.canonicalize_smiles("OC")}
    assert mc.novelty(smiles, train) == pytest.approx(2 / 3)
    assert mc.uniqueness([None]) is None and mc.novelty([], train) is None
    assert mc.canonicalize_smiles("OC") == mc.canonicalize_smiles("CO") == "CO"
    assert mc.canonicalize_smiles("not a smiles") is None
    assert mc.is_novel("CC", train).ok and mc.is_novel("C", train).reason == "in training set"


def test_posebusters_passes_g2_and_flags_a_bent_skeleton():
    z, pos = ase_mol("C3H8")
    good = mc.sanitized_mol(z, pos)[0]
    # Bend C-C-C to about 67 degrees by rotating one CH3 group about the central carbon: the
    # terminal carbons stay 1.69 A apart (no EDM bond), but the angle is far outside the bounds.
    bent = pos.copy()
    group = [2, 9, 10, 6]  # C3 and its hydrogens
    angle = np.deg2rad(45.0)
    rot = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    bent[group] = (bent[group] - bent[0]) @ rot.T + bent[0]
    bent_mol, reason = mc.sanitized_mol(z, bent)
    assert bent_mol is not None, reason
    verdicts = m3d.posebusters_checks([good, bent_mol, None])
    assert verdicts[0].ok, verdicts[0].reason
    assert not verdicts[1].ok and "angles" in verdicts[1].reason.lower()
    assert verdicts[2] == Verdict(False, "not valid")


def test_kabsch_rmsd_is_rotation_invariant():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    assert m3d.kabsch_rmsd(a @ q.T + 3.0, a) == pytest.approx(0.0, abs=1e-9)
    shifted = a.copy()
    shifted[0] += [0.7, 0, 0]
    assert m3d.kabsch_rmsd(shifted, a) > 0.1


def test_g2_collection_never_crashes():
    for atoms in g2:
        z, pos = atoms.numbers, atoms.positions
        for verdict in (mc.edm_stability(z, pos), mc.rdkit_validity(z, pos)):
            assert isinstance(verdict.ok, bool) and verdict.reason


def test_posebusters_cannot_judge_rigid_small_molecules_by_energy_ratio():
    """Water at its experimental geometry, NH3 and CH4 have a relaxed UFF energy of ~0: the energy
    ratio is undefined, so internal_energy is not applicable, and the molecules pass."""
    names = ("H2O", "NH3", "CH4")
    verdicts = m3d.posebusters_checks([mc.sanitized_mol(*ase_mol(n))[0] for n in names])
    for name, verdict in zip(names, verdicts, strict=True):
        assert verdict.ok, (name, verdict)
        assert verdict.reason.startswith("ok; not applicable: internal_energy (reference energy")
    ethanol = m3d.posebusters_checks([mc.sanitized_mol(*ase_mol("CH3CH2OH"))[0]])[0]
    assert ethanol == Verdict(True, "ok")  # a molecule with a real reference is judged
