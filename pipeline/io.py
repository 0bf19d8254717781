"""Readers and writers for SDF, XYZ, extended XYZ, CIF and CDVAE CSV; bad input becomes data.

``read_structures(path)`` reads one file or every file of a folder (dispatching on the suffix)
into a :class:`ReadResult`: the good records as ``Data`` (fields of :mod:`pipeline.keys`) and one
:class:`Reject` ``(file, record, reason)`` for everything that could not be used. Readers never
raise on bad input: an empty or binary file, a file that is not in the format its suffix claims,
a truncated SDF record, a broken CIF block, NaN coordinates, an unknown element, two atoms on top
of each other (:func:`pipeline.structures.check_structure`) or a CSV without the ``cif`` column
each give a Reject with a readable reason, and every good record of the same file is kept.
``record`` is the record's position in its file (``"3"``, ``"row 12"``), with its title where
the file gives one.

Formats (suffix -> reader):

- ``.sdf`` / ``.mol``: MOL blocks separated by ``$$$$``; bonds, orders and formal charges kept;
  SD properties ``y`` (space-separated floats) and ``smiles`` are read back when present.
- ``.xyz`` / ``.extxyz``: (extended) XYZ frames; a frame with ``Lattice=`` and ``pbc="T T T"``
  is a crystal.
- ``.cif``: one or more ``data_`` blocks (pymatgen's parser, conventional cell as written).
- ``.csv``: the CDVAE format, one CIF text per row in column ``cif``; ``material_id`` is the
  name; the columns named in ``properties`` become ``y (1, P)``.

Structures are stored as the file gives them (no Niggli reduction, no re-orientation): what a
cell means is the data set's business. CIF stores lattice parameters, not the orientation, so a
CIF round trip keeps ``z``, ``frac`` and the cell metric ``lattice @ lattice.T`` but may rotate
``lattice`` and ``pos``.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch_geometric.data import Data

from pipeline import keys as K
from pipeline import structures as S

SUFFIXES = (".sdf", ".mol", ".xyz", ".extxyz", ".cif", ".csv")


@dataclass(frozen=True)
class Reject:
    """A file or record that could not be used: where it is and why."""

    file: str
    record: str
    reason: str


@dataclass
class ReadResult:
    """``records``: the good structures in file order; ``rejects``: everything else."""

    records: list[Data] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def extend(self, other: ReadResult) -> None:
        self.records.extend(other.records)
        self.rejects.extend(other.rejects)


def _read_text(path: Path, what: str) -> tuple[str | None, Reject | None]:
    """File text, or a Reject for an unreadable, empty or binary file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, Reject(str(path), "", f"cannot read file: {exc}")
    if not raw.strip():
        return None, Reject(str(path), "", "empty file")
    if b"\x00" in raw[:65536]:
        return None, Reject(str(path), "", f"binary file, not a text {what} file")
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        try:
            text = raw.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover  (latin-1 decodes any byte string)
            return None, Reject(str(path), "", f"binary file, not a text {what} file")
        # Latin-1 decodes anything; accept it only if it looks like text (CIF authors' names).
        printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text) / len(text)
        if printable < 0.95:
            return None, Reject(str(path), "", f"binary file, not a text {what} file")
        return text, None


def _accept(
    result: ReadResult, file: str, record: str, make: Callable[[], Data], min_distance: float
) -> None:
    """Build one record with ``make``; a failure or a failed structure check becomes a Reject."""
    try:
        data = make()
    except Exception as exc:  # noqa: BLE001  (any parser error of one record is that record's)
        result.rejects.append(Reject(file, record, _reason(exc)))
        return
    reason = S.check_structure(data, min_distance)
    if reason is not None:
        result.rejects.append(Reject(file, record, reason))
    else:
        result.records.append(data)


class RecordError(ValueError):
    """A record-level failure whose message is already the full reason."""


def _reason(exc: Exception) -> str:
    if isinstance(exc, RecordError):
        return " ".join(str(exc).split())
    if isinstance(exc, KeyError):
        return f"unknown element {exc.args[0]!r}" if exc.args else "unknown key"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# ---------------------------------------------------------------------------------------------
# SDF
# ---------------------------------------------------------------------------------------------


def _sdf_blocks(text: str) -> list[str]:
    """MOL blocks (with their SD data) of an SDF text; a final block may lack its ``$$$$``."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.strip() == "$$$$":
            blocks.append("\n".join(current))
            current = []
        else:
            current.append(line)
    if any(line.strip() for line in current):
        blocks.append("\n".join(current))
    return blocks


def _check_molblock(lines: list[str]) -> str | None:
    """Why a V2000 MOL block is truncated or malformed, before RDKit sees it."""
    if len(lines) < 4:
        return f"truncated record: {len(lines)} lines, no counts line"
    counts = lines[3]
    if "V3000" in counts:
        return None
    try:
        n_atoms, n_bonds = int(counts[0:3]), int(counts[3:6])
    except ValueError:
        return f"not a MOL block: line 4 should be the counts line, got {counts.strip()[:40]!r}"
    need = 4 + n_atoms + n_bonds
    if len(lines) < need or not any(line.startswith("M  END") for line in lines[need:]):
        return (
            f"truncated record: counts line announces {n_atoms} atoms and {n_bonds} bonds, "
            f"block has {len(lines) - 4} lines after the header and no 'M  END'"
        )
    return None


def read_sdf(path: str | Path, min_distance: float = S.MIN_DISTANCE) -> ReadResult:
    """Molecules of an SDF (or MOL) file, with bonds and formal charges, hydrogens as written."""
    from rdkit import Chem, rdBase

    path = Path(path)
    result = ReadResult()
    text, reject = _read_text(path, "SDF")
    if reject is not None:
        result.rejects.append(reject)
        return result
    for k, block in enumerate(_sdf_blocks(text)):
        lines = block.splitlines()
        title = lines[0].strip() if lines else ""
        record = f"{k} ({title})" if title else str(k)
        problem = _check_molblock(lines)
        if problem is not None:
            result.rejects.append(Reject(str(path), record, problem))
            continue
        with rdBase.CaptureErrorLog() as log:
            mol = Chem.MolFromMolBlock(block, sanitize=False, removeHs=False, strictParsing=True)
        if mol is None:
            message = " ".join(log.messages).strip().replace("\n", " ")
            reason = f"RDKit cannot parse the MOL block: {message[:200]}".rstrip(": ")
            result.rejects.append(Reject(str(path), record, reason))
            continue
        props = _sd_properties(lines)
        name = title or f"{path.stem}:{k}"
        _accept(
            result,
            str(path),
            record,
            lambda m=mol, n=name, p=props: _from_sd(m, n, p),
            min_distance,
        )
    return result


def _sd_properties(lines: list[str]) -> dict[str, str]:
    """``> <key>`` data items after ``M  END``."""
    props, key = {}, None
    for line in lines:
        match = re.match(r"^>\s*.*<([^>]+)>", line)
        if match:
            key = match.group(1)
            props[key] = ""
        elif key is not None and line.strip():
            props[key] = (props[key] + " " + line.strip()).strip()
        else:
            key = None
    return props


def _from_sd(mol, name: str, props: dict[str, str]) -> Data:
    data = S.from_rdkit(mol, name=name)
    if "y" in props:
        data[K.Y] = _float_row(props["y"].split())
    if "smiles" in props:
        data[K.SMILES] = props["smiles"]
    return data


def _float_row(values: Sequence[str]):
    import torch

    return torch.tensor([float(v) for v in values], dtype=torch.float32).reshape(1, -1)


def write_sdf(records: Iterable[Data], path: str | Path) -> None:
    """Molecules to SDF: bonds (aromatic as type 4, not kekulised), charges, name, ``y``, SMILES."""
    from rdkit import Chem

    writer = Chem.SDWriter(str(path))
    writer.SetKekulize(False)
    try:
        for data in records:
            if S.is_crystal(data):
                raise ValueError(f"{data.name}: a crystal cannot be written as SDF (use CIF)")
            mol = S.to_rdkit(data)
            y = getattr(data, K.Y, None)
            if y is not None:
                mol.SetProp("y", " ".join(repr(float(v)) for v in y.reshape(-1).tolist()))
            writer.write(mol)
    finally:
        writer.close()


# ---------------------------------------------------------------------------------------------
# XYZ / extended XYZ
# ---------------------------------------------------------------------------------------------


def read_xyz(path: str | Path, min_distance: float = S.MIN_DISTANCE) -> ReadResult:
    """Frames of an XYZ or extended XYZ file; periodic frames become crystals.

    A frame whose atom-count line is not an integer ends the file (the frames after it cannot be
    located); a frame with a bad atom line is rejected alone.
    """

    path = Path(path)
    result = ReadResult()
    text, reject = _read_text(path, "XYZ")
    if reject is not None:
        result.rejects.append(reject)
        return result
    lines = text.splitlines()
    i, k = 0, 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        try:
            n_atoms = int(lines[i].strip())
            if n_atoms < 0:
                raise ValueError
        except ValueError:
            what = "not an XYZ file" if k == 0 else f"frame {k}"
            reason = (
                f"{what}: line {i + 1} should be the number of atoms, got {lines[i].strip()[:40]!r}"
            )
            result.rejects.append(Reject(str(path), str(k), reason))
            break
        if i + 2 + n_atoms > len(lines):
            reason = (
                f"truncated frame: announces {n_atoms} atoms, file ends after "
                f"{len(lines) - i - 2} atom lines"
            )
            result.rejects.append(Reject(str(path), str(k), reason))
            break
        frame = "\n".join(lines[i : i + 2 + n_atoms]) + "\n"
        default_name = f"{path.stem}:{k}"
        _accept(
            result,
            str(path),
            str(k),
            lambda f=frame, n=default_name: _from_frame(f, n),
            min_distance,
        )
        i += 2 + n_atoms
        k += 1
    return result


def _from_frame(frame: str, default_name: str) -> Data:
    import ase.io

    atoms = ase.io.read(io.StringIO(frame), format="extxyz")
    name = atoms.info.get("name", default_name)
    return S.from_ase(atoms, name=str(name))


def write_xyz(records: Iterable[Data], path: str | Path) -> None:
    """Structures to extended XYZ (crystals with ``Lattice`` and ``pbc``); name, SMILES, ``y``."""
    import ase.io

    ase.io.write(str(path), [S.to_ase(d) for d in records], format="extxyz")


# ---------------------------------------------------------------------------------------------
# CIF and CDVAE CSV
# ---------------------------------------------------------------------------------------------


def _cif_blocks(text: str) -> list[tuple[str, str]]:
    """``(block name, block text)`` for every ``data_`` block."""
    starts = [m.start() for m in re.finditer(r"(?im)^\s*data_", text)]
    blocks = []
    for a, b in zip(starts, [*starts[1:], len(text)], strict=True):
        block = text[a:b]
        name = block.strip().splitlines()[0].strip()[5:]
        blocks.append((name, block))
    return blocks


def _parse_cif_block(block: str, name: str) -> Data:
    """One CIF block -> crystal Data; pymatgen's warnings explain a failure, so they are kept."""
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            structures = CifParser.from_str(block).parse_structures(primitive=False)
        except Exception as exc:
            # pymatgen repeats its reasons in a summary warning; keep each reason once.
            notes = []
            for w in caught:
                text = " ".join(str(w.message).split())
                noise = "rounded to ideal" in text or "Issues encountered" in text
                if not noise and text not in notes:
                    notes.append(text)
            details = "; ".join(notes)[:300]
            message = f"broken CIF: {exc}" + (f" ({details})" if details else "")
            raise RecordError(message) from exc
    if len(structures) != 1:
        raise RecordError(f"broken CIF: block gives {len(structures)} structures")
    return S.from_pymatgen(structures[0], name=name)


def read_cif(path: str | Path, min_distance: float = S.MIN_DISTANCE) -> ReadResult:
    """Crystals of a CIF file, one per ``data_`` block."""
    path = Path(path)
    result = ReadResult()
    text, reject = _read_text(path, "CIF")
    if reject is not None:
        result.rejects.append(reject)
        return result
    blocks = _cif_blocks(text)
    if not blocks:
        result.rejects.append(Reject(str(path), "", "not a CIF file: no 'data_' block"))
        return result
    for k, (block_name, block) in enumerate(blocks):
        name = block_name or f"{path.stem}:{k}"
        record = f"{k} (data_{block_name})"
        _accept(
            result, str(path), record, lambda b=block, n=name: _parse_cif_block(b, n), min_distance
        )
    return result


def read_cdvae_csv(
    path: str | Path, properties: Sequence[str] = (), min_distance: float = S.MIN_DISTANCE
) -> ReadResult:
    """CDVAE CSV: column ``cif`` holds one CIF per row; ``properties`` columns -> ``y (1, P)``.

    The name of a row is its ``material_id`` (else ``<stem>:<row>``); ``record`` is ``row k`` with
    k counted from 0 over data rows.
    """
    path = Path(path)
    result = ReadResult()
    text, reject = _read_text(path, "CSV")
    if reject is not None:
        result.rejects.append(reject)
        return result
    # A CIF of a big cell can pass csv's default field limit (128 kB); raise it, never lower it.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    missing = [c for c in ("cif", *properties) if c not in columns]
    if missing:
        result.rejects.append(
            Reject(
                str(path),
                "",
                f"CSV has no column {', '.join(map(repr, missing))} (columns: {columns[:12]})",
            )
        )
        return result
    try:
        rows = list(reader)
    except csv.Error as exc:
        result.rejects.append(Reject(str(path), "", f"malformed CSV: {exc}"))
        return result
    for k, row in enumerate(rows):
        material = (row.get("material_id") or "").strip()
        name = material or f"{path.stem}:{k}"
        record = f"row {k} ({material})" if material else f"row {k}"
        _accept(
            result,
            str(path),
            record,
            lambda r=row, n=name: _from_csv_row(r, n, properties),
            min_distance,
        )
    return result


def _from_csv_row(row: dict, name: str, properties: Sequence[str]) -> Data:
    cif = row.get("cif") or ""
    if not cif.strip():
        raise ValueError("empty 'cif' field")
    data = _parse_cif_block(cif, name)
    if properties:
        values = []
        for p in properties:
            try:
                values.append(float(row[p]))
            except (TypeError, ValueError):
                raise ValueError(f"property {p!r} is not a number: {row[p]!r}") from None
        data[K.Y] = _float_row([repr(v) for v in values])
    return data


def _cif_text(data: Data) -> str:
    from pymatgen.io.cif import CifWriter

    if not S.is_crystal(data):
        raise ValueError(f"{data.name}: a molecule cannot be written as CIF (use SDF or XYZ)")
    text = str(CifWriter(S.to_pymatgen(data)))
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


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------


def read_file(
    path: str | Path, properties: Sequence[str] = (), min_distance: float = S.MIN_DISTANCE
) -> ReadResult:
    """One file, by suffix; an unknown suffix is a Reject."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".sdf", ".mol"):
        return read_sdf(path, min_distance)
    if suffix in (".xyz", ".extxyz"):
        return read_xyz(path, min_distance)
    if suffix == ".cif":
        return read_cif(path, min_distance)
    if suffix == ".csv":
        return read_cdvae_csv(path, properties, min_distance)
    reason = f"unsupported file type {suffix or '(no suffix)'!r}; expected one of {SUFFIXES}"
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


def read_structures(
    path: str | Path, properties: Sequence[str] = (), min_distance: float = S.MIN_DISTANCE
) -> ReadResult:
    """Read a file or a folder of SDF / MOL / XYZ / extxyz / CIF / CDVAE CSV files.

    Returns every good record (``Data`` with the fields of :mod:`pipeline.keys`) in file order and
    a Reject for every bad file or record; never raises on bad input. ``properties`` names the
    CSV columns that become ``y (1, P)``. Atoms closer than ``min_distance`` (Angstrom, default
    0.1: the same atom written twice) reject the record; a screening step that wants to judge
    such candidates itself passes ``min_distance=0``.
    """
    path = Path(path)
    if not path.exists():
        return ReadResult(rejects=[Reject(str(path), "", "no such file or folder")])
    result = ReadResult()
    for file in list_files(path):
        result.extend(read_file(file, properties, min_distance))
    return result


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


__all__ = [
    "Reject",
    "ReadResult",
    "read_structures",
    "write_structures",
    "read_file",
    "read_sdf",
    "read_xyz",
    "read_cif",
    "read_cdvae_csv",
    "write_sdf",
    "write_xyz",
    "write_cif",
    "write_cdvae_csv",
    "list_files",
]
