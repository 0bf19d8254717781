"""Typed configurations of the score networks (pydantic, frozen, unknown keys rejected).

A config is the whole recipe of a network: ``EGNN(cfg)`` / ``CSPNet(cfg)`` rebuild it exactly, and
checkpoints store ``cfg.model_dump()`` as JSON next to the weights (see ``models/checkpoint.py``).
``parameter_count()`` gives the number of trainable parameters in closed form (tests check it
against the built module).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt

TimeEmbedding = Literal["scalar", "sinusoidal"]


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _time_dim(kind: TimeEmbedding, dim: int) -> int:
    return 1 if kind == "scalar" else dim


class EGNNConfig(BaseModel):
    """E(n)-equivariant graph network of EDM (Hoogeboom et al. 2022, ``egnn/egnn_new.py``).

    The defaults are EDM's QM9 settings (``inv_sublayers=1``, attention, ``tanh`` coordinate updates
    with ``coords_range=15``, ``norm_constant=1``, ``normalization_factor=1``, sum aggregation, no
    sinusoidal distance embedding, the time appended as one scalar feature) at 4 layers x 128
    features; EDM's published QM9 model is ``layers=9, hidden=256``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_types: PositiveInt = 5  # K: width of the type-feature part h of the state
    hidden: PositiveInt = 128
    layers: PositiveInt = 4  # equivariant blocks
    attention: bool = True  # EDM's sigmoid edge gate on messages
    tanh: bool = True  # bound each coordinate update: coords_range * tanh(.)
    coords_range: PositiveFloat = 15.0
    norm_constant: PositiveFloat = 1.0  # unit vectors (x_i - x_j) / (|x_i - x_j| + norm_constant)
    normalization_factor: PositiveFloat = 1.0  # sum aggregation is divided by this
    aggregation: Literal["sum", "mean"] = "sum"
    time_embedding: TimeEmbedding = "scalar"
    time_dim: PositiveInt = 16  # used by "sinusoidal" only
    cutoff: PositiveFloat | None = None  # None: fully connected molecules; else a radius graph (A)

    def parameter_count(self) -> int:
        """Trainable parameters of ``EGNN(self)``, counted layer by layer."""
        h, edge_in = self.hidden, 2 * self.hidden + 2  # [h_i, h_j, |x_i-x_j|^2, |x0_i-x0_j|^2]
        gcl = _linear(edge_in, h) + _linear(h, h) + _linear(2 * h, h) + _linear(h, h)
        gcl += _linear(h, 1) if self.attention else 0
        coord = _linear(edge_in, h) + _linear(h, h) + _linear(h, 1, bias=False)
        t = _time_dim(self.time_embedding, self.time_dim)
        return (
            _linear(self.num_types + t, h)
            + self.layers * (gcl + coord)
            + _linear(h, self.num_types)
        )


class CSPNetConfig(BaseModel):
    """Periodic network of DiffCSP (Jiao et al. 2023, ``diffcsp/pl_modules/cspnet.py``).

    Defaults are DiffCSP's constructor defaults (4 layers x 128, 10 Fourier frequencies, lattice
    inner products ``L L^T``); its published runs use ``layers=6, hidden=512``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_types: PositiveInt = 100  # K: one-hot over atomic numbers 1..100 by default
    hidden: PositiveInt = 128
    layers: PositiveInt = 4
    num_freqs: PositiveInt = 10
    time_embedding: TimeEmbedding = "sinusoidal"
    time_dim: int = Field(default=64, ge=4, multiple_of=2)
    layer_norm: bool = False
    # Gaussian radial basis of each edge's minimum-image Cartesian length (0: DiffCSP's features
    # only). Gives the messages bond lengths directly instead of through Fourier(frac) and L L^T.
    distance_features: NonNegativeInt = 0
    distance_cutoff: PositiveFloat = 6.0  # Angstrom, the last basis centre

    def parameter_count(self) -> int:
        """Trainable parameters of ``CSPNet(self)``, counted layer by layer."""
        h = self.hidden
        # [h_i, h_j, flat L L^T, Fourier(frac_j - frac_i), radial basis of |minimum image|]
        edge_in = 2 * h + 9 + 6 * self.num_freqs + self.distance_features
        layer = _linear(edge_in, h) + _linear(h, h) + _linear(2 * h, h) + _linear(h, h)
        layer += 2 * h if self.layer_norm else 0
        t = _time_dim(self.time_embedding, self.time_dim)
        head = _linear(h, 3, bias=False) + _linear(h, 9, bias=False) + _linear(h, self.num_types)
        head += 2 * h if self.layer_norm else 0
        return _linear(self.num_types + t, h) + self.layers * layer + head
