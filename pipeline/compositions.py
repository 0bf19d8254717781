"""Compositions to predict structures for (CSP): formulas or the cells of a CDVAE CSV.

``ldsm generate --composition SrTiO3`` and ``--compositions FILE`` read their input here. A
record is named by its input (the formula, or the CSV's ``material_id``) and keeps its position;
the cell's atoms are the formula's amounts (integers: ``SrTiO3`` is five atoms) in the order of
the formula, or the atoms of the CSV's CIF in its order.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pipeline import keys as K


class CompositionRecord(BaseModel):
    """One input record: its ``name`` and the atomic numbers ``z`` of the cell's atoms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    z: tuple[int, ...] = Field(min_length=1)


def parse_formula(formula: str) -> tuple[int, ...]:
    """Atomic numbers of a formula's atoms, ``"SrTiO3" -> (38, 22, 8, 8, 8)`` (pymatgen's parser).

    Raises ``ValueError`` for an unknown element or a non-integer amount.
    """
    from pymatgen.core import Composition, Element

    try:
        composition = Composition(formula)
    except Exception as err:  # noqa: BLE001 - pymatgen raises several types for a bad formula
        raise ValueError(f"{formula!r} is not a chemical formula ({err})") from err
    z = []
    for element, amount in composition.items():
        if not isinstance(element, Element):
            raise ValueError(f"{formula!r}: {element} is not an element")
        if abs(amount - round(amount)) > 1e-8 or round(amount) < 1:
            raise ValueError(f"{formula!r}: {element} has a non-integer amount {amount}")
        z += [element.Z] * round(amount)
    if not z:
        raise ValueError(f"{formula!r} has no atoms")
    return tuple(z)


def read_compositions(path: str | Path) -> list[CompositionRecord]:
    """The records of ``path``, in file order.

    A ``.csv`` with a ``cif`` column is a CDVAE file: one record per row, named by its
    ``material_id``, with the atoms of its cell. Anything else holds one formula per line (blank
    lines and ``#`` comments skipped), each named by its formula. A row or line that cannot be
    read raises ``ValueError`` naming it: the output is one file per input record, in order, so
    a silently dropped record would shift every name after it.
    """
    from pipeline.io import read_cdvae_csv

    path = Path(path)
    if path.suffix.lower() == ".csv":
        result = read_cdvae_csv(path, min_distance=0.0)
        if result.rejects:
            first = result.rejects[0]
            raise ValueError(
                f"{path}: {len(result.rejects)} unreadable rows (first: {first.record}: "
                f"{first.reason})"
            )
        return [
            CompositionRecord(name=str(d[K.NAME]), z=tuple(d[K.Z].tolist())) for d in result.records
        ]
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        formula = line.split("#", 1)[0].strip()
        if not formula:
            continue
        try:
            records.append(CompositionRecord(name=formula, z=parse_formula(formula)))
        except ValueError as err:
            raise ValueError(f"{path}:{number}: {err}") from err
    return records


def safe_name(name: str) -> str:
    """``name`` as a file-name part: characters other than letters, digits, ``-_.`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100]


__all__ = ["CompositionRecord", "parse_formula", "read_compositions", "safe_name"]
