"""The crystal recipe: periodic structures as a diffusion state, forward process, loss and sampler.

Implements the recipe protocol of :mod:`pipeline.recipes` for CSPNet (:mod:`models.cspnet`). The
state's parts and their joint process are :mod:`pipeline.crystal_process`, its periodic maths
:mod:`pipeline.torus`, the lattice's cell map :mod:`pipeline.lattice`; the losses are the generic
part losses of :mod:`pipeline.losses` (:func:`~pipeline.losses.parts_errors`,
:func:`~pipeline.losses.parts_error`) and the sampler :func:`pipeline.samplers.run_sampler` (its
first-order branch, :func:`~pipeline.samplers.reverse_first_order`).
This module keeps the configs, encode / decode, the preconditioned score, the prior and the part
weights.

State (per crystal with N atoms):

* ``u (N, 3)``: fractional coordinates in *lifted* units, ``frac = (c u) mod 1`` with
  ``c = frac_sigma / sqrt(int_0^1 beta)`` (:class:`CrystalProcessConfig`). ``u`` lives on R^3, not on
  the torus: the forward process is simulated unwrapped, and the network only ever sees the wrapped
  ``frac``. In ``u`` the noise is the unit ``sqrt(beta) dW`` of every other process here, so
  :func:`pipeline.transitions.local_step` applies unchanged.
* ``lattice (B, 3, 3)``: the lattice state of :class:`pipeline.lattice.LatticePrior` (rows of its
  cell are the lattice vectors in Angstrom); DiffCSP's VP process on it (``dl = -1/2 beta l dt +
  sqrt(beta) dW``, prior N(0, I)); on MatterGen's symmetric lattice, states and noise symmetric.
* ``h (N, K)``: ``type_scale * onehot(element)``, EDM's/DiffCSP's VP process (prior N(0, I)),
  decoded by argmax.

Forward process on ``u``: ``du = -1/2 beta(t) grad_u U(c u; L_t) dt + sqrt(beta(t)) dW``.

* ``drift="linear"``: U = 0, a wrapped Brownian motion: ``frac_t`` given ``frac_0`` is the wrapped
  normal of std ``sigma_F(t) = c sqrt(int_0^t beta)`` (DiffCSP's variance-exploding torus process;
  ``frac_sigma = sigma_F(1) = 0.6`` makes it uniform on the torus at t = 1 to 2e-3 in density).
* ``drift="physical"``: U is a soft-sphere repulsion (:class:`pipeline.energies.SoftSphere`) between
  atoms under the *current* lattice, summed over the minimum image and its 26 neighbours
  (:func:`pipeline.torus.periodic_pair_energy`). Periodic, so the drift is invariant under a common shift of all
  ``frac`` and under moving an atom by a lattice vector; rotation invariant (it depends on L only
  through distances). The sum equals the full periodic lattice sum while the pair cut-off is below
  1.5 x the smallest cell height, true of real cells; only near t = 1, where the lattice is noise,
  can it be a truncation. Only a finite-range term makes that sum exact, hence soft-sphere only;
  shifts that cannot come within the cut-off are skipped (:func:`pipeline.torus.cell_shifts`, exact).

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
  ``frac_0`` by summing images (:func:`pipeline.torus.wrapped_normal_score`); closed-form VP for
  lattice and types.
* ``ism``: Hyvarinen's implicit score matching with a Hutchinson divergence over all three parts; on
  the torus integration by parts has no boundary term. Not on a symmetric lattice.

Sampling: prior at t = 1: ``frac`` uniform on the torus (the stationary law of the wrapped Brownian
motion), lattice and types N(0, I) (the lattice state; its cell is :class:`LatticePrior`'s, a cube
at the data's density when fitted; given types are their one-hot). For the physical drift the
positions are then relaxed by Langevin dynamics towards ``exp(-U(.; L_1))`` (10 units of process
time, as the molecule prior), an approximation of the law at t = 1 like the molecules' prior.
Reverse steps (:meth:`pipeline.crystal_process.CrystalProcess.reverse_step`): DDPM's ancestral
step for the reverse SDE, DDIM for the probability-flow ODE, one network evaluation each, the
denoised lattice and types clipped to the data's box; ``u`` is re-wrapped after every step (everything is periodic in it).
Decode: ``frac = (c u) mod 1``, the element of the largest type feature (only the recipe's
``elements`` exist, :func:`fit_to_data` makes them the training set's), the cell of the lattice
state; non-finite states are kept for the screen to reject with a reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from models.config import CSPNetConfig
from models.cspnet import CSPNet
from pipeline import keys as K
from pipeline.batching import counts, num_graphs
from pipeline.crystal_process import CrystalProcess, CrystalState, noise_scales
from pipeline.encoding import ElementIndex, graph_batch
from pipeline.energies import PairTerm, SoftSphere
from pipeline.lattice import LatticePrior, fit_lattice_prior
from pipeline.losses import LossConfig, PartError, parts_error, parts_errors, time_sampler
from pipeline.samplers import SamplerConfig, run_sampler
from pipeline.schedules import ConstantSchedule, PolynomialSchedule, Schedule
from pipeline.structure_set import to_data
from pipeline.structures import make_crystal
from pipeline.transitions import simulate_forward

ALL_ELEMENTS = tuple(range(1, 101))  # CSPNet's default one-hot over Z = 1..100
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
    :func:`fit_lattice_prior` of the cells (symmetric where ``config.lattice`` is).
    """
    elements = tuple(sorted({int(z) for d in structures for z in d[K.Z].tolist()}))
    lattices = torch.stack([d[K.LATTICE].double().reshape(3, 3) for d in structures])
    num_atoms = torch.tensor([d[K.Z].numel() for d in structures])
    model = config.model.model_copy(update={"num_types": len(elements)})
    return config.model_copy(
        update={
            "elements": elements,
            "model": model,
            "lattice": fit_lattice_prior(lattices, num_atoms, config.lattice.symmetric),
        }
    )


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------


class CrystalScoreFn:
    """Preconditioned scores from CSPNet: ``net (N,3), (B,3,3), (N,K)`` -> scores of ``u, l, h``.

    The network sees the wrapped ``frac``, the cell ``L = cell(l)`` (:class:`LatticePrior`) and ``h``;
    its lattice output is read as the scaled score of the lattice *state* ``l``.

    ``score_u = net_frac / sigma_u(t)`` with ``sigma_u^2 = int_0^t beta`` (u's variance under the
    zero drift); ``score_L = net_lattice / sigma_VP(t)``, ``score_h = net_h / sigma_VP(t)``. The
    network thus predicts O(1) "negative noise" in every part (EDM's preconditioning, as
    :class:`pipeline.molecule_recipe.SigmaScaled`). On a symmetric lattice
    (:class:`LatticePrior` ``symmetric``) the lattice score is the symmetric part of the output.
    In fractional units ``grad_F log q = score_u / c``.
    """

    def __init__(self, net: nn.Module, scale: float, schedule: Schedule, cell: LatticePrior):
        self.net, self.scale, self.schedule, self.cell = net, scale, schedule, cell

    def __call__(self, state: CrystalState, t: Tensor, batch: Tensor) -> CrystalState:
        dtype = next(self.net.parameters()).dtype
        frac = torch.remainder(self.scale * state.u, 1.0).to(dtype)
        lattice = self.cell.cell(state.lattice, counts(batch, t.shape[0]))
        out = self.net(frac, lattice.to(dtype), state.h.to(dtype), t.to(dtype), batch)
        sig_u, sig_vp = (s.to(dtype) for s in noise_scales(self.schedule, t))
        lattice_score = out.lattice
        if self.cell.symmetric:  # the score of a symmetric state: the symmetric part
            lattice_score = 0.5 * (lattice_score + lattice_score.transpose(1, 2))
        return CrystalState(
            out.frac / sig_u[batch, None],
            lattice_score / sig_vp[:, None, None],
            out.h / sig_vp[batch, None],
        )


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
        if cfg.loss.kind == "ism" and cfg.lattice.symmetric:
            # Hutchinson's divergence would need a probe on the 6-dim symmetric subspace.
            raise ValueError("ism does not train a symmetric lattice: use local-dsm or exact-dsm")
        self.schedule = cfg.process.schedule()
        self.scale = cfg.process.scale()
        self.pair = cfg.process.pair_term()
        self.elements = ElementIndex(cfg.elements)
        self.process = CrystalProcess(
            self.schedule, self.scale, self.pair, cfg.lattice, cfg.types == "given", cfg.type_scale
        )

    # -- protocol -------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        return CSPNet(self.config.model)

    def score(self, model: nn.Module) -> CrystalScoreFn:
        """The score function that the loss and the sampler call."""
        return CrystalScoreFn(model, self.scale, self.schedule, self.config.lattice)

    def cell(self, lattice: Tensor, batch: Tensor) -> Tensor:
        """Cells ``L (B, 3, 3)`` of lattice states ``lattice (B, 3, 3)``; ``batch (N,)``."""
        return self.process.cell(lattice, batch)

    def encode(self, batch: Batch) -> CrystalState:
        """``(u, lattice, h)`` of a Batch of crystals, float64."""
        u = batch[K.FRAC].double() / self.scale
        cells = batch[K.LATTICE].double().reshape(-1, 3, 3)
        lattice = self.config.lattice.state(cells, counts(batch.batch, batch.num_graphs))
        return CrystalState(u, lattice, self.onehot(batch[K.Z]))

    def onehot(self, z: Tensor) -> Tensor:
        """``type_scale * onehot (num_nodes, K)`` float64 of atomic numbers ``z (num_nodes,)``."""
        if self.elements.unknown(z):
            missing = sorted(set(z.tolist()) - set(self.config.elements))
            raise ValueError(f"elements {missing} are outside the recipe's elements")
        onehot = self.elements.onehot(z).double()
        return self.config.type_scale * onehot

    def decode(self, state: CrystalState, batch: Tensor, prefix: str = "sample") -> list[Data]:
        """Crystals via :func:`pipeline.structures.make_crystal` (``frac`` wrapped into [0, 1)),
        as ``Data`` (:func:`pipeline.structure_set.to_data`)."""
        z = self.elements.decode(state.h)
        frac = torch.remainder(self.scale * state.u.double(), 1.0)
        cells = self.cell(state.lattice.double(), batch)
        out = []
        for g in range(state.lattice.shape[0]):
            rows = batch == g
            crystal = make_crystal(
                z[rows], frac[rows].numpy(), cells[g].numpy(), name=f"{prefix}_{g:06d}"
            )
            out.append(to_data(crystal))
        return out

    def loss(self, model: nn.Module, batch: Batch, generator: torch.Generator | None) -> Tensor:
        """Per-graph loss ``(num_graphs,)`` of the config's kind (module docstring)."""
        cfg = self.config.loss
        t = time_sampler(cfg)(batch.num_graphs, generator)
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
        errors = parts_errors(
            self.config.loss, self.score(model), self.process, x0, batch, t, generator
        )
        return self._reduce(errors, t, batch)

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
        batch = graph_batch(num_atoms)
        x1 = self.prior(batch, generator, sampler.prior_budget, types)
        state, nfe = self.reverse(model, x1, batch, sampler, generator)
        return self.decode(state, batch, prefix), nfe

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
        w_types = w.types if self.config.types == "diffuse" else 0.0
        total = parts_error(
            [
                PartError(terms.u, batch, w.frac * lam_u),
                PartError(terms.lattice, torch.arange(nb), w.lattice * lam_vp),
                PartError(terms.h, batch, w_types * lam_vp),
            ],
            nb,
        )
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
        lattice = self.config.lattice.symmetrized(
            torch.randn((nb, 3, 3), generator=generator, dtype=torch.float64)
        )
        h = torch.randn((n, len(self.config.elements)), generator=generator, dtype=torch.float64)
        if types is not None:
            h = self.onehot(types)
        if self.pair is not None:
            langevin = self.process.torus(lattice, batch, ConstantSchedule(1.0))
            duration = torch.full((nb,), 10.0, dtype=torch.float64)
            u = simulate_forward(langevin, u, duration, batch, "euler", budget, generator=generator)
        return CrystalState(u, lattice, h)

    def reverse(
        self,
        model: nn.Module,
        x1: CrystalState,
        batch: Tensor,
        sampler: SamplerConfig,
        generator: torch.Generator | None = None,
    ) -> tuple[CrystalState, int]:
        """Integrate the reverse dynamics from ``x1`` at t = 1 to ``sampler.t_end``; the NFE.

        :meth:`CrystalProcess.reverse_step` by :func:`pipeline.samplers.run_sampler` (first order): one network
        evaluation a step, ``sde`` / ``ancestral`` with ``eta = 1``, ``ode`` with ``eta = 0``
        (DDIM). Unlike the molecules' Heun sampler, the crystal ODE is first order: NFE = ``nfe``.
        """
        result = run_sampler(sampler, self.score(model), self.process, x1, batch, generator)
        return result.x, result.nfe


__all__ = [
    "CrystalProcessConfig",
    "CrystalRecipe",
    "CrystalRecipeConfig",
    "CrystalScoreFn",
    "PartWeights",
    "fit_to_data",
]
