"""Screening: row/metric aggregation (pure) and the Prefect flow end to end."""

from __future__ import annotations

import csv
import json
import os
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from ase.io import write
from pymatgen.core import Lattice, Structure

from pipeline import crystal_checks as cc
from pipeline import metrics as pm
from pipeline import molecule_checks as mc

SHARED = Path(
    os.environ.get("LDSM_SHARED_DATA", Path(__file__).resolve().parents[1] / "../shared/datasets")
)


def _mol(name):
    atoms = molecule(name)
    return atoms.numbers.copy(), atoms.positions.copy()


def test_molecule_rows_and_metrics():
    names = ["CH3OH", "C2H6", "C2H6-copy", "NaN", "merged"]
    z1, p1 = _mol("CH3OH")
    z2, p2 = _mol("C2H6")
    merged = p1.copy()
    merged[1] = merged[0]
    zs = [z1, z2, z2, z1, z1]
    poss = [p1, p2, p2 + 5.0, np.full_like(p1, np.nan), merged]
    rows = pm.check_molecules(names, zs, poss, posebusters=False)
    metrics = pm.molecule_set_metrics(rows, {mc.canonicalize_smiles("CC")})
    assert set(metrics) == set(pm.MOLECULE_KEYS)
    assert metrics["n"] == 5
    assert metrics["molecule_stability"] == pytest.approx(3 / 5)
    assert metrics["atom_stability"] == pytest.approx((6 + 8 + 8) / (6 + 8 + 8 + 6 + 6), abs=0.1)
    assert metrics["validity"] == metrics["edm_validity"] == pytest.approx(3 / 5)
    assert metrics["uniqueness"] == pytest.approx(2 / 3)  # CO, CC, CC among valid ones
    assert metrics["novelty"] == pytest.approx(1 / 2)  # of {CO, CC}, CC is in training
    assert metrics["posebusters_pass"] is None  # not run: does not apply
    assert [r["passed"] for r in rows] == [True, False, False, False, False]
    assert {r["bond_source"] for r in rows} == {"perceived"}
    assert rows[3]["stable_reason"] == rows[3]["valid_reason"] == "non-finite coordinates"
    assert "merged" in rows[4]["stable_reason"]
    assert rows[2]["unique_reason"] == "duplicate SMILES"
    ranked = pm.rank(rows)
    assert ranked[0]["name"] == "CH3OH" and ranked[0]["rank"] == 1
    empty = pm.molecule_set_metrics([], None)
    assert empty["n"] == 0 and all(v is None for k, v in empty.items() if k != "n")


def test_crystal_rows_and_metrics():
    base = Structure(
        Lattice.cubic(3.9),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    other = Structure(Lattice.cubic(4.0), ["Ba", "Ti", "O", "O", "O"], base.frac_coords)
    unbalanced = Structure(Lattice.cubic(4.0), ["Na", "Na", "O", "O", "O"], base.frac_coords)
    structures = [base, base, other, unbalanced]
    lattices = [s.lattice.matrix for s in structures] + [np.zeros((3, 3))]
    fracs = [s.frac_coords for s in structures] + [base.frac_coords]
    zs = [np.array(s.atomic_numbers) for s in structures] + [np.array(base.atomic_numbers)]
    rows = pm.check_crystals([f"c{k}" for k in range(5)], lattices, fracs, zs, fingerprints=True)
    ref = [base]
    ref_fps = ([cc.structure_fingerprint(base)], [cc.composition_fingerprint(base.atomic_numbers)])
    m = pm.crystal_set_metrics(rows, ref, ref_fps, cc.COV_CUTOFFS["perov_5"])
    assert set(m) == set(pm.CRYSTAL_KEYS) and m["n"] == 5
    assert m["structural_validity"] == pytest.approx(4 / 5)
    assert m["compositional_validity"] == pytest.approx(4 / 5)  # Na2O3 cannot balance
    assert m["uniqueness"] == pytest.approx(2 / 3)  # base twice, other once among valid
    assert m["novelty"] == pytest.approx(1 / 2)  # of {base, other}, base is the reference
    assert m["coverage_recall"] == 1.0 and m["coverage_precision"] == pytest.approx(2 / 5)
    assert m["wdist_num_elements"] == 0.0
    assert m["wdist_density"] == pytest.approx((other.density - base.density) / 3)
    assert rows[4]["struct_reason"].startswith("cell volume 0")
    assert [r["passed"] for r in rows] == [False, False, True, False, False]
    no_ref = pm.crystal_set_metrics(rows, None, None, None)
    assert no_ref["novelty"] is None and no_ref["coverage_recall"] is None
    assert no_ref["wdist_density"] is None


@pytest.fixture()
def candidates(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ["CH4", "C2H6", "CH3OH", "CH3CHO"]:
        write(folder / f"{name}.xyz", molecule(name))
    broken = molecule("CH3OH")
    broken.positions[1] = broken.positions[0]
    write(folder / "merged.xyz", broken)
    (folder / "garbage.xyz").write_text("this is not an xyz file\n")
    ref = SHARED / "crystals" / "perov_5" / "test.csv"
    reference = None
    if ref.exists():
        with open(ref) as f:
            rows = list(csv.DictReader(f))
        for path, part in ((folder / "cands.csv", rows[:12]), (tmp_path / "ref.csv", rows[6:40])):
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(part)
        reference = tmp_path / "ref.csv"
    train = tmp_path / "train.txt"
    train.write_text("smiles\nCC\nC\n")
    return folder, reference, train


@pytest.mark.skipif(
    find_spec("pipeline.io") is None, reason="pipeline.io (the data agent's reader) not present"
)
def test_screen_flow_end_to_end(candidates, tmp_path, monkeypatch, prefect_harness):
    from flows.screen import ScreenConfig, screen_flow

    monkeypatch.setenv("LDSM_HOME", str(tmp_path / "home"))
    folder, reference, train = candidates
    out = tmp_path / "out"
    config = ScreenConfig(
        input=str(folder),
        out=str(out),
        reference=str(reference) if reference else None,
        train_smiles=str(train),
        cov_cutoffs="perov_5",
    )
    metrics = screen_flow(config)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    mol = metrics["molecules"]
    assert mol["n"] == 5 and metrics["n_read_rejects"] == 1  # garbage.xyz is no molecule
    for key in pm.MOLECULE_KEYS[1:]:
        assert mol[key] is None or 0.0 <= mol[key] <= 1.0
    assert mol["validity"] == pytest.approx(4 / 5)  # merged atoms fail
    with open(out / "screen.csv") as f:
        rows = list(csv.DictReader(f))
    n_rows = metrics["molecules"]["n"] + metrics["crystals"]["n"] + metrics["n_read_rejects"]
    assert len(rows) == n_rows
    by_name = {r["name"]: r for r in rows}
    assert "merged" in by_name["merged:0"]["stable_reason"]
    (unread,) = [r for r in rows if r["read_ok"] == "False"]
    assert unread["kind"] == "unread" and "garbage.xyz" in unread["name"]
    assert "not an XYZ file" in unread["read_reason"]
    assert (out / "report.md").read_text().startswith("# Screening report")
    assert (out / "plots" / "molecules_metrics.png").exists()
    assert (out / "passing" / "molecules.sdf").stat().st_size > 0
    if reference is not None:
        cry = metrics["crystals"]
        assert cry["n"] == 12 and cry["structural_validity"] == 1.0
        assert cry["novelty"] == pytest.approx(6 / 12)  # rows 6..11 are in the reference
        assert cry["coverage_recall"] is not None and cry["wdist_density"] is not None
        assert len(list((out / "passing").glob("*.cif"))) >= 1
