"""A small time-conditioned MLP score network for low-dimensional states (tests, demo, benchmarks).

It acts on each graph's flattened state, so it suits graphs of one fixed size (a single 2-D particle,
or a fixed-size particle system); it is not equivariant. Implements the score-network protocol
``forward(x (num_nodes, d), t (num_graphs,), batch) -> (num_nodes, d)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def fourier_time_features(t: Tensor, n: int) -> Tensor:
    """``(num_graphs,) -> (num_graphs, 2n)``: ``sin/cos(2^k pi t)``, k = 0..n-1."""
    freqs = math.pi * 2.0 ** torch.arange(n, dtype=t.dtype, device=t.device)
    angles = t[:, None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class TimeMLP(nn.Module):
    """``[x_flat, time features] -> score_flat`` with SiLU hidden layers.

    ``nodes_per_graph * dim`` inputs; the batch must hold graphs of exactly ``nodes_per_graph`` nodes.
    """

    def __init__(
        self, dim: int, nodes_per_graph: int = 1, hidden: int = 128, layers: int = 3, freqs: int = 4
    ):
        super().__init__()
        self.freqs = freqs
        width = dim * nodes_per_graph
        sizes = [width + 2 * freqs] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            blocks += [nn.Linear(a, b), nn.SiLU()]
        blocks.append(nn.Linear(hidden, width))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor, t: Tensor, batch: Tensor) -> Tensor:
        b = t.shape[0]
        flat = x.reshape(b, -1)
        out = self.net(torch.cat([flat, fourier_time_features(t.to(x.dtype), self.freqs)], dim=-1))
        return out.reshape(x.shape)
