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
loss weight are explicit arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
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


def relative_score_error(pred: Tensor, true: Tensor) -> float:
    """``E|s_theta - s|^2 / E|s|^2`` over all entries."""
    return float(((pred - true) ** 2).sum() / (true**2).sum())
