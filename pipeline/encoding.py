"""Helpers shared by the recipes: atomic numbers to one-hot columns, and the batch of a sample.

Both recipes (:mod:`pipeline.molecule_recipe`, :mod:`pipeline.crystal_recipe`) encode atom types as a
scaled one-hot over a fixed tuple of elements and sample batches of given atom counts; these are the
one copy of that code. They sit below the recipes (no import of them), so :mod:`pipeline.recipes`
can import both recipes without a cycle.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class ElementIndex:
    """Atomic number -> one-hot column for a fixed tuple of ``elements`` (the recipe's order)."""

    def __init__(self, elements: Sequence[int]):
        self.elements = tuple(elements)
        self.index = torch.full((max(self.elements) + 1,), -1, dtype=torch.int64)
        self.index[list(self.elements)] = torch.arange(len(self.elements))

    def __len__(self) -> int:
        return len(self.elements)

    def unknown(self, z: Tensor) -> bool:
        """True if some atomic number of ``z (num_nodes,)`` is not one of the elements."""
        index = self.index
        return int(z.max()) >= len(index) or bool((index[z.clamp(max=len(index) - 1)] < 0).any())

    def onehot(self, z: Tensor) -> Tensor:
        """``(num_nodes, K)`` int64 one-hot of ``z (num_nodes,)``; check :meth:`unknown` first."""
        return nn.functional.one_hot(self.index[z], len(self.elements))

    def decode(self, features: Tensor) -> Tensor:
        """Atomic numbers ``(num_nodes,)``: the element of each row's largest feature ``(num_nodes, K)``."""
        return torch.tensor(self.elements)[features.argmax(dim=1)]


def graph_batch(num_atoms: Tensor) -> Tensor:
    """The batch index ``(sum num_atoms,)`` of graphs with ``num_atoms (num_graphs,)`` nodes."""
    return torch.repeat_interleave(torch.arange(len(num_atoms)), num_atoms)
