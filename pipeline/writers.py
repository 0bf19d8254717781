"""Writers of structures: SDF, extended XYZ, CIF and CDVAE CSV; the screen's table and passing ones.

:func:`write_structures` chooses the format by the file's suffix. A record a format cannot hold
(a crystal as SDF, a molecule as CIF) raises ``ValueError`` naming it.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pipeline import converters as C
from pipeline import keys as K
from pipeline import structures as S
from pipeline.records import SUFFIXES

# SD tag of a molecule whose bonds were perceived (or not) at writing: how, or why there are none.
BONDS_TAG = "bonds"
PERCEIVED = "perceived from the coordinates (RDKit rdDetermineBonds, total charge 0)"


def write_sdf(records: Iterable[S.Record], path: str | Path, perceive_bonds: bool = False) -> None:
    """Molecules to SDF: bonds (aromatic as type 4, not kekulised), charges, name, ``y``, SMILES.

    ``perceive_bonds``: a record without bonds (a generated sample) gets the bonds and formal
    charges :func:`perceived_sdf_mol` finds, else its loose atoms and a ``bonds`` tag saying why.
    """
    from rdkit import Chem

    writer = Chem.SDWriter(str(path))
    writer.SetKekulize(False)
    try:
        for data in records:
            if S.is_crystal(data):
                raise ValueError(f"{data.name}: a crystal cannot be written as SDF (use CIF)")
            has_bonds = getattr(data, K.EDGE_INDEX, None) is not None
            mol = perceived_sdf_mol(data) if perceive_bonds and not has_bonds else C.to_rdkit(data)
            y = getattr(data, K.Y, None)
            if y is not None:
                mol.SetProp("y", " ".join(repr(float(v)) for v in y.reshape(-1).tolist()))
            writer.write(mol)
    finally:
        writer.close()


def _read_back(block: str):
    """A MOL block as the screen reads it: ``sdf_reader``'s parse, then a ``Record``."""
    from rdkit import Chem

    parsed = Chem.MolFromMolBlock(block, sanitize=False, removeHs=False, strictParsing=True)
    if parsed is None:
        raise ValueError("RDKit cannot parse the written MOL block")
    return C.from_rdkit(parsed, name="")


def perceived_sdf_mol(data: S.Record):
    """The molecule of a bond-less record, to write as SDF with the bonds the screen perceives.

    Perception is the screen's own (:func:`pipeline.molecule_checks.perceived_mol`, total charge
    0) on the coordinates as the screen reads them back from the SDF (4 decimals), so a file's
    bonds give the verdicts and SMILES its loose atoms gave. The bonds are written kekulised
    (PyMOL and Avogadro read no aromatic type 4) and kept only when the record read back through
    the screen's path (``from_rdkit``, ``to_rdkit``, ``file_mol``) is the perceived molecule with
    the same coordinates and the same validity verdict (RDKit's ``RemoveHs`` keeps the H of a
    perceived ``[CH-]`` but not of the same atom read from a file, which changes the screen's
    SMILES); otherwise the loose atoms are written. Tags: ``name``, ``bonds``
    (:data:`PERCEIVED`, or ``none: <reason>``) and ``smiles`` (canonical, heavy atoms, where the
    perceived molecule is valid).
    """
    from rdkit import Chem

    from pipeline import molecule_checks as mc

    loose = C.to_rdkit(data)
    name = str(getattr(data, K.NAME, ""))
    try:
        seen = _read_back(Chem.MolToMolBlock(loose, kekulize=False))
        mol, reason = mc.perceived_mol(seen.z, seen.pos, charge=0)
        if mol is not None:
            out = Chem.Mol(mol)
            Chem.Kekulize(out, clearAromaticFlags=True)
            back = _read_back(Chem.MolToMolBlock(out, kekulize=False))
            again, _ = mc.file_mol(C.to_rdkit(back))
            if Chem.GetFormalCharge(mol) != 0:
                mol, reason = None, "perceived formal charges do not sum to 0"
            elif not (np.array_equal(back.pos, seen.pos) and np.array_equal(back.z, seen.z)):
                mol, reason = None, "written coordinates differ from the perceived ones"
            elif again is None or _full_smiles(again) != _full_smiles(mol):
                mol, reason = None, "the written bonds read back as another molecule"
            elif mc.validity_of(again, "ok") != mc.validity_of(mol, "ok"):
                mol, reason = None, "the written bonds read back with another screen SMILES"
    except Exception as err:  # noqa: BLE001 - any failure keeps the loose atoms, with its reason
        mol, reason = None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if mol is None:
        loose.SetProp(BONDS_TAG, f"none: {' '.join(reason.split())}")
        loose.SetProp("name", name)
        return loose
    out.SetProp("_Name", name)
    out.SetProp("name", name)
    out.SetProp(BONDS_TAG, PERCEIVED)
    out.SetProp("smiles", mc.canonical_smiles(mol))
    return out


def _full_smiles(mol) -> str:
    """Canonical SMILES with every hydrogen and charge, no stereo: the molecule's whole graph."""
    from rdkit import Chem

    return Chem.MolToSmiles(mol, isomericSmiles=False, allHsExplicit=True)


def write_xyz(records: Iterable[S.Record], path: str | Path) -> None:
    """Structures to extended XYZ (crystals with ``Lattice`` and ``pbc``); name, SMILES, ``y``."""
    import ase.io

    ase.io.write(str(path), [C.to_ase(d) for d in records], format="extxyz")


def _cif_text(data: S.Record) -> str:
    from pymatgen.io.cif import CifWriter

    if not S.is_crystal(data):
        raise ValueError(f"{data.name}: a molecule cannot be written as CIF (use SDF or XYZ)")
    text = str(CifWriter(C.to_pymatgen(data)))
    # The block code is the record's name (CIF forbids whitespace in it).
    block = re.sub(r"\s+", "_", str(getattr(data, K.NAME, "") or "structure"))
    return re.sub(r"(?m)^data_.*$", lambda _: f"data_{block}", text, count=1)


def write_cif(records: Iterable[S.Record], path: str | Path) -> None:
    """Crystals to one CIF file, one ``data_<name>`` block each (pymatgen's CifWriter)."""
    Path(path).write_text("".join(_cif_text(d) for d in records))


def write_cdvae_csv(
    records: Iterable[S.Record], path: str | Path, properties: Sequence[str] = ()
) -> None:
    """Crystals to a CDVAE CSV: columns ``material_id``, ``cif`` and ``properties`` (from ``y``)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["material_id", "cif", *properties])
        for data in records:
            y = getattr(data, K.Y, None)
            values = [] if y is None or not properties else y.reshape(-1).tolist()
            if len(values) != len(properties):
                raise ValueError(f"{data.name}: y has {len(values)} values, need {len(properties)}")
            writer.writerow([data.name, _cif_text(data), *map(repr, values)])


def write_structures(records: Sequence[S.Record], path: str | Path, **options) -> Path:
    """Write ``records`` to ``path`` in the format its suffix names; returns the path.

    ``.sdf`` (molecules), ``.xyz`` / ``.extxyz`` (both kinds), ``.cif`` and ``.csv`` (crystals;
    ``properties=[...]`` names the ``y`` columns of a CSV). Raises ``ValueError`` for an unknown
    suffix or a record the format cannot hold.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".sdf", ".mol"):
        write_sdf(records, path, **options)
    elif suffix in (".xyz", ".extxyz"):
        write_xyz(records, path)
    elif suffix == ".cif":
        write_cif(records, path)
    elif suffix == ".csv":
        write_cdvae_csv(records, path, **options)
    else:
        raise ValueError(f"unsupported file type {suffix!r}; expected one of {SUFFIXES}")
    return path


# Screen row entries that are objects, not table columns (pymatgen / RDKit objects, fingerprints,
# the relaxation result of --xtb / --chgnet).
OBJECT_COLUMNS = {"structure", "struct_fp", "comp_fp", "mol", "relaxation"}


def write_screen_table(path: str | Path, rows: list[dict]) -> list[str]:
    """The screen's rows (:mod:`pipeline.metrics`, ranked) as a CSV: ``rank``, then every column
    in order of first appearance (objects left out, empty where a row lacks it); returns the
    columns."""
    columns: list[str] = ["rank"]
    for row in rows:
        columns += [c for c in row if c not in columns and c not in OBJECT_COLUMNS]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return columns


# SD tags of a passing molecule, in this order, where its row has them (``atom_stability`` is
# the row's stable atoms over its atoms; ``score`` the --rank-by value, ranking.py; the rest are
# the screen's columns, metrics.py, with the properties of ranking.PROPERTIES).
PASSING_TAGS = (
    "rank", "score", "passed", "smiles", "n_atoms", "atom_stability", "stable", "valid",
    "connected", "unique", "novel", "posebusters", "coords_3d", "bond_source", "edm_valid", "qed",
    "logp", "sa", "xtb_energy", "xtb_relaxed_energy", "xtb_relaxation_ev", "xtb_rmsd_a",
    "xtb_gap", "xtb_dipole",
)  # fmt: skip


def passing_tags(row: dict) -> dict[str, str]:
    """The SD tags of a molecule row: name, rank, ``passed``, SMILES and the verdicts it has."""
    values = dict(row)
    if row.get("n_atoms"):
        values["atom_stability"] = row["n_stable_atoms"] / row["n_atoms"]
    tags = {"name": str(row["name"])}
    tags.update({k: str(values[k]) for k in PASSING_TAGS if values.get(k) is not None})
    return tags


def write_passing(folder: str | Path, rows: list[dict]) -> None:
    """The screen's passing candidates (``rows`` of :mod:`pipeline.metrics`, ranked), best rank
    first: molecules into ``folder/molecules.sdf`` (the sanitised RDKit molecule of the row, its
    bonds, 3-D; SD tags :func:`passing_tags`), crystals one CIF each,
    ``folder/<rank, 6 digits>_<name>.cif`` (the row's pymatgen structure), so that a listing is in
    rank order."""
    from rdkit import Chem

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    passing = sorted((r for r in rows if r.get("passed")), key=lambda r: r["rank"])
    writer = Chem.SDWriter(str(folder / "molecules.sdf"))
    for row in passing:
        if row["kind"] == "molecule":
            mol = Chem.Mol(row["mol"])
            for prop in list(mol.GetPropNames()):
                mol.ClearProp(prop)
            mol.SetProp("_Name", row["name"])
            for key, value in passing_tags(row).items():
                mol.SetProp(key, value)
            writer.write(mol)
        else:
            from pymatgen.io.cif import CifWriter  # here: a screen of molecules never needs it

            CifWriter(row["structure"]).write_file(
                folder / f"{row['rank']:06d}_{_safe(row['name'])}.cif"
            )
    writer.close()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120]
