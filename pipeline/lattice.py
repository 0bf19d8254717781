"""The lattice part of a crystal state: how a state ``l (B, 3, 3)`` maps to a cell, and its prior.

:class:`LatticePrior` is DiffCSP's Gaussian lattice (``L = l``) or MatterGen's cubic one
(``L = a_n (I + spread l)``, Zeni et al. 2025); :func:`fit_lattice_prior` fits the cubic prior to
training cells. Used by :mod:`pipeline.crystal_recipe` (encode, decode, the preconditioned score and
the sampler's clipping box).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator
from torch import Tensor


class LatticePrior(BaseModel):
    """How the lattice part of the state maps to a cell, hence the lattice law at t = 1.

    The state ``l (B, 3, 3)`` follows VP (prior N(0, I)); the cell is

    * ``gaussian``: ``L = l`` (DiffCSP): the prior cell is a standard normal matrix in Angstrom,
      far smaller than real cells and often nearly flat (|det| of a Gaussian 3 x 3 has mass at 0);
    * ``cubic`` (MatterGen, Zeni et al. 2025, its lattice corruption): ``L = a_n (I + spread l)``
      with ``a_n = (n / density)^(1/3)`` the side of the cube holding ``n`` atoms at the training
      set's mean atomic ``density`` (atoms per A^3). In terms of ``L`` the forward process is
      ``L_t = alpha L_0 + (1 - alpha) a_n I + spread a_n sigma eps``, MatterGen's form, and the
      prior is ``N(a_n I, (spread a_n)^2)`` per entry: cells of the data's volume, almost never
      flat. ``density`` and ``spread`` come from :func:`fit_lattice_prior`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["gaussian", "cubic"] = "gaussian"
    density: PositiveFloat | None = None  # atoms / A^3
    spread: PositiveFloat = 0.3
    # Entrywise range of the training cells' states, row-major (9 each): the box holding the
    # data's convex hull, where every posterior mean E[l_0 | l_t] lies (the sampler clips to it).
    low: tuple[float, ...] | None = Field(None, min_length=9, max_length=9)
    high: tuple[float, ...] | None = Field(None, min_length=9, max_length=9)

    @model_validator(mode="after")
    def _density_for_cubic(self) -> LatticePrior:
        if self.kind == "cubic" and self.density is None:
            raise ValueError("the cubic lattice prior needs a density (fit_lattice_prior)")
        return self

    def clip(self, state: Tensor) -> Tensor:
        """``state (B, 3, 3)`` clipped entrywise to ``[low, high]`` (unchanged without them)."""
        if self.low is None or self.high is None:
            return state
        low = torch.tensor(self.low, dtype=state.dtype).reshape(3, 3)
        high = torch.tensor(self.high, dtype=state.dtype).reshape(3, 3)
        return torch.maximum(torch.minimum(state, high), low)

    def side(self, num_atoms: Tensor) -> Tensor:
        """``a_n = (n / density)^(1/3)`` in Angstrom, ``(B,)`` float64 from ``num_atoms (B,)``."""
        return (num_atoms.double() / (self.density or 1.0)) ** (1 / 3)

    def cell(self, state: Tensor, num_atoms: Tensor) -> Tensor:
        """The cell ``L (B, 3, 3)`` (rows, Angstrom) of lattice states ``state (B, 3, 3)``."""
        if self.kind == "gaussian":
            return state
        a = self.side(num_atoms).to(state)[:, None, None]
        eye = torch.eye(3, dtype=state.dtype, device=state.device)
        return a * (eye + self.spread * state)

    def state(self, cell: Tensor, num_atoms: Tensor) -> Tensor:
        """The inverse of :meth:`cell`: ``(B, 3, 3)``."""
        if self.kind == "gaussian":
            return cell
        a = self.side(num_atoms).to(cell)[:, None, None]
        eye = torch.eye(3, dtype=cell.dtype, device=cell.device)
        return (cell / a - eye) / self.spread


def fit_lattice_prior(lattices: Tensor, num_atoms: Tensor) -> LatticePrior:
    """The ``cubic`` prior fitted to training cells ``lattices (M, 3, 3)`` with ``num_atoms (M,)``.

    ``density = mean_m n_m / |det L_m|`` (the mean atomic density, atoms / A^3), ``spread`` the
    root mean square of the entries of ``L_m / a_{n_m} - I`` (at least 1e-3), so that the data's
    lattice states have unit mean square like the N(0, I) prior, and ``low`` / ``high`` the
    entrywise range of those states.
    """
    lattices, n = lattices.double(), num_atoms.double()
    density = float((n / torch.linalg.det(lattices).abs()).mean())
    a = (n / density) ** (1 / 3)
    offset = lattices / a[:, None, None] - torch.eye(3, dtype=torch.float64)
    # Floored: cells all at the mean-density cube (one cubic cell) would give a zero spread.
    spread = max(float(offset.pow(2).mean().sqrt()), 1e-3)
    states = (offset / spread).reshape(-1, 9)
    return LatticePrior(
        kind="cubic",
        density=density,
        spread=spread,
        low=tuple(states.min(0).values.tolist()),
        high=tuple(states.max(0).values.tolist()),
    )


__all__ = ["LatticePrior", "fit_lattice_prior"]
