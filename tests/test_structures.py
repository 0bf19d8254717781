"""Converters round-trip real molecules (QM9, ase g2) and crystals (Perov-5); StructureSet."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.collections import g2
from torch_geometric.data import Batch

from pipeline import converters as C
from pipeline import keys as K
from pipeline import qm9
from pipeline import structures as S
from pipeline.io import read_cdvae_csv
from pipeline.structure_set import StructureSet

SHARED = Path(
    os.environ.get(
        "LDSM_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
    )
)
PEROV = SHARED / "crystals" / "perov_5" / "val.csv"


def _same(a, b, fields) -> bool:
    """Equal dtypes and values (a record's arrays or a Data's tensors)."""
    pairs = [(np.asarray(a[k]), np.asarray(b[k])) for k in fields]
    return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in pairs)


@pytest.fixture(scope="module")
def qm9_sample(tmp_path_factory) -> list:
    """The first 300 QM9 molecules, read from a head of the qm9pack CSV by the real reader."""
    src = qm9.qm9pack_files()[0]
    head = tmp_path_factory.mktemp("qm9") / "head.csv"
    with open(src) as f:
        head.write_text("".join(next(f) for _ in range(301)))
    return list(qm9.read_qm9pack([head]))


@pytest.fixture(scope="module")
def perov_sample(tmp_path_factory) -> list:
    if not PEROV.exists():
        pytest.skip(f"shared reference data not found at {PEROV} (set LDSM_SHARED_DATA)")
    csv.field_size_limit(2**31 - 1)
    with open(PEROV, newline="") as f:
        reader = csv.reader(f)
        rows = [next(reader) for _ in range(41)]
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    path = tmp_path_factory.mktemp("perov") / "head.csv"
    path.write_text(out.getvalue())
    result = read_cdvae_csv(path, properties=["heat_ref"])
    assert not result.rejects
    return result.records


def g2_molecules() -> list:
    return [C.from_ase(g2[name], name=name) for name in g2.names]


def test_wrap_frac_stays_in_unit_interval():
    frac = np.array([[-1e-9, 1.0, 0.99999999], [2.25, -0.75, 0.5]])
    wrapped = S.wrap_frac(frac)
    assert wrapped.dtype == np.float32
    assert (wrapped >= 0).all() and (wrapped < 1).all()
    np.testing.assert_array_equal(wrapped, np.float32([[0, 0, 0], [0.25, 0.25, 0.5]]))


def test_crystal_pos_is_frac_times_lattice(perov_sample):
    for d in perov_sample:
        assert d.lattice.shape == (1, 3, 3) and d.frac.dtype == np.float32
        assert (d.frac >= 0).all() and (d.frac < 1).all()
        expected = d.frac.astype(np.float64) @ d.lattice[0].astype(np.float64)
        np.testing.assert_allclose(d.pos.astype(np.float64), expected, atol=1e-5, rtol=0)
        assert d.y.shape == (1, 1)


@pytest.mark.parametrize("to, back", [(C.to_ase, C.from_ase), (C.to_pymatgen, C.from_pymatgen)])
def test_molecules_round_trip_exactly(to, back, qm9_sample):
    for d in g2_molecules() + qm9_sample[::10]:
        e = back(to(d))
        assert _same(d, e, [K.Z, K.POS]) and e.name == d.name


@pytest.mark.parametrize("to, back", [(C.to_ase, C.from_ase), (C.to_pymatgen, C.from_pymatgen)])
def test_crystals_round_trip_exactly(to, back, perov_sample):
    nacl = C.from_ase(bulk("NaCl", "rocksalt", a=5.64), name="NaCl")
    for d in [*perov_sample, nacl]:
        e = back(to(d))
        assert _same(d, e, [K.Z, K.POS, K.FRAC, K.LATTICE]) and e.name == d.name


def test_rdkit_round_trip_with_bonds_on_qm9(qm9_sample):
    """Bonds perceived by RDKit on QM9 geometries survive record -> Mol -> record bit for bit,
    and Mol -> record -> Mol keeps the molecule (canonical SMILES agrees with QM9's own)."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    agree = 0
    sample = qm9_sample[:60]
    for d in sample:
        mol = C.to_rdkit(d)
        rdDetermineBonds.DetermineBonds(mol, charge=0)
        bonded = C.from_rdkit(mol, name=d.name)
        assert bonded.edge_index.shape[1] == 2 * mol.GetNumBonds() > 0
        again = C.from_rdkit(C.to_rdkit(bonded))
        assert _same(bonded, again, [K.Z, K.POS, K.EDGE_INDEX, K.BOND_ORDER, K.CHARGE])
        mol2 = Chem.RemoveHs(C.to_rdkit(bonded))
        ours = Chem.MolToSmiles(mol2)
        theirs = Chem.MolToSmiles(Chem.MolFromSmiles(d.smiles))
        agree += ours == theirs
    # Charge-separated QM9 molecules get a neutral resonance form from DetermineBonds.
    assert agree >= 0.9 * len(sample)


def test_rdkit_keeps_formal_charges_and_aromatic_bonds():
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("c1ccccc1C(=O)[O-]"))
    AllChem.EmbedMolecule(mol, randomSeed=0)
    d = C.from_rdkit(mol, name="benzoate")
    assert d.charge.sum().item() == -1 and (d.bond_order == 1.5).sum().item() == 12
    back = C.to_rdkit(d)
    Chem.SanitizeMol(back)
    assert Chem.MolToSmiles(back) == Chem.MolToSmiles(mol)
    np.testing.assert_array_equal(back.GetConformer().GetPositions(), d.pos.astype(np.float64))


def test_check_structure_finds_problems():
    water = C.from_ase(g2["H2O"], name="water")
    assert S.check_structure(water) is None
    nan = S.make_molecule([8, 1], [[0, 0, 0], [np.nan, 0, 0]], name="nan")
    assert "non-finite" in S.check_structure(nan)
    dup = S.make_molecule([8, 1, 1], [[0, 0, 0], [0, 0, 0.96], [0, 0, 0.96]], name="dup")
    assert "atom 1 is 0 A from atom 2" in S.check_structure(dup)
    # A 0.05 A cubic cell puts every atom 0.05 A from its own image.
    tiny = S.make_crystal([6], [[0, 0, 0]], 0.05 * np.eye(3), name="tiny")
    assert "own periodic image" in S.check_structure(tiny)
    # Atoms at frac 0.01 and 0.99 of a 10 A cell are 0.2 A apart through the boundary.
    wrap = S.make_crystal([6, 6], [[0.001, 0, 0], [0.999, 0, 0]], 10 * np.eye(3), name="w")
    assert "0.02 A" in S.check_structure(wrap)
    assert "unknown element" in S.check_structure(S.make_molecule([0], [[0, 0, 0]], name="x"))


def test_structure_set_collates_mixed_records(qm9_sample, perov_sample):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("CC#N"))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    bonded = C.from_rdkit(mol, name="acetonitrile")
    atom = S.make_molecule([2], [[0, 0, 0]], name="He", edge_index=np.zeros((2, 0)), bond_order=[])
    with pytest.raises(ValueError, match="disagree on the shape of 'y'"):
        StructureSet.from_data_list(qm9_sample[:2] + perov_sample[:1])  # y (1, 15) vs (1, 1)
    crystals = [dataclasses.replace(d, y=None) for d in perov_sample[:3]]
    records = qm9_sample[:5] + [bonded, atom] + crystals  # Data of a data set, and records
    ss = StructureSet.from_data_list(records)
    assert len(ss) == len(records)
    torch.testing.assert_close(ss.num_atoms(), torch.tensor([d.num_nodes for d in records]))
    buffer = io.BytesIO()
    torch.save(ss.state_dict(), buffer)
    buffer.seek(0)
    loaded = StructureSet.from_state_dict(torch.load(buffer, weights_only=True))
    for k, d in enumerate(records):
        e = loaded[k]
        assert set(e.keys()) == set(d.keys()), d.name
        strings = [key for key in d.keys() if isinstance(d[key], str)]
        assert _same(d, e, set(d.keys()) - set(strings))
        assert all(d[key] == e[key] for key in strings)
    sub = ss[[8, 5, 0]]
    assert [d.name for d in sub] == [records[8].name, records[5].name, records[0].name]
    assert _same(sub[1], bonded, [K.EDGE_INDEX])
    batch = Batch.from_data_list(list(ss[7:10]))
    assert batch.lattice.shape == (3, 3, 3) and batch.batch.shape == (15,)
