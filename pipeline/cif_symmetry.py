"""Space-group symmetry of CIF blocks, in whatever way the block states it.

A CIF states its symmetry by a list of operations, an H-M symbol, a Hall symbol or an
International Tables number, in CIF 1 or DDLm (dotted) spelling. pymatgen's parser reads the
operations, most H-M symbols and numbers, and ignores Hall symbols; :func:`prepare_cif_block`
rewrites a block into the spelling pymatgen reads (Hall symbols turned into operations through
spglib's table of the 530 settings), and :func:`hm_fallback` applies an H-M symbol pymatgen does
not know with spglib's operations. Used by :mod:`pipeline.cif_reader`.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Sequence

from pipeline.records import HYDROGEN_ISOTOPES, RecordError, isotope_note

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


def prepare_cif_block(block) -> tuple[bool, list[str]]:
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
    isotopes = isotope_note([x for x in letters if x in HYDROGEN_ISOTOPES], unit="site")
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


def stated_group(data: dict) -> tuple[str, str] | None:
    """``(tag, value)`` of the first space group the block states other than P1, else None."""
    for tag in (*SYMBOL_TAGS, *NUMBER_TAGS):
        value = _stated(data.get(tag))
        if value is not None and value.replace(" ", "").lower() not in _P1:
            return tag, value
    return None


def parser_notes(caught, logged: Sequence[str] = ()) -> list[str]:
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


def hm_fallback(cif, stated: tuple[str, str] | None) -> tuple[list, list[str]] | None:
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
    return structures, [note, *parser_notes(caught, parser.warnings)]
