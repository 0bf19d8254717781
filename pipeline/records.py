"""The shape every reader shares: records, rejects, and reading a file into them.

A reader turns one file into a :class:`ReadResult`: the good records as
:class:`pipeline.structures.Record` (numpy arrays with the fields of :mod:`pipeline.keys`) and one :class:`Reject` ``(file, record, reason)`` for everything that could
not be used. :func:`read_records` is the whole shape: the file's text (decompressed; an
unreadable, empty or binary file is one Reject), cut into records by the format's own ``split``,
each record built by :func:`accept` (a parser error or a failed
:func:`pipeline.structures.check_structure` is that record's Reject, a parser warning its
``note``). The formats are in :mod:`pipeline.sdf_reader`, :mod:`pipeline.ase_reader` and
:mod:`pipeline.cif_reader`; :mod:`pipeline.io` chooses among them by file name.

Isotopes, one rule for every reader: deuterium and tritium (``D``, ``T``) are read as hydrogen
(atomic number 1) and the note says so (:func:`isotope_note`).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import keys as K
from pipeline import structures as S
from pipeline.structures import Record

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
    """``records``: the good structures in file order; ``rejects``: everything else;
    ``skipped``: files of a folder not read because the same structures were read from a file
    beside them (``pipeline.io.read_structures``), each with the reason."""

    records: list[Record] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    skipped: list[Reject] = field(default_factory=list)

    def extend(self, other: ReadResult) -> None:
        self.records.extend(other.records)
        self.rejects.extend(other.rejects)
        self.skipped.extend(other.skipped)


def read_text(path: Path, what: str) -> tuple[str | None, Reject | None]:
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


def stem(path: Path) -> str:
    """File name without its suffix and without a compression suffix (``a.cif.gz`` -> ``a``)."""
    stem = Path(path.stem) if path.suffix.lower() in COMPRESSION else path
    return stem.stem


def accept(
    result: ReadResult, file: str, record: str, make: Callable[[], Record], min_distance: float
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
    data = noted(data, *dict.fromkeys(" ".join(str(w.message).split()) for w in about_data))
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


def noted(data: Record, *notes: str | None) -> Record:
    """``data`` with ``notes`` appended to its ``note`` ("; "-joined, empty ones skipped)."""
    old = getattr(data, K.NOTE, None)
    kept = [n for n in (old, *notes) if n]
    if kept:
        data[K.NOTE] = "; ".join(kept)
    return data


def isotope_note(symbols: Sequence[str], unit: str = "atom") -> str | None:
    """The note for hydrogen-isotope symbols read as H (None when there are none)."""
    counts = {s: sum(1 for x in symbols if x == s) for s in HYDROGEN_ISOTOPES}
    parts = [
        f"{n} {HYDROGEN_ISOTOPES[s]} {unit}{'s' if n > 1 else ''}" for s, n in counts.items() if n
    ]
    if not parts:
        return None
    return f"{' and '.join(parts)} read as hydrogen (isotopes are not kept)"


def float_row(values: Sequence[str]) -> np.ndarray:
    """``values`` as a ``y`` row: (1, P) float32."""
    return np.array([float(v) for v in values], dtype=np.float32).reshape(1, -1)


# A format's ``split(path, text)`` yields, in file order, ``(record, make)`` for every record
# (``make()`` builds its Record) and a Reject for what cannot even be cut into a record.
Split = Callable[[Path, str], Iterable["tuple[str, Callable[[], Record]] | Reject"]]


def read_records(path: str | Path, what: str, split: Split, min_distance: float) -> ReadResult:
    """Read ``path`` (a ``what`` file, named in the reasons) with the format's ``split``: the
    text, or one Reject for an unreadable, empty or binary file; then every record built with
    :func:`accept`. Never raises on bad input."""
    path = Path(path)
    result = ReadResult()
    text, reject = read_text(path, what)
    if reject is not None:
        result.rejects.append(reject)
        return result
    for item in split(path, text):
        if isinstance(item, Reject):
            result.rejects.append(item)
        else:
            record, make = item
            accept(result, str(path), record, make, min_distance)
    return result
