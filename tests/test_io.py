"""Readers and writers: round trips on real structures and a corrupted-input corpus."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.collections import g2

from pipeline import keys as K
from pipeline import structures as S
from pipeline.io import Reject, read_cdvae_csv, read_structures, write_structures

SHARED = Path(
    os.environ.get(
        "LDSM_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
    )
)
PEROV = SHARED / "crystals" / "perov_5" / "val.csv"


@pytest.fixture(scope="module")
def perov_rows() -> list[dict]:
    """The first 12 rows of Perov-5's validation CSV."""
    if not PEROV.exists():
        pytest.skip(f"shared reference data not found at {PEROV} (set LDSM_SHARED_DATA)")
    csv.field_size_limit(2**31 - 1)
    with open(PEROV, newline="") as f:
        reader = csv.DictReader(f)
        return [next(reader) for _ in range(12)]


def _csv_text(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


@pytest.fixture(scope="module")
def perov(perov_rows, tmp_path_factory) -> list:
    path = tmp_path_factory.mktemp("perov") / "perov.csv"
    path.write_text(_csv_text(perov_rows))
    result = read_cdvae_csv(path, properties=["heat_ref", "dir_gap"])
    assert not result.rejects and len(result.records) == 12
    return result.records


def _g2(names=("CH4", "H2O", "C6H6", "CH3CH2OH", "HCN")) -> list:
    return [S.from_ase(g2[n], name=n) for n in names]


def _bonded_molecules() -> list:
    from rdkit import Chem
    from rdkit.Chem import AllChem

    out = []
    for k, smiles in enumerate(["c1ccccc1C(=O)[O-]", "C[NH3+]", "OCC#N"]):
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        AllChem.EmbedMolecule(mol, randomSeed=k)
        d = S.from_rdkit(mol, name=f"mol{k}")
        d.y = torch.tensor([[0.5 * k, -1.25]])
        d.smiles = smiles
        out.append(d)
    return out


def test_sdf_round_trip_keeps_bonds_charges_and_properties(tmp_path):
    records = _bonded_molecules() + _g2()
    path = write_structures(records, tmp_path / "m.sdf")
    result = read_structures(path)
    assert not result.rejects and len(result.records) == len(records)
    for a, b in zip(records, result.records, strict=True):
        assert b.name == a.name and torch.equal(a.z, b.z)
        # The MOL format stores 4 decimals.
        torch.testing.assert_close(a.pos, b.pos, atol=1e-4, rtol=0)
        if K.EDGE_INDEX in a:
            assert torch.equal(a.edge_index, b.edge_index)
            assert torch.equal(a.bond_order, b.bond_order) and torch.equal(a.charge, b.charge)
            assert torch.equal(a.y, b.y) and b.smiles == a.smiles


@pytest.mark.parametrize("suffix", [".xyz", ".extxyz"])
def test_xyz_round_trip_molecules_and_crystals(tmp_path, perov, suffix):
    records = _g2() + perov[:4]
    result = read_structures(write_structures(records, tmp_path / f"s{suffix}"))
    assert not result.rejects and len(result.records) == len(records)
    for a, b in zip(records, result.records, strict=True):
        assert b.name == a.name and torch.equal(a.z, b.z)
        torch.testing.assert_close(a.pos, b.pos, atol=1e-6, rtol=0)
        assert S.is_crystal(a) == S.is_crystal(b)
        if S.is_crystal(a):
            torch.testing.assert_close(a.lattice, b.lattice, atol=1e-6, rtol=0)
            torch.testing.assert_close(a.frac, b.frac, atol=1e-6, rtol=0)
            torch.testing.assert_close(a.y, b.y)


def test_cif_and_csv_round_trip_keep_cell_metric_and_fractions(tmp_path, perov):
    """CIF keeps lattice parameters (not orientation): compare frac, z and L L^T."""
    for path in (tmp_path / "p.cif", tmp_path / "p.csv"):
        write_structures(
            perov,
            path,
            **({"properties": ["heat_ref", "dir_gap"]} if path.suffix == ".csv" else {}),
        )
        result = read_structures(
            path, properties=["heat_ref", "dir_gap"] if path.suffix == ".csv" else ()
        )
        assert not result.rejects and len(result.records) == len(perov)
        for a, b in zip(perov, result.records, strict=True):
            assert b.name == a.name and torch.equal(a.z, b.z)
            torch.testing.assert_close(a.frac, b.frac, atol=1e-6, rtol=0)
            la, lb = a.lattice[0].double(), b.lattice[0].double()
            torch.testing.assert_close(la @ la.T, lb @ lb.T, atol=1e-5, rtol=1e-6)
            if path.suffix == ".csv":
                torch.testing.assert_close(a.y, b.y)


def test_writers_refuse_the_wrong_kind(tmp_path, perov):
    with pytest.raises(ValueError, match="crystal cannot be written as SDF"):
        write_structures(perov[:1], tmp_path / "x.sdf")
    with pytest.raises(ValueError, match="molecule cannot be written as CIF"):
        write_structures(_g2()[:1], tmp_path / "x.cif")
    with pytest.raises(ValueError, match="unsupported file type"):
        write_structures(_g2()[:1], tmp_path / "x.pdb")


@pytest.fixture
def corpus(tmp_path, perov_rows) -> tuple[Path, dict[str, int]]:
    """A folder of good and corrupted files; returns it and the number of good records per file."""
    d = tmp_path / "corpus"
    d.mkdir()
    good: dict[str, int] = {}
    # SDF: two good records, then one cut in half.
    sdf = write_structures(_bonded_molecules()[:2], d / "tmp.sdf").read_text()
    (d / "tmp.sdf").unlink()
    (d / "truncated.sdf").write_text(sdf + sdf[: len(sdf) // 4])
    good["truncated.sdf"] = 2
    # XYZ: a NaN coordinate, an unknown element and two atoms on top of each other among good frames.
    water = "3\nname=water\nO 0 0 0.1173\nH 0 0.7572 -0.4692\nH 0 -0.7572 -0.4692\n"
    (d / "nan.xyz").write_text(water + "2\nname=bad\nC nan 0 0\nH 0 0 1.09\n" + water)
    good["nan.xyz"] = 2
    (d / "unknown.xyz").write_text("2\n\nXx 0 0 0\nH 0 0 1.0\n" + water)
    good["unknown.xyz"] = 1
    (d / "overlap.extxyz").write_text(water + "3\n\nO 0 0 0\nH 0 0 0.96\nH 0 0 0.96\n")
    good["overlap.extxyz"] = 1
    # CIF: a good block, a block with its cell lengths missing, an atom 0.05 A from another.
    cif0, cif1, cif2 = (r["cif"] for r in perov_rows[:3])
    broken = "\n".join(line for line in cif1.splitlines() if "_cell_length" not in line)
    (d / "broken.cif").write_text(cif0 + broken + "\n")
    good["broken.cif"] = 1
    last = cif2.rstrip("\n").splitlines()[-1].split()
    last[1] = "X99"
    last[3] = f"{float(last[3]) + 0.01:.8f}"  # 0.01 of a ~4 A cell: 0.04 A away
    (d / "overlap.cif").write_text(cif2.rstrip("\n") + "\n  " + "  ".join(last) + "\n")
    good["overlap.cif"] = 0
    (d / "duplicate.cif").write_text(
        cif2.rstrip("\n") + "\n" + cif2.rstrip("\n").splitlines()[-1] + "\n"
    )
    good["duplicate.cif"] = 0
    # Files that are not what they claim, empty, binary.
    (d / "empty.xyz").write_text("")
    (d / "binary.cif").write_bytes(bytes(range(256)) * 8)
    (d / "cif_in_disguise.xyz").write_text(cif0)
    (d / "nocif.csv").write_text("material_id,structure\n1,abc\n")
    (d / "notes.txt").write_text("not a structure\n")
    # A CDVAE CSV with one row whose CIF is cut off among good rows.
    rows = [dict(r) for r in perov_rows[3:8]]
    rows[2]["cif"] = rows[2]["cif"][:200]
    (d / "rows.csv").write_text(_csv_text(rows))
    good["rows.csv"] = 4
    return d, good


EXPECTED = {
    "truncated.sdf": ("2 (mol0)", "truncated record"),
    "nan.xyz": ("1", "non-finite coordinates"),
    "unknown.xyz": ("0", "unknown element 'Xx'"),
    "overlap.extxyz": ("1", "overlapping atoms"),
    "broken.cif": ("1 (data_", "broken CIF"),
    "overlap.cif": ("0 (data_", "overlapping atoms"),
    "duplicate.cif": ("0 (data_", "occupanc"),
    "empty.xyz": ("", "empty file"),
    "binary.cif": ("", "binary file"),
    "cif_in_disguise.xyz": ("0", "not an XYZ file"),
    "nocif.csv": ("", "no column 'cif'"),
    "notes.txt": ("", "unsupported file type '.txt'"),
    "rows.csv": ("row 2", "broken CIF"),
}


def test_corrupted_corpus_lands_in_rejects_and_keeps_every_good_record(corpus):
    folder, good = corpus
    result = read_structures(folder)
    by_file = {Path(r.file).name: r for r in result.rejects}
    assert set(by_file) == set(EXPECTED), sorted(by_file)
    assert len(result.rejects) == len(EXPECTED)
    for name, (record, reason) in EXPECTED.items():
        reject = by_file[name]
        assert isinstance(reject, Reject)
        assert reject.record.startswith(record), (name, reject)
        assert reason in reject.reason, (name, reject)
        assert "Traceback" not in reject.reason
    assert len(result.records) == sum(good.values())
    names = [d.name for d in result.records]
    assert names.count("water") == 4
    for d in result.records:
        assert S.check_structure(d) is None and np.isfinite(d.pos.numpy()).all()


def test_missing_path_is_a_reject(tmp_path):
    result = read_structures(tmp_path / "nowhere")
    assert not result.records and result.rejects[0].reason == "no such file or folder"


def test_min_distance_zero_keeps_overlapping_atoms_for_screening(corpus):
    folder, _ = corpus
    strict = read_structures(folder / "overlap.extxyz")
    lenient = read_structures(folder / "overlap.extxyz", min_distance=0.0)
    assert len(strict.records) == 1 and len(strict.rejects) == 1
    assert len(lenient.records) == 2 and not lenient.rejects
    nan = read_structures(folder / "nan.xyz", min_distance=0.0)
    assert len(nan.rejects) == 1  # non-finite coordinates are never kept
