"""SDF / MOL reader: MOL blocks separated by ``$$$$``, bonds, orders and formal charges kept.

SD properties ``y`` (space-separated floats) and ``smiles`` are read back when present. A block
RDKit calls 2-D (header ``2D``, or no dimension and every z = 0) gets ``structures.FLAT_NOTE``.
A truncated or malformed block is rejected alone (:func:`pipeline.records.read_records`).
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline import converters as C
from pipeline import keys as K
from pipeline import structures as S
from pipeline.records import (
    ReadResult,
    Reject,
    float_row,
    isotope_note,
    noted,
    read_records,
    stem,
)
from pipeline.structures import Record


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
    return read_records(path, "SDF", _split_sdf, min_distance)


def _split_sdf(path: Path, text: str):
    from rdkit import Chem, rdBase

    for k, block in enumerate(_sdf_blocks(text)):
        lines = block.splitlines()
        title = lines[0].strip() if lines else ""
        record = f"{k} ({title})" if title else str(k)
        problem = _check_molblock(lines)
        if problem is not None:
            yield Reject(str(path), record, problem)
            continue
        with rdBase.CaptureErrorLog() as log:
            mol = Chem.MolFromMolBlock(block, sanitize=False, removeHs=False, strictParsing=True)
        if mol is None:
            message = " ".join(log.messages).strip().replace("\n", " ")
            reason = f"RDKit cannot parse the MOL block: {message[:200]}".rstrip(": ")
            yield Reject(str(path), record, reason)
            continue
        props = _sd_properties(lines)
        name = title or f"{stem(path)}:{k}"
        yield record, lambda m=mol, n=name, p=props: _from_sd(m, n, p)


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


def _from_sd(mol, name: str, props: dict[str, str]) -> Record:
    isotopes = [(a.GetSymbol(), a.GetIsotope()) for a in mol.GetAtoms() if a.GetIsotope()]
    hydrogen = [{2: "D", 3: "T"}.get(i, "") for sym, i in isotopes if sym == "H"]
    others = sorted({f"{i}{sym}" for sym, i in isotopes if sym != "H" or i not in (2, 3)})
    notes = [
        None if mol.GetConformer().Is3D() else S.FLAT_NOTE,
        isotope_note(hydrogen),
        f"isotope labels not kept: {', '.join(others)}" if others else None,
    ]
    data = noted(C.from_rdkit(mol, name=name), *notes)
    if "y" in props:
        data[K.Y] = float_row(props["y"].split())
    if "smiles" in props:
        data[K.SMILES] = props["smiles"]
    return data
