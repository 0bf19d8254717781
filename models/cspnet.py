"""Periodic score network for crystals: DiffCSP's CSPNet (Jiao et al., NeurIPS 2023, eqs. 5-7).

A crystal is ``(frac, lattice, h)``: fractional coordinates ``frac (N, 3)`` on the torus
``[0, 1)^3``, lattice vectors as the rows of ``lattice (B, 3, 3)`` (Angstrom), type features
``h (N, K)`` (one-hot or noisy). Every layer of ``CSPLayer`` computes

    m_ij = phi_m(h_i, h_j, flat(L L^T), psi(f_j - f_i))
    h_i <- h_i + phi_h(h_i, mean_j m_ij)

over all pairs of atoms of a crystal, self-pairs included (DiffCSP's ``edge_style='fc'``), where
``psi(d) = [sin(2 pi k d), cos(2 pi k d)]_{k < num_freqs}`` per coordinate. With
``distance_features > 0`` the edge also carries a Gaussian radial basis of its minimum-image
Cartesian length ``|d|_L`` (:func:`models.graph.minimum_image_distance`; a function of ``d`` and
``L L^T`` only, so every symmetry below still holds). Why each symmetry holds:

- periodic translations: ``psi`` has integer frequencies, so a common shift of all ``f`` and moving
  any atom by a lattice vector change nothing;
- rotations and reflections of the Cartesian frame (``L -> L R^T``): only the Gram matrix ``L L^T``
  enters, and the lattice score is ``M L`` with an invariant ``M`` (3x3), so it rotates with ``L``;
- permutations: messages are summed symmetrically and every head is per node or a mean over nodes.

Outputs (:class:`CrystalScore`): a fractional-coordinate score (invariant, one 3-vector per atom;
DiffCSP leaves it uncentred, as the torus has no centre of mass), a lattice score ``(B, 3, 3)``
(equivariant) and a type score ``(N, K)`` (invariant). The time enters as in DiffCSP, an
embedding concatenated with each atom's type features before the first linear layer.

Layout: the first edge layer acts on ``[h_i, h_j, gram, psi]``; the ``h`` and per-crystal Gram
parts are applied once per node and gathered (the same function with less work per edge).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import CSPNetConfig
from models.embeddings import (
    ScalarTime,
    SinusoidalTime,
    gaussian_distance_features,
    periodic_fourier_features,
)
from models.graph import minimum_image_distance, periodic_edges, scatter_mean


class CrystalScore(NamedTuple):
    """Scores shaped like the crystal state."""

    frac: Tensor  # (num_nodes, 3)
    lattice: Tensor  # (num_graphs, 3, 3)
    h: Tensor  # (num_nodes, K)


def gram_features(lattice: Tensor) -> Tensor:
    """``lattice (B, 3, 3)`` rows = lattice vectors -> ``flat(L L^T) (B, 9)``, rotation invariant."""
    return (lattice @ lattice.transpose(1, 2)).reshape(-1, 9)


class CSPLayer(nn.Module):
    """DiffCSP's message-passing layer: ``h (N, H) -> h (N, H)``."""

    def __init__(self, cfg: CSPNetConfig):
        super().__init__()
        hid = cfg.hidden
        edge_width = 6 * cfg.num_freqs + cfg.distance_features
        self.edge_mlp = nn.Sequential(
            nn.Linear(2 * hid + 9 + edge_width, hid),
            nn.SiLU(),
            nn.Linear(hid, hid),
            nn.SiLU(),
        )
        self.node_mlp = nn.Sequential(
            nn.Linear(2 * hid, hid), nn.SiLU(), nn.Linear(hid, hid), nn.SiLU()
        )
        self.layer_norm = nn.LayerNorm(hid) if cfg.layer_norm else None

    def forward(
        self, h: Tensor, gram: Tensor, batch: Tensor, edge_index: Tensor, edge_features: Tensor
    ) -> Tensor:
        """``h (N, H)``, ``gram (B, 9)``, ``batch (N,)``, ``edge_index (2, E)`` and
        ``edge_features (E, 6 num_freqs + distance_features)`` (Fourier, then radial) -> ``(N, H)``."""
        width = h.shape[1]
        feats = h if self.layer_norm is None else self.layer_norm(h)
        first, _, second, _ = self.edge_mlp
        w = first.weight
        row, col = edge_index
        # The Gram matrix belongs to the receiver's crystal, so it joins the receiver's node term.
        at_receiver = F.linear(feats, w[:, :width], first.bias)
        at_receiver = at_receiver + F.linear(gram, w[:, 2 * width : 2 * width + 9])[batch]
        at_sender = F.linear(feats, w[:, width : 2 * width])
        pre = at_receiver.index_select(0, row) + at_sender.index_select(0, col)
        pre = torch.addmm(pre, edge_features, w[:, 2 * width + 9 :].t())
        m = F.silu(second(F.silu(pre)))
        agg = scatter_mean(m, row, h.shape[0])
        return h + self.node_mlp(torch.cat([feats, agg], dim=1))


class CSPNet(nn.Module):
    """DiffCSP's CSPNet; see the module docstring.

    ``forward(frac (N, 3), lattice (B, 3, 3), h (N, K), t (B,), batch (N,)) -> CrystalScore``.
    """

    def __init__(self, cfg: CSPNetConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or CSPNetConfig()
        if cfg.time_embedding == "scalar":
            self.time = ScalarTime()
        else:
            self.time = SinusoidalTime(cfg.time_dim)
        self.embedding = nn.Linear(cfg.num_types + self.time.dim, cfg.hidden)
        self.layers = nn.ModuleList(CSPLayer(cfg) for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.hidden) if cfg.layer_norm else None
        self.frac_out = nn.Linear(cfg.hidden, 3, bias=False)
        self.lattice_out = nn.Linear(cfg.hidden, 9, bias=False)
        self.type_out = nn.Linear(cfg.hidden, cfg.num_types)

    def forward(
        self, frac: Tensor, lattice: Tensor, h: Tensor, t: Tensor, batch: Tensor
    ) -> CrystalScore:
        """``frac (N, 3)``, ``lattice (B, 3, 3)``, ``h (N, K)``, ``t (B,)``, ``batch (N,)``."""
        num_graphs = t.shape[0]
        edge_index, frac_diff = periodic_edges(frac, batch, num_graphs)
        edge_features = periodic_fourier_features(frac_diff, self.cfg.num_freqs)
        gram = gram_features(lattice)
        if self.cfg.distance_features:
            cell_gram = gram.reshape(-1, 3, 3)[batch[edge_index[0]]]
            distance = minimum_image_distance(frac_diff, cell_gram)
            radial = gaussian_distance_features(
                distance, self.cfg.distance_features, self.cfg.distance_cutoff
            )
            edge_features = torch.cat([edge_features, radial], dim=1)
        feats = self.embedding(torch.cat([h, self.time(t.to(h.dtype))[batch]], dim=1))
        for layer in self.layers:
            feats = layer(feats, gram, batch, edge_index, edge_features)
        if self.final_norm is not None:
            feats = self.final_norm(feats)
        pooled = scatter_mean(feats, batch, num_graphs)
        lattice_score = self.lattice_out(pooled).reshape(-1, 3, 3) @ lattice
        return CrystalScore(self.frac_out(feats), lattice_score, self.type_out(feats))
