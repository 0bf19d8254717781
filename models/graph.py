"""Graph construction and scatter helpers on flat node tensors with a ``batch`` index.

Conventions (shared by every network in ``models/``):

- Node tensors are flat, ``(num_nodes, d)``; ``batch: (num_nodes,)`` int64 names each node's graph
  (0..num_graphs-1). Nodes of a graph need not be contiguous: edge builders group them with a
  stable sort, so any node order works.
- ``edge_index: (2, num_edges)`` int64; a message travels from ``edge_index[1]`` (sender ``j``) to
  ``edge_index[0]`` (receiver ``i``) and is aggregated at the receiver, as in EDM's ``egnn_new.py``
  (``coord_diff = x[row] - x[col]``, ``unsorted_segment_sum(..., row)``) and DiffCSP's ``CSPLayer``.
- Edges never cross graphs, so nothing flows from one graph of a batch to another.
"""

from __future__ import annotations

import torch
from torch import Tensor


def scatter_sum(src: Tensor, index: Tensor, size: int) -> Tensor:
    """Sum rows of ``src (n, ...)`` into ``size`` bins by ``index (n,)``: returns ``(size, ...)``."""
    return src.new_zeros((size, *src.shape[1:])).index_add_(0, index, src)


def scatter_mean(src: Tensor, index: Tensor, size: int) -> Tensor:
    """Mean of rows of ``src (n, ...)`` per bin of ``index (n,)``; empty bins give 0. ``(size, ...)``."""
    count = torch.bincount(index, minlength=size).clamp(min=1).to(src.dtype)
    return scatter_sum(src, index, size) / count.view(-1, *([1] * (src.dim() - 1)))


def remove_mean(x: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Project ``x (num_nodes, d)`` onto each graph's zero-mean subspace (P = I - 11^T/N per graph)."""
    return x - scatter_mean(x, batch, num_graphs)[batch]


def fully_connected_edges(batch: Tensor, num_graphs: int, self_loops: bool = False) -> Tensor:
    """All ordered pairs ``(i, j)`` of nodes in the same graph: ``(2, sum_g n_g^2 [- n_g])`` int64.

    EDM connects every pair of atoms in a molecule but masks ``i == j`` (``self_loops=False``);
    DiffCSP's ``edge_style='fc'`` keeps them (``self_loops=True``). Built without padding: the
    work and memory are ``sum_g n_g^2``, not ``num_graphs * max_g n_g^2``.
    """
    device = batch.device
    order = torch.argsort(batch, stable=True)  # node ids grouped by graph
    n = torch.bincount(batch, minlength=num_graphs)  # (num_graphs,)
    start = torch.cumsum(n, 0) - n  # first slot of each graph in ``order``
    pairs = n * n
    graph_of_pair = torch.repeat_interleave(torch.arange(num_graphs, device=device), pairs)
    pair_start = torch.cumsum(pairs, 0) - pairs
    k = torch.arange(graph_of_pair.numel(), device=device) - pair_start[graph_of_pair]
    n_of_pair = n[graph_of_pair]
    i, j = k // n_of_pair, k % n_of_pair
    if not self_loops:
        keep = i != j
        i, j, graph_of_pair = i[keep], j[keep], graph_of_pair[keep]
    offset = start[graph_of_pair]
    return torch.stack([order[offset + i], order[offset + j]])


def radius_edges(pos: Tensor, batch: Tensor, num_graphs: int, cutoff: float) -> Tensor:
    """Pairs ``i != j`` of the same graph closer than ``cutoff`` (Angstrom): ``(2, num_edges)``.

    Filters the fully connected graph, so memory is ``sum_g n_g^2`` edges: right for molecules of
    up to a few thousand atoms; ``pos: (num_nodes, 3)``.
    """
    edge_index = fully_connected_edges(batch, num_graphs)
    row, col = edge_index
    dist2 = (pos[row] - pos[col]).pow(2).sum(-1)
    return edge_index[:, dist2 < cutoff * cutoff]


def periodic_edges(frac: Tensor, batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
    """Fully connected periodic edges of crystals, self-loops included (DiffCSP ``'fc'``).

    ``frac: (num_nodes, 3)`` fractional coordinates. Returns ``edge_index (2, num_edges)`` and
    ``frac_diff (num_edges, 3) = (frac[j] - frac[i]) mod 1`` in ``[0, 1)``: the displacement from
    the receiver ``i`` to the sender ``j`` on the torus, unchanged by a common shift of all
    fractional coordinates of a crystal and by moving any atom by a lattice vector.
    """
    edge_index = fully_connected_edges(batch, num_graphs, self_loops=True)
    row, col = edge_index
    return edge_index, torch.remainder(frac[col] - frac[row], 1.0)


def minimum_image_distance(frac_diff: Tensor, gram: Tensor) -> Tensor:
    """Cartesian length of the shortest periodic image of each edge: ``(num_edges,)``, Angstrom.

    ``frac_diff (E, 3)`` fractional displacements (any image), ``gram (E, 3, 3)`` the Gram matrix
    ``L L^T`` of each edge's cell (rows of ``L`` = lattice vectors). The displacement is wrapped to
    ``[-1/2, 1/2)^3`` and the minimum of ``|(w + k) L|`` taken over the 27 shifts ``k`` in
    ``{-1, 0, 1}^3``, which holds the shortest image unless the cell is very oblique (then a longer
    image may be returned: a feature, so no symmetry breaks). Only the Gram matrix enters,
    so the length is invariant under rotations of the Cartesian frame, and the wrapping makes it
    invariant under moving either atom by a lattice vector.
    """
    wrapped = frac_diff - torch.round(frac_diff)
    k = torch.tensor([-1.0, 0.0, 1.0], dtype=frac_diff.dtype, device=frac_diff.device)
    shifts = torch.cartesian_prod(k, k, k)  # (27, 3)
    images = wrapped[:, None, :] + shifts  # (E, 27, 3)
    squared = torch.einsum("eki,eij,ekj->ek", images, gram, images)
    # Floored so that self-pairs (length 0) have a finite gradient.
    return squared.min(dim=1).values.clamp(min=1e-20).sqrt()
