"""Recipes: everything that turns structures into a trainable score-matching problem and back.

A recipe owns the encoding of a structure as a diffusion state, the forward process, the loss and the
sampler, for one kind of structure; the training loop (:mod:`pipeline.train`) and generation
(:mod:`pipeline.generate`) only talk to this protocol::

    recipe.config                       typed pydantic config; config.model_dump() is JSON
    recipe.build_model() -> nn.Module   a fresh network (saved with models.checkpoint)
    recipe.loss(model, batch, generator) -> (num_graphs,)   per-graph loss of a Batch of structures
    recipe.sample(model, num_atoms (n,), sampler, nfe, generator) -> list[Data]

:class:`MoleculeRecipe` is the QM9 recipe: state ``x = [pos (3), s * onehot(z) (K)]`` per atom
(EDM's layout, ``s = type_scale``); positions follow the physical process of :class:`ProcessConfig`
(CoM-free), the type features EDM's VP process; both on EDM's polynomial schedule. Crystals have
their own recipe in :mod:`pipeline.crystal_recipe`. :func:`recipe_from_config` rebuilds either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from models.checkpoint import CheckpointError, load_checkpoint, read_run, save_checkpoint
from models.config import EGNNConfig
from models.egnn import EGNN
from pipeline import keys as K
from pipeline.batching import counts
from pipeline.energies import CappedLennardJones, Energy, HarmonicConfinement, Morse, SoftSphere
from pipeline.losses import (
    ConstantBudget,
    FractionBudget,
    StratifiedTimes,
    UniformTimes,
    exact_dsm_loss,
    ism_loss,
    local_dsm_loss,
    unit_weight,
    vp_weight,
)
from pipeline.processes import ForwardProcess, GradientProcess, ProductProcess, vp_process
from pipeline.samplers import (
    SampleResult,
    prior_sample,
    probability_flow_heun,
    reverse_ancestral,
    reverse_sde_euler,
)
from pipeline.schedules import PolynomialSchedule, Schedule, vp_signal_variance
from pipeline.structures import make_molecule

QM9_ELEMENTS = (1, 6, 7, 8, 9)  # H, C, N, O, F


class LossConfig(BaseModel):
    """Which score-matching loss, and its knobs (see :mod:`pipeline.losses`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["local-dsm", "exact-dsm", "ism"] = "local-dsm"
    mode: Literal["expm", "taylor2", "euler"] = "expm"  # local-DSM transition moments
    # Local-DSM step D(t): "budget" spends int_s^t beta = budget (ConstantBudget); "fraction"
    # spends min(fraction * int_0^t beta, budget) (FractionBudget: a less noisy target at large t).
    # "fraction" 0.5 capped at 0.5 gave the lowest score error on the 2-D mixture with a known score
    # (0.031 against 0.050 for a constant budget of 0.05 and 0.59 with a cap of 2; 800 steps each).
    step: Literal["budget", "fraction"] = "fraction"
    budget: PositiveFloat = 0.5
    fraction: float = Field(0.5, gt=0.0, le=1.0)
    # Simulating y_s from the data dominates the cost: Euler steps of budget 0.25 are stable for
    # these drifts (|lambda(J)| < 8) and 5x cheaper than expm steps of budget 1 (measured, QM9).
    sim_budget: PositiveFloat = 0.25  # rate budget per step when simulating y_s from the data
    sim_mode: Literal["expm", "taylor2", "euler"] = "euler"
    # lambda(t) = sigma_VP^2(t) (EDM's eps-loss scale), 1, or "output": unit weight on the network's
    # own output under the recipe's preconditioning (Karras et al. 2022's lambda = 1 / c_out^2)
    weight: Literal["vp", "unit", "output"] = "vp"
    times: Literal["stratified", "uniform"] = "stratified"
    t_min: PositiveFloat = 1e-3
    time_power: PositiveFloat = 1.0  # t = t_min + (1 - t_min) u^power: > 1 trains more at low noise


def score_loss(
    cfg: LossConfig,
    model,
    process: ForwardProcess,
    x0: Tensor,
    batch: Tensor,
    generator: torch.Generator | None,
    types: Tensor | None = None,
) -> Tensor:
    """The loss of ``cfg`` for ``model`` under ``process`` at data ``x0 (num_nodes, d)``: ``(num_graphs,)``."""
    times = (StratifiedTimes if cfg.times == "stratified" else UniformTimes)(
        cfg.t_min, cfg.time_power
    )
    if cfg.weight == "output":
        if not hasattr(model, "output_weight"):
            raise ValueError(
                "weight='output' needs a preconditioned score model (preconditioning='edm')"
            )
        weight = model.output_weight
    else:
        weight = vp_weight if cfg.weight == "vp" else unit_weight
    if cfg.kind == "exact-dsm":
        return exact_dsm_loss(
            model, process, x0, batch, times=times, weight=weight, generator=generator
        )
    common = dict(
        times=times,
        weight=weight,
        sim_budget=cfg.sim_budget,
        sim_mode=cfg.sim_mode,
        types=types,
        generator=generator,
    )
    if cfg.kind == "ism":
        return ism_loss(model, process, x0, batch, **common)
    step = (
        ConstantBudget(cfg.budget)
        if cfg.step == "budget"
        else FractionBudget(cfg.fraction, cfg.budget)
    )
    return local_dsm_loss(model, process, x0, batch, step=step, mode=cfg.mode, **common)


class SigmaScaled(nn.Module):
    """Preconditioning: ``score = net(x, t, batch) / sigma_VP(t)``.

    The true score grows like ``1 / sigma(t)`` as t -> 0; dividing by the VP noise level lets the
    network predict an O(1) quantity (the negative noise, as EDM's eps-prediction does) under every
    drift. ``net`` is the saved network; this wrapper has no parameters.
    """

    def __init__(self, net: nn.Module, schedule: Schedule, floor: float = 1e-3):
        super().__init__()
        self.net, self.schedule, self.floor = net, schedule, floor

    def forward(self, x: Tensor, t: Tensor, batch: Tensor) -> Tensor:
        sigma = vp_signal_variance(self.schedule, t.double()).clamp(min=self.floor**2).sqrt()
        return self.net(x, t, batch) / sigma.to(x.dtype)[batch, None]


class EDMPreconditioned(nn.Module):
    """Preconditioning of Karras et al. (2022, Table 1, VP form) written as a score:

    ``score = -x / v + c(t) net(x, t, batch)``, ``v = sigma^2 + alpha^2 sigma_data^2``,
    ``c = alpha sigma_data / (sigma sqrt(v))`` per feature column, with ``alpha^2 = e^{-B}``,
    ``sigma^2 = 1 - e^{-B}``, ``B = int_0^t beta``. This is EDM's ``D = c_skip x / alpha + c_out F``
    turned into ``(alpha D - x) / sigma^2``: the first term is the exact score when the data are
    ``N(0, sigma_data^2)``, and the network learns the rest with an O(1) target at every noise
    level (noise prediction at low noise, clean-structure prediction at high noise). Any drift
    can use it: it is a parameterisation, exact for none in particular. ``sigma_data (d,)`` gives
    each feature column its data scale (positions in Angstrom, scaled one-hot types).
    """

    def __init__(self, net: nn.Module, schedule: Schedule, sigma_data: Tensor, floor: float = 1e-3):
        super().__init__()
        self.net, self.schedule, self.floor = net, schedule, floor
        self.register_buffer("sigma_data", sigma_data.double(), persistent=False)

    def _coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``v (num_graphs, d)`` and ``c (num_graphs, d)`` in float64."""
        total = self.schedule.integral(torch.zeros_like(t), t.double())
        sigma2 = (-torch.expm1(-total)).clamp(min=self.floor**2)
        alpha2 = torch.exp(-total)
        v = sigma2[:, None] + alpha2[:, None] * self.sigma_data**2
        c = alpha2.sqrt()[:, None] * self.sigma_data / (sigma2.sqrt()[:, None] * v.sqrt())
        return v, c

    def forward(self, x: Tensor, t: Tensor, batch: Tensor) -> Tensor:
        v, c = self._coefficients(t)
        return -x / v.to(x.dtype)[batch] + c.to(x.dtype)[batch] * self.net(x, t, batch)

    def output_weight(self, t: Tensor, schedule: Schedule) -> Tensor:
        """``lambda = 1 / c^2 (num_graphs, d)``: unit weight on the network output's error."""
        return self._coefficients(t)[1].pow(-2)


class ProcessConfig(BaseModel):
    """The forward process on atom positions: ``U = k/2 sum |x_i|^2 + sum_{i<j} phi(r_ij)``.

    ``drift="linear"`` is EDM's VP SDE (phi = 0, k = 1); ``"physical"`` adds the pair term
    ``pair`` with strength ``epsilon`` and length ``sigma`` (Angstrom), so the prior is a confined gas
    of atoms that do not overlap. Morse reads ``epsilon`` as its depth and ``sigma`` as its width.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    drift: Literal["physical", "linear"] = "physical"
    k: PositiveFloat = 1.0
    pair: Literal["soft-sphere", "morse", "lj"] = "soft-sphere"
    epsilon: PositiveFloat = 1.0
    sigma: PositiveFloat = 1.0
    precision: PositiveFloat = 1e-5  # EDM's polynomial schedule

    def build(self) -> GradientProcess:
        schedule = PolynomialSchedule(self.precision)
        if self.drift == "linear":
            return vp_process(schedule, com_free=True)
        pair = {
            "soft-sphere": lambda: SoftSphere(self.epsilon, self.sigma),
            "morse": lambda: Morse(self.epsilon, self.sigma),
            "lj": lambda: CappedLennardJones(self.epsilon, self.sigma),
        }[self.pair]()
        energy = Energy([HarmonicConfinement(self.k), pair])
        return GradientProcess(energy, schedule=schedule, com_free=True)


class SamplerConfig(BaseModel):
    """How to draw samples: ``sde`` (Euler-Maruyama, NFE = steps), ``ode`` (Heun, NFE = 2 steps - 1)
    or ``ancestral`` (EDM's posterior steps, linear process only, NFE = steps)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["sde", "ode", "ancestral"] = "sde"
    nfe: PositiveInt = 100
    t_end: PositiveFloat = 1e-3
    prior_budget: PositiveFloat = 0.1  # Langevin step of the prior (physical drifts)
    grid_power: PositiveFloat = 1.0  # time grid t_end + (1 - t_end) u^power (samplers.time_grid)


def run_sampler(
    cfg: SamplerConfig,
    model,
    process: ForwardProcess,
    x1: Tensor,
    batch: Tensor,
    generator: torch.Generator | None,
) -> SampleResult:
    """Integrate the reverse dynamics of ``cfg`` from ``x1`` at t = 1, spending at most ``cfg.nfe``."""
    if cfg.kind == "sde":
        return reverse_sde_euler(
            model,
            process,
            x1,
            batch,
            cfg.nfe,
            cfg.t_end,
            generator=generator,
            grid_power=cfg.grid_power,
        )
    if cfg.kind == "ancestral":
        return reverse_ancestral(
            model, process, x1, batch, cfg.nfe, cfg.t_end, generator, cfg.grid_power
        )
    steps = max(1, (cfg.nfe + 1) // 2)
    return probability_flow_heun(
        model, process, x1, batch, steps, cfg.t_end, grid_power=cfg.grid_power
    )


class MoleculeRecipeConfig(BaseModel):
    """A molecule recipe: network, process, loss. ``elements`` fixes the one-hot order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["molecule"] = "molecule"
    elements: tuple[int, ...] = QM9_ELEMENTS
    type_scale: PositiveFloat = 0.25  # EDM's one-hot scale
    # "sigma": score = net / sigma_VP(t) (noise prediction); "edm": EDMPreconditioned with
    # sigma_data = (positions, types): QM9's rms of centred coordinates (1.40 A) and of the
    # 0.25-scaled one-hot (0.11)
    preconditioning: Literal["sigma", "edm"] = "sigma"
    sigma_data: tuple[PositiveFloat, PositiveFloat] = (1.4, 0.11)
    model: EGNNConfig = Field(default_factory=lambda: EGNNConfig(hidden=64, layers=4))
    process: ProcessConfig = Field(default_factory=ProcessConfig)
    loss: LossConfig = Field(default_factory=LossConfig)


class MoleculeRecipe:
    """Molecules as ``x = [pos (3), type_scale * onehot (K)]`` (see the module docstring)."""

    def __init__(self, config: MoleculeRecipeConfig | None = None):
        self.config = config or MoleculeRecipeConfig()
        if self.config.model.num_types != len(self.config.elements):
            raise ValueError(
                f"model.num_types={self.config.model.num_types} but {len(self.config.elements)} "
                "elements"
            )
        self.positions = self.config.process.build()
        self.process = ProductProcess(
            [(3, self.positions), (len(self.config.elements), vp_process(self.positions.schedule))]
        )
        self._index = torch.full((max(self.config.elements) + 1,), -1, dtype=torch.int64)
        self._index[list(self.config.elements)] = torch.arange(len(self.config.elements))

    def build_model(self) -> nn.Module:
        return EGNN(self.config.model)

    def score(self, model: nn.Module) -> SigmaScaled | EDMPreconditioned:
        """The score function that losses and samplers call."""
        if self.config.preconditioning == "sigma":
            return SigmaScaled(model, self.process.schedule)
        pos, types = self.config.sigma_data
        k = len(self.config.elements)
        sigma_data = torch.tensor([pos] * 3 + [types] * k, dtype=torch.float64)
        return EDMPreconditioned(model, self.process.schedule, sigma_data)

    def encode(self, batch: Batch) -> Tensor:
        """``x (num_nodes, 3 + K)`` float32 of a Batch, positions centred per molecule."""
        z = batch[K.Z]
        if int(z.max()) >= len(self._index) or bool(
            (self._index[z.clamp(max=len(self._index) - 1)] < 0).any()
        ):
            raise ValueError(f"elements outside {self.config.elements} in the batch")
        pos = batch[K.POS].double()
        centre = torch.zeros(batch.num_graphs, 3, dtype=pos.dtype).index_add_(0, batch.batch, pos)
        pos = pos - (centre / counts(batch.batch, batch.num_graphs)[:, None])[batch.batch]
        onehot = nn.functional.one_hot(self._index[z], len(self.config.elements))
        return torch.cat([pos.float(), self.config.type_scale * onehot.float()], dim=1)

    def decode(self, x: Tensor, batch: Tensor, prefix: str = "sample") -> list[Data]:
        """Molecules from states: positions as they are, each atom the element of its largest type
        feature. Non-finite states are kept (the screen rejects them with a reason)."""
        z = torch.tensor(self.config.elements)[x[:, 3:].argmax(dim=1)]
        out = []
        for g in range(int(batch.max()) + 1 if batch.numel() else 0):
            rows = batch == g
            out.append(make_molecule(z[rows], x[rows, :3].float(), name=f"{prefix}_{g:06d}"))
        return out

    def loss(self, model: nn.Module, batch: Batch, generator: torch.Generator | None) -> Tensor:
        x0 = self.encode(batch)
        return score_loss(
            self.config.loss, self.score(model), self.process, x0, batch.batch, generator
        )

    def prior(
        self, batch: Tensor, generator: torch.Generator | None, budget: float = 0.1
    ) -> Tensor:
        """A draw of the stationary law at t = 1 (Langevin steps of rate ``budget``):
        ``(num_nodes, 3 + K)`` float64."""
        pos = prior_sample(self.positions, batch, 3, max_budget=budget, generator=generator)
        types = torch.randn(
            (batch.numel(), len(self.config.elements)), generator=generator, dtype=torch.float64
        )
        return torch.cat([pos, types], dim=1)

    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        num_atoms: Tensor,
        sampler: SamplerConfig,
        generator: torch.Generator | None = None,
        prefix: str = "sample",
    ) -> tuple[list[Data], int]:
        """``len(num_atoms)`` molecules with the given atom counts, and the NFE spent."""
        batch = torch.repeat_interleave(torch.arange(len(num_atoms)), num_atoms)
        x1 = self.prior(batch, generator, sampler.prior_budget).float()
        result = run_sampler(sampler, self.score(model), self.process, x1, batch, generator)
        return self.decode(result.x, batch, prefix), result.nfe


def recipe_from_config(config: dict | BaseModel):
    """Rebuild the recipe a config describes (``{"kind": "molecule" | "crystal", ...}``)."""
    data = config.model_dump() if isinstance(config, BaseModel) else dict(config)
    kind = data.get("kind")
    if kind == "molecule":
        return MoleculeRecipe(MoleculeRecipeConfig.model_validate(data))
    if kind == "crystal":
        from pipeline.crystal_recipe import CrystalRecipe, CrystalRecipeConfig

        return CrystalRecipe(CrystalRecipeConfig.model_validate(data))
    raise ValueError(f"unknown recipe kind {kind!r}: expected 'molecule' or 'crystal'")


@dataclass
class Trained:
    """A trained network with everything needed to sample from it.

    ``num_atoms`` maps an atom count to its frequency in the training split (the histogram that
    generation draws sizes from); ``info`` holds the rest of the run metadata (step, data set).
    """

    recipe: object
    model: nn.Module
    num_atoms: dict[int, int]
    info: dict


def save_trained(
    path: str | Path, recipe, model: nn.Module, num_atoms: dict[int, int], **info
) -> Path:
    """An ``ldsm-checkpoint`` at ``path`` whose ``run`` block holds the recipe and the histogram."""
    run = {
        "recipe": recipe.config.model_dump(mode="json"),
        "num_atoms": {str(k): int(v) for k, v in sorted(num_atoms.items())},
        **info,
    }
    return save_checkpoint(model, path, run=run)


def load_trained(path: str | Path) -> Trained:
    """Read a checkpoint written by :func:`save_trained`; :class:`CheckpointError` names the problem."""
    model = load_checkpoint(path)
    run = dict(read_run(path))
    if "recipe" not in run or "num_atoms" not in run:
        raise CheckpointError(
            f"{path}: no recipe / num_atoms in its run metadata; not a trained run"
        )
    try:
        recipe = recipe_from_config(run.pop("recipe"))
        num_atoms = {int(k): int(v) for k, v in run.pop("num_atoms").items()}
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: invalid run metadata ({err})") from err
    if recipe.config.model != model.cfg:
        raise CheckpointError(f"{path}: the recipe's network config differs from the saved network")
    model.eval()
    return Trained(recipe, model, num_atoms, run)
