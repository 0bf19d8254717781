"""Screening: row/metric aggregation (pure) and the Prefect flow end to end."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from ase.io import write
from pymatgen.core import Lattice, Structure

from pipeline import crystal_checks as cc
from pipeline import crystal_fingerprints as cfp
from pipeline import metrics as pm
from pipeline import molecule_checks as mc
from pipeline.ranking import rank

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
    ranked = rank(rows)
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
    ref_fps = (
        [cfp.structure_fingerprint(base)],
        [cfp.composition_fingerprint(base.atomic_numbers)],
    )
    m = pm.crystal_set_metrics(rows, ref, ref_fps, cc.COV_CUTOFFS["perov_5"])
    assert set(m) == set(pm.CRYSTAL_KEYS) and m["n"] == 5
    assert m["structural_validity"] == pytest.approx(4 / 5)
    assert m["compositional_validity"] == pytest.approx(4 / 5)  # Na2O3 cannot balance
    assert m["uniqueness"] == pytest.approx(2 / 3)  # base twice, other once among valid
    assert m["novelty"] == pytest.approx(1 / 2)  # of {base, other}, base is the reference
    # BaTiO3 is 0.004 from SrTiO3 in CrystalNN distance and 2.8 in scaled Magpie distance, so
    # within Perov-5's cut-offs (0.2, 4); Na2O3 is 9.5 away in composition.
    assert m["coverage_recall"] == 1.0 and m["coverage_precision"] == pytest.approx(3 / 5)
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
    passed = sum(r["passed"] == "True" for r in rows if r["kind"] == "molecule")
    assert metrics["n_passed"]["molecules"] == passed
    sdf = (out / "passing" / "molecules.sdf").read_text()
    assert passed > 0 and sdf.count("$$$$") == passed
    assert f"Passed every check: **{passed} of 5**" in (out / "report.md").read_text()
    if reference is not None:
        cry = metrics["crystals"]
        assert cry["n"] == 12 and cry["structural_validity"] == 1.0
        assert cry["novelty"] == pytest.approx(6 / 12)  # rows 6..11 are in the reference
        assert cry["coverage_recall"] is not None and cry["wdist_density"] is not None
        assert len(list((out / "passing").glob("*.cif"))) >= 1


def _sdf_of(tmp_path, smiles: dict[str, str], name: str = "m.sdf", hydrogens: bool = True) -> Path:
    """An SDF written by RDKit with aromatic bonds (not kekulised) and M  CHG lines, with or
    without its hydrogens."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    path = tmp_path / name
    writer = Chem.SDWriter(str(path))
    writer.SetKekulize(False)
    for title, smi in smiles.items():
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        AllChem.EmbedMolecule(mol, randomSeed=0)
        AllChem.MMFFOptimizeMolecule(mol)
        mol = mol if hydrogens else Chem.RemoveHs(mol)
        mol.SetProp("_Name", title)
        writer.write(mol)
    writer.close()
    return path


USER_MOLECULES = {
    "benzene": "c1ccccc1",
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "glycine": "[NH3+]CC(=O)[O-]",
}


def test_file_bonds_and_charges_decide_validity_and_every_opinion_stays(tmp_path):
    from flows.screen import check_molecules_task
    from pipeline import structures as S
    from pipeline.io import read_structures, write_structures

    sdf = _sdf_of(tmp_path, USER_MOLECULES)
    text = sdf.read_text()
    assert "M  CHG" in text and "  1  2  4  0" in text.replace("\n", "  0\n")  # aromatic bonds
    bonded = read_structures(sdf).records
    bare = [S.make_molecule(d.z, d.pos, name=d.name) for d in bonded]
    bare = read_structures(write_structures(bare, tmp_path / "m.xyz")).records
    for records, source in ((bonded, "file"), (bare, "perceived")):
        rows = check_molecules_task.fn(records, True, False)
        pm.molecule_set_metrics(rows, None)
        for row, (name, smi) in zip(rows, USER_MOLECULES.items(), strict=True):
            assert row["bond_source"] == source and row["name"].startswith(name)
            assert row["valid"] and row["smiles"] == mc.canonicalize_smiles(smi), row
            assert row["rdkit_bonds_smiles"] == row["smiles"]
            assert row["passed"], row
            assert "stable" in row and "edm_valid" in row  # EDM's opinion, for comparison
        if source == "file":
            assert all(r["file_bonds_valid"] for r in rows)
        by_name = {r["name"].split(":")[0]: r for r in rows}
        assert by_name["benzene"]["edm_smiles"] == "C1CCCCC1"  # EDM's distance bonds
        assert not by_name["glycine"]["edm_valid"]  # "N valence 4" under EDM's table


def test_sdf_without_hydrogens_is_the_molecule_it_names_not_a_radical(tmp_path):
    from flows.screen import check_molecules_task
    from pipeline.io import read_structures

    sdf = _sdf_of(tmp_path, USER_MOLECULES, hydrogens=False)
    rows = check_molecules_task.fn(read_structures(sdf).records, True, False)
    pm.molecule_set_metrics(rows, None)
    for row, smi in zip(rows, USER_MOLECULES.values(), strict=True):
        assert row["bond_source"] == "file" and row["smiles"] == mc.canonicalize_smiles(smi)
        assert row["passed"], row


def test_file_bonds_that_do_not_sanitise_make_the_record_invalid(tmp_path):
    from flows.screen import check_molecules_task
    from pipeline.io import read_structures

    text = _sdf_of(tmp_path, {"glycine": "[NH3+]CC(=O)[O-]"}).read_text()
    (tmp_path / "neutral.sdf").write_text(
        "\n".join(line for line in text.splitlines() if not line.startswith("M  CHG"))
    )
    (row,) = check_molecules_task.fn(
        read_structures(tmp_path / "neutral.sdf").records, False, False
    )
    assert row["bond_source"] == "file" and not row["valid"]
    assert "valence" in row["valid_reason"] and row["rdkit_bonds_valid"]


def test_2d_sdf_is_flagged_and_not_judged_in_3d(tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from flows.screen import check_molecules_task
    from pipeline.io import read_structures

    mol = Chem.AddHs(Chem.MolFromSmiles("CC(=O)O"))
    AllChem.Compute2DCoords(mol)
    Chem.MolToMolFile(mol, str(tmp_path / "flat.sdf"))
    (row,) = check_molecules_task.fn(read_structures(tmp_path / "flat.sdf").records, True, False)
    pm.molecule_set_metrics([row], None)
    assert "2-D coordinates" in row["read_note"]
    assert row["valid"] and row["smiles"] == "CC(=O)O"  # from the file's bonds
    assert not row["coords_3d"] and not row["passed"]
    assert row["stable_reason"] == row["posebusters_reason"] == pm.NOT_JUDGED_2D


NACL_HALL = """data_NaCl
_cell_length_a 5.6402
_cell_length_b 5.6402
_cell_length_c 5.6402
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_space_group_name_Hall '{hall}'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Na1 Na 0 0 0
Cl1 Cl 0.5 0.5 0.5
"""
SI_POSCAR = "Si\n1.0\n0 2.7155 2.7155\n2.7155 0 2.7155\n2.7155 2.7155 0\nSi\n2\nDirect\n"
SI_POSCAR += "0 0 0\n0.25 0.25 0.25\n"


def test_read_rejects_are_in_no_rate_and_crystal_files_are_never_molecules(
    tmp_path, monkeypatch, prefect_harness
):
    from flows.screen import ScreenConfig, screen_flow

    monkeypatch.setenv("LDSM_HOME", str(tmp_path / "home"))
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "nacl.cif").write_text(NACL_HALL.format(hall="-F 4 2 3"))
    (folder / "unknown_group.cif").write_text(NACL_HALL.format(hall="-F 9 9"))
    (folder / "Si.vasp").write_text(SI_POSCAR)
    (folder / "cell.pdb").write_text("CRYST1    5.640    5.640    5.640  90.00  90.00  90.00\n")
    (folder / "nocif.csv").write_text("material_id,structure\n1,abc\n")
    out = tmp_path / "out"
    metrics = screen_flow(ScreenConfig(input=str(folder), out=str(out), posebusters=False))
    assert metrics["molecules"]["n"] == 0 and metrics["n_read_rejects"] == 3
    cry = metrics["crystals"]
    assert cry["n"] == 2 and cry["structural_validity"] == 1.0
    with open(out / "screen.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert float(rows["NaCl"]["density"]) == pytest.approx(2.16, abs=0.01)
    assert rows["NaCl"]["n_atoms"] == "8" and "Hall symbol" in rows["NaCl"]["read_note"]
    unread = [r for r in rows.values() if r["kind"] == "unread"]
    assert len(unread) == 3 and all(r["passed"] == "False" for r in unread)
    report = (out / "report.md").read_text()
    assert "## Molecules" not in report and "## Crystals (2)" in report
    assert "## Read rejects (3)" in report and "symmetry could not be applied" in report


def _ldsm(*args: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=300,
    )


def test_screen_on_a_missing_path_or_a_csv_without_cif_exits_with_one_line(tmp_path):
    missing = _ldsm("screen", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"ldsm screen: {tmp_path / 'nowhere'}: no such file or folder"
    (tmp_path / "nocif.csv").write_text("material_id,structure\n1,abc\n")
    nocif = _ldsm("screen", str(tmp_path / "nocif.csv"), "--out", str(tmp_path / "b"))
    assert nocif.returncode == 1
    (line,) = nocif.stderr.strip().splitlines()
    assert line.startswith(f"ldsm screen: {tmp_path / 'nocif.csv'}: CSV has no column 'cif'")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# What a screen does without Prefect: read, check, keep a chunk and load it back, write the
# table, the passing structures and the report. None of it may load torch (a 2-5 s import).
SCREEN_WITHOUT_TORCH = """
import sys
from pathlib import Path

import flows.screen
from flows.persist import ChunkStore
from pipeline import metrics as pm
from pipeline.io import read_structures
from pipeline.ranking import rank
from pipeline.report import screen_report
from pipeline.writers import write_passing, write_screen_table

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
records = read_structures(folder, min_distance=0.0).records
molecules = [r for r in records if r.lattice is None]
crystals = [r for r in records if r.lattice is not None]
mol_rows = pm.check_molecule_records(molecules, posebusters=True)
cry_rows = pm.check_crystal_records(crystals)
store = ChunkStore(out, flows.screen.check_molecules_task)
key = store.key({"chunk": molecules})
assert store.save(key, mol_rows) and store.load(key)[0]
rows = rank(mol_rows) + rank(cry_rows)
metrics = {
    "molecules": pm.molecule_set_metrics(mol_rows, None),
    "crystals": pm.crystal_set_metrics(cry_rows, None, None, None),
    "n_read_rejects": 0,
}
write_screen_table(out / "screen.csv", rows)
write_passing(out / "passing", rows)
screen_report(out, rows, metrics, None)
print(sorted(m for m in ("torch", "torch_geometric") if m in sys.modules))
"""


def test_screening_loads_neither_torch_nor_pyg(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write(folder / "water.xyz", molecule("H2O"))
    Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(
        filename=str(folder / "salt.cif")
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", SCREEN_WITHOUT_TORCH, str(folder), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / "passing").is_dir()


def _perovskites(n: int) -> list[Structure]:
    """``n`` cubic perovskites of two compositions and growing cells."""
    frac = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return [
        Structure(Lattice.cubic(3.9 + 0.05 * k), [("Sr", "Ba")[k % 2], "Ti", "O", "O", "O"], frac)
        for k in range(n)
    ]


def test_reference_fingerprints_in_parallel_equal_the_serial_ones_in_order():
    from pipeline.reference import fingerprints_in_parallel

    structures = _perovskites(6)
    serial = fingerprints_in_parallel(structures, 1, chunk=2)
    seen = []
    parallel = fingerprints_in_parallel(
        structures, 2, progress=lambda done, total: seen.append((done, total)), chunk=2
    )
    for a, b in zip(serial, parallel, strict=True):
        assert len(a) == 6 and np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    assert [t for _, t in seen] == [6, 6, 6] and sorted(d for d, _ in seen) == [2, 4, 6]


def test_reference_fingerprints_are_cached_by_content(tmp_path, monkeypatch):
    from flows.screen import reference_fingerprints_task, reference_structures
    from pipeline import converters as C
    from pipeline.io import write_structures

    monkeypatch.setenv("LDSM_HOME", str(tmp_path / "home"))
    cells = [C.from_pymatgen(s, name=f"p{k}") for k, s in enumerate(_perovskites(3))]
    write_structures(cells, tmp_path / "ref.csv")
    write_structures(cells, tmp_path / "same.cif")  # other file, same cells
    write_structures(cells[:2], tmp_path / "other.csv")
    structures, key = reference_structures(str(tmp_path / "ref.csv"))
    first = reference_fingerprints_task.fn(structures, key, 1)
    cache = tmp_path / "home" / "screen" / f"reference_fp_{key}.npz"
    stamp = cache.stat().st_mtime_ns
    again = reference_fingerprints_task.fn(*reference_structures(str(tmp_path / "same.cif")), 1)
    assert cache.stat().st_mtime_ns == stamp  # read back, not recomputed
    assert np.array_equal(np.asarray(first[0]), np.asarray(again[0]))
    assert reference_structures(str(tmp_path / "other.csv"))[1] != key
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no partial files left


@pytest.fixture()
def small_set(tmp_path) -> Path:
    """Water with one O-H bond stretched 20 %, methane, ammonia and cubic SrTiO3 (a = 4.0 A)."""
    folder = tmp_path / "small"
    folder.mkdir()
    water = molecule("H2O")
    water.positions[1] = water.positions[0] + 1.2 * (water.positions[1] - water.positions[0])
    for name, atoms in (
        ("water", water),
        ("methane", molecule("CH4")),
        ("ammonia", molecule("NH3")),
    ):
        write(folder / f"{name}.xyz", atoms)
    perovskite = Structure(
        Lattice.cubic(4.0),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    perovskite.to(filename=str(folder / "srtio3.cif"))
    return folder


def test_screen_ranks_filters_and_writes_the_relaxed_structures(
    small_set, tmp_path, prefect_harness
):
    """Real GFN2-xTB and CHGNet on three molecules and one cell: ranked by the smallest xTB gap
    (ammonia 12.2 eV < water 14.4 < methane 17.4), methane's SA score (7.3) removed by sa<=7,
    the relaxed structures written in rank order and read back with the energies of the table;
    a second run loads the stored chunks (relaxations included) and writes the same files."""
    from pymatgen.core import Structure as PymatgenStructure
    from rdkit import Chem

    from flows.screen import ScreenConfig, screen_flow

    out = tmp_path / "out"
    config = ScreenConfig(
        input=str(small_set),
        out=str(out),
        posebusters=False,
        xtb=True,
        chgnet=True,
        rank_by="-xtb_gap",
        filters=["sa<=7", "chgnet_relaxed_energy_per_atom < -8"],
    )
    metrics = screen_flow(config)
    assert metrics["ranking"] == {
        "rank_by": "-xtb_gap",
        "filtered": {"sa<=7": 1, "chgnet_relaxed_energy_per_atom < -8": 0},
    }
    with open(out / "screen.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "molecule"]
    assert [r["name"] for r in rows] == ["ammonia:0", "water:0", "methane:0"]
    assert [r["passed"] for r in rows] == ["True", "True", "False"]
    assert rows[2]["filter_reason"] == "fails sa<=7"
    assert float(rows[0]["score"]) == pytest.approx(-float(rows[0]["xtb_gap"]))
    assert 12 < float(rows[0]["xtb_gap"]) < float(rows[1]["xtb_gap"]) < float(rows[2]["xtb_gap"])
    assert float(rows[1]["xtb_relaxation_ev"]) > 0.3  # the stretched bond
    assert 0 <= float(rows[0]["qed"]) <= 1 and float(rows[2]["sa"]) > 7

    relaxed = Chem.SDMolSupplier(str(out / "relaxed" / "molecules" / "samples.sdf"), removeHs=False)
    mols = list(relaxed)
    assert [m.GetProp("_Name") for m in mols] == [r["name"] for r in rows]
    water = mols[1].GetConformer().GetPositions()
    for h in (1, 2):  # both O-H bonds at GFN2-xTB's length, the stretched one too
        assert 0.93 < np.linalg.norm(water[h] - water[0]) < 0.99
    with open(out / "relaxed" / "molecules" / "relax.csv") as f:
        table = {r["name"]: r for r in csv.DictReader(f)}
    for row in rows:
        assert float(table[row["name"]]["xtb_relaxed_energy"]) == pytest.approx(
            float(row["xtb_relaxed_energy"])
        )

    cell = PymatgenStructure.from_file(out / "relaxed" / "crystals" / "samples.cif")
    assert cell.composition.reduced_formula == "SrTiO3"
    assert 3.85 < cell.lattice.a < 4.0  # CHGNet shrinks the cell towards 3.95 A (expt. 3.905)
    with open(out / "relaxed" / "crystals" / "relax.csv") as f:
        (crystal,) = csv.DictReader(f)
    assert float(crystal["relaxed_energy_per_atom"]) < float(crystal["energy_per_atom"]) < -8

    sdf = Chem.SDMolSupplier(str(out / "passing" / "molecules.sdf"), removeHs=False)
    tags = [m.GetPropsAsDict() for m in sdf]
    assert [t["rank"] for t in tags] == [1, 2] and tags[0]["score"] == pytest.approx(
        -tags[0]["xtb_gap"]
    )
    report = (out / "report.md").read_text()
    assert "## Top candidates" in report and "`-xtb_gap`" in report
    assert "- `sa<=7` removed 1" in report and (out / "plots" / "top_molecules.png").exists()
    assert "## Relaxed molecules (GFN2-xTB)" in report and "## Relaxed crystals (CHGNet)" in report

    assert list((out / ".chunks").glob("*.npz"))  # relaxations stored with the rows
    before = (out / "relaxed" / "molecules" / "samples.sdf").read_text()
    (out / "relaxed" / "molecules" / "samples.sdf").unlink()
    assert screen_flow(config) == metrics
    assert (out / "relaxed" / "molecules" / "samples.sdf").read_text() == before


def test_a_column_of_xtb_or_chgnet_needs_its_option():
    from pydantic import ValidationError

    from flows.screen import ScreenConfig

    with pytest.raises(ValidationError, match="xtb_gap is computed by --xtb, which is not on"):
        ScreenConfig(input="x", out="o", rank_by="-xtb_gap")
    with pytest.raises(ValidationError, match="unknown column 'gap'"):
        ScreenConfig(input="x", out="o", filters=["gap > 1"])
    assert ScreenConfig(input="x", out="o", rank_by=" qed - 0.1*sa ").rank_by == "qed - 0.1*sa"


def test_a_design_ranks_and_filters_on_what_its_screen_computes():
    from pydantic import ValidationError

    from flows.design import DesignConfig

    config = DesignConfig(rank_by="qed - 0.1*sa", filters=("sa<=4",))
    assert (config.rank_by, config.filters) == ("qed - 0.1*sa", ("sa<=4",))
    with pytest.raises(ValidationError, match="xtb_gap is computed by ldsm screen --xtb"):
        DesignConfig(relax="xtb", rank_by="-xtb_gap")
