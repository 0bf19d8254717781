"""Time and displacement embeddings shared by the score networks.

Every time embedding maps ``t: (num_graphs,)`` in ``[0, 1]`` to ``(num_graphs, dim)`` and has an
integer attribute ``dim``; networks broadcast it to nodes with ``emb[batch]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ScalarTime(nn.Module):
    """``t -> t[:, None]``: EDM's conditioning (``h_time = t`` appended to every node's features)."""

    dim = 1

    def forward(self, t: Tensor) -> Tensor:
        """``(num_graphs,) -> (num_graphs, 1)``."""
        return t[:, None]


class SinusoidalTime(nn.Module):
    """Transformer / DDPM sinusoidal embedding of ``scale * t`` (DiffCSP's ``SinusoidalTimeEmbeddings``).

    ``emb = [sin(scale t w_k), cos(scale t w_k)]`` with ``w_k = max_period^(-k / (dim/2 - 1))``,
    ``k = 0..dim/2-1``; ``scale = 1000`` maps ``t`` in ``[0, 1]`` onto DDPM's step range so that the
    highest frequency resolves steps of ``1/1000``.
    """

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"SinusoidalTime needs an even dim >= 4, got {dim}")
        self.dim = dim
        self.scale = scale
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float64) / (half - 1)
        )
        self.register_buffer("freqs", freqs.to(torch.get_default_dtype()), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        """``(num_graphs,) -> (num_graphs, dim)``."""
        angles = (self.scale * t)[:, None] * self.freqs.to(t.dtype)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def periodic_fourier_features(frac_diff: Tensor, num_freqs: int) -> Tensor:
    """DiffCSP's ``SinusoidsEmbedding``: ``sin/cos(2 pi k d)``, k = 0..num_freqs-1, per coordinate.

    ``frac_diff: (num_edges, 3) -> (num_edges, 6 * num_freqs)`` laid out as
    ``[sin (3 * num_freqs, coordinate-major), cos (3 * num_freqs)]``. Integer frequencies make the
    features exactly 1-periodic in every fractional coordinate, hence invariant under lattice
    translations of either atom.
    """
    k = 2.0 * math.pi * torch.arange(num_freqs, dtype=frac_diff.dtype, device=frac_diff.device)
    angles = (frac_diff[:, :, None] * k).reshape(frac_diff.shape[0], -1)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def gaussian_distance_features(distance: Tensor, count: int, cutoff: float) -> Tensor:
    """Gaussian radial basis of lengths: ``distance (E,)`` Angstrom -> ``(E, count)``.

    ``exp(-((d - mu_k) / delta)^2)`` with ``count`` centres ``mu_k`` evenly spaced on
    ``[0, cutoff]`` and ``delta`` their spacing (SchNet's expansion, Schuett et al. 2017, eq. 6,
    with ``gamma = 1 / delta^2``); lengths beyond the cut-off fade smoothly to zero.
    """
    centres = torch.linspace(0.0, cutoff, count, dtype=distance.dtype, device=distance.device)
    delta = cutoff / max(count - 1, 1)
    return torch.exp(-(((distance[:, None] - centres) / delta) ** 2))
