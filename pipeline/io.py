"""Read and write any supported structure file: SDF, XYZ, extended XYZ, CIF, CDVAE CSV, POSCAR.

``read_structures(path)`` reads one file or every file of a folder (dispatching on the name)
into a :class:`ReadResult`: the good records as ``Record`` (fields of :mod:`pipeline.keys`) and one
:class:`Reject` ``(file, record, reason)`` for everything that could not be used. Readers never
raise on bad input: an empty or binary file, a file that is not in the format its suffix claims,
a truncated SDF record, a broken CIF block, NaN coordinates, an unknown element, two atoms on top
of each other (:func:`pipeline.structures.check_structure`) or a CSV without the ``cif`` column
each give a Reject with a readable reason, and every good record of the same file is kept.
``record`` is the record's position in its file (``"3"``, ``"row 12"``), with its title where
the file gives one. What a reader noticed without rejecting the record (a parser warning, a
space group turned into operations, 2-D coordinates, isotopes) is the record's ``note``.

Formats (name -> reader; ``.gz``, ``.bz2`` and ``.xz`` compression of any of them is read), each
reader a ``split`` of :func:`pipeline.records.read_records`:

- ``.sdf`` / ``.mol``: :mod:`pipeline.sdf_reader` (bonds, orders, formal charges, SD ``y`` and
  ``smiles``);
- ``.xyz`` / ``.extxyz`` and ``POSCAR*`` / ``CONTCAR*`` / ``.vasp`` / ``.poscar``:
  :mod:`pipeline.ase_reader` (periodic frames are crystals);
- ``.cif`` and CDVAE ``.csv``: :mod:`pipeline.cif_reader`, symmetry by :mod:`pipeline.cif_symmetry`.

Writers are in :mod:`pipeline.writers`; :func:`write_structures` chooses one by suffix.

Isotopes, one rule for every reader: deuterium and tritium (``D``, ``T``) are read as hydrogen
(atomic number 1) and the note says so; other isotope labels (an SDF's ``13C``) are dropped with
a note. A ``Record`` has no isotope field, and every check downstream judges elements.

Structures are stored as the file gives them (no Niggli reduction, no re-orientation): what a
cell means is the data set's business. CIF stores lattice parameters, not the orientation, so a
CIF round trip keeps ``z``, ``frac`` and the cell metric ``lattice @ lattice.T`` but may rotate
``lattice`` and ``pos``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline import structures as S
from pipeline.ase_reader import read_vasp, read_xyz
from pipeline.cif_reader import read_cdvae_csv, read_cif
from pipeline.records import COMPRESSION, SUFFIXES, VASP_NAMES, ReadResult, Reject, read_text
from pipeline.sdf_reader import read_sdf
from pipeline.writers import write_cdvae_csv, write_cif, write_sdf, write_structures, write_xyz

READERS = {"sdf": read_sdf, "xyz": read_xyz, "cif": read_cif, "vasp": read_vasp}


def file_format(path: str | Path) -> str | None:
    """The format a file name announces: ``"sdf"``, ``"xyz"``, ``"cif"``, ``"csv"`` or ``"vasp"``
    (a compression suffix ``.gz`` / ``.bz2`` / ``.xz`` is looked through), None if unsupported."""
    name = Path(path).name
    stem, suffix = Path(name).stem, Path(name).suffix.lower()
    if suffix in COMPRESSION:
        name, suffix = stem, Path(stem).suffix.lower()
    if suffix in (".sdf", ".mol"):
        return "sdf"
    if suffix in (".xyz", ".extxyz"):
        return "xyz"
    if suffix in (".cif", ".csv"):
        return suffix[1:]
    if suffix in (".vasp", ".poscar") or name.upper().startswith(VASP_NAMES):
        return "vasp"
    return None


def read_file(
    path: str | Path, properties: Sequence[str] = (), min_distance: float = S.MIN_DISTANCE
) -> ReadResult:
    """One file, by its name (:func:`file_format`); an unsupported name is a Reject."""
    path = Path(path)
    kind = file_format(path)
    if kind == "csv":
        return read_cdvae_csv(path, properties, min_distance)
    if kind is not None:
        return READERS[kind](path, min_distance)
    suffix = path.suffix.lower()
    reason = (
        f"unsupported file type {suffix or '(no suffix)'!r}; expected one of {SUFFIXES}, "
        f"a POSCAR / CONTCAR, or one of these compressed ({', '.join(COMPRESSION)})"
    )
    return ReadResult(rejects=[Reject(str(path), "", reason)])


def list_files(path: str | Path) -> list[Path]:
    """The files ``read_structures`` reads for ``path``: itself, or a folder's files (recursive,
    sorted, hidden files and README/LICENSE notes skipped)."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
        and not p.name.upper().startswith(("README", "LICENSE"))
    )


# Which of one set of structures written in several formats is kept (the first found here):
# SDF keeps bonds and charges, CIF and extended XYZ keep cells alike.
FORMAT_PREFERENCE = ("sdf", "cif", "xyz", "csv", "vasp")


def format_siblings(files: Sequence[Path]) -> list[list[Path]]:
    """Groups of two or more files of one folder whose names differ only in their format (and
    compression) suffix (``samples.sdf`` and ``samples.xyz``, as ``ldsm generate`` and ``ldsm
    design`` write them), each in the order of :data:`FORMAT_PREFERENCE`."""
    groups: dict[tuple[Path, str], list[Path]] = {}
    for file in files:
        kind = file_format(file)
        name = file.name[: -len(file.suffix)] if file.suffix.lower() in COMPRESSION else file.name
        if kind is not None and Path(name).suffix:
            groups.setdefault((file.parent, Path(name).stem), []).append(file)

    def preference(file: Path) -> tuple[int, int]:
        return FORMAT_PREFERENCE.index(file_format(file)), len(file.name)

    return [sorted(group, key=preference) for group in groups.values() if len(group) > 1]


def same_structures(a: ReadResult, b: ReadResult, atol: float = 1e-3) -> bool:
    """Whether two files gave the same structures: no rejects, the same elements in the same
    order and positions within ``atol`` Angstrom (a MOL block keeps 4 decimals); for crystals the
    cell metric ``L L^T`` and the fractional coordinates (a CIF keeps lattice parameters, not
    the orientation)."""
    if a.rejects or b.rejects or len(a.records) != len(b.records):
        return False
    for x, y in zip(a.records, b.records, strict=True):
        if S.is_crystal(x) != S.is_crystal(y) or not np.array_equal(x.z, y.z):
            return False
        if S.is_crystal(x):
            lx, ly = (np.asarray(r.lattice, float).reshape(3, 3) for r in (x, y))
            shift = np.asarray(x.frac, float) - np.asarray(y.frac, float)
            if not np.allclose(lx @ lx.T, ly @ ly.T, atol=atol * 10) or not np.allclose(
                shift - np.round(shift), 0.0, atol=atol
            ):
                return False
        elif not np.allclose(np.asarray(x.pos, float), np.asarray(y.pos, float), atol=atol):
            return False
    return True


def input_problems(path: str | Path) -> list[Reject]:
    """File-level problems of an input, found without parsing a record: a missing path, a folder
    without files, an unsupported file name, an unreadable, empty or binary file, a CSV without its
    ``cif`` column. One Reject per bad file; an empty list when every file may hold records."""
    path = Path(path)
    if not path.exists():
        return [Reject(str(path), "", "no such file or folder")]
    files = list_files(path)
    if not files:
        return [Reject(str(path), "", "folder holds no files")]
    problems = []
    for file in files:
        kind = file_format(file)
        if kind is None:
            problems += read_file(file).rejects
            continue
        text, reject = read_text(file, kind.upper())
        if reject is not None:
            problems.append(reject)
        elif kind == "csv":
            header = next(csv.reader(io.StringIO(text.split("\n", 1)[0])), [])
            if "cif" not in header:
                reason = f"CSV has no column 'cif' (columns: {header[:12]})"
                problems.append(Reject(str(file), "", reason))
    return problems


def read_structures(
    path: str | Path, properties: Sequence[str] = (), min_distance: float = S.MIN_DISTANCE
) -> ReadResult:
    """Read a file or a folder of SDF / MOL / XYZ / extxyz / CIF / CDVAE CSV files.

    Returns every good record (``Record`` with the fields of :mod:`pipeline.keys`) in file order and
    a Reject for every bad file or record; never raises on bad input. In a folder, the same
    structures written in several formats (files named alike, :func:`format_siblings`, whose
    structures :func:`same_structures` finds equal) are kept once; the other files are in
    ``skipped``. ``properties`` names the CSV columns that become ``y (1, P)``. Atoms closer than
    ``min_distance`` (Angstrom, default 0.1: the same atom written twice) reject the record; a
    screening step that wants to judge such candidates itself passes ``min_distance=0``.
    """
    path = Path(path)
    if not path.exists():
        return ReadResult(rejects=[Reject(str(path), "", "no such file or folder")])
    files = list_files(path)
    results = {file: read_file(file, properties, min_distance) for file in files}
    skipped = {}
    for kept, *others in format_siblings(files) if path.is_dir() else []:
        for other in others:
            if same_structures(results[kept], results[other]):
                skipped[other] = f"the same structures as {kept.name}, read from it"
    result = ReadResult()
    for file in files:
        if file in skipped:
            result.skipped.append(Reject(str(file), "", skipped[file]))
        else:
            result.extend(results[file])
    return result


__all__ = [
    "Reject",
    "ReadResult",
    "read_structures",
    "write_structures",
    "read_file",
    "file_format",
    "read_vasp",
    "read_sdf",
    "read_xyz",
    "read_cif",
    "read_cdvae_csv",
    "write_sdf",
    "write_xyz",
    "write_cif",
    "write_cdvae_csv",
    "list_files",
    "format_siblings",
    "same_structures",
    "input_problems",
]
