"""The lattice part of a crystal state: how a state ``l (B, 3, 3)`` maps to a cell, and its prior.

:class:`LatticePrior` is DiffCSP's Gaussian lattice (``L = l``) or MatterGen's cubic one
(``L = a_n (I + spread l)``, Zeni et al. 2025), optionally on MatterGen's symmetric cells
(:func:`symmetric_cell`, :meth:`LatticePrior.symmetrized`); :func:`fit_lattice_prior` fits the
cubic prior to training cells. Used by :mod:`pipeline.crystal_recipe` (encode, decode, the
preconditioned score and the sampler's clipping box).
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

    ``symmetric`` (MatterGen's lattice, Zeni et al. 2025): every cell is taken in its symmetric
    orientation (:func:`symmetric_cell`, the same crystal rotated) and the state's noise is
    symmetric (:meth:`symmetrized`), so the process stays on symmetric matrices. Why: the cubic
    prior's mean ``a_n I`` fixes a frame, so with cells in an arbitrary orientation the true
    lattice score is not rotation equivariant, while CSPNet's (``M(L L^T) L``) is; its best
    equivariant fit averages over orientations, which shrinks cells (Carbon-24 samples were 8 %
    too dense). On symmetric matrices ``L`` is a function of ``L L^T`` (its square root), so
    ``M(L L^T) L`` can represent any score there.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["gaussian", "cubic"] = "gaussian"
    density: PositiveFloat | None = None  # atoms / A^3
    spread: PositiveFloat = 0.3
    symmetric: bool = False
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

    def symmetrized(self, noise: Tensor) -> Tensor:
        """Standard normal lattice noise ``noise (B, 3, 3)`` as the state's noise: itself, or with
        ``symmetric`` its symmetric version of the same entrywise variance (each off-diagonal pair
        one draw, the upper one; MatterGen's ``make_noise_symmetric_preserve_variance`` keeps the
        variance the same way)."""
        if not self.symmetric:
            return noise
        upper = noise.triu(1)
        return upper + upper.transpose(-1, -2) + torch.diag_embed(noise.diagonal(dim1=-2, dim2=-1))

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
        """The inverse of :meth:`cell`: ``(B, 3, 3)``; with ``symmetric``, of the cell's
        :func:`symmetric_cell` (the same crystal, so the fractional coordinates stay)."""
        if self.symmetric:
            cell = symmetric_cell(cell)
        if self.kind == "gaussian":
            return cell
        a = self.side(num_atoms).to(cell)[:, None, None]
        eye = torch.eye(3, dtype=cell.dtype, device=cell.device)
        return (cell / a - eye) / self.spread


def symmetric_cell(cell: Tensor) -> Tensor:
    """The symmetric positive-definite cell ``S = (L L^T)^(1/2)`` of cells ``cell (B, 3, 3)``
    (rows = lattice vectors, Angstrom): the left polar factor of ``L = S W``, so ``S = L W^T`` is
    the same lattice rotated by the orthogonal ``W^T``, with the same fractional coordinates and
    distances (MatterGen's ``compute_lattice_polar_decomposition``). ``W`` is a proper rotation for
    a right-handed cell (``det L > 0``, as pymatgen's cells from lattice parameters); a
    left-handed cell gives the mirror image. Computed with ``eigh`` of the Gram matrix in
    float64; ``ValueError`` for a singular cell."""
    gram = cell.double() @ cell.double().transpose(-1, -2)
    values, vectors = torch.linalg.eigh(gram)
    if bool((values <= 0).any()):
        raise ValueError("a singular cell has no symmetric orientation")
    root = vectors @ torch.diag_embed(values.sqrt()) @ vectors.transpose(-1, -2)
    return (0.5 * (root + root.transpose(-1, -2))).to(cell.dtype)


def fit_lattice_prior(lattices: Tensor, num_atoms: Tensor, symmetric: bool = False) -> LatticePrior:
    """The ``cubic`` prior fitted to training cells ``lattices (M, 3, 3)`` with ``num_atoms (M,)``;
    with ``symmetric``, to their :func:`symmetric_cell` (MatterGen's symmetric lattice).

    ``density = mean_m n_m / |det L_m|`` (the mean atomic density, atoms / A^3), ``spread`` the
    root mean square of the entries of ``L_m / a_{n_m} - I`` (at least 1e-3), so that the data's
    lattice states have unit mean square like the N(0, I) prior, and ``low`` / ``high`` the
    entrywise range of those states.
    """
    lattices, n = lattices.double(), num_atoms.double()
    if symmetric:
        lattices = symmetric_cell(lattices)
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
        symmetric=symmetric,
        low=tuple(states.min(0).values.tolist()),
        high=tuple(states.max(0).values.tolist()),
    )


__all__ = ["LatticePrior", "fit_lattice_prior", "symmetric_cell"]
