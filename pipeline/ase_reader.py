"""Readers of the formats ASE parses: (extended) XYZ frames and VASP POSCAR / CONTCAR files.

- ``.xyz`` / ``.extxyz``: (extended) XYZ frames; a frame with ``Lattice=`` and ``pbc="T T T"``
  is a crystal.
- ``POSCAR*`` / ``CONTCAR*`` / ``.vasp`` / ``.poscar``: a VASP 5 structure (ASE's reader).

Both go through :func:`pipeline.records.read_records`; D and T become hydrogen with a note.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from pipeline import converters as C
from pipeline import structures as S
from pipeline.records import (
    HYDROGEN_ISOTOPES,
    ReadResult,
    RecordError,
    Reject,
    isotope_note,
    noted,
    read_records,
    stem,
)
from pipeline.structures import Record


def read_xyz(path: str | Path, min_distance: float = S.MIN_DISTANCE) -> ReadResult:
    """Frames of an XYZ or extended XYZ file; periodic frames become crystals.

    A frame whose atom-count line is not an integer ends the file (the frames after it cannot be
    located); a frame with a bad atom line is rejected alone.
    """
    return read_records(path, "XYZ", _split_xyz, min_distance)


def _split_xyz(path: Path, text: str):
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
            yield Reject(str(path), str(k), reason)
            return
        if i + 2 + n_atoms > len(lines):
            reason = (
                f"truncated frame: announces {n_atoms} atoms, file ends after "
                f"{len(lines) - i - 2} atom lines"
            )
            yield Reject(str(path), str(k), reason)
            return
        frame = "\n".join(lines[i : i + 2 + n_atoms]) + "\n"
        default_name = f"{stem(path)}:{k}"
        yield str(k), lambda f=frame, n=default_name: _from_frame(f, n)
        i += 2 + n_atoms
        k += 1


def _from_frame(frame: str, default_name: str) -> Record:
    import ase.io

    frame, note = _xyz_isotopes_to_hydrogen(frame)
    atoms = ase.io.read(io.StringIO(frame), format="extxyz")
    name = atoms.info.get("name", default_name)
    return noted(C.from_ase(atoms, name=str(name)), note)


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
    return "\n".join(lines) + "\n", isotope_note(found)


def read_vasp(path: str | Path, min_distance: float = S.MIN_DISTANCE) -> ReadResult:
    """The crystal of a VASP POSCAR / CONTCAR / ``.vasp`` file (ASE's reader, VASP 5 species
    line required: a VASP 4 file names its elements only in the POTCAR)."""
    return read_records(path, "POSCAR", _split_poscar, min_distance)


def _split_poscar(path: Path, text: str):
    name = stem(path)
    yield "0", lambda: _from_poscar(text, name)


def _from_poscar(text: str, name: str) -> Record:
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
        note = isotope_note([s for s, c in zip(species, counts, strict=False) for _ in range(c)])
        lines[5] = " ".join("H" if t in HYDROGEN_ISOTOPES else t for t in species)
    atoms = ase.io.read(io.StringIO("\n".join(lines) + "\n"), format="vasp")
    title = lines[0].strip()
    return noted(C.from_ase(atoms, name=name or title), note)
