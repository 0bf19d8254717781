"""Edge builders and scatter helpers against brute-force answers."""

from __future__ import annotations

import torch

from models.graph import (
    fully_connected_edges,
    periodic_edges,
    radius_edges,
    remove_mean,
    scatter_mean,
)


def _brute_force(batch: torch.Tensor, self_loops: bool) -> set[tuple[int, int]]:
    n = batch.numel()
    return {
        (i, j)
        for i in range(n)
        for j in range(n)
        if batch[i] == batch[j] and (self_loops or i != j)
    }


def test_fully_connected_edges_any_node_order():
    batch = torch.tensor([2, 0, 1, 0, 2, 2, 0, 4])  # unsorted; graph 3 is empty, graph 4 alone
    for self_loops in (False, True):
        edges = fully_connected_edges(batch, 5, self_loops=self_loops)
        pairs = {tuple(e) for e in edges.t().tolist()}
        assert len(pairs) == edges.shape[1]  # no duplicates
        assert pairs == _brute_force(batch, self_loops)


def test_radius_edges_keep_exactly_the_close_pairs():
    pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0], [0.0, 0, 0], [0.5, 0, 0]])
    batch = torch.tensor([0, 0, 0, 1, 1])
    pairs = {tuple(e) for e in radius_edges(pos, batch, 2, cutoff=1.5).t().tolist()}
    assert pairs == {(0, 1), (1, 0), (3, 4), (4, 3)}


def test_periodic_edges_wrap_differences_onto_the_torus():
    frac = torch.tensor([[0.9, 0.0, 0.5], [0.1, 0.25, 0.5]], dtype=torch.float64)
    edge_index, diff = periodic_edges(frac, torch.tensor([0, 0]), 1)
    assert edge_index.shape[1] == 4  # self-loops included, as DiffCSP
    one_to_zero = ((edge_index[0] == 0) & (edge_index[1] == 1)).nonzero().item()
    assert torch.allclose(diff[one_to_zero], torch.tensor([0.2, 0.25, 0.0], dtype=torch.float64))
    assert ((diff >= 0) & (diff < 1)).all()


def test_scatter_mean_and_remove_mean():
    x = torch.tensor([[1.0], [3.0], [10.0]])
    batch = torch.tensor([0, 0, 2])
    assert torch.equal(scatter_mean(x, batch, 3), torch.tensor([[2.0], [0.0], [10.0]]))
    assert torch.equal(remove_mean(x, batch, 3), torch.tensor([[-1.0], [1.0], [0.0]]))
