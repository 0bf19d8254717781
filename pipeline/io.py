"""Readers and writers for SDF, XYZ, extended XYZ, CIF, CDVAE CSV and POSCAR; bad input is data.

``read_structures(path)`` reads one file or every file of a folder (dispatching on the name)
into a :class:`ReadResult`: the good records as ``Data`` (fields of :mod:`pipeline.keys`) and one
:class:`Reject` ``(file, record, reason)`` for everything that could not be used. Readers never
raise on bad input: an empty or binary file, a file that is not in the format its suffix claims,
a truncated SDF record, a broken CIF block, NaN coordinates, an unknown element, two atoms on top
of each other (:func:`pipeline.structures.check_structure`) or a CSV without the ``cif`` column
each give a Reject with a readable reason, and every good record of the same file is kept.
``record`` is the record's position in its file (``"3"``, ``"row 12"``), with its title where
the file gives one. What a reader noticed without rejecting the record (a parser warning, a
space group turned into operations, 2-D coordinates, isotopes) is the record's ``note``.

Formats (name -> reader; ``.gz``, ``.bz2`` and ``.xz`` compression of any of them is read):

- ``.sdf`` / ``.mol``: MOL blocks separated by ``$$$$``; bonds, orders and formal charges kept;
  SD properties ``y`` (space-separated floats) and ``smiles`` are read back when present. A block
  RDKit calls 2-D (header ``2D``, or no dimension and every z = 0) gets
  ``structures.FLAT_NOTE``.
- ``.xyz`` / ``.extxyz``: (extended) XYZ frames; a frame with ``Lattice=`` and ``pbc="T T T"``
  is a crystal.
- ``.cif``: one or more ``data_`` blocks (pymatgen's parser, conventional cell as written). The
  symmetry is applied whichever way the block states it: a list of operations, an H-M symbol, a
  Hall symbol (through spglib's table; pymatgen ignores Hall symbols) or an International Tables
  number, in CIF 1 or DDLm (dotted) spelling. A block that states a space group that cannot be
  applied is rejected, never read as P1; each warning of pymatgen's parser becomes the note. A
  missing ``_atom_site_label`` is made from the type symbols; an unknown element is named.
- ``.csv``: the CDVAE format, one CIF text per row in column ``cif``; ``material_id`` is the
  name; the columns named in ``properties`` become ``y (1, P)``.
- ``POSCAR*`` / ``CONTCAR*`` / ``.vasp`` / ``.poscar``: a VASP 5 structure (ASE's reader).

Isotopes, one rule for every reader: deuterium and tritium (``D``, ``T``) are read as hydrogen
(atomic number 1) and the note says so; other isotope labels (an SDF's ``13C``) are dropped with
a note. A ``Data`` has no isotope field, and every check downstream judges elements.

Structures are stored as the file gives them (no Niggli reduction, no re-orientation): what a
cell means is the data set's business. CIF stores lattice parameters, not the orientation, so a
CIF round trip keeps ``z``, ``frac`` and the cell metric ``lattice @ lattice.T`` but may rotate
``lattice`` and ``pos``.
"""

from __future__ import annotations

import bz2
import csv
import functools
import gzip
import io
import lzma
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch_geometric.data import Data

from pipeline import keys as K
from pipeline import structures as S

SUFFIXES = (".sdf", ".mol", ".xyz", ".extxyz", ".cif", ".csv", ".vasp", ".poscar")
# VASP structure files are also known by name alone (POSCAR, CONTCAR, POSCAR_relaxed, ...).
VASP_NAMES = ("POSCAR", "CONTCAR")
COMPRESSION = {".gz": gzip, ".bz2": bz2, ".xz": lzma}
# Isotope symbols that no element table knows: read as hydrogen, with a note (one rule for every
# reader; pymatgen reads a CIF's D and T as hydrogen too).
HYDROGEN_ISOTOPES = {"D": "deuterium", "T": "tritium"}


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
    """File text (decompressed when the name ends in ``.gz`` / ``.bz2`` / ``.xz``), or a Reject
    for an unreadable, empty or binary file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, Reject(str(path), "", f"cannot read file: {exc}")
    codec = COMPRESSION.get(path.suffix.lower())
    if codec is not None:
        try:
            raw = codec.decompress(raw)
        except Exception as exc:  # noqa: BLE001  (gzip, bz2 and lzma raise different errors)
            reason = f"cannot decompress {path.suffix} file: {' '.join(str(exc).split())}"
            return None, Reject(str(path), "", reason.rstrip(": "))
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


def _stem(path: Path) -> str:
    """File name without its suffix and without a compression suffix (``a.cif.gz`` -> ``a``)."""
    stem = Path(path.stem) if path.suffix.lower() in COMPRESSION else path
    return stem.stem


def _accept(
    result: ReadResult, file: str, record: str, make: Callable[[], Data], min_distance: float
) -> None:
    """Build one record with ``make``; a failure or a failed structure check becomes a Reject,
    a warning a parser raised while building it becomes part of its note."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            data = make()
        except Exception as exc:  # noqa: BLE001  (any parser error of one record is that record's)
            result.rejects.append(Reject(file, record, _reason(exc)))
            return
    # Deprecation notices are about this code's use of a library, not about the file.
    about_data = [
        w for w in caught if not issubclass(w.category, DeprecationWarning | FutureWarning)
    ]
    data = _noted(data, *dict.fromkeys(" ".join(str(w.message).split()) for w in about_data))
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
        name = title or f"{_stem(path)}:{k}"
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
    isotopes = [(a.GetSymbol(), a.GetIsotope()) for a in mol.GetAtoms() if a.GetIsotope()]
    hydrogen = [{2: "D", 3: "T"}.get(i, "") for sym, i in isotopes if sym == "H"]
    others = sorted({f"{i}{sym}" for sym, i in isotopes if sym != "H" or i not in (2, 3)})
    notes = [
        None if mol.GetConformer().Is3D() else S.FLAT_NOTE,
        _isotope_note(hydrogen),
        f"isotope labels not kept: {', '.join(others)}" if others else None,
    ]
    data = _noted(S.from_rdkit(mol, name=name), *notes)
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
        default_name = f"{_stem(path)}:{k}"
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

    frame, note = _xyz_isotopes_to_hydrogen(frame)
    atoms = ase.io.read(io.StringIO(frame), format="extxyz")
    name = atoms.info.get("name", default_name)
    return _noted(S.from_ase(atoms, name=str(name)), note)


def _noted(data: Data, *notes: str | None) -> Data:
    """``data`` with ``notes`` appended to its ``note`` ("; "-joined, empty ones skipped)."""
    old = getattr(data, K.NOTE, None)
    kept = [n for n in (old, *notes) if n]
    if kept:
        data[K.NOTE] = "; ".join(kept)
    return data


def _isotope_note(symbols: Sequence[str], unit: str = "atom") -> str | None:
    """The note for hydrogen-isotope symbols read as H (None when there are none)."""
    counts = {s: sum(1 for x in symbols if x == s) for s in HYDROGEN_ISOTOPES}
    parts = [
        f"{n} {HYDROGEN_ISOTOPES[s]} {unit}{'s' if n > 1 else ''}" for s, n in counts.items() if n
    ]
    if not parts:
        return None
    return f"{' and '.join(parts)} read as hydrogen (isotopes are not kept)"


def _xyz_isotopes_to_hydrogen(frame: str) -> tuple[str, str | None]:
    """Replace D / T in the species column of an (extended) XYZ frame by H; returns the note."""
    from ase.io.extxyz import key_val_str_to_dict

    if not re.search(r"(?<!\S)[DT](?!\S)", frame):
        return frame, None  # the common case, without parsing the comment line
    lines = frame.splitlines()
    column = 0
    try:
        spec = str(key_val_str_to_dict(lines[1]).get("Properties", "species:S:1:pos:R:3"))
        fields = spec.split(":")
        for name, _, width in zip(fields[::3], fields[1::3], fields[2::3], strict=False):
            if name == "species":
                break
            column += int(width)
    except Exception:  # noqa: BLE001  (a bad comment line is ASE's to report, not ours)
        column = 0
    found = []
    for k in range(2, len(lines)):
        tokens = lines[k].split()
        if len(tokens) > column and tokens[column] in HYDROGEN_ISOTOPES:
            found.append(tokens[column])
            tokens[column] = "H"
            lines[k] = " ".join(tokens)
    return "\n".join(lines) + "\n", _isotope_note(found)


# ---------------------------------------------------------------------------------------------
# VASP POSCAR / CONTCAR
# ---------------------------------------------------------------------------------------------


def read_vasp(path: str | Path, min_distance: float = S.MIN_DISTANCE) -> ReadResult:
    """The crystal of a VASP POSCAR / CONTCAR / ``.vasp`` file (ASE's reader, VASP 5 species
    line required: a VASP 4 file names its elements only in the POTCAR)."""
    path = Path(path)
    result = ReadResult()
    text, reject = _read_text(path, "POSCAR")
    if reject is not None:
        result.rejects.append(reject)
        return result
    name = _stem(path)
    _accept(result, str(path), "0", lambda: _from_poscar(text, name), min_distance)
    return result


def _from_poscar(text: str, name: str) -> Data:
    import ase.io

    lines = text.splitlines()
    species = lines[5].split() if len(lines) > 5 else []
    if not species or not all(token.isalpha() for token in species):
        raise RecordError(
            "POSCAR without element names (line 6 should list them, as VASP 5 writes it; "
            "a VASP 4 file names them only in its POTCAR)"
        )
    note = None
    if any(token in HYDROGEN_ISOTOPES for token in species):
        counts = [int(c) for c in lines[6].split()[: len(species)]]
        note = _isotope_note([s for s, c in zip(species, counts, strict=False) for _ in range(c)])
        lines[5] = " ".join("H" if t in HYDROGEN_ISOTOPES else t for t in species)
    atoms = ase.io.read(io.StringIO("\n".join(lines) + "\n"), format="vasp")
    title = lines[0].strip()
    return _noted(S.from_ase(atoms, name=name or title), note)


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


# Tags by which a CIF states its symmetry, in pymatgen's spelling (CIF tags are case-insensitive
# and DDLm / CIF 2 writes them with a dot: `_space_group.name_H-M_alt`).
SYMOP_TAGS = (
    "_symmetry_equiv_pos_as_xyz",
    "_space_group_symop_operation_xyz",
)
HALL_TAGS = ("_space_group_name_Hall", "_symmetry_space_group_name_Hall")
SYMBOL_TAGS = ("_symmetry_space_group_name_H-M", "_space_group_name_H-M_alt", *HALL_TAGS)
NUMBER_TAGS = ("_space_group_IT_number", "_symmetry_Int_Tables_number")
_CANONICAL_TAGS = {t.lower(): t for t in (*SYMOP_TAGS, *SYMBOL_TAGS, *NUMBER_TAGS)}
_P1 = {"p1", "1", "p 1"}


def _stated(value) -> str | None:
    """A CIF value, or None for CIF's unknown / inapplicable markers and empty values."""
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else None
    text = " ".join(str(value).split()) if value is not None else ""
    return None if text in ("", "?", ".") else text


@functools.cache
def _spglib_settings() -> dict[int, object]:
    """spglib's ``SpaceGroupType`` of each of its 530 space-group settings, by Hall number."""
    import spglib

    with warnings.catch_warnings():  # spglib's notice about its error handling, not about data
        warnings.simplefilter("ignore", DeprecationWarning)
        return {n: spglib.get_spacegroup_type(n) for n in range(1, 531)}


def _hall_symbols() -> dict[int, str]:
    """spglib's Hall symbol of each setting, by Hall number."""
    return {n: t.hall_symbol for n, t in _spglib_settings().items()}


def _operations(hall_number: int) -> list[str]:
    """Symmetry operations ``"x,y,z"`` (centring included) of one of spglib's settings."""
    import spglib
    from pymatgen.core.operations import SymmOp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ops = spglib.get_symmetry_from_database(hall_number)
    return [
        SymmOp.from_rotation_and_translation(r, t).as_xyz_str()
        for r, t in zip(ops["rotations"], ops["translations"], strict=True)
    ]


def _hm_operations(symbol: str) -> tuple[list[str], str] | None:
    """Operations of an H-M symbol pymatgen does not read (``P 21/c``, ``R -3 m :H``,
    ``F d -3 m :2``), with spglib's Hall symbol of the setting: short or full symbol, subscripts
    with or without ``_``, an optional ``:choice`` (origin, axes, cell); without a choice, the
    first setting spglib lists (the standard one of International Tables)."""
    text, _, choice = symbol.partition(":")

    def plain(name: str) -> str:
        return re.sub(r"[\s_]", "", name)

    wanted = plain(text)
    for number, t in _spglib_settings().items():
        names = {t.international_short, t.international_full, *t.international.split(" = ")}
        # Monoclinic symbols are also written without their 1s: P 1 21/n 1 -> P 21/n.
        names |= {" ".join(x for x in n.split() if x != "1") for n in names if len(n.split()) > 2}
        if wanted in {plain(n) for n in names} and choice.strip() in ("", t.choice):
            return _operations(number), f"{t.hall_symbol!r}" + (
                f", setting {t.choice}" if t.choice else ""
            )
    return None


def _hall_operations(hall: str) -> list[str] | None:
    """Symmetry operations ``"x,y,z"`` of a Hall symbol (spglib's table of the 530 settings)."""
    wanted = " ".join(hall.split())
    table = _hall_symbols()
    exact = [n for n, h in table.items() if " ".join(h.split()) == wanted]
    loose = [n for n, h in table.items() if " ".join(h.split()).lower() == wanted.lower()]
    found = exact or (loose if len(loose) == 1 else [])
    if not found:
        return None
    return _operations(found[0])


@functools.cache
def _group_size(tag: str, value: str) -> int | None:
    """Number of operations (centring included) of a stated space group; None if unknown."""
    from pymatgen.symmetry.groups import SpaceGroup

    if tag in HALL_TAGS:
        ops = _hall_operations(value)
        return None if ops is None else len(ops)
    try:
        if tag in NUMBER_TAGS:
            return len(SpaceGroup.from_int_number(int(float(value))).symmetry_ops)
        return len(SpaceGroup(value).symmetry_ops)
    except Exception:  # noqa: BLE001  (pymatgen raises ValueError or KeyError for unknown symbols)
        found = _hm_operations(value)
        return None if found is None else len(found[0])


def _element_ok(symbol: str) -> bool:
    """Whether pymatgen's CIF reader can find an element in a type symbol or label: its first two
    letters or its first letter (``Fe2+``, ``O1``, ``Na``); D and T are hydrogen isotopes."""
    from pymatgen.core import Element

    letters = re.match(r"[A-Za-z]*", symbol).group()
    return bool(letters) and (
        Element.is_valid_symbol(letters[:2].title())
        or Element.is_valid_symbol(letters[:1].upper())
        or letters in ("Wat", "wat")
    )


def _prepare_cif_block(block) -> tuple[bool, list[str]]:
    """Make a pymatgen ``CifBlock`` say what its file says in the spelling pymatgen reads.

    Tags are renamed from DDLm's dotted form and other capitalisations, a missing
    ``_atom_site_label`` is made from ``_atom_site_type_symbol``, a Hall symbol (which pymatgen
    does not read) becomes a list of symmetry operations, and a type symbol with no element
    raises :class:`RecordError` naming it. Returns ``(changed, notes)``.
    """
    changed, notes = False, []
    renames = {}
    for tag in list(block.data):
        new = tag.replace(".", "_")
        new = _CANONICAL_TAGS.get(new.lower(), new)
        if new != tag:
            renames[tag] = new
    if renames:
        changed = True
        block.data = {renames.get(t, t): v for t, v in block.data.items()}
        block.loops = [[renames.get(t, t) for t in loop] for loop in block.loops]
    data = block.data
    symbols = data.get("_atom_site_type_symbol")
    labels = data.get("_atom_site_label")
    if symbols is None and labels is None:
        raise RecordError(
            "broken CIF: no atom sites (neither _atom_site_type_symbol nor _atom_site_label)"
        )
    symbols = [symbols] if isinstance(symbols, str) else symbols
    labels = [labels] if isinstance(labels, str) else labels
    elements = symbols if symbols is not None else labels
    for k, symbol in enumerate(elements):
        if not _element_ok(symbol):
            where = f"atom site {k}" + (f" ({labels[k]})" if labels and k < len(labels) else "")
            raise RecordError(f"unknown element symbol {symbol!r} at {where}")
    # pymatgen reads D and T as H without a word; say so (sites of the asymmetric unit).
    letters = [re.match(r"[A-Za-z]*", symbol).group() for symbol in elements]
    isotopes = _isotope_note([x for x in letters if x in HYDROGEN_ISOTOPES], unit="site")
    if isotopes is not None:
        notes.append(isotopes)
    if labels is None:
        data["_atom_site_label"] = [f"{s}{k}" for k, s in enumerate(symbols)]
        for loop in block.loops:
            if "_atom_site_type_symbol" in loop:
                loop.insert(0, "_atom_site_label")
        changed = True
    has_symops = any(data.get(t) for t in SYMOP_TAGS)
    hall = next((_stated(data.get(t)) for t in HALL_TAGS if _stated(data.get(t))), None)
    if not has_symops and hall is not None:
        ops = _hall_operations(hall)
        if ops is not None:
            data["_symmetry_equiv_pos_as_xyz"] = ops
            block.loops.append(["_symmetry_equiv_pos_as_xyz"])
            notes.append(f"symmetry operations generated from the Hall symbol {hall!r}")
            changed = True
    elif has_symops:
        ops = data.get("_symmetry_equiv_pos_as_xyz") or data.get("_space_group_symop_operation_xyz")
        n_listed = 1 if isinstance(ops, str) else len(ops)
        for tag in (*SYMBOL_TAGS, *NUMBER_TAGS):
            value = _stated(data.get(tag))
            size = None if value is None else _group_size(tag, value)
            if size is not None and size != n_listed:
                notes.append(
                    f"the file states space group {value!r} ({tag}, {size} operations) but lists "
                    f"{n_listed} symmetry operations; the list was applied"
                )
                break
    return changed, notes


def _stated_group(data: dict) -> tuple[str, str] | None:
    """``(tag, value)`` of the first space group the block states other than P1, else None."""
    for tag in (*SYMBOL_TAGS, *NUMBER_TAGS):
        value = _stated(data.get(tag))
        if value is not None and value.replace(" ", "").lower() not in _P1:
            return tag, value
    return None


def _parser_notes(caught, logged: Sequence[str] = ()) -> list[str]:
    """pymatgen's warnings, each once: those it raised (``caught``) and those it only logged in
    ``CifParser.warnings`` (its closing summary repeats the others)."""
    notes = []
    for text in [str(w.message) for w in caught] + [str(m) for m in logged]:
        text = text.removeprefix("Issues encountered while parsing CIF: ")
        for line in text.splitlines():
            line = " ".join(line.split())
            if line and line not in notes:
                notes.append(line)
    return notes


def _hm_fallback(cif, stated: tuple[str, str] | None) -> tuple[list, list[str]] | None:
    """Structures and notes of a block whose H-M symbol pymatgen could not read, with the
    operations spglib gives that symbol (None when spglib does not know it either)."""
    from pymatgen.io.cif import CifParser

    if stated is None or stated[0] not in SYMBOL_TAGS or stated[0] in HALL_TAGS:
        return None
    found = _hm_operations(stated[1])
    if found is None:
        return None
    ops, setting = found
    block = next(iter(cif.data.values()))
    block.data["_symmetry_equiv_pos_as_xyz"] = ops
    block.loops.append(["_symmetry_equiv_pos_as_xyz"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parser = CifParser.from_str(str(cif))
        structures = parser.parse_structures(primitive=False, on_error="raise")
    note = f"symmetry operations generated from {stated[0]} {stated[1]!r} (spglib: {setting})"
    return structures, [note, *_parser_notes(caught, parser.warnings)]


def _parse_cif_block(block: str, name: str) -> Data:
    """One CIF block -> crystal Data, with its symmetry applied.

    The space group may be given by a list of operations, an H-M symbol, a Hall symbol or an
    International Tables number, in CIF 1 or DDLm spelling. A block that states a space group
    which cannot be applied is rejected (never read as P1); every warning of pymatgen's parser
    becomes the record's ``note`` (or, when the block fails, part of the reason).
    """
    from pymatgen.io.cif import CifFile, CifParser

    parser = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cif = CifFile.from_str(block)
            blocks = list(cif.data.values())
            if len(blocks) != 1:
                raise RecordError(f"broken CIF: block gives {len(blocks)} data blocks")
            changed, notes = _prepare_cif_block(blocks[0])
            stated = _stated_group(blocks[0].data)
            text = str(cif) if changed else block
            parser = CifParser.from_str(text)
            structures = parser.parse_structures(primitive=False, on_error="raise")
        except RecordError:
            raise
        except Exception as exc:
            logged = parser.warnings if parser is not None else []
            details = "; ".join(_parser_notes(caught, logged))[:300]
            message = " ".join(str(exc).split()) or type(exc).__name__
            message = message.removeprefix("No structure parsed for section 1 in CIF. ")
            raise RecordError(
                f"broken CIF: {message}" + (f" ({details})" if details else "")
            ) from exc
    parser_notes = _parser_notes(caught, parser.warnings)
    fallback = _hm_fallback(cif, stated) if "Defaulting to P1" in str(parser_notes) else None
    if fallback is not None:
        structures, parser_notes = fallback
    if any("Defaulting to P1" in n for n in parser_notes):
        if stated is not None:
            tag, value = stated
            raise RecordError(
                f"symmetry could not be applied: space group {value!r} ({tag}) is not a symbol "
                "or number pymatgen or spglib know, and the block lists no symmetry operations"
            )
        parser_notes = [
            n
            if "Defaulting to P1" not in n
            else "no space group or symmetry operations; read as P1"
            for n in parser_notes
        ]
    if len(structures) != 1:
        raise RecordError(f"broken CIF: block gives {len(structures)} structures")
    return _noted(S.from_pymatgen(structures[0], name=name), *notes, *parser_notes)


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
        name = block_name or f"{_stem(path)}:{k}"
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
        name = material or f"{_stem(path)}:{k}"
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
    if kind == "sdf":
        return read_sdf(path, min_distance)
    if kind == "xyz":
        return read_xyz(path, min_distance)
    if kind == "cif":
        return read_cif(path, min_distance)
    if kind == "csv":
        return read_cdvae_csv(path, properties, min_distance)
    if kind == "vasp":
        return read_vasp(path, min_distance)
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
        text, reject = _read_text(file, kind.upper())
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
    "input_problems",
]
