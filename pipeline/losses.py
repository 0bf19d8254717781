"""Score-matching losses sharing one skeleton: draw times, draw states, regress, weight.

* :func:`local_dsm_loss` (Singhal, Goldstein & Ranganath 2024): ``y_s`` by simulating the forward SDE
  from the data point, then one linearised step ``s -> t`` (:func:`pipeline.transitions.local_step`)
  gives ``y_t`` and the target ``grad log q(y_t | y_s)``; by their Theorem 1 the regression on it has
  the same minimiser as regressing on ``grad log q_t(y_t)``.
* :func:`exact_dsm_loss`: the closed-form transition ``q(x_t | x_0)`` (linear drifts only).
* :func:`ism_loss`: implicit score matching (Hyvarinen 2005) with Hutchinson's divergence estimator;
  ``|s|^2 + 2 div s`` equals the DSM loss up to a constant, so all three share one scale.

The model is any callable ``model(x (num_nodes, d), t (num_graphs,), batch) -> (num_nodes, d)``.
Every loss returns per-graph values ``(num_graphs,)``: the weighted squared error summed over the
graph's entries and divided by their number. The time sampler, the local step schedule D(t) and the
loss weight are explicit arguments; :class:`LossConfig` names them for a recipe, and
:func:`time_sampler` / :func:`step_rule` are the one place that turns a config into them
(:func:`score_loss` dispatches a single-tensor state, the crystal recipe its own parts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat
from torch import Tensor

from pipeline.batching import counts, num_graphs, scatter_sum
from pipeline.processes import ForwardProcess
from pipeline.schedules import Schedule, vp_signal_variance
from pipeline.transitions import Mode, local_step, simulate_forward

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
    pred: Sequence[Tensor], x: Sequence[Tensor], generator: torch.Generator | None
) -> list[Tensor]:
    """The ISM integrand ``s^2 + 2 v (ds/dx v)`` per entry of every part (Hyvarinen 2005;
    Hutchinson's trace estimator with one Rademacher ``v`` per part, drawn in part order).

    ``pred`` the scores of the parts at ``x`` (each ``x`` requires grad); one vector-Jacobian
    product of the summed ``v . s`` gives every part's ``ds/dx v`` (its divergence in expectation,
    cross-part terms included). Returns tensors shaped like ``pred``.
    """
    signs = [torch.randint(0, 2, p.shape, generator=generator).to(p) * 2 - 1 for p in pred]
    total = sum((p * v).sum() for p, v in zip(pred, signs, strict=True))
    jv = torch.autograd.grad(total, list(x), create_graph=True)
    return [p**2 + 2 * j.to(p) * v for p, j, v in zip(pred, jv, signs, strict=True)]


def regression_loss(
    model: ScoreModel,
    x_t: Tensor,
    t: Tensor,
    batch: Tensor,
    target: Tensor,
    weight: Weight,
    schedule: Schedule,
) -> Tensor:
    """Per-graph ``weight(t) |s_theta(x_t, t) - target|^2`` (the shared last step of every DSM)."""
    pred = model(x_t, t.to(x_t.dtype), batch)
    return _weighted_error((pred - target) ** 2, t, batch, weight, schedule)


def local_dsm_loss(
    model: ScoreModel,
    process: ForwardProcess,
    x0: Tensor,
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
    """Local-DSM: regress on ``grad log q(y_t | y_s)`` of the linearised step ``s = D-schedule(t)``."""
    t = times(num_graphs(batch), generator)
    s = step(t, process.schedule)
    y_s = simulate_forward(process, x0, s, batch, sim_mode, sim_budget, types, generator)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    y_t, target = local_step(process, y_s, process.schedule.integral(s, t), batch, eps, mode, types)
    return regression_loss(model, y_t, t, batch, target, weight, process.schedule)


def exact_dsm_loss(
    model: ScoreModel,
    process: ForwardProcess,
    x0: Tensor,
    batch: Tensor,
    *,
    times: TimeSampler = UniformTimes(),
    weight: Weight = vp_weight,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Denoising score matching on the closed-form ``q(x_t | x_0)`` (Vincent 2011; EDM's setting)."""
    t = times(num_graphs(batch), generator)
    tr = process.transition(x0.double(), t, batch)
    eps = process.project(torch.randn(x0.shape, generator=generator, dtype=torch.float64), batch)
    std = tr.std[batch, None]
    x_t = (tr.mean + std * eps).to(x0.dtype)
    target = (-eps / std).to(x0.dtype)
    return regression_loss(model, x_t, t, batch, target, weight, process.schedule)


def ism_loss(
    model: ScoreModel,
    process: ForwardProcess,
    x0: Tensor,
    batch: Tensor,
    *,
    times: TimeSampler = UniformTimes(),
    weight: Weight = vp_weight,
    sim_budget: float = 0.25,
    sim_mode: Mode = "expm",
    types: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Implicit score matching: ``|s|^2 + 2 v^T (ds/dx) v`` with Rademacher ``v`` (projected by P)."""
    t = times(num_graphs(batch), generator)
    x_t = simulate_forward(process, x0, t, batch, sim_mode, sim_budget, types, generator)
    x_t = x_t.detach().requires_grad_(True)
    signs = torch.randint(0, 2, x0.shape, generator=generator).to(x0.dtype) * 2 - 1
    v = process.project(signs, batch)
    pred = model(x_t, t.to(x0.dtype), batch)
    (jv,) = torch.autograd.grad((pred * v).sum(), x_t, create_graph=True)
    return _weighted_error(pred**2 + 2 * jv * v, t, batch, weight, process.schedule)


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


def score_loss(
    cfg: LossConfig,
    model,
    process: ForwardProcess,
    x0: Tensor,
    batch: Tensor,
    generator: torch.Generator | None,
    types: Tensor | None = None,
) -> Tensor:
    """The loss of ``cfg`` for ``model`` under ``process`` at data ``x0 (num_nodes, d)``: ``(num_graphs,)``.

    ``weight="output"`` needs a preconditioned score model (one with ``output_weight``, e.g.
    :class:`pipeline.molecule_recipe.EDMPreconditioned`); otherwise :class:`ValueError`.
    """
    times = time_sampler(cfg)
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
    return local_dsm_loss(model, process, x0, batch, step=step_rule(cfg), mode=cfg.mode, **common)


class PartsProcess(Protocol):
    """A forward process on a state of named parts (a NamedTuple of tensors, each part with its
    own batch index), e.g. :class:`pipeline.crystal_process.CrystalProcess`. Each method draws
    its noise part by part; a part whose drift reads another reads the state at the step's start."""

    schedule: Schedule

    def simulate(self, x0, batch: Tensor, t: Tensor, generator, mode: Mode, max_budget: float):
        """A draw of the state at ``t (num_graphs,)`` from ``x0``."""

    def local_step(self, x_s, budget: Tensor, batch: Tensor, generator, mode: Mode):
        """``(x_t, grad log q(x_t | x_s))`` of the linearised step over ``budget``."""

    def exact_step(self, x0, batch: Tensor, t: Tensor, generator):
        """``(x_t, grad log q(x_t | x_0))`` in closed form."""


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
    type whose parts are squared errors against the target (``local-dsm``: the target of one
    linearised step from ``s = step_rule(cfg)(t)``, the state at s simulated from the data;
    ``exact-dsm``: the closed form) or the ISM integrand (:func:`hutchinson_terms` at a simulated
    ``x_t``). Weight and reduce them with :func:`parts_error`. The single-tensor twins are
    :func:`local_dsm_loss`, :func:`exact_dsm_loss` and :func:`ism_loss`.
    """
    if cfg.kind == "ism":
        x_t = process.simulate(x0, batch, t, generator, cfg.sim_mode, cfg.sim_budget)
        x_t = type(x0)(*(x.detach().requires_grad_(True) for x in x_t))
        return type(x0)(*hutchinson_terms(score(x_t, t, batch), x_t, generator))
    if cfg.kind == "exact-dsm":
        x_t, target = process.exact_step(x0, batch, t, generator)
    else:
        s = step_rule(cfg)(t, process.schedule)
        x_s = process.simulate(x0, batch, s, generator, cfg.sim_mode, cfg.sim_budget)
        budget = process.schedule.integral(s, t)
        x_t, target = process.local_step(x_s, budget, batch, generator, cfg.mode)
    pred = score(x_t, t, batch)
    return type(x0)(*((p - y.to(p)) ** 2 for p, y in zip(pred, target, strict=True)))


def relative_score_error(pred: Tensor, true: Tensor) -> float:
    """``E|s_theta - s|^2 / E|s|^2`` over all entries."""
    return float(((pred - true) ** 2).sum() / (true**2).sum())
