"""Writers of structures: SDF, extended XYZ, CIF and CDVAE CSV; the screen's table and passing ones.

:func:`write_structures` chooses the format by the file's suffix. A record a format cannot hold
(a crystal as SDF, a molecule as CIF) raises ``ValueError`` naming it.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from torch_geometric.data import Data

from pipeline import converters as C
from pipeline import keys as K
from pipeline import structures as S
from pipeline.records import SUFFIXES


def write_sdf(records: Iterable[Data], path: str | Path) -> None:
    """Molecules to SDF: bonds (aromatic as type 4, not kekulised), charges, name, ``y``, SMILES."""
    from rdkit import Chem

    writer = Chem.SDWriter(str(path))
    writer.SetKekulize(False)
    try:
        for data in records:
            if S.is_crystal(data):
                raise ValueError(f"{data.name}: a crystal cannot be written as SDF (use CIF)")
            mol = C.to_rdkit(data)
            y = getattr(data, K.Y, None)
            if y is not None:
                mol.SetProp("y", " ".join(repr(float(v)) for v in y.reshape(-1).tolist()))
            writer.write(mol)
    finally:
        writer.close()


def write_xyz(records: Iterable[Data], path: str | Path) -> None:
    """Structures to extended XYZ (crystals with ``Lattice`` and ``pbc``); name, SMILES, ``y``."""
    import ase.io

    ase.io.write(str(path), [C.to_ase(d) for d in records], format="extxyz")


def _cif_text(data: Data) -> str:
    from pymatgen.io.cif import CifWriter

    if not S.is_crystal(data):
        raise ValueError(f"{data.name}: a molecule cannot be written as CIF (use SDF or XYZ)")
    text = str(CifWriter(C.to_pymatgen(data)))
    # The block code is the record's name (CIF forbids whitespace in it).
    block = re.sub(r"\s+", "_", str(getattr(data, K.NAME, "") or "structure"))
    return re.sub(r"(?m)^data_.*$", lambda _: f"data_{block}", text, count=1)


def write_cif(records: Iterable[Data], path: str | Path) -> None:
    """Crystals to one CIF file, one ``data_<name>`` block each (pymatgen's CifWriter)."""
    Path(path).write_text("".join(_cif_text(d) for d in records))


def write_cdvae_csv(
    records: Iterable[Data], path: str | Path, properties: Sequence[str] = ()
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


def write_structures(records: Sequence[Data], path: str | Path, **options) -> Path:
    """Write ``records`` to ``path`` in the format its suffix names; returns the path.

    ``.sdf`` (molecules), ``.xyz`` / ``.extxyz`` (both kinds), ``.cif`` and ``.csv`` (crystals;
    ``properties=[...]`` names the ``y`` columns of a CSV). Raises ``ValueError`` for an unknown
    suffix or a record the format cannot hold.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".sdf", ".mol"):
        write_sdf(records, path)
    elif suffix in (".xyz", ".extxyz"):
        write_xyz(records, path)
    elif suffix == ".cif":
        write_cif(records, path)
    elif suffix == ".csv":
        write_cdvae_csv(records, path, **options)
    else:
        raise ValueError(f"unsupported file type {suffix!r}; expected one of {SUFFIXES}")
    return path


# Screen row entries that are objects, not table columns (pymatgen / RDKit objects, fingerprints).
OBJECT_COLUMNS = {"structure", "struct_fp", "comp_fp", "mol"}


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


def write_passing(folder: str | Path, rows: list[dict]) -> None:
    """The screen's passing candidates (``rows`` of :mod:`pipeline.metrics`, ranked): molecules
    into ``folder/molecules.sdf`` (the sanitised RDKit molecule of the row, EDM bonds, 3-D),
    crystals one CIF each, ``folder/<rank>_<name>.cif`` (the row's pymatgen structure)."""
    from pymatgen.io.cif import CifWriter
    from rdkit import Chem

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    passing = [r for r in rows if r.get("passed")]
    writer = Chem.SDWriter(str(folder / "molecules.sdf"))
    for row in passing:
        if row["kind"] == "molecule":
            mol = Chem.Mol(row["mol"])
            mol.SetProp("_Name", row["name"])
            writer.write(mol)
        else:
            CifWriter(row["structure"]).write_file(
                folder / f"{row['rank']}_{_safe(row['name'])}.cif"
            )
    writer.close()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120]
