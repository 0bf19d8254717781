"""The molecule recipe: QM9-like molecules as a diffusion state, forward process, loss and sampler.

Implements :class:`pipeline.recipes.Recipe` for the EGNN (:mod:`models.egnn`). The state is a
:class:`MoleculeState` of two named per-atom parts (EDM's layout; Hoogeboom et al. 2022):
``pos (N, 3)``, CoM-free, under the physical process of :class:`ProcessConfig`, and ``types (N, K)
= s * onehot(z)`` (``s = type_scale``) under EDM's VP process, both on EDM's polynomial schedule,
as one :class:`pipeline.node_parts.NodeParts` (noise drawn jointly over ``[pos, types]``). The
loss is :func:`pipeline.losses.score_loss` of the config's :class:`~pipeline.losses.LossConfig`,
the sampler :func:`pipeline.samplers.run_sampler`; the network reads the joined state ``[pos,
types]`` and is wrapped in a preconditioning (:class:`SigmaScaled` or :class:`EDMPreconditioned`).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from models.config import EGNNConfig
from models.egnn import EGNN
from pipeline import keys as K
from pipeline.batching import counts
from pipeline.encoding import ElementIndex, graph_batch
from pipeline.energies import CappedLennardJones, Energy, HarmonicConfinement, Morse, SoftSphere
from pipeline.losses import LossConfig, score_loss
from pipeline.node_parts import NodeParts
from pipeline.processes import GradientProcess, vp_process
from pipeline.samplers import SamplerConfig, prior_sample, run_sampler
from pipeline.schedules import PolynomialSchedule, Schedule, vp_signal_variance
from pipeline.structure_set import to_data
from pipeline.structures import make_molecule

QM9_ELEMENTS = (1, 6, 7, 8, 9)  # H, C, N, O, F


class MoleculeState(NamedTuple):
    """A batch of molecule states (or their processes, scores or errors, part by part)."""

    pos: Tensor  # (num_nodes, 3) positions, zero centre of mass per molecule
    types: Tensor  # (num_nodes, K) type features type_scale * onehot(z)


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


class StationaryReference(nn.Module):
    """``preconditioning="edm-stationary"``: :class:`EDMPreconditioned` whose Gaussian reference
    score on the positions (the first 3 columns) moves to the process's stationary score as
    t -> 1: ``score = edm(x) + sigma^2(t) P (2 F(x) + x)`` with ``sigma^2 = 1 - e^{-B_t}``.

    For a gradient process (``F = -1/2 grad U``, stationary law ``exp(-U)``) ``2 F(x) + x`` is
    ``-grad U - (-x)``: the stationary score minus the N(0, I) one, so at t = 1 (``v = 1``,
    ``sigma = 1``) the reference is ``-grad U``, the exact score of the prior, pair repulsion
    included, where EDM's ``c(t)`` leaves the network almost no say. With EDM's reference alone a
    physical-drift model's score at t = 1 is ``-x`` (its network term vanishes) and misses the
    pair part, about a third of ``|grad U|^2`` on QM9-sized priors (ad hoc, 2026-12-01). On the
    linear process the correction is 0: the same score as ``edm``. The network weights are
    ``EDMPreconditioned``'s; ``output_weight`` is its.
    """

    def __init__(self, score: EDMPreconditioned, positions: GradientProcess):
        super().__init__()
        self.score, self.positions = score, positions

    def forward(self, x: Tensor, t: Tensor, batch: Tensor) -> Tensor:
        out = self.score(x, t, batch)
        pos = x[:, :3].double()
        total = self.score.schedule.integral(torch.zeros_like(t), t.double())
        sigma2 = (-torch.expm1(-total))[batch, None]
        shift = self.positions.project(2 * self.positions.drift_field(pos, batch) + pos, batch)
        return torch.cat([out[:, :3] + (sigma2 * shift).to(out.dtype), out[:, 3:]], dim=1)

    def output_weight(self, t: Tensor, schedule: Schedule) -> Tensor:
        return self.score.output_weight(t, schedule)


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


class MoleculeRecipeConfig(BaseModel):
    """A molecule recipe: network, process, loss. ``elements`` fixes the one-hot order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["molecule"] = "molecule"
    elements: tuple[int, ...] = QM9_ELEMENTS
    type_scale: PositiveFloat = 0.25  # EDM's one-hot scale
    # "sigma": score = net / sigma_VP(t) (noise prediction); "edm": EDMPreconditioned with
    # sigma_data = (positions, types): QM9's rms of centred coordinates (1.40 A) and of the
    # 0.25-scaled one-hot (0.11); "edm-stationary": that with the process's stationary score as
    # the reference near t = 1 (StationaryReference; the same as "edm" on the linear process)
    preconditioning: Literal["sigma", "edm", "edm-stationary"] = "sigma"
    sigma_data: tuple[PositiveFloat, PositiveFloat] = (1.4, 0.11)
    model: EGNNConfig = Field(default_factory=lambda: EGNNConfig(hidden=64, layers=4))
    process: ProcessConfig = Field(default_factory=ProcessConfig)
    loss: LossConfig = Field(default_factory=LossConfig)


class MoleculeRecipe:
    """Molecules as :class:`MoleculeState` ``(pos, type_scale * onehot)`` (module docstring).

    ``ValueError`` if the network's type width is not the number of elements.
    """

    def __init__(self, config: MoleculeRecipeConfig | None = None):
        self.config = config or MoleculeRecipeConfig()
        if self.config.model.num_types != len(self.config.elements):
            raise ValueError(
                f"model.num_types={self.config.model.num_types} but {len(self.config.elements)} "
                "elements"
            )
        self.positions = self.config.process.build()
        self.process = NodeParts(
            MoleculeState(pos=self.positions, types=vp_process(self.positions.schedule))
        )
        self.elements = ElementIndex(self.config.elements)

    def build_model(self) -> nn.Module:
        return EGNN(self.config.model)

    def score(self, model: nn.Module) -> SigmaScaled | EDMPreconditioned | StationaryReference:
        """The score function that losses and samplers call."""
        if self.config.preconditioning == "sigma":
            return SigmaScaled(model, self.process.schedule)
        pos, types = self.config.sigma_data
        k = len(self.config.elements)
        sigma_data = torch.tensor([pos] * 3 + [types] * k, dtype=torch.float64)
        edm = EDMPreconditioned(model, self.process.schedule, sigma_data)
        if self.config.preconditioning == "edm-stationary":
            return StationaryReference(edm, self.positions)
        return edm

    def encode(self, batch: Batch) -> MoleculeState:
        """The float32 state of a Batch, positions centred per molecule."""
        z = batch[K.Z]
        if self.elements.unknown(z):
            raise ValueError(f"elements outside {self.config.elements} in the batch")
        pos = batch[K.POS].double()
        centre = torch.zeros(batch.num_graphs, 3, dtype=pos.dtype).index_add_(0, batch.batch, pos)
        pos = pos - (centre / counts(batch.batch, batch.num_graphs)[:, None])[batch.batch]
        onehot = self.elements.onehot(z)
        return MoleculeState(pos.float(), self.config.type_scale * onehot.float())

    def decode(self, x: MoleculeState, batch: Tensor, prefix: str = "sample") -> list[Data]:
        """Molecules from states: positions as they are, each atom the element of its largest type
        feature. Non-finite states are kept (the screen rejects them with a reason)."""
        z = self.elements.decode(x.types)
        out = []
        for g in range(int(batch.max()) + 1 if batch.numel() else 0):
            rows = batch == g
            molecule = make_molecule(z[rows], x.pos[rows].float(), name=f"{prefix}_{g:06d}")
            out.append(to_data(molecule))
        return out

    def loss(self, model: nn.Module, batch: Batch, generator: torch.Generator | None) -> Tensor:
        x0 = self.encode(batch)
        return score_loss(
            self.config.loss, self.score(model), self.process, x0, batch.batch, generator
        )

    def prior(
        self, batch: Tensor, generator: torch.Generator | None, budget: float = 0.1
    ) -> MoleculeState:
        """A draw of the stationary law at t = 1 (Langevin steps of rate ``budget``): float64.

        The steps are ``split`` ones, the confinement exact: on 250 QM9-sized priors of the
        physical drift they cost 1.3 CPU-s against 13.6 for ``expm`` (an eigh of every Hessian),
        mean |x|^2 3.188 against 3.205 (ad hoc, 2026-12-01)."""
        pos = prior_sample(
            self.positions, batch, 3, max_budget=budget, mode="split", generator=generator
        )
        types = torch.randn(
            (batch.numel(), len(self.config.elements)), generator=generator, dtype=torch.float64
        )
        return MoleculeState(pos, types)

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
        batch = graph_batch(num_atoms)
        x1 = MoleculeState(*(x.float() for x in self.prior(batch, generator, sampler.prior_budget)))
        result = run_sampler(sampler, self.score(model), self.process, x1, batch, generator)
        return self.decode(result.x, batch, prefix), result.nfe


__all__ = [
    "QM9_ELEMENTS",
    "EDMPreconditioned",
    "MoleculeRecipe",
    "MoleculeRecipeConfig",
    "MoleculeState",
    "ProcessConfig",
    "SigmaScaled",
    "StationaryReference",
]
