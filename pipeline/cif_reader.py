"""CIF and CDVAE CSV readers (pymatgen's CIF parser, conventional cell as written).

- ``.cif``: one or more ``data_`` blocks. The symmetry is applied whichever way the block states
  it (:mod:`pipeline.cif_symmetry`); a block that states a space group that cannot be applied is
  rejected, never read as P1; each warning of pymatgen's parser becomes the note. A missing
  ``_atom_site_label`` is made from the type symbols; an unknown element is named.
- ``.csv``: the CDVAE format, one CIF text per row in column ``cif``; ``material_id`` is the
  name; the columns named in ``properties`` become ``y (1, P)``.

CIF stores lattice parameters, not the orientation, so a CIF round trip keeps ``z``, ``frac`` and
the cell metric ``lattice @ lattice.T`` but may rotate ``lattice`` and ``pos``.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from pipeline import converters as C
from pipeline import keys as K
from pipeline import structures as S
from pipeline.cif_symmetry import hm_fallback, parser_notes, prepare_cif_block, stated_group
from pipeline.records import ReadResult, RecordError, Reject, float_row, noted, read_records, stem
from pipeline.structures import Record


def _cif_blocks(text: str) -> list[tuple[str, str]]:
    """``(block name, block text)`` for every ``data_`` block."""
    starts = [m.start() for m in re.finditer(r"(?im)^\s*data_", text)]
    blocks = []
    for a, b in zip(starts, [*starts[1:], len(text)], strict=True):
        block = text[a:b]
        name = block.strip().splitlines()[0].strip()[5:]
        blocks.append((name, block))
    return blocks


def parse_cif_block(block: str, name: str) -> Record:
    """One CIF block -> crystal Record, with its symmetry applied.

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
            changed, notes = prepare_cif_block(blocks[0])
            stated = stated_group(blocks[0].data)
            text = str(cif) if changed else block
            parser = CifParser.from_str(text)
            structures = parser.parse_structures(primitive=False, on_error="raise")
        except RecordError:
            raise
        except Exception as exc:
            logged = parser.warnings if parser is not None else []
            details = "; ".join(parser_notes(caught, logged))[:300]
            message = " ".join(str(exc).split()) or type(exc).__name__
            message = message.removeprefix("No structure parsed for section 1 in CIF. ")
            raise RecordError(
                f"broken CIF: {message}" + (f" ({details})" if details else "")
            ) from exc
    warned = parser_notes(caught, parser.warnings)
    fallback = hm_fallback(cif, stated) if "Defaulting to P1" in str(warned) else None
    if fallback is not None:
        structures, warned = fallback
    if any("Defaulting to P1" in n for n in warned):
        if stated is not None:
            tag, value = stated
            raise RecordError(
                f"symmetry could not be applied: space group {value!r} ({tag}) is not a symbol "
                "or number pymatgen or spglib know, and the block lists no symmetry operations"
            )
        warned = [
            n
            if "Defaulting to P1" not in n
            else "no space group or symmetry operations; read as P1"
            for n in warned
        ]
    if len(structures) != 1:
        raise RecordError(f"broken CIF: block gives {len(structures)} structures")
    return noted(C.from_pymatgen(structures[0], name=name), *notes, *warned)


def read_cif(path: str | Path, min_distance: float = S.MIN_DISTANCE) -> ReadResult:
    """Crystals of a CIF file, one per ``data_`` block."""
    return read_records(path, "CIF", _split_cif, min_distance)


def _split_cif(path: Path, text: str):
    blocks = _cif_blocks(text)
    if not blocks:
        yield Reject(str(path), "", "not a CIF file: no 'data_' block")
    for k, (block_name, block) in enumerate(blocks):
        name = block_name or f"{stem(path)}:{k}"
        yield f"{k} (data_{block_name})", lambda b=block, n=name: parse_cif_block(b, n)


def read_cdvae_csv(
    path: str | Path, properties: Sequence[str] = (), min_distance: float = S.MIN_DISTANCE
) -> ReadResult:
    """CDVAE CSV: column ``cif`` holds one CIF per row; ``properties`` columns -> ``y (1, P)``.

    The name of a row is its ``material_id`` (else ``<stem>:<row>``); ``record`` is ``row k`` with
    k counted from 0 over data rows.
    """
    return read_records(path, "CSV", lambda p, text: _split_csv(p, text, properties), min_distance)


def _split_csv(path: Path, text: str, properties: Sequence[str]):
    # A CIF of a big cell can pass csv's default field limit (128 kB); raise it, never lower it.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    missing = [c for c in ("cif", *properties) if c not in columns]
    if missing:
        reason = f"CSV has no column {', '.join(map(repr, missing))} (columns: {columns[:12]})"
        yield Reject(str(path), "", reason)
        return
    try:
        rows = list(reader)
    except csv.Error as exc:
        yield Reject(str(path), "", f"malformed CSV: {exc}")
        return
    for k, row in enumerate(rows):
        material = (row.get("material_id") or "").strip()
        name = material or f"{stem(path)}:{k}"
        record = f"row {k} ({material})" if material else f"row {k}"
        yield record, lambda r=row, n=name: _from_csv_row(r, n, properties)


def _from_csv_row(row: dict, name: str, properties: Sequence[str]) -> Record:
    cif = row.get("cif") or ""
    if not cif.strip():
        raise ValueError("empty 'cif' field")
    data = parse_cif_block(cif, name)
    if properties:
        values = []
        for p in properties:
            try:
                values.append(float(row[p]))
            except (TypeError, ValueError):
                raise ValueError(f"property {p!r} is not a number: {row[p]!r}") from None
        data[K.Y] = float_row([repr(v) for v in values])
    return data
