"""Readers and writers: round trips on real structures and a corrupted-input corpus."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from pathlib import Path

import numpy as np
import pytest
from ase.collections import g2

from pipeline import converters as C
from pipeline import structures as S
from pipeline.io import Reject, read_cdvae_csv, read_structures, write_structures
from pipeline.structure_set import StructureSet

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
    return [C.from_ase(g2[n], name=n) for n in names]


def _bonded_molecules() -> list:
    from rdkit import Chem
    from rdkit.Chem import AllChem

    out = []
    for k, smiles in enumerate(["c1ccccc1C(=O)[O-]", "C[NH3+]", "OCC#N"]):
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        AllChem.EmbedMolecule(mol, randomSeed=k)
        d = C.from_rdkit(mol, name=f"mol{k}")
        d.y = np.array([[0.5 * k, -1.25]], dtype=np.float32)
        d.smiles = smiles
        out.append(d)
    return out


def test_sdf_round_trip_keeps_bonds_charges_and_properties(tmp_path):
    records = _bonded_molecules() + _g2()
    path = write_structures(records, tmp_path / "m.sdf")
    result = read_structures(path)
    assert not result.rejects and len(result.records) == len(records)
    for a, b in zip(records, result.records, strict=True):
        assert b.name == a.name and np.array_equal(a.z, b.z)
        # The MOL format stores 4 decimals.
        np.testing.assert_allclose(a.pos, b.pos, atol=1e-4, rtol=0)
        if a.edge_index is not None:
            assert np.array_equal(a.edge_index, b.edge_index)
            assert np.array_equal(a.bond_order, b.bond_order) and np.array_equal(a.charge, b.charge)
            assert np.array_equal(a.y, b.y) and b.smiles == a.smiles


@pytest.mark.parametrize("suffix", [".xyz", ".extxyz"])
def test_xyz_round_trip_molecules_and_crystals(tmp_path, perov, suffix):
    records = _g2() + perov[:4]
    result = read_structures(write_structures(records, tmp_path / f"s{suffix}"))
    assert not result.rejects and len(result.records) == len(records)
    for a, b in zip(records, result.records, strict=True):
        assert b.name == a.name and np.array_equal(a.z, b.z)
        np.testing.assert_allclose(a.pos, b.pos, atol=1e-6, rtol=0)
        assert S.is_crystal(a) == S.is_crystal(b)
        if S.is_crystal(a):
            np.testing.assert_allclose(a.lattice, b.lattice, atol=1e-6, rtol=0)
            np.testing.assert_allclose(a.frac, b.frac, atol=1e-6, rtol=0)
            np.testing.assert_allclose(a.y, b.y)


def test_a_folder_reads_structures_written_in_two_formats_once(tmp_path, perov):
    """``ldsm generate`` writes samples.sdf + samples.xyz (molecules) and samples.cif +
    samples.extxyz (crystals): a screen of the folder used to count each structure twice."""
    molecules, crystals = tmp_path / "molecules", tmp_path / "crystals"
    molecules.mkdir()
    crystals.mkdir()
    for suffix in (".sdf", ".xyz"):
        write_structures(_g2(), molecules / f"samples{suffix}")
    write_structures(_g2(("NH3",)), molecules / "other.xyz")
    # A symmetric cell matrix, as the crystal models emit: a CIF round trip rotates it.
    rows = [[1.66, 2.12, -2.16], [2.12, 2.16, 3.13], [-2.16, 3.13, 2.87]]
    lattice = np.array([rows], np.float32)
    triclinic = dataclasses.replace(perov[0], lattice=lattice, pos=perov[0].frac @ lattice[0])
    for suffix in (".cif", ".extxyz"):
        write_structures([*perov[:2], triclinic], crystals / f"samples{suffix}")
    result = read_structures(molecules)
    assert [r.name for r in result.records] == ["NH3", *[r.name for r in _g2()]]
    assert [(Path(s.file).name, s.reason) for s in result.skipped] == [
        ("samples.xyz", "the same structures as samples.sdf, read from it")
    ]
    result = read_structures(crystals)
    assert len(result.records) == 3 and not result.rejects
    assert [Path(s.file).name for s in result.skipped] == ["samples.extxyz"]
    # A file named alone is read whatever lies beside it; files named alike that hold other
    # structures are both read.
    assert len(read_structures(molecules / "samples.xyz").records) == 5
    write_structures(_g2(("NH3", "CH4")), molecules / "other.sdf")
    assert len(read_structures(molecules).records) == 5 + 1 + 2


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
            assert b.name == a.name and np.array_equal(a.z, b.z)
            np.testing.assert_allclose(a.frac, b.frac, atol=1e-6, rtol=0)
            la, lb = a.lattice[0].astype(np.float64), b.lattice[0].astype(np.float64)
            np.testing.assert_allclose(la @ la.T, lb @ lb.T, atol=1e-5, rtol=1e-6)
            if path.suffix == ".csv":
                np.testing.assert_allclose(a.y, b.y)


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
        assert S.check_structure(d) is None and np.isfinite(d.pos).all()


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


# ---------------------------------------------------------------------------------------------
# Issue 16: symmetry in every spelling, labels, element names, VASP files, compression, isotopes
# ---------------------------------------------------------------------------------------------

NACL_CELL = """data_NaCl
_cell_length_a 5.6402
_cell_length_b 5.6402
_cell_length_c 5.6402
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
"""
NACL_SITES = """loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Na1 Na 0 0 0
Cl1 Cl 0.5 0.5 0.5
"""


def _fm3m_ops() -> str:
    from pymatgen.symmetry.groups import SpaceGroup

    return "\n".join(f"'{op.as_xyz_str()}'" for op in SpaceGroup("F m -3 m").symmetry_ops)


SPACE_GROUP_STATEMENTS = {
    "hall": "_space_group_name_Hall '-F 4 2 3'",
    "hall-old": "_symmetry_space_group_name_Hall '-F 4 2 3'",
    "hall-ddlm": "_space_group.name_Hall '-F 4 2 3'",
    "hm": "_symmetry_space_group_name_H-M 'F m -3 m'",
    "hm-alt": "_space_group_name_H-M_alt 'F m -3 m'",
    "hm-ddlm": "_space_group.name_H-M_alt 'F m -3 m'",
    "hm-upper": "_SYMMETRY_SPACE_GROUP_NAME_H-M 'F m -3 m'",
    "number": "_space_group_IT_number 225",
    "number-old": "_symmetry_Int_Tables_number 225",
    "number-ddlm": "_space_group.IT_number 225",
    "symops": "loop_\n_symmetry_equiv_pos_as_xyz\n{ops}",
    "symops-new": "loop_\n_space_group_symop_operation_xyz\n{ops}",
    "symops-ddlm": "loop_\n_space_group_symop.id\n_space_group_symop.operation_xyz\n{numbered}",
}


@pytest.mark.parametrize("spelling", sorted(SPACE_GROUP_STATEMENTS))
def test_cif_space_group_in_every_spelling_is_applied(tmp_path, spelling):
    ops = _fm3m_ops()
    numbered = "\n".join(f"{k + 1} {op}" for k, op in enumerate(ops.splitlines()))
    statement = SPACE_GROUP_STATEMENTS[spelling].format(ops=ops, numbered=numbered)
    path = tmp_path / "nacl.cif"
    path.write_text(NACL_CELL + statement + "\n" + NACL_SITES)
    result = read_structures(path)
    assert not result.rejects, result.rejects
    (nacl,) = result.records
    structure = C.to_pymatgen(nacl)
    assert len(nacl.z) == 8 and structure.density == pytest.approx(2.16, abs=0.01)


@pytest.mark.parametrize(
    "statement",
    [
        "_space_group_name_Hall '-F 9 9 9'",
        "_symmetry_space_group_name_H-M 'F q -3 m'",
        "_space_group_IT_number 999",
    ],
)
def test_cif_space_group_that_cannot_be_applied_rejects_the_record(tmp_path, statement):
    path = tmp_path / "nacl.cif"
    path.write_text(NACL_CELL + statement + "\n" + NACL_SITES)
    result = read_structures(path)
    assert not result.records
    (reject,) = result.rejects
    assert reject.file == str(path) and reject.record == "0 (data_NaCl)"
    assert reject.reason.startswith("symmetry could not be applied")
    assert statement.split()[1].strip("'") in reject.reason


def test_cif_parser_warnings_become_the_record_note(tmp_path):
    cases = {
        "none.cif": ("", "no space group or symmetry operations; read as P1"),
        "hm.cif": ("_symmetry_space_group_name_H-M 'F m -3 m'", "Spacegroup from"),
        "hall.cif": ("_space_group_name_Hall '-F 4 2 3'", "generated from the Hall symbol"),
        "conflict.cif": (
            "_symmetry_space_group_name_H-M 'F m -3 m'\nloop_\n_symmetry_equiv_pos_as_xyz\nx,y,z",
            "192 operations) but lists 1",
        ),
    }
    for name, (statement, _) in cases.items():
        (tmp_path / name).write_text(NACL_CELL + statement + "\n" + NACL_SITES)
    result = read_structures(tmp_path)  # files in name order: conflict, hall, hm, none
    assert not result.rejects
    for (name, (_, note)), record in zip(sorted(cases.items()), result.records, strict=True):
        assert note in record.note, (name, record.note)
    conflict = next(d for d in result.records if "lists 1" in d.note)
    assert len(conflict.z) == 2  # the listed operations win; the note says so


def test_p1_cif_without_labels_is_read_and_unknown_elements_are_named(tmp_path):
    sites = "loop_\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n"
    sites += "_atom_site_fract_z\nNa 0 0 0\n{x} 0.5 0.5 0.5\n"
    p1 = "_symmetry_space_group_name_H-M 'P 1'\n"
    (tmp_path / "good.cif").write_text(NACL_CELL + p1 + sites.format(x="Cl"))
    (tmp_path / "unknown.cif").write_text(NACL_CELL + p1 + sites.format(x="Qz"))
    result = read_structures(tmp_path)
    (good,) = result.records
    assert good.z.tolist() == [11, 17]
    (reject,) = result.rejects
    assert reject.file.endswith("unknown.cif") and "'Qz'" in reject.reason
    assert "atom site 1" in reject.reason


SI_POSCAR = """Si2 diamond
1.0
0.0 2.7155 2.7155
2.7155 0.0 2.7155
2.7155 2.7155 0.0
Si
2
Direct
0.00 0.00 0.00
0.25 0.25 0.25
"""


@pytest.mark.parametrize("name", ["POSCAR", "CONTCAR", "Si.vasp", "Si.poscar", "POSCAR_relaxed"])
def test_vasp_files_are_read_as_crystals(tmp_path, name):
    (tmp_path / name).write_text(SI_POSCAR)
    result = read_structures(tmp_path / name)
    assert not result.rejects, result.rejects
    (si,) = result.records
    assert S.is_crystal(si) and si.z.tolist() == [14, 14]
    assert C.to_pymatgen(si).volume == pytest.approx(40.05, abs=0.01)


def test_vasp4_poscar_without_element_names_is_a_reject_that_says_so(tmp_path):
    lines = SI_POSCAR.splitlines()
    del lines[5]
    (tmp_path / "POSCAR").write_text("\n".join(lines) + "\n")
    (reject,) = read_structures(tmp_path / "POSCAR").rejects
    assert "without element names" in reject.reason


@pytest.mark.parametrize("codec", ["gz", "bz2", "xz"])
def test_compressed_files_of_every_format_are_read(tmp_path, perov, codec):
    import bz2
    import gzip
    import lzma

    compress = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[codec]
    plain = tmp_path / "plain"
    write_structures(_g2()[:2], plain / "m.sdf")
    write_structures(_g2()[:2], plain / "m.xyz")
    write_structures(perov[:2], plain / "c.cif")
    write_structures(perov[:2], plain / "c.csv", properties=["heat_ref", "dir_gap"])
    (plain / "Si.vasp").write_text(SI_POSCAR)
    packed = tmp_path / "packed"
    packed.mkdir()
    for file in plain.iterdir():
        (packed / f"{file.name}.{codec}").write_bytes(compress(file.read_bytes()))
    (packed / f"broken.cif.{codec}").write_bytes(b"not compressed at all")
    want, got = read_structures(plain), read_structures(packed)
    assert not want.rejects
    assert [Path(r.file).name for r in got.rejects] == [f"broken.cif.{codec}"]
    assert "cannot decompress" in got.rejects[0].reason
    assert [d.name for d in got.records] == [d.name for d in want.records]
    for a, b in zip(want.records, got.records, strict=True):
        assert np.array_equal(a.z, b.z) and np.array_equal(a.pos, b.pos)


def test_deuterium_is_hydrogen_with_a_note_in_every_reader(tmp_path):
    """One rule: D (and T) are read as hydrogen and the record says so."""
    heavy_water = "O 0 0 0.1173\n{a} 0 0.7572 -0.4692\n{b} 0 -0.7572 -0.4692\n"
    (tmp_path / "d2o.xyz").write_text("3\n\n" + heavy_water.format(a="D", b="D"))
    props = "Properties=pos:R:3:species:S:1 name=hdo\n"
    ext = "\n".join(
        f"{' '.join(line.split()[1:])} {line.split()[0]}"
        for line in heavy_water.format(a="D", b="H").splitlines()
    )
    (tmp_path / "hdo.extxyz").write_text("3\n" + props + ext + "\n")
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("O"))
    AllChem.EmbedMolecule(mol, randomSeed=0)
    mol.GetAtomWithIdx(1).SetIsotope(2)
    Chem.MolToMolFile(mol, str(tmp_path / "hdo.sdf"))
    sites = NACL_SITES.replace("Cl1 Cl", "D1 D")
    (tmp_path / "nad.cif").write_text(NACL_CELL + "_space_group_IT_number 1\n" + sites)
    (tmp_path / "NaD.vasp").write_text(SI_POSCAR.replace("Si\n2\n", "Na D\n1 1\n"))
    result = read_structures(tmp_path)
    assert not result.rejects, result.rejects
    assert len(result.records) == 5
    for data in result.records:
        assert 1 in data.z.tolist() and "deuterium" in data.note and "hydrogen" in data.note, data
    assert "2 deuterium atoms" in next(d for d in result.records if d.name == "d2o:0").note


def test_2d_sdf_is_flagged(tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.Compute2DCoords(mol)
    Chem.MolToMolFile(mol, str(tmp_path / "flat.sdf"))
    AllChem.EmbedMolecule(mol, randomSeed=0)
    Chem.MolToMolFile(mol, str(tmp_path / "solid.sdf"))
    flat, solid = read_structures(tmp_path).records
    assert flat.note == S.FLAT_NOTE and getattr(solid, "note", None) is None


GENERAL_POSITION = """data_general
_cell_length_a 5.0
_cell_length_b {b}
_cell_length_c {c}
_cell_angle_alpha 90
_cell_angle_beta {beta}
_cell_angle_gamma {gamma}
{statement}
loop_
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Si 0.13 0.31 0.27
"""
MONOCLINIC = {"b": 6.0, "c": 7.0, "beta": 100, "gamma": 90}
HEXAGONAL = {"b": 5.0, "c": 12.0, "beta": 90, "gamma": 120}


@pytest.mark.parametrize(
    ("statement", "cell", "multiplicity"),
    [
        ("_symmetry_space_group_name_H-M 'P 21/c'", MONOCLINIC, 4),  # short symbol
        ("_symmetry_space_group_name_H-M 'P 21/n'", MONOCLINIC, 4),  # another cell choice
        ("_space_group_name_H-M_alt 'R -3 m :H'", HEXAGONAL, 36),  # setting after a colon
        ("_space_group_name_Hall '-R 3 2\"'", HEXAGONAL, 36),  # a Hall symbol with a quote
    ],
)
def test_cif_symbols_pymatgen_cannot_read_are_applied_through_spglib(
    tmp_path, statement, cell, multiplicity
):
    path = tmp_path / "general.cif"
    path.write_text(GENERAL_POSITION.format(statement=statement, **cell))
    result = read_structures(path)
    assert not result.rejects, result.rejects
    (record,) = result.records
    assert len(record.z) == multiplicity
    assert "symmetry operations generated from" in record.note


def test_notes_stay_out_of_the_training_set_and_batches(tmp_path):
    from torch_geometric.data import Batch

    (tmp_path / "a_noted.cif").write_text(NACL_CELL + NACL_SITES)  # no symmetry: a note
    (tmp_path / "b_plain.cif").write_text(NACL_CELL + "_space_group_IT_number 1\n" + NACL_SITES)
    records = read_structures(tmp_path).records
    assert [bool(getattr(d, "note", None)) for d in records] == [True, False]
    cached = StructureSet.from_data_list(records)
    batch = Batch.from_data_list(cached.to_data_list())
    assert batch.num_graphs == 2 and "note" not in batch
