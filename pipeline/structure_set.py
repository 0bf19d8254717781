"""Structures for torch: many of them stored flat (:class:`StructureSet`), one as a ``Data``.

The readers give :class:`pipeline.structures.Record` objects (numpy, so that reading and screening
never import torch); a data set keeps them collated into flat tensors plus per-graph row counts,
and an item of the set is a ``torch_geometric.data.Data`` of tensors, ready for
``Batch.from_data_list``: this is where structures cross from files to networks. Generated
structures come back the same way, as ``Data`` (:func:`to_data` of the recipes' records). The
library's checks, writers and reports read either kind (their fields through ``numpy.asarray``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from pipeline import keys as K
from pipeline.structures import Record


def to_data(record: Record) -> Data:
    """``record`` as a ``Data``: every set array as a tensor of the same dtype and shape (sharing
    its memory), every string as an attribute."""
    return Data(
        **{
            key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
            for key, value in ((key, record[key]) for key in record.keys())
        }
    )


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
    def from_data_list(cls, records: Sequence[Record | Data]) -> StructureSet:
        """Collate ``records`` (the readers' records, or ``Data``); raises ``ValueError`` if a
        key's trailing shapes disagree."""
        present = [
            k for k in K.TENSOR_KEYS if any(getattr(d, k, None) is not None for d in records)
        ]
        values, counts, has = {}, {}, {}
        for key in present:
            # Edge tensors lie along their last dim; store them row-wise (num_edges, ...).
            given = [getattr(d, key, None) for d in records]
            tensors = [None if v is None else torch.as_tensor(v) for v in given]
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
