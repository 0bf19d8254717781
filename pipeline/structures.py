"""One structure = one :class:`Record` of numpy arrays: construction and checks.

Field names and shapes are those of :mod:`pipeline.keys`:

- every structure: ``z (N,) int64``, ``pos (N, 3) float32`` Angstrom, ``name: str``;
- crystals: ``frac (N, 3) float32`` in [0, 1) and ``lattice (1, 3, 3) float32`` whose rows are the
  lattice vectors, with ``pos = frac @ lattice[0]`` (computed in float64, stored in float32);
- molecules with bonds: ``edge_index (2, 2B) int64``, ``bond_order (2B,) float32``,
  ``charge (N,) int64`` formal charges;
- optional ``y (1, P) float32``, ``smiles: str`` and ``note: str``.

Records are what readers give, checks judge, writers write and chunks store: numpy and strings
only, so reading and screening never import torch. A network sees them as a PyG batch
(:func:`pipeline.structure_set.to_batch`), and many of them are kept flat as a
:class:`pipeline.structure_set.StructureSet` (the data set cache).

The converters to and from RDKit, ASE and pymatgen are in :mod:`pipeline.converters`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

MAX_Z = 118
# Atoms closer than this are the same atom written twice (the shortest real bond, H-H, is 0.74 A).
MIN_DISTANCE = 0.1

# The note a reader gives a molecule whose file has only 2-D coordinates (an SDF whose header
# says 2D, or has no dimension and every z = 0: RDKit's rule); its 3-D checks cannot judge it.
FLAT_NOTE = "2-D coordinates (the MOL block is 2D: every z is 0), no 3-D geometry to judge"


@dataclass(slots=True, eq=False)
class Record:
    """One molecule or crystal; the fields are :mod:`pipeline.keys`' names, None where absent.

    ``record.z`` and ``record["z"]`` are the same field (item access as ``torch_geometric``'s
    ``Data`` has it, so code that names fields by :mod:`pipeline.keys` constants reads either).
    Build records with :func:`make_molecule` / :func:`make_crystal`, which fix the dtypes.
    """

    z: np.ndarray  # (N,) int64 atomic numbers
    pos: np.ndarray  # (N, 3) float32 Cartesian Angstrom
    name: str = ""
    frac: np.ndarray | None = None  # (N, 3) float32 in [0, 1), crystals
    lattice: np.ndarray | None = None  # (1, 3, 3) float32, rows a, b, c in Angstrom, crystals
    edge_index: np.ndarray | None = None  # (2, 2B) int64, both directions of every bond
    bond_order: np.ndarray | None = None  # (2B,) float32: 1, 2, 3 or 1.5 (aromatic)
    charge: np.ndarray | None = None  # (N,) int64 formal charges, with the bonds
    y: np.ndarray | None = None  # (1, P) float32 properties
    smiles: str | None = None
    note: str | None = None  # what a reader noticed without rejecting the record

    def __getitem__(self, key: str):
        """The field ``key``; ``KeyError`` for a name that is not a field."""
        if key not in self.__slots__:
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value) -> None:
        """Set the field ``key``; ``KeyError`` for a name that is not a field."""
        if key not in self.__slots__:
            raise KeyError(key)
        setattr(self, key, value)

    def keys(self) -> list[str]:
        """The fields that are set (not None), in declaration order."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    @property
    def num_nodes(self) -> int:
        """Number of atoms N."""
        return len(self.z)


# ---------------------------------------------------------------------------------------------
# Construction and checks
# ---------------------------------------------------------------------------------------------


def wrap_frac(frac: np.ndarray) -> np.ndarray:
    """Fractional coordinates ``(N, 3)`` (any float, any range) -> float32 in [0, 1).

    ``x % 1`` can round to exactly 1.0 in float32 (x = -1e-9, or 0.99999999); those become 0.0.
    """
    wrapped = np.mod(np.asarray(frac, dtype=np.float64), 1.0).astype(np.float32)
    wrapped[wrapped >= 1.0] = 0.0
    return wrapped


def _rows(y) -> np.ndarray | None:
    return None if y is None else np.array(y, dtype=np.float32).reshape(1, -1)


def make_molecule(
    z,
    pos,
    *,
    name: str,
    edge_index=None,
    bond_order=None,
    charge=None,
    y=None,
    smiles: str | None = None,
) -> Record:
    """A molecule from atomic numbers ``z (N,)`` and positions ``pos (N, 3)`` in Angstrom (arrays,
    lists or CPU tensors; copied).

    ``edge_index (2, 2B)``, ``bond_order (2B,)`` and ``charge (N,)`` go together (bonds known;
    no ``charge`` means all zero); ``y`` is reshaped to ``(1, P)``.
    """
    record = Record(
        z=np.array(z, dtype=np.int64).reshape(-1),
        pos=np.array(pos, dtype=np.float32).reshape(-1, 3),
        name=str(name),
        y=_rows(y),
        smiles=None if smiles is None else str(smiles),
    )
    if edge_index is not None:
        record.edge_index = np.array(edge_index, dtype=np.int64).reshape(2, -1)
        record.bond_order = np.array(bond_order, dtype=np.float32).reshape(-1)
        record.charge = (
            np.zeros(len(record.z), dtype=np.int64)
            if charge is None
            else np.array(charge, dtype=np.int64).reshape(-1)
        )
    return record


def make_crystal(z, frac, lattice, *, name: str, y=None) -> Record:
    """A crystal from ``z (N,)``, fractional ``frac (N, 3)`` (wrapped into [0, 1)) and
    ``lattice (3, 3)`` whose rows are the lattice vectors (Angstrom).

    ``pos = frac @ lattice`` is computed in float64 from the float32 values that are stored, so
    ``pos``, ``frac`` and ``lattice`` agree to float32 rounding.
    """
    frac32 = wrap_frac(frac)
    lat32 = np.array(lattice, dtype=np.float32).reshape(3, 3)
    pos = (frac32.astype(np.float64) @ lat32.astype(np.float64)).astype(np.float32)
    return Record(
        z=np.array(z, dtype=np.int64).reshape(-1),
        pos=pos,
        name=str(name),
        frac=frac32,
        lattice=lat32.reshape(1, 3, 3),
        y=_rows(y),
    )


def is_crystal(data: Record) -> bool:
    """True for a periodic structure (it has a lattice); a ``Data`` is read the same way."""
    return getattr(data, "lattice", None) is not None


def _min_distance_molecule(pos: np.ndarray) -> tuple[float, int, int]:
    d = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
    np.fill_diagonal(d, np.inf)
    i, j = np.unravel_index(np.argmin(d), d.shape)
    return float(d[i, j]), int(i), int(j)


def _min_distance_periodic(frac: np.ndarray, lattice: np.ndarray) -> tuple[float, int, int]:
    """Shortest distance between two atoms or an atom and its own image ``(d, i, j)``.

    Differences are wrapped to [-0.5, 0.5) and then the 27 neighbouring cells are searched, which
    finds the minimum image for any cell that is not extremely skewed.
    """
    diff = frac[None, :, :] - frac[:, None, :]  # (N, N, 3)
    diff -= np.round(diff)
    shifts = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)])
    cart = (diff[:, :, None, :] + shifts[None, None, :, :]) @ lattice  # (N, N, 27, 3)
    d = np.linalg.norm(cart, axis=-1)
    n = len(frac)
    d[np.arange(n), np.arange(n), 13] = np.inf  # shift (0, 0, 0) of an atom with itself
    d = d.min(axis=2)
    i, j = np.unravel_index(np.argmin(d), d.shape)
    return float(d[i, j]), int(i), int(j)


def check_structure(data: Record, min_distance: float = MIN_DISTANCE) -> str | None:
    """Why ``data`` is not a usable structure, or None when it is.

    Catches no atoms, unknown elements (z outside 1..118), non-finite coordinates or cell, a
    singular cell, and two atoms (or an atom and its periodic image) closer than ``min_distance``.
    """
    z = np.asarray(data.z)
    if z.size == 0:
        return "no atoms"
    bad = (z < 1) | (z > MAX_Z)
    if bad.any():
        return f"unknown element (atomic number {int(z[bad][0])}) at atom {int(np.argmax(bad))}"
    pos = np.asarray(data.pos, dtype=np.float64)
    if not np.isfinite(pos).all():
        return f"non-finite coordinates at atom {int(np.argmax(~np.isfinite(pos).all(axis=1)))}"
    if is_crystal(data):
        lattice = np.asarray(data.lattice, dtype=np.float64).reshape(3, 3)
        if not np.isfinite(lattice).all():
            return "non-finite lattice"
        if abs(np.linalg.det(lattice)) < 1e-6:
            return "singular lattice (cell volume ~ 0)"
        frac = np.asarray(data.frac, dtype=np.float64)
        if not np.isfinite(frac).all():
            return "non-finite fractional coordinates"
        d, i, j = _min_distance_periodic(frac, lattice)
    elif len(z) > 1:
        d, i, j = _min_distance_molecule(pos)
    else:
        return None
    if d < min_distance:
        what = "its own periodic image" if i == j else f"atom {j}"
        return f"overlapping atoms: atom {i} is {d:.3g} A from {what} (< {min_distance} A)"
    return None
