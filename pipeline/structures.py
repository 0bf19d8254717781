"""One structure = one ``torch_geometric.data.Data``: construction, checks, and many of them.

Field names and shapes are those of :mod:`pipeline.keys`:

- every structure: ``z (N,) int64``, ``pos (N, 3) float32`` Angstrom, ``name: str``;
- crystals: ``frac (N, 3) float32`` in [0, 1) and ``lattice (1, 3, 3) float32`` whose rows are the
  lattice vectors, with ``pos = frac @ lattice[0]`` (computed in float64, stored in float32);
- molecules with bonds: ``edge_index (2, 2B) int64``, ``bond_order (2B,) float32``,
  ``charge (N,) int64`` formal charges;
- optional ``y (1, P) float32`` and ``smiles: str``.

The converters to and from RDKit, ASE and pymatgen are in :mod:`pipeline.converters`.

:class:`StructureSet` is the compact collated form of many structures (flat tensors plus per-graph
row counts) that the cache stores and that data loaders index without building 10^5 Data objects.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from pipeline import keys as K

MAX_Z = 118
# Atoms closer than this are the same atom written twice (the shortest real bond, H-H, is 0.74 A).
MIN_DISTANCE = 0.1

# The note a reader gives a molecule whose file has only 2-D coordinates (an SDF whose header
# says 2D, or has no dimension and every z = 0: RDKit's rule); its 3-D checks cannot judge it.
FLAT_NOTE = "2-D coordinates (the MOL block is 2D: every z is 0), no 3-D geometry to judge"


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
) -> Data:
    """A molecule Data from atomic numbers ``z (N,)`` and positions ``pos (N, 3)`` in Angstrom.

    ``edge_index (2, 2B)``, ``bond_order (2B,)`` and ``charge (N,)`` go together (bonds known);
    ``y`` is reshaped to ``(1, P)``.
    """
    data = Data(
        z=torch.as_tensor(np.asarray(z), dtype=torch.int64),
        pos=torch.as_tensor(np.asarray(pos, dtype=np.float32)).reshape(-1, 3),
    )
    if edge_index is not None:
        data.edge_index = torch.as_tensor(np.asarray(edge_index), dtype=torch.int64).reshape(2, -1)
        data.bond_order = torch.as_tensor(np.asarray(bond_order, dtype=np.float32)).reshape(-1)
        n = data.z.numel()
        data.charge = (
            torch.zeros(n, dtype=torch.int64)
            if charge is None
            else torch.as_tensor(np.asarray(charge), dtype=torch.int64)
        )
    if y is not None:
        data.y = torch.as_tensor(np.asarray(y, dtype=np.float32)).reshape(1, -1)
    data.name = str(name)
    if smiles is not None:
        data.smiles = str(smiles)
    return data


def make_crystal(z, frac, lattice, *, name: str, y=None) -> Data:
    """A crystal Data from ``z (N,)``, fractional ``frac (N, 3)`` (wrapped into [0, 1)) and
    ``lattice (3, 3)`` whose rows are the lattice vectors (Angstrom).

    ``pos = frac @ lattice`` is computed in float64 from the float32 values that are stored, so
    ``pos``, ``frac`` and ``lattice`` agree to float32 rounding.
    """
    frac32 = wrap_frac(frac)
    lat32 = np.asarray(lattice, dtype=np.float32).reshape(3, 3)
    pos = (frac32.astype(np.float64) @ lat32.astype(np.float64)).astype(np.float32)
    data = Data(
        z=torch.as_tensor(np.asarray(z), dtype=torch.int64),
        pos=torch.from_numpy(pos),
        frac=torch.from_numpy(frac32),
        lattice=torch.from_numpy(lat32.copy()).reshape(1, 3, 3),
    )
    if y is not None:
        data.y = torch.as_tensor(np.asarray(y, dtype=np.float32)).reshape(1, -1)
    data.name = str(name)
    return data


def is_crystal(data: Data) -> bool:
    """True for a periodic structure (it has a lattice)."""
    return getattr(data, K.LATTICE, None) is not None


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


def check_structure(data: Data, min_distance: float = MIN_DISTANCE) -> str | None:
    """Why ``data`` is not a usable structure, or None when it is.

    Catches no atoms, unknown elements (z outside 1..118), non-finite coordinates or cell, a
    singular cell, and two atoms (or an atom and its periodic image) closer than ``min_distance``.
    """
    z = data.z.numpy()
    if z.size == 0:
        return "no atoms"
    bad = (z < 1) | (z > MAX_Z)
    if bad.any():
        return f"unknown element (atomic number {int(z[bad][0])}) at atom {int(np.argmax(bad))}"
    pos = data.pos.numpy().astype(np.float64)
    if not np.isfinite(pos).all():
        return f"non-finite coordinates at atom {int(np.argmax(~np.isfinite(pos).all(axis=1)))}"
    if is_crystal(data):
        lattice = data.lattice.numpy().reshape(3, 3).astype(np.float64)
        if not np.isfinite(lattice).all():
            return "non-finite lattice"
        if abs(np.linalg.det(lattice)) < 1e-6:
            return "singular lattice (cell volume ~ 0)"
        frac = data.frac.numpy().astype(np.float64)
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


# ---------------------------------------------------------------------------------------------
# Many structures
# ---------------------------------------------------------------------------------------------


class StructureSet(Sequence):
    """Many structures stored flat: a ``Sequence[Data]`` that builds each Data on access.

    For every tensor key of :mod:`pipeline.keys` present in at least one record the set holds
    ``values[key]``: the records' tensors concatenated along dim 0 (nodes, edges or graphs), and
    ``counts[key] (num_graphs,) int64``: the rows each record contributes (0 where it lacks the
    key). Edge indices stay local to their structure. String attributes are lists with None where
    absent. ``state_dict()`` holds only tensors, lists and strings, so it loads with
    ``torch.load(weights_only=True)``.
    """

    def __init__(
        self,
        values: dict[str, Tensor],
        counts: dict[str, Tensor],
        strings: dict[str, list],
        has: dict[str, Tensor] | None = None,
    ) -> None:
        self.values, self.counts, self.strings = values, counts, strings
        self._len = len(next(iter(counts.values()))) if counts else 0
        # `has` separates "absent" from "present with zero rows" (a molecule with no bonds).
        self.has = has if has is not None else {k: c > 0 for k, c in counts.items()}
        self.offsets = {k: torch.cumsum(c, 0) - c for k, c in counts.items()}

    @classmethod
    def from_data_list(cls, records: Sequence[Data]) -> StructureSet:
        """Collate ``records``; raises ``ValueError`` if a key's trailing shapes disagree."""
        present = [
            k for k in K.TENSOR_KEYS if any(getattr(d, k, None) is not None for d in records)
        ]
        values, counts, has = {}, {}, {}
        for key in present:
            # Edge tensors lie along their last dim; store them row-wise (num_edges, ...).
            tensors = [getattr(d, key, None) for d in records]
            rows = [None if t is None else (t.t() if key == K.EDGE_INDEX else t) for t in tensors]
            shapes = {tuple(t.shape[1:]) for t in rows if t is not None}
            if len(shapes) > 1:
                raise ValueError(f"records disagree on the shape of {key!r}: {sorted(shapes)}")
            trailing = shapes.pop()
            dtype = next(t.dtype for t in rows if t is not None)
            empty = torch.zeros((0, *trailing), dtype=dtype)
            values[key] = torch.cat([empty if t is None else t for t in rows], 0).contiguous()
            counts[key] = torch.tensor(
                [0 if t is None else len(t) for t in rows], dtype=torch.int64
            )
            has[key] = torch.tensor([t is not None for t in rows], dtype=torch.bool)
        strings = {
            key: [getattr(d, key, None) for d in records]
            for key in K.STRING_KEYS
            if any(getattr(d, key, None) is not None for d in records)
        }
        if not counts:
            counts = {K.Z: torch.zeros(len(records), dtype=torch.int64)}
            values, has = {K.Z: torch.zeros(0, dtype=torch.int64)}, {K.Z: counts[K.Z] > 0}
        return cls(values, counts, strings, has)

    def __len__(self) -> int:
        return self._len

    def _get(self, i: int) -> Data:
        data = Data()
        for key, vals in self.values.items():
            if not bool(self.has[key][i]):
                continue
            start, n = int(self.offsets[key][i]), int(self.counts[key][i])
            t = vals[start : start + n]
            data[key] = t.t().contiguous() if key == K.EDGE_INDEX else t
        for key, items in self.strings.items():
            if items[i] is not None:
                data[key] = items[i]
        return data

    def __getitem__(self, index):
        """``int -> Data``; a slice, list or int tensor/array of indices -> ``StructureSet``."""
        if isinstance(index, int | np.integer):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(index)
            return self._get(int(index) % n)
        if isinstance(index, slice):
            index = range(*index.indices(len(self)))
        return self.subset(torch.as_tensor(np.asarray(index), dtype=torch.int64).reshape(-1))

    def __iter__(self) -> Iterator[Data]:
        return (self._get(i) for i in range(len(self)))

    def subset(self, index: Tensor) -> StructureSet:
        """The records ``index (M,) int64`` in that order, as a new flat set (vectorised gather)."""
        values, counts, has = {}, {}, {}
        for key, vals in self.values.items():
            c = self.counts[key][index]
            start = self.offsets[key][index]
            # Row ids of the chosen records: start_k + 0..c_k-1 for every k, without a Python loop.
            local = torch.arange(int(c.sum())) - torch.repeat_interleave(torch.cumsum(c, 0) - c, c)
            values[key] = vals[torch.repeat_interleave(start, c) + local]
            counts[key], has[key] = c, self.has[key][index]
        idx = index.tolist()
        strings = {key: [items[i] for i in idx] for key, items in self.strings.items()}
        return StructureSet(values, counts, strings, has)

    def to_data_list(self) -> list[Data]:
        return list(self)

    def num_atoms(self) -> Tensor:
        """Atoms per structure, ``(num_graphs,) int64``."""
        return self.counts[K.Z]

    def state_dict(self) -> dict:
        """Plain tensors / lists / strings (``torch.load(..., weights_only=True)`` safe)."""
        return {
            "values": self.values,
            "counts": self.counts,
            "has": self.has,
            "strings": self.strings,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> StructureSet:
        return cls(state["values"], state["counts"], state["strings"], state["has"])
