"""Per-graph bookkeeping for node-level tensors that carry a ``batch`` index.

Graphs in a batch have different numbers of nodes. Node tensors are stored flat, ``(num_nodes, d)``,
with ``batch: (num_nodes,)`` naming each node's graph; per-graph values ``(num_graphs, ...)`` reach the
nodes as ``value[batch]``. Dense padded views ``(num_graphs, max_nodes, d)`` with a node mask are used
where a per-graph function is vectorised with ``torch.func.vmap`` (energies, Hessians).
"""

from __future__ import annotations

import torch
from torch import Tensor


def num_graphs(batch: Tensor) -> int:
    """Number of graphs named by ``batch: (num_nodes,)`` (graphs are numbered 0..B-1)."""
    return int(batch.max().item()) + 1 if batch.numel() else 0


def scatter_sum(src: Tensor, batch: Tensor, size: int) -> Tensor:
    """Sum node rows per graph: ``src (num_nodes, ...) -> (size, ...)``."""
    out = src.new_zeros((size, *src.shape[1:]))
    return out.index_add_(0, batch, src)


def counts(batch: Tensor, size: int) -> Tensor:
    """Nodes per graph, ``(size,)`` in the dtype of a float tensor for averaging."""
    return torch.bincount(batch, minlength=size)


def scatter_mean(src: Tensor, batch: Tensor, size: int) -> Tensor:
    """Mean of node rows per graph: ``src (num_nodes, ...) -> (size, ...)``."""
    n = counts(batch, size).to(src.dtype).clamp(min=1)
    return scatter_sum(src, batch, size) / n.view(-1, *([1] * (src.dim() - 1)))


def remove_mean(x: Tensor, batch: Tensor) -> Tensor:
    """Project ``x (num_nodes, d)`` onto the zero-centre-of-mass subspace of each graph (P = I - 11^T/N)."""
    return x - scatter_mean(x, batch, num_graphs(batch))[batch]


def to_dense(x: Tensor, batch: Tensor, size: int | None = None) -> tuple[Tensor, Tensor]:
    """Padded view of node rows.

    Returns ``dense (size, max_nodes, d)`` (zeros in the padding) and ``mask (size, max_nodes)`` (bool).
    """
    size = num_graphs(batch) if size is None else size
    n = counts(batch, size)
    max_nodes = int(n.max().item()) if size else 0
    start = torch.cumsum(n, 0) - n
    slot = torch.arange(batch.numel(), device=x.device) - start[batch]
    dense = x.new_zeros((size, max_nodes, *x.shape[1:]))
    dense[batch, slot] = x
    mask = torch.zeros((size, max_nodes), dtype=torch.bool, device=x.device)
    mask[batch, slot] = True
    return dense, mask


def from_dense(dense: Tensor, mask: Tensor) -> Tensor:
    """Inverse of :func:`to_dense`: ``(size, max_nodes, ...) -> (num_nodes, ...)`` in batch order."""
    return dense[mask]
