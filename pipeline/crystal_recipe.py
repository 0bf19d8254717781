"""The crystal recipe: periodic structures as a diffusion state, forward process, loss and sampler.

Implements the recipe protocol of :mod:`pipeline.recipes` for CSPNet (:mod:`models.cspnet`).

State (per crystal with N atoms):

* ``u (N, 3)``: fractional coordinates in *lifted* units, ``frac = (c u) mod 1`` with
  ``c = frac_sigma / sqrt(int_0^1 beta)`` (:class:`CrystalProcessConfig`). ``u`` lives on R^3, not on
  the torus: the forward process is simulated unwrapped, and the network only ever sees the wrapped
  ``frac``. In ``u`` the noise is the unit ``sqrt(beta) dW`` of every other process here, so
  :func:`pipeline.transitions.local_step` applies unchanged.
* ``lattice (B, 3, 3)``: rows are the lattice vectors in Angstrom; DiffCSP's VP process on the raw
  matrix (``dL = -1/2 beta L dt + sqrt(beta) dW``, prior N(0, I)).
* ``h (N, K)``: ``type_scale * onehot(element)``, EDM's/DiffCSP's VP process (prior N(0, I)),
  decoded by argmax.

Forward process on ``u``: ``du = -1/2 beta(t) grad_u U(c u; L_t) dt + sqrt(beta(t)) dW``.

* ``drift="linear"``: U = 0, a wrapped Brownian motion: ``frac_t`` given ``frac_0`` is the wrapped
  normal of std ``sigma_F(t) = c sqrt(int_0^t beta)`` (DiffCSP's variance-exploding torus process;
  ``frac_sigma = sigma_F(1) = 0.6`` makes it uniform on the torus at t = 1 to 2e-3 in density).
* ``drift="physical"``: U is a soft-sphere repulsion (:class:`pipeline.energies.SoftSphere`) between
  atoms under the *current* lattice, summed over the minimum image and its 26 neighbours
  (:func:`periodic_pair_energy`). Periodic, so the drift is invariant under a common shift of all
  ``frac`` and under moving an atom by a lattice vector; rotation invariant (it depends on L only
  through distances). The sum equals the full periodic lattice sum while the pair cut-off is below
  1.5 x the smallest cell height, true of real cells; only near t = 1, where the lattice is noise,
  can it be a truncation. Only a finite-range term makes that sum exact, hence soft-sphere only;
  shifts that cannot come within the cut-off are skipped (:func:`cell_shifts`, exact).

Types are independent of ``(u, L)`` (the pair term does not depend on them). ``u`` depends on ``L``
through the drift; ``L`` is autonomous. In ``u`` units the process is a gradient drift with unit
noise (Jacobian ``-1/2 c^2 Hess_F U`` symmetric): the ``expm`` local step is exact for the drift
linearised in ``u`` with the lattice frozen at ``L_s`` over the step, the lattice's own VP step is
exact. Freezing ``L`` in ``u``'s drift over one step is a first-order (Euler) treatment of the
coupling, the same order as the ``euler`` mode; the lattice's noise reaches ``u`` only through it.

Losses (``LossConfig.kind``), each part in its own "eps units" (network output = sigma x score,
see :class:`CrystalScoreFn`), per graph
``w_F mean_{N x 3} + w_L mean_9 + w_h mean_{N x K}`` (``part_weights``; DiffCSP weighs types 20):

* ``local-dsm``: ``(u_s, L_s)`` by simulating the forward SDE from the data (exact in one step for the
  linear drift), ``h_s`` from its closed form; one linearised step ``s -> t`` gives ``u_t`` and the
  lifted Gaussian score ``grad_u log q(u_t | u_s)`` as the target; lattice and types take their exact
  VP step ``s -> t``. Why a lifted target is right on the torus: given the wrapped point, the lifted
  displacement is one of its images ``delta + k`` with posterior weights ``w_k``, so
  ``E[-(u_t - m)/var | wrapped] = sum_k w_k (-(delta + k)/var)``, which *is* the wrapped-normal score:
  the regression has the same minimiser (Rao-Blackwell; exact for the zero drift, for the pair
  drift up to the linearisation). Pointwise, for a step of std ``s`` (fractional units) and a
  displacement ``|delta| <= 1/4`` (all but a fraction ``~exp(-1/(32 s^2))`` of draws) the other
  images weigh below ``exp(-1/(4 s^2))``: at the default steps (``s <= c sqrt(0.5) = 0.125``) the
  lifted target is the wrapped-normal score to ``e^-16`` (tests check both statements).
* ``exact-dsm`` (linear drift only): DiffCSP's target, the wrapped-normal score of ``frac_t`` given
  ``frac_0`` by summing images (:func:`wrapped_normal_score`); closed-form VP for lattice and types.
* ``ism``: Hyvarinen's implicit score matching with a Hutchinson divergence over all three parts; on
  the torus integration by parts has no boundary term.

Sampling: prior at t = 1: ``frac`` uniform on the torus (the stationary law of the wrapped Brownian
motion), lattice and types N(0, I) (the lattice state; its cell is :class:`LatticePrior`'s, a cube
at the data's density when fitted; given types are their one-hot). For the physical drift the
positions are then relaxed by Langevin dynamics towards ``exp(-U(.; L_1))`` (10 units of process
time, as the molecule prior), an approximation of the law at t = 1 like the molecules' prior.
Reverse steps (:meth:`CrystalRecipe.reverse_step`): DDPM's ancestral step for the reverse SDE,
DDIM for the probability-flow ODE, one network evaluation each, the denoised lattice and types
clipped to the data's box; ``u`` is re-wrapped after every step (everything is periodic in it).
Decode: ``frac = (c u) mod 1``, the element of the largest type feature (only the recipe's
``elements`` exist, :func:`fit_to_data` makes them the training set's), the cell of the lattice
state; non-finite states are kept for the screen to reject with a reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator
from torch import Tensor, nn
from torch.func import jvp
from torch_geometric.data import Batch, Data

from models.config import CSPNetConfig
from models.cspnet import CSPNet
from pipeline import keys as K
from pipeline.batching import counts, from_dense, num_graphs, scatter_sum, to_dense
from pipeline.energies import _R2_EPS, PairTerm, SoftSphere
from pipeline.losses import (
    ConstantBudget,
    FractionBudget,
    StratifiedTimes,
    UniformTimes,
)
from pipeline.processes import ForwardProcess
from pipeline.recipes import LossConfig, SamplerConfig
from pipeline.schedules import ConstantSchedule, PolynomialSchedule, Schedule, vp_signal_variance
from pipeline.structures import make_crystal
from pipeline.transitions import local_step, simulate_forward

ALL_ELEMENTS = tuple(range(1, 101))  # CSPNet's default one-hot over Z = 1..100
# The 27 integer cell shifts {-1, 0, 1}^3 added to a wrapped fractional difference.
_SHIFTS = torch.tensor(
    [[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)], dtype=torch.float64
)


# ---------------------------------------------------------------------------------------------
# The torus: wrapped normal scores and the periodic pair energy
# ---------------------------------------------------------------------------------------------


def wrapped_normal_score(delta: Tensor, sigma: Tensor, images: int | None = None) -> Tensor:
    """``d/d delta log sum_k N(delta + k; 0, sigma^2)``, elementwise: the wrapped-normal score.

    ``delta`` any shape (any real; the result is 1-periodic in it), ``sigma`` broadcastable to it.
    Images ``k = -images..images`` (default ``ceil(6 max sigma) + 2``: the truncation error is below
    ``exp(-18)`` relative). Computed as the posterior mean of ``-(delta + k) / sigma^2`` over the
    images with a log-sum-exp, stable for every sigma.
    """
    delta = delta - torch.round(delta)
    sigma = torch.as_tensor(sigma, dtype=delta.dtype).expand_as(delta)
    if images is None:
        images = math.ceil(6 * float(sigma.max())) + 2
    k = torch.arange(-images, images + 1, dtype=delta.dtype)
    shifted = delta[..., None] + k  # (..., 2 images + 1)
    var = sigma[..., None] ** 2
    w = torch.softmax(-(shifted**2) / (2 * var), dim=-1)
    return (w * (-shifted / var)).sum(-1)


def cell_shifts(lattice: Tensor, cutoff: float | None) -> Tensor:
    """The cell shifts ``(S, 3)`` of {-1, 0, 1}^3 that can bring a pair closer than ``cutoff``.

    For a wrapped difference (``|Delta_k| <= 1/2``) and shift ``n``, the image's k-th fractional
    coordinate has size at least ``|n_k| - 1/2``, and ``|frac_k| <= |v| |a*_k|`` with ``a*_k`` the
    reciprocal vector (``|a*_k| = |a_i x a_j| / |det L|``, the inverse cell height). A shift with
    ``|n_k| - 1/2 >= cutoff |a*_k|`` for some k in every crystal of the batch only ever adds
    ``phi(r >= cutoff) = 0``: dropping it changes nothing and keeps 1 of 27 images for Perov-5
    cells. ``cutoff=None`` (an infinite-range term) keeps all 27. ``lattice (B, 3, 3)``.
    """
    shifts = _SHIFTS.to(lattice)
    if cutoff is None or lattice.shape[0] == 0:
        return shifts
    with torch.no_grad():
        a = lattice.detach()
        cross = torch.linalg.cross(a.roll(-1, dims=1), a.roll(-2, dims=1), dim=-1)  # (B, 3, 3)
        recip = torch.linalg.vector_norm(cross, dim=-1) / torch.linalg.det(a).abs()[:, None]
        recip = torch.nan_to_num(recip, nan=math.inf)  # a degenerate cell (0 / 0)
        reach = cutoff * recip.max(0).values  # (3,); inf for a singular cell keeps everything
        keep = ((shifts.abs() - 0.5) < reach).all(1)
    return shifts[keep]


def _image_vectors(frac: Tensor, lattice: Tensor, shifts: Tensor) -> Tensor:
    """Cartesian pair-image vectors ``(B, n, n, S, 3)`` of a padded batch.

    ``frac (B, n, 3)``, ``lattice (B, 3, 3)``, ``shifts (S, 3)``; entry ``[b, i, j, s]`` is
    ``(w(F_j - F_i) + n_s) L`` with ``w`` the wrap into [-0.5, 0.5].
    """
    diff = frac[:, None, :, :] - frac[:, :, None, :]
    diff = diff - torch.round(diff)
    images = diff[..., None, :] + shifts
    return torch.einsum("bijsk,bkl->bijsl", images, lattice)


def _term_range(term: PairTerm) -> float | None:
    """The cut-off beyond which ``phi = 0`` (soft spheres), or None."""
    if isinstance(term, SoftSphere):
        return float(torch.as_tensor(term.sigma).max())
    return None


def _lengths(v: Tensor) -> Tensor:
    """``|v|`` over the last axis, finite derivatives at 0 (einsum: 4x faster than a sum over 3)."""
    return torch.sqrt(torch.einsum("...k,...k->...", v, v) + _R2_EPS)


def _pair_weight(mask: Tensor) -> Tensor:
    """``(B, n, n)``: 1 for ordered pairs ``i != j`` of real atoms."""
    eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    return mask[:, :, None] & mask[:, None, :] & ~eye


def _radial(term: PairTerm, r: Tensor, order: int) -> tuple[Tensor, ...]:
    """``phi'(r)`` (order 1) or ``(phi'(r), phi''(r))`` (order 2), elementwise.

    Soft spheres in closed form: forward-mode autograd over the ``(B, n, n, S)`` images costs
    ~20x more and dominates the simulation of the forward process. Other terms by forward mode.
    """
    params = term.params(None, r)
    if isinstance(term, SoftSphere):
        eps, sig = params
        gap = torch.clamp(1 - (r / sig) ** 2, min=0.0)  # phi = eps gap^2
        d1 = -4 * eps * r / sig**2 * gap
        if order == 1:
            return (d1,)
        inside = (gap > 0).to(r.dtype)
        return d1, -4 * eps / sig**2 * gap + 8 * eps * r**2 / sig**4 * inside
    ones = torch.ones_like(r)

    def dphi(rr: Tensor) -> Tensor:
        return jvp(lambda x: term.phi(x, *params), (rr,), (ones,))[1]

    return (dphi(r),) if order == 1 else jvp(dphi, (r,), (ones,))


def periodic_pair_energy(term: PairTerm, frac: Tensor, lattice: Tensor, mask: Tensor) -> Tensor:
    """``U(F; L) = sum_{i<j} sum_s phi(|(w(F_j - F_i) + n_s) L|)`` per crystal: ``(B,)``.

    ``frac (B, n, 3)`` padded fractional coordinates, ``lattice (B, 3, 3)``, ``mask (B, n)``.
    Self-image terms (i = j) do not depend on F and are left out.
    """
    v = _image_vectors(frac, lattice, cell_shifts(lattice, _term_range(term)))
    r = _lengths(v)
    phi = term.phi(r, *term.params(None, r)).sum(-1)  # (B, n, n)
    return 0.5 * (phi * _pair_weight(mask).to(phi.dtype)).sum((1, 2))


def periodic_pair_gradient(term: PairTerm, frac: Tensor, lattice: Tensor, mask: Tensor) -> Tensor:
    """``grad_F U`` ``(B, n, 3)``: ``-sum_j G_ij`` with ``G_ij = L sum_s phi'(r) v / r``.

    ``v = Delta L`` (rows), so ``grad_Delta phi(|Delta L|) = L grad_v`` (the chain rule);
    ``Delta_ij = F_j - F_i``. Forward-mode derivatives only, so it composes with torch.func.
    """
    v = _image_vectors(frac, lattice, cell_shifts(lattice, _term_range(term)))
    r = _lengths(v)
    (d1,) = _radial(term, r, 1)
    grad_v = torch.einsum("bijs,bijsl->bijl", d1 / r, v)  # (B, n, n, 3)
    g = torch.einsum("bijl,bkl->bijk", grad_v, lattice) * _pair_weight(mask)[..., None]
    return -g.sum(2)


def periodic_pair_hessian(term: PairTerm, frac: Tensor, lattice: Tensor, mask: Tensor) -> Tensor:
    """``Hess_F U`` ``(B, 3n, 3n)`` (node-major) from per-pair blocks ``H_ij = L sum_s A(v) L^T``.

    ``A = phi'' v v^T / r^2 + (phi' / r)(I - v v^T / r^2)`` is the Cartesian Hessian of a radial term
    (as :func:`pipeline.energies.pair_hessian`); each pair adds ``H_ij`` to the (i, i) block and
    ``-H_ij`` to (i, j).
    """
    b, n, _ = frac.shape
    v = _image_vectors(frac, lattice, cell_shifts(lattice, _term_range(term)))
    r = _lengths(v)
    d1, d2 = _radial(term, r, 2)
    eye = torch.eye(3, dtype=frac.dtype, device=frac.device)
    radial = torch.einsum("bijs,bijsl,bijsm->bijlm", (d2 - d1 / r) / r**2, v, v)
    cart = radial + (d1 / r).sum(3)[..., None, None] * eye  # summed over the images
    blocks = torch.einsum("bkl,bijlm,bpm->bijkp", lattice, cart, lattice)
    blocks = blocks * _pair_weight(mask)[..., None, None].to(blocks.dtype)  # (B, n, n, 3, 3)
    hess = -blocks + torch.diag_embed(blocks.sum(2).permute(0, 2, 3, 1)).permute(0, 3, 4, 1, 2)
    return hess.permute(0, 1, 3, 2, 4).reshape(b, 3 * n, 3 * n)


class TorusProcess(ForwardProcess):
    """``du = -1/2 beta(t) grad_u U(c u; L) dt + sqrt(beta(t)) dW`` on lifted coordinates.

    ``u (num_nodes, 3)`` with ``frac = c u mod 1``; ``lattice (num_graphs, 3, 3)`` is held fixed (the
    recipe rebuilds the process at every step with the current lattice); ``pair=None`` is the
    zero drift. A gradient drift with unit noise, hence ``symmetric``.
    """

    symmetric = True
    com_free = False

    def __init__(self, lattice: Tensor, scale: float, pair: PairTerm | None, schedule: Schedule):
        self.lattice, self.scale, self.pair, self.schedule = lattice, scale, pair, schedule

    def _dense(self, u: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
        dense, mask = to_dense(u, batch, self.lattice.shape[0])
        return self.scale * dense, mask

    def energy(self, u: Tensor, batch: Tensor) -> Tensor:
        """``U`` per crystal ``(num_graphs,)``."""
        if self.pair is None:
            return u.new_zeros(self.lattice.shape[0])
        frac, mask = self._dense(u, batch)
        return periodic_pair_energy(self.pair, frac, self.lattice.to(u), mask)

    def drift_field(self, x: Tensor, batch: Tensor, types: Tensor | None = None) -> Tensor:
        if self.pair is None:
            return torch.zeros_like(x)
        frac, mask = self._dense(x, batch)
        grad_f = periodic_pair_gradient(self.pair, frac, self.lattice.to(x), mask)
        return -0.5 * self.scale * from_dense(grad_f, mask)

    def drift_jacobian(self, x: Tensor, batch: Tensor, types: Tensor | None = None):
        frac, mask = self._dense(x, batch)
        b, n = mask.shape
        if self.pair is None:
            return x.new_zeros(b, 3 * n, 3 * n), mask
        hess = periodic_pair_hessian(self.pair, frac, self.lattice.to(x), mask)
        return -0.5 * self.scale**2 * hess, mask


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


class CrystalProcessConfig(BaseModel):
    """The forward process (see the module docstring).

    ``frac_sigma`` is the std of ``frac`` at t = 1 under the zero drift (fractional units; DiffCSP
    uses 0.5); ``epsilon`` and ``sigma`` (Angstrom) are the soft-sphere strength and range of the
    physical drift. Lattice and types follow VP on EDM's polynomial schedule (``precision``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    drift: Literal["physical", "linear"] = "physical"
    pair: Literal["soft-sphere"] = "soft-sphere"
    epsilon: PositiveFloat = 1.0
    sigma: PositiveFloat = 1.0
    frac_sigma: PositiveFloat = 0.6
    precision: PositiveFloat = 1e-5

    def schedule(self) -> PolynomialSchedule:
        return PolynomialSchedule(self.precision)

    def scale(self) -> float:
        """``c``: ``frac = c u``, so that ``sigma_F(1) = c sqrt(int_0^1 beta) = frac_sigma``."""
        one = torch.ones((), dtype=torch.float64)
        total = float(self.schedule().integral(torch.zeros_like(one), one))
        return self.frac_sigma / math.sqrt(total)

    def pair_term(self) -> PairTerm | None:
        return SoftSphere(self.epsilon, self.sigma) if self.drift == "physical" else None


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


class PartWeights(BaseModel):
    """Weights of the three parts of the per-graph loss (DiffCSP: 1, 1, 20)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frac: float = Field(1.0, ge=0.0)
    lattice: float = Field(1.0, ge=0.0)
    types: float = Field(20.0, ge=0.0)


class CrystalRecipeConfig(BaseModel):
    """A crystal recipe: network, process, loss. ``elements`` fixes the one-hot order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["crystal"] = "crystal"
    elements: tuple[int, ...] = ALL_ELEMENTS
    # "diffuse": de novo generation; "given": structure prediction (CSP), the types are the
    # composition asked for, never noised, and carry no loss (DiffCSP's CSP models).
    types: Literal["diffuse", "given"] = "diffuse"
    type_scale: PositiveFloat = 1.0  # DiffCSP's one-hot scale
    model: CSPNetConfig = Field(default_factory=CSPNetConfig)
    process: CrystalProcessConfig = Field(default_factory=CrystalProcessConfig)
    lattice: LatticePrior = Field(default_factory=LatticePrior)
    loss: LossConfig = Field(default_factory=LossConfig)
    part_weights: PartWeights = Field(default_factory=PartWeights)


def fit_to_data(config: CrystalRecipeConfig, structures: Sequence[Data]) -> CrystalRecipeConfig:
    """``config`` with its elements and lattice prior fitted to training ``structures``.

    The one-hot spans exactly the elements present (sorted by Z), so no other element can be
    generated, and the network's type width follows; the lattice prior becomes
    :func:`fit_lattice_prior` of the cells.
    """
    elements = tuple(sorted({int(z) for d in structures for z in d[K.Z].tolist()}))
    lattices = torch.stack([d[K.LATTICE].double().reshape(3, 3) for d in structures])
    num_atoms = torch.tensor([d[K.Z].numel() for d in structures])
    model = config.model.model_copy(update={"num_types": len(elements)})
    return config.model_copy(
        update={
            "elements": elements,
            "model": model,
            "lattice": fit_lattice_prior(lattices, num_atoms),
        }
    )


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------


class CrystalState(NamedTuple):
    """A batch of crystal states (or scores, or velocities shaped like them)."""

    u: Tensor  # (num_nodes, 3) lifted fractional coordinates, frac = c u mod 1
    lattice: Tensor  # (num_graphs, 3, 3) rows = lattice vectors (Angstrom)
    h: Tensor  # (num_nodes, K) type features


class CrystalScoreFn:
    """Preconditioned scores from CSPNet: ``net (N,3), (B,3,3), (N,K)`` -> scores of ``u, l, h``.

    The network sees the wrapped ``frac``, the cell ``L = cell(l)`` (:class:`LatticePrior`) and ``h``;
    its lattice output is read as the scaled score of the lattice *state* ``l``.

    ``score_u = net_frac / sigma_u(t)`` with ``sigma_u^2 = int_0^t beta`` (u's variance under the
    zero drift); ``score_L = net_lattice / sigma_VP(t)``, ``score_h = net_h / sigma_VP(t)``. The
    network thus predicts O(1) "negative noise" in every part (EDM's preconditioning, as
    :class:`pipeline.recipes.SigmaScaled`). In fractional units ``grad_F log q = score_u / c``.
    """

    def __init__(self, net: nn.Module, scale: float, schedule: Schedule, cell: LatticePrior):
        self.net, self.scale, self.schedule, self.cell = net, scale, schedule, cell

    def __call__(self, state: CrystalState, t: Tensor, batch: Tensor) -> CrystalState:
        dtype = next(self.net.parameters()).dtype
        frac = torch.remainder(self.scale * state.u, 1.0).to(dtype)
        lattice = self.cell.cell(state.lattice, counts(batch, t.shape[0]))
        out = self.net(frac, lattice.to(dtype), state.h.to(dtype), t.to(dtype), batch)
        sig_u, sig_vp = (s.to(dtype) for s in noise_scales(self.schedule, t))
        return CrystalState(
            out.frac / sig_u[batch, None],
            out.lattice / sig_vp[:, None, None],
            out.h / sig_vp[batch, None],
        )


def noise_scales(schedule: Schedule, t: Tensor, floor: float = 1e-3) -> tuple[Tensor, Tensor]:
    """``sigma_u(t) = sqrt(int_0^t beta)`` and ``sigma_VP(t)``, floored: ``(num_graphs,)`` float64."""
    t = t.double()
    sig_u = schedule.integral(torch.zeros_like(t), t).clamp(min=floor**2).sqrt()
    sig_vp = vp_signal_variance(schedule, t).clamp(min=floor**2).sqrt()
    return sig_u, sig_vp


def _vp_step(x: Tensor, budget: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """Exact VP step over ``budget`` (broadcast to x): ``x_t`` and ``grad log q(x_t | x)``."""
    var = -torch.expm1(-budget)
    return torch.exp(-0.5 * budget) * x + var.sqrt() * eps, -eps / var.clamp(min=1e-300).sqrt()


class CrystalRecipe:
    """Crystals as ``(u, lattice, h)`` (see the module docstring)."""

    def __init__(self, config: CrystalRecipeConfig | None = None):
        self.config = cfg = config or CrystalRecipeConfig()
        if cfg.model.num_types != len(cfg.elements):
            raise ValueError(
                f"model.num_types={cfg.model.num_types} but {len(cfg.elements)} elements"
            )
        if cfg.loss.kind == "exact-dsm" and cfg.process.drift != "linear":
            raise ValueError("exact-dsm needs the closed-form transition: use drift='linear'")
        self.schedule = cfg.process.schedule()
        self.scale = cfg.process.scale()
        self.pair = cfg.process.pair_term()
        self._index = torch.full((max(cfg.elements) + 1,), -1, dtype=torch.int64)
        self._index[list(cfg.elements)] = torch.arange(len(cfg.elements))

    # -- protocol -------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        return CSPNet(self.config.model)

    def score(self, model: nn.Module) -> CrystalScoreFn:
        """The score function that the loss and the sampler call."""
        return CrystalScoreFn(model, self.scale, self.schedule, self.config.lattice)

    def cell(self, lattice: Tensor, batch: Tensor) -> Tensor:
        """Cells ``L (B, 3, 3)`` of lattice states ``lattice (B, 3, 3)``; ``batch (N,)``."""
        return self.config.lattice.cell(lattice, counts(batch, lattice.shape[0]))

    def process(self, lattice: Tensor, schedule: Schedule | None = None) -> TorusProcess:
        """The process on ``u`` with the lattice held at ``lattice (B, 3, 3)``."""
        return TorusProcess(lattice, self.scale, self.pair, schedule or self.schedule)

    def encode(self, batch: Batch) -> CrystalState:
        """``(u, lattice, h)`` of a Batch of crystals, float64."""
        u = batch[K.FRAC].double() / self.scale
        cells = batch[K.LATTICE].double().reshape(-1, 3, 3)
        lattice = self.config.lattice.state(cells, counts(batch.batch, batch.num_graphs))
        return CrystalState(u, lattice, self.onehot(batch[K.Z]))

    def onehot(self, z: Tensor) -> Tensor:
        """``type_scale * onehot (num_nodes, K)`` float64 of atomic numbers ``z (num_nodes,)``."""
        if int(z.max()) >= len(self._index) or bool(
            (self._index[z.clamp(max=len(self._index) - 1)] < 0).any()
        ):
            missing = sorted(set(z.tolist()) - set(self.config.elements))
            raise ValueError(f"elements {missing} are outside the recipe's elements")
        onehot = nn.functional.one_hot(self._index[z], len(self.config.elements)).double()
        return self.config.type_scale * onehot

    def decode(self, state: CrystalState, batch: Tensor, prefix: str = "sample") -> list[Data]:
        """Crystals via :func:`pipeline.structures.make_crystal` (``frac`` wrapped into [0, 1))."""
        z = torch.tensor(self.config.elements)[state.h.argmax(dim=1)]
        frac = torch.remainder(self.scale * state.u.double(), 1.0)
        cells = self.cell(state.lattice.double(), batch)
        out = []
        for g in range(state.lattice.shape[0]):
            rows = batch == g
            out.append(
                make_crystal(
                    z[rows],
                    frac[rows].numpy(),
                    cells[g].numpy(),
                    name=f"{prefix}_{g:06d}",
                )
            )
        return out

    def loss(self, model: nn.Module, batch: Batch, generator: torch.Generator | None) -> Tensor:
        """Per-graph loss ``(num_graphs,)`` of the config's kind (module docstring)."""
        cfg = self.config.loss
        times = (StratifiedTimes if cfg.times == "stratified" else UniformTimes)(cfg.t_min)
        t = times(batch.num_graphs, generator)
        return self.loss_at(model, self.encode(batch), batch.batch, t, generator)

    def loss_at(
        self,
        model: nn.Module,
        x0: CrystalState,
        batch: Tensor,
        t: Tensor,
        generator: torch.Generator | None,
    ) -> Tensor:
        """The loss at given times ``t (num_graphs,)`` from data ``x0``: ``(num_graphs,)``."""
        kind = self.config.loss.kind
        if kind == "ism":
            return self._ism(model, x0, batch, t, generator)
        if kind == "exact-dsm":
            x_t, target = self._exact(x0, batch, t, generator)
        else:
            x_t, target = self._local(x0, batch, t, generator)
        pred = self.score(model)(x_t, t, batch)
        residual = CrystalState(*((p - y.to(p)) ** 2 for p, y in zip(pred, target, strict=True)))
        return self._reduce(residual, t, batch)

    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        num_atoms: Tensor,
        sampler: SamplerConfig,
        generator: torch.Generator | None = None,
        prefix: str = "sample",
        types: Tensor | None = None,
    ) -> tuple[list[Data], int]:
        """``len(num_atoms)`` crystals with the given atom counts, and the NFE spent.

        ``types (sum num_atoms,)``: the atomic numbers of every crystal's atoms in order, required
        by (and only by) structure prediction (``config.types == "given"``).
        """
        if (types is None) != (self.config.types == "diffuse"):
            raise ValueError(
                f"types={self.config.types!r}: atomic numbers are "
                + ("required" if types is None else "not taken")
            )
        batch = torch.repeat_interleave(torch.arange(len(num_atoms)), num_atoms)
        x1 = self.prior(batch, generator, sampler.prior_budget, types)
        state, nfe = self.reverse(model, x1, batch, sampler, generator)
        return self.decode(state, batch, prefix), nfe

    # -- forward process ------------------------------------------------------------------------

    def _noise(self, like: Tensor, generator) -> Tensor:
        return torch.randn(like.shape, generator=generator, dtype=torch.float64)

    def simulate(
        self, x0: CrystalState, batch: Tensor, t: Tensor, generator: torch.Generator | None
    ) -> CrystalState:
        """A draw of the forward process at ``t (num_graphs,)`` from ``x0`` (no network).

        ``h`` and (for the linear drift) ``u`` from their closed forms; for the physical drift
        ``(u, L)`` jointly in equal steps of rate budget <= ``loss.sim_budget``: a ``sim_mode``
        local step of ``u`` under the lattice at the step's start, then the exact VP step of ``L``.
        """
        cfg = self.config.loss
        total = self.schedule.integral(torch.zeros_like(t), t)
        h = self._types_step(x0.h, total[batch, None], generator)[0]
        if self.pair is None:
            u = x0.u + total.sqrt()[batch, None] * self._noise(x0.u, generator)
            lattice, _ = _vp_step(
                x0.lattice, total[:, None, None], self._noise(x0.lattice, generator)
            )
            return CrystalState(u, lattice, h)
        n_steps = max(1, math.ceil(float(total.max()) / cfg.sim_budget)) if total.numel() else 0
        b = total / max(n_steps, 1)
        u, lattice = x0.u, x0.lattice
        for _ in range(n_steps):
            eps = self._noise(u, generator)
            u, _ = local_step(
                self.process(self.cell(lattice, batch)), u, b, batch, eps, cfg.sim_mode
            )
            lattice, _ = _vp_step(lattice, b[:, None, None], self._noise(lattice, generator))
        return CrystalState(u, lattice, h)

    def _types_step(self, h: Tensor, budget: Tensor, generator) -> tuple[Tensor, Tensor]:
        """The VP step of the types and its target; given types (CSP) stay, target 0."""
        if self.config.types == "given":
            return h, torch.zeros_like(h)
        return _vp_step(h, budget, self._noise(h, generator))

    def _local(self, x0, batch, t, generator) -> tuple[CrystalState, CrystalState]:
        cfg = self.config.loss
        rule = (
            ConstantBudget(cfg.budget)
            if cfg.step == "budget"
            else FractionBudget(cfg.fraction, cfg.budget)
        )
        s = rule(t, self.schedule)
        x_s = self.simulate(x0, batch, s, generator)
        b = self.schedule.integral(s, t)
        # The zero drift's step is exact in any mode; euler skips the eigendecomposition.
        mode = cfg.mode if self.pair is not None else "euler"
        eps = self._noise(x_s.u, generator)
        process = self.process(self.cell(x_s.lattice, batch))
        u_t, target_u = local_step(process, x_s.u, b, batch, eps, mode)
        lat_t, target_l = _vp_step(
            x_s.lattice, b[:, None, None], self._noise(x_s.lattice, generator)
        )
        h_t, target_h = self._types_step(x_s.h, b[batch, None], generator)
        return CrystalState(u_t, lat_t, h_t), CrystalState(target_u, target_l, target_h)

    def _exact(self, x0, batch, t, generator) -> tuple[CrystalState, CrystalState]:
        total = self.schedule.integral(torch.zeros_like(t), t)
        sig_u = total.sqrt()[batch, None]
        eps = self._noise(x0.u, generator)
        u_t = x0.u + sig_u * eps
        # Wrapped-normal score in fractional units, times c: the score in u.
        delta = self.scale * sig_u * eps
        target_u = self.scale * wrapped_normal_score(delta, self.scale * sig_u)
        lat_t, target_l = _vp_step(
            x0.lattice, total[:, None, None], self._noise(x0.lattice, generator)
        )
        h_t, target_h = self._types_step(x0.h, total[batch, None], generator)
        return CrystalState(u_t, lat_t, h_t), CrystalState(target_u, target_l, target_h)

    def _ism(self, model, x0, batch, t, generator) -> Tensor:
        x_t = CrystalState(
            *(x.detach().requires_grad_(True) for x in self.simulate(x0, batch, t, generator))
        )
        pred = self.score(model)(x_t, t, batch)
        signs = [torch.randint(0, 2, p.shape, generator=generator).to(p) * 2 - 1 for p in pred]
        total = sum((p * v).sum() for p, v in zip(pred, signs, strict=True))
        jv = torch.autograd.grad(total, list(x_t), create_graph=True)
        terms = CrystalState(
            *(p**2 + 2 * j.to(p) * v for p, j, v in zip(pred, jv, signs, strict=True))
        )
        return self._reduce(terms, t, batch)

    def _reduce(self, terms: CrystalState, t: Tensor, batch: Tensor) -> Tensor:
        """``sum_part w_part lambda_part(t) mean_part(terms)`` per graph: ``(num_graphs,)``.

        ``lambda = sigma_part^2(t)`` for ``weight="vp"`` (each part's own noise variance, so every
        part is an eps-prediction error), else 1.
        """
        nb = t.shape[0]
        w = self.config.part_weights
        sig_u, sig_vp = noise_scales(self.schedule, t)
        if self.config.loss.weight == "vp":
            lam_u, lam_vp = sig_u**2, sig_vp**2
        else:
            lam_u = lam_vp = torch.ones_like(t)
        n = counts(batch, nb).to(torch.float64)
        frac = scatter_sum(terms.u.sum(1).double(), batch, nb) / (3 * n)
        lattice = terms.lattice.double().reshape(nb, 9).mean(1)
        types = scatter_sum(terms.h.sum(1).double(), batch, nb) / (terms.h.shape[1] * n)
        w_types = w.types if self.config.types == "diffuse" else 0.0
        total = w.frac * lam_u * frac + w.lattice * lam_vp * lattice + w_types * lam_vp * types
        return total.to(terms.u.dtype)

    # -- sampling -------------------------------------------------------------------------------

    def prior(
        self,
        batch: Tensor,
        generator: torch.Generator | None = None,
        budget: float = 0.1,
        types: Tensor | None = None,
    ) -> CrystalState:
        """A draw of the prior at t = 1 (module docstring), Langevin steps of ``budget``: float64.

        ``types (num_nodes,)`` atomic numbers: the type part is their one-hot (CSP), not noise.
        """
        nb, n = num_graphs(batch), batch.numel()
        u = torch.rand((n, 3), generator=generator, dtype=torch.float64) / self.scale
        lattice = torch.randn((nb, 3, 3), generator=generator, dtype=torch.float64)
        h = torch.randn((n, len(self.config.elements)), generator=generator, dtype=torch.float64)
        if types is not None:
            h = self.onehot(types)
        if self.pair is not None:
            langevin = self.process(self.cell(lattice, batch), ConstantSchedule(1.0))
            duration = torch.full((nb,), 10.0, dtype=torch.float64)
            u = simulate_forward(langevin, u, duration, batch, "euler", budget, generator=generator)
        return CrystalState(u, lattice, h)

    def _wrap(self, state: CrystalState) -> CrystalState:
        return state._replace(u=torch.remainder(state.u, 1.0 / self.scale))

    def reverse_step(
        self,
        score: CrystalScoreFn,
        x: CrystalState,
        t: Tensor,
        s: Tensor,
        batch: Tensor,
        generator: torch.Generator | None,
        eta: float,
    ) -> CrystalState:
        """One reverse step from ``t`` to ``s < t`` (scalar tensors), stable at any step size.

        Every part as DDIM (Song, Meng & Ermon 2021, eq. 12) on its own marginal
        ``x_t = alpha_t x_0 + sigma_t eps``: the denoised point ``x0_hat = (x_t + sigma_t^2
        score) / alpha_t`` (Tweedie), ``eps_hat = (x_t - alpha_t x0_hat) / sigma_t``, then
        ``x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z`` with
        ``c^2 = eta^2 v sigma_s^2 / sigma_t^2``, ``v`` the variance of the forward step s -> t. ``eta = 1`` is DDPM's ancestral step,
        the exact Gaussian posterior ``q(x_s | x_t, x0_hat)`` (Ho et al. 2020, eqs. 6-7; DiffCSP
        samples lattice and types so), a discretisation of the reverse SDE; ``eta = 0`` the
        deterministic DDIM step, the exponential integrator of the probability-flow ODE
        (DPM-Solver-1). Both are exact for a point mass and free of the sign flip of
        Euler-Maruyama, whose factor ``1 - beta dt (1/2 + ...)`` turns negative once
        ``beta dt > 2`` (under EDM's schedule ``beta(0.99) = 194``: 100 uniform Euler steps blew
        lattices up to NaN or crushed them flat).

        Lattice and types are VP (``alpha_t^2 = e^{-int_0^t beta}``, ``sigma^2 = 1 - alpha^2``,
        ``v = 1 - e^{-B}``, ``B = int_s^t beta``). ``x0_hat`` is clipped to a box that holds the
        data's convex hull (types: ``[0, type_scale]``; lattice: :meth:`LatticePrior.clip`): the
        exact posterior mean lies in that hull, so the projection never moves it and only bounds
        an untrained network, whose lattice output grows like ``|L|^3`` through the Gram
        features and fed back on itself to overflow. Coordinates ``u`` are variance-exploding
        (``alpha = 1``, ``sigma_u^2 = int_0^t beta``, ``v = B``; the torus needs no box); the pair
        drift ``F`` adds ``-B F(u_t)`` (Euler). Types given (CSP) stay as they are.
        """
        nb = x.lattice.shape[0]
        tt, ss = t.expand(nb).double(), s.expand(nb).double()
        zero = torch.zeros_like(tt)
        step = self.schedule.integral(ss, tt)
        total_t, total_s = self.schedule.integral(zero, tt), self.schedule.integral(zero, ss)
        pred = score(x, tt, batch)

        def ddim(part, sc, rows, alpha_t, alpha_s, var_t, var_s, v, clip) -> Tensor:
            shape = (-1,) + (1,) * (part.dim() - 1)
            a_t, a_s = alpha_t[rows].reshape(shape), alpha_s[rows].reshape(shape)
            sig_t, sig_s2 = var_t[rows].sqrt().reshape(shape), var_s[rows].reshape(shape)
            x0 = clip((part + sig_t**2 * sc.double()) / a_t)
            eps = (part - a_t * x0) / sig_t
            c2 = eta**2 * (v * var_s / var_t)[rows].reshape(shape)
            noise = c2.sqrt() * self._noise(part, generator) if eta else 0.0
            return a_s * x0 + (sig_s2 - c2).clamp(min=0.0).sqrt() * eps + noise

        vp = (
            torch.exp(-0.5 * total_t),
            torch.exp(-0.5 * total_s),
            -torch.expm1(-total_t),
            -torch.expm1(-total_s),
            -torch.expm1(-step),
        )
        lattice = ddim(x.lattice, pred.lattice, torch.arange(nb), *vp, self.config.lattice.clip)
        h = x.h
        if self.config.types == "diffuse":
            h = ddim(x.h, pred.h, batch, *vp, lambda y: y.clamp(0.0, self.config.type_scale))
        one = torch.ones_like(tt)
        u = ddim(x.u, pred.u, batch, one, one, total_t, total_s, step, lambda y: y)
        drift = self.process(self.cell(x.lattice, batch)).drift_field(x.u, batch)
        u = u - step[batch, None] * drift
        return self._wrap(CrystalState(u, lattice, h))

    def reverse(
        self,
        model: nn.Module,
        x1: CrystalState,
        batch: Tensor,
        sampler: SamplerConfig,
        generator: torch.Generator | None = None,
    ) -> tuple[CrystalState, int]:
        """Integrate the reverse dynamics from ``x1`` at t = 1 to ``sampler.t_end``; the NFE.

        :meth:`reverse_step` on a uniform grid of ``sampler.nfe`` steps, one network evaluation
        each: ``sde`` with ``eta = 1`` (ancestral), ``ode`` with ``eta = 0`` (DDIM). Unlike the
        molecules' Heun sampler, the crystal ODE is first order: its NFE is ``nfe``.
        """
        score = self.score(model)
        eta = 0.0 if sampler.kind == "ode" else 1.0
        grid = torch.linspace(1.0, sampler.t_end, sampler.nfe + 1, dtype=torch.float64)
        x = x1
        for t, t_next in zip(grid[:-1], grid[1:], strict=True):
            x = self.reverse_step(score, x, t, t_next, batch, generator, eta)
        return x, sampler.nfe


__all__ = [
    "CrystalProcessConfig",
    "CrystalRecipe",
    "CrystalRecipeConfig",
    "CrystalScoreFn",
    "CrystalState",
    "PartWeights",
    "noise_scales",
    "TorusProcess",
    "cell_shifts",
    "periodic_pair_energy",
    "periodic_pair_gradient",
    "periodic_pair_hessian",
    "wrapped_normal_score",
]
