"""Score-matching losses on a state of named parts, sharing one skeleton: draw states, regress.

A state is a NamedTuple of tensors, each part with its own batch index and its own process (a
:class:`PartsProcess`: :class:`pipeline.node_parts.NodeParts` for per-node parts such as a
molecule's positions and types, :class:`pipeline.crystal_process.CrystalProcess` for crystals).
The error functions return a state of per-entry errors at given times:

* :func:`local_dsm_errors` (Singhal, Goldstein & Ranganath 2024): ``y_s`` by simulating the forward
  SDE from the data point, then one linearised step ``s -> t`` (the process's ``local_step``,
  :func:`pipeline.transitions.local_step` per part) gives ``y_t`` and the target ``grad log q(y_t |
  y_s)``; by their Theorem 1 the regression on it has the same minimiser as regressing on
  ``grad log q_t(y_t)``.
* :func:`exact_dsm_errors`: the closed-form transition ``q(x_t | x_0)`` (linear drifts only).
* :func:`ism_errors`: implicit score matching (Hyvarinen 2005) with Hutchinson's divergence
  estimator; ``|s|^2 + 2 div s`` equals the DSM loss up to a constant, so all three share one scale.

:func:`parts_errors` picks one by a :class:`LossConfig`. Two reductions turn errors into per-graph
losses ``(num_graphs,)``: :func:`joint_error` (every entry of every part weighed alike, times
``lambda(t)``; molecules) and :func:`parts_error` (a weight per part; crystals).
:func:`score_loss` is a recipe's loss for per-node parts; :func:`local_dsm_loss`,
:func:`exact_dsm_loss` and :func:`ism_loss` the same with explicit knobs, for a node tensor under
one :class:`~pipeline.processes.ForwardProcess` too (a one-part state,
:func:`pipeline.node_parts.as_parts`). The time sampler, the local step schedule D(t) and the loss
weight are explicit arguments there; :func:`time_sampler` / :func:`step_rule` /
:func:`loss_weight` are the one place that turns a config into them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat
from torch import Tensor

from pipeline.batching import counts, num_graphs, scatter_sum
from pipeline.node_parts import NodeParts, as_parts
from pipeline.processes import ForwardProcess
from pipeline.schedules import Schedule, vp_signal_variance
from pipeline.transitions import Mode

ScoreModel = Callable[[Tensor, Tensor, Tensor], Tensor]
TimeSampler = Callable[[int, torch.Generator | None], Tensor]
Weight = Callable[[Tensor, Schedule], Tensor]  # (num_graphs,) or (num_graphs, d)


@dataclass(frozen=True)
class UniformTimes:
    """``t = t_min + (1 - t_min) u^power`` with ``u ~ U[0, 1]`` per graph.

    ``power = 1`` is uniform on ``[t_min, 1]``; ``power > 1`` skews training towards low noise,
    where bond lengths are decided (``P(t - t_min <= (1 - t_min) x) = x^(1 / power)``; SemlaFlow's
    Beta(2, 1) on the flow time plays the same role).
    """

    t_min: float = 1e-3
    power: float = 1.0

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return self.t_min + (1 - self.t_min) * u**self.power


@dataclass(frozen=True)
class StratifiedTimes:
    """:class:`UniformTimes` with one draw of ``u`` in each of n equal strata (lower-variance batches)."""

    t_min: float = 1e-3
    power: float = 1.0

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = (torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=generator)) / n
        u = u[torch.randperm(n, generator=generator)]
        return self.t_min + (1 - self.t_min) * u**self.power


@dataclass(frozen=True)
class ConstantStep:
    """``D(t) = D``: ``s = max(t - D, 0)``."""

    size: float = 0.01

    def __call__(self, t: Tensor, schedule: Schedule) -> Tensor:
        return (t - self.size).clamp(min=0.0)


@dataclass(frozen=True)
class ConstantBudget:
    """Error-controlled ``D(t)``: the step spends a fixed rate budget ``int_s^t beta = budget``.

    The linearisation error grows with ``B |lambda_max(J)|`` (DESIGN.md, Numerics), so choosing
    ``budget ~ tol / |lambda_max|`` bounds it at every t; D(t) shrinks where beta(t) is large.
    """

    budget: float = 0.05

    def __call__(self, t: Tensor, schedule: Schedule) -> Tensor:
        return schedule.time_before(t, self.budget)


StepSchedule = Callable[[Tensor, Schedule], Tensor]


@dataclass(frozen=True)
class FractionBudget:
    """``D(t)`` spending a fraction of the noise already added: ``int_s^t beta = min(r B_t, cap)``.

    With ``B_t = int_0^t beta``, the local target's variance relative to exact DSM's is about
    ``(1 - e^{-B_t}) / (1 - e^{-r B_t})`` (about ``1 / r``), instead of growing like ``1 / budget``
    at large t as with :class:`ConstantBudget`; ``cap`` bounds the linearisation error.
    """

    fraction: float = 0.5
    cap: float = 1.0

    def __call__(self, t: Tensor, schedule: Schedule) -> Tensor:
        total = schedule.integral(torch.zeros_like(t), t)
        return schedule.time_before(t, (self.fraction * total).clamp(max=self.cap))


def unit_weight(t: Tensor, schedule: Schedule) -> Tensor:
    """``lambda(t) = 1``."""
    return torch.ones_like(t)


def vp_weight(t: Tensor, schedule: Schedule) -> Tensor:
    """``lambda(t) = 1 - exp(-int_0^t beta)``: the VP noise variance (Song et al.'s ``sigma^2`` weight)."""
    return vp_signal_variance(schedule, t)


def _weighted_error(residual: Tensor, t: Tensor, batch: Tensor, weight: Weight, schedule) -> Tensor:
    """``weight(t) * sum_graph residual / (nodes * d)``: ``residual (num_nodes, d) -> (num_graphs,)``.

    ``weight(t, schedule)`` is ``(num_graphs,)``, or ``(num_graphs, d)`` for a weight per feature
    column (a preconditioned model's :meth:`output_weight`).
    """
    b = t.shape[0]
    lam = weight(t, schedule)
    if lam.dim() == 2:
        residual = residual * lam.to(residual.dtype)[batch]
        lam = torch.ones_like(t)
    per_graph = scatter_sum(residual.sum(-1), batch, b)
    size = counts(batch, b).to(per_graph.dtype) * residual.shape[1]
    return lam.to(per_graph.dtype) * per_graph / size


@dataclass(frozen=True)
class PartError:
    """One named part's squared errors for :func:`parts_error`.

    ``values (rows, ...)``: per-entry errors; ``index (rows,)``: each row's graph (the node batch
    for per-atom parts, ``arange(num_graphs)`` for per-graph parts such as a lattice); ``weight
    (num_graphs,)``: the part's weight times its ``lambda(t)``.
    """

    values: Tensor
    index: Tensor
    weight: Tensor


def parts_error(parts: Sequence[PartError], num_graphs: int) -> Tensor:
    """``sum_part weight_part * mean_{graph's entries of the part} values`` per graph, float64
    ``(num_graphs,)``: the loss of a state made of named parts (MatterGen's per-part sum; DiffCSP
    weighs lattice, coordinates and types so). Means are taken in float64."""
    total = None
    for part in parts:
        flat = part.values.double().reshape(part.values.shape[0], -1)
        size = counts(part.index, num_graphs).to(torch.float64) * flat.shape[1]
        term = part.weight * (scatter_sum(flat.sum(1), part.index, num_graphs) / size)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("parts_error needs at least one part")
    return total


def hutchinson_terms(
    pred: Sequence[Tensor],
    x: Sequence[Tensor],
    generator: torch.Generator | None,
    signs: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """The ISM integrand ``s^2 + 2 v (ds/dx v)`` per entry of every part (Hyvarinen 2005;
    Hutchinson's trace estimator with one Rademacher ``v`` per part, drawn in part order).

    ``pred`` the scores of the parts at ``x`` (each ``x`` requires grad); one vector-Jacobian
    product of the summed ``v . s`` gives every part's ``ds/dx v`` (its divergence in expectation,
    cross-part terms included). ``signs`` a given probe (e.g. projected, drawn jointly) instead.
    Returns tensors shaped like ``pred``.
    """
    if signs is None:
        signs = [torch.randint(0, 2, p.shape, generator=generator).to(p) * 2 - 1 for p in pred]
    signs = [v.to(p) for p, v in zip(pred, signs, strict=True)]
    total = sum((p * v).sum() for p, v in zip(pred, signs, strict=True))
    jv = torch.autograd.grad(total, list(x), create_graph=True)
    return [p**2 + 2 * j.to(p) * v for p, j, v in zip(pred, jv, signs, strict=True)]


def joint_error(errors, t: Tensor, batch: Tensor, weight: Weight, schedule: Schedule) -> Tensor:
    """The loss of a state of per-node parts (:mod:`pipeline.node_parts`): ``weight(t) * mean of
    the graph's entries of all parts``, every entry weighed alike: ``(num_graphs,)``. ``errors`` a
    state of per-entry errors (:func:`parts_errors`); a per-column weight ``(num_graphs, d)`` runs
    over the parts' columns in order."""
    return _weighted_error(torch.cat(list(errors), dim=1), t, batch, weight, schedule)


def local_dsm_errors(
    score: Callable,
    process: PartsProcess,
    x0,
    batch: Tensor,
    t: Tensor,
    generator: torch.Generator | None,
    *,
    step: StepSchedule = ConstantBudget(),
    mode: Mode = "expm",
    sim_mode: Mode = "expm",
    sim_budget: float = 0.25,
):
    """Local-DSM's squared errors: ``y_s`` simulated from the data at ``s = step(t)``, then one
    linearised step ``s -> t`` gives ``y_t`` and the target ``grad log q(y_t | y_s)``."""
    s = step(t, process.schedule)
    x_s = process.simulate(x0, batch, s, generator, sim_mode, sim_budget)
    x_t, target = process.local_step(x_s, process.schedule.integral(s, t), batch, generator, mode)
    return _squared_errors(score(x_t, t, batch), target)


def exact_dsm_errors(score: Callable, process: PartsProcess, x0, batch, t, generator):
    """Exact DSM's squared errors on the closed-form ``q(x_t | x_0)`` (Vincent 2011; EDM's
    setting; linear drifts only)."""
    x_t, target = process.exact_step(x0, batch, t, generator)
    return _squared_errors(score(x_t, t, batch), target)


def ism_errors(
    score: Callable,
    process: PartsProcess,
    x0,
    batch: Tensor,
    t: Tensor,
    generator: torch.Generator | None,
    *,
    sim_mode: Mode = "expm",
    sim_budget: float = 0.25,
):
    """ISM's integrand ``|s|^2 + 2 v^T (ds/dx) v`` (:func:`hutchinson_terms`) at a simulated
    ``x_t``, the probe ``v`` from the process's :meth:`~PartsProcess.rademacher`."""
    x_t = process.simulate(x0, batch, t, generator, sim_mode, sim_budget)
    x_t = type(x0)(*(x.detach().requires_grad_(True) for x in x_t))
    signs = process.rademacher(x_t, batch, generator)
    return type(x0)(*hutchinson_terms(score(x_t, t, batch), x_t, generator, signs))


def _squared_errors(pred, target):
    return type(pred)(*((p - y.to(p)) ** 2 for p, y in zip(pred, target, strict=True)))


def _tensor_loss(errors_fn, model, process, x0, batch, times, weight, types, generator, **kw):
    parts, x, _ = as_parts(process, x0, types)
    t = times(num_graphs(batch), generator)
    errors = errors_fn(parts.score(model), parts, x, batch, t, generator, **kw)
    return joint_error(errors, t, batch, weight, process.schedule)


def local_dsm_loss(
    model: ScoreModel,
    process: ForwardProcess | NodeParts,
    x0,
    batch: Tensor,
    *,
    times: TimeSampler = UniformTimes(),
    step: StepSchedule = ConstantBudget(),
    weight: Weight = vp_weight,
    mode: Mode = "expm",
    sim_budget: float = 0.25,
    sim_mode: Mode = "expm",
    types: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Local-DSM (:func:`local_dsm_errors`) reduced by :func:`joint_error`: ``(num_graphs,)``.

    ``x0`` a node tensor under a :class:`ForwardProcess` or a state under :class:`NodeParts`;
    ``model`` a network on joined states (:meth:`NodeParts.score`)."""
    kw = dict(step=step, mode=mode, sim_mode=sim_mode, sim_budget=sim_budget)
    return _tensor_loss(
        local_dsm_errors, model, process, x0, batch, times, weight, types, generator, **kw
    )


def exact_dsm_loss(
    model: ScoreModel,
    process: ForwardProcess | NodeParts,
    x0,
    batch: Tensor,
    *,
    times: TimeSampler = UniformTimes(),
    weight: Weight = vp_weight,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Exact DSM (:func:`exact_dsm_errors`) reduced by :func:`joint_error`: ``(num_graphs,)``."""
    return _tensor_loss(exact_dsm_errors, model, process, x0, batch, times, weight, None, generator)


def ism_loss(
    model: ScoreModel,
    process: ForwardProcess | NodeParts,
    x0,
    batch: Tensor,
    *,
    times: TimeSampler = UniformTimes(),
    weight: Weight = vp_weight,
    sim_budget: float = 0.25,
    sim_mode: Mode = "expm",
    types: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Implicit score matching (:func:`ism_errors`) reduced by :func:`joint_error`: ``(num_graphs,)``."""
    kw = dict(sim_mode=sim_mode, sim_budget=sim_budget)
    return _tensor_loss(
        ism_errors, model, process, x0, batch, times, weight, types, generator, **kw
    )


class LossConfig(BaseModel):
    """Which score-matching loss, and its knobs (the functions above)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["local-dsm", "exact-dsm", "ism"] = "local-dsm"
    mode: Mode = "expm"  # local-DSM transition moments
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
    sim_mode: Mode = "euler"
    # lambda(t) = sigma_VP^2(t) (EDM's eps-loss scale), 1, or "output": unit weight on the network's
    # own output under the recipe's preconditioning (Karras et al. 2022's lambda = 1 / c_out^2)
    weight: Literal["vp", "unit", "output"] = "vp"
    times: Literal["stratified", "uniform"] = "stratified"
    t_min: PositiveFloat = 1e-3
    time_power: PositiveFloat = 1.0  # t = t_min + (1 - t_min) u^power: > 1 trains more at low noise


def time_sampler(cfg: LossConfig) -> TimeSampler:
    """The training-time sampler of ``cfg``: :class:`StratifiedTimes` or :class:`UniformTimes`."""
    return (StratifiedTimes if cfg.times == "stratified" else UniformTimes)(
        cfg.t_min, cfg.time_power
    )


def step_rule(cfg: LossConfig) -> StepSchedule:
    """The local-DSM step ``D(t)`` of ``cfg``: :class:`ConstantBudget` or :class:`FractionBudget`."""
    if cfg.step == "budget":
        return ConstantBudget(cfg.budget)
    return FractionBudget(cfg.fraction, cfg.budget)


def loss_weight(cfg: LossConfig, model) -> Weight:
    """``lambda(t)`` of ``cfg``; ``weight="output"`` needs a preconditioned score model (one with
    ``output_weight``, e.g. :class:`pipeline.molecule_recipe.EDMPreconditioned`), otherwise
    :class:`ValueError`."""
    if cfg.weight == "output":
        if not hasattr(model, "output_weight"):
            raise ValueError(
                "weight='output' needs a preconditioned score model (preconditioning='edm')"
            )
        return model.output_weight
    return vp_weight if cfg.weight == "vp" else unit_weight


def score_loss(
    cfg: LossConfig,
    model,
    process: ForwardProcess | NodeParts,
    x0,
    batch: Tensor,
    generator: torch.Generator | None,
    types: Tensor | None = None,
) -> Tensor:
    """The loss of ``cfg`` for the network ``model`` at data ``x0`` (a node tensor, or a state
    of per-node parts under :class:`NodeParts`), reduced by :func:`joint_error`: ``(num_graphs,)``."""
    weight = loss_weight(cfg, model)
    parts, x, _ = as_parts(process, x0, types)
    t = time_sampler(cfg)(num_graphs(batch), generator)
    errors = parts_errors(cfg, parts.score(model), parts, x, batch, t, generator)
    return joint_error(errors, t, batch, weight, process.schedule)


class PartsProcess(Protocol):
    """A forward process on a state of named parts (module docstring); a part whose drift reads
    another reads the state at the step's start."""

    schedule: Schedule

    def simulate(self, x0, batch: Tensor, t: Tensor, generator, mode: Mode, max_budget: float):
        """A draw of the state at ``t (num_graphs,)`` from ``x0``."""

    def local_step(self, x_s, budget: Tensor, batch: Tensor, generator, mode: Mode):
        """``(x_t, grad log q(x_t | x_s))`` of the linearised step over ``budget``."""

    def exact_step(self, x0, batch: Tensor, t: Tensor, generator):
        """``(x_t, grad log q(x_t | x_0))`` in closed form."""

    def rademacher(self, x, batch: Tensor, generator):
        """Hutchinson's probe: a state of signs +-1 shaped like ``x`` (projected if need be)."""


def parts_errors(
    cfg: LossConfig,
    score: Callable,
    process: PartsProcess,
    x0,
    batch: Tensor,
    t: Tensor,
    generator: torch.Generator | None,
):
    """The per-entry errors of ``cfg.kind`` at times ``t (num_graphs,)`` for a state of named parts.

    ``score(x, t, batch)`` returns a state shaped like ``x0``; the result is a state of the same
    type whose parts are squared errors against the target (:func:`local_dsm_errors` with
    ``step_rule(cfg)``, :func:`exact_dsm_errors`) or the ISM integrand (:func:`ism_errors`).
    Reduce them with :func:`joint_error` or, weighing each part, :func:`parts_error`.
    """
    sim = dict(sim_mode=cfg.sim_mode, sim_budget=cfg.sim_budget)
    if cfg.kind == "ism":
        return ism_errors(score, process, x0, batch, t, generator, **sim)
    if cfg.kind == "exact-dsm":
        return exact_dsm_errors(score, process, x0, batch, t, generator)
    step = step_rule(cfg)
    return local_dsm_errors(
        score, process, x0, batch, t, generator, step=step, mode=cfg.mode, **sim
    )


def relative_score_error(pred: Tensor, true: Tensor) -> float:
    """``E|s_theta - s|^2 / E|s|^2`` over all entries."""
    return float(((pred - true) ** 2).sum() / (true**2).sum())
