"""Reverse-time samplers; each returns its samples and its number of network evaluations (NFE).

Reverse SDE (Anderson 1982; Song et al. 2021, eq. 6): ``dx = [f - g^2 P s] dt + g P dW``, integrated
backwards by Euler-Maruyama. Probability-flow ODE (Song et al. 2021, eq. 13):
``dx/dt = f - 1/2 g^2 P s``, integrated by Heun's method (EDM, Karras et al. 2022, Algorithm 1, the
last step plain Euler). Here ``f = beta(t) F`` and ``g^2 = beta(t) G^2`` (:mod:`pipeline.processes`).
The prior at t = 1 comes from :func:`prior_sample`, with no network involved.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.losses import ScoreModel
from pipeline.processes import ForwardProcess, GradientProcess, NoClosedFormTransition
from pipeline.schedules import ConstantSchedule
from pipeline.transitions import Mode, simulate_forward


@dataclass(frozen=True)
class SampleResult:
    """``x (num_nodes, d)`` at t = t_end and the number of network evaluations."""

    x: Tensor
    nfe: int


def time_grid(n_steps: int, t_end: float, dtype, power: float = 1.0) -> Tensor:
    """``t_i = t_end + (1 - t_end) (1 - i / n_steps)^power``, ``i = 0..n_steps``: ``(n_steps + 1,)``.

    ``power = 1`` is the uniform grid; ``power > 1`` spends more steps at low noise, where the score
    is stiff (near t = 0 it grows like 1 / t^2 on EDM's schedule, so an Euler step with
    ``dt > t`` overshoots), as EDM's ``rho = 7`` discretisation does (Karras et al. 2022, eq. 5).
    """
    if power == 1.0:  # torch's own linspace, so uniform grids stay bit-identical to earlier runs
        return torch.linspace(1.0, t_end, n_steps + 1, dtype=dtype)
    u = torch.linspace(1.0, 0.0, n_steps + 1, dtype=torch.float64)
    return (t_end + (1 - t_end) * u**power).to(dtype)


def _velocity(process, model, x, t, batch, types, ode: bool) -> Tensor:
    """``f - c g^2 P s`` with c = 1/2 (ODE) or 1 (SDE); ``t`` a scalar tensor."""
    tt = t.expand(int(batch.max()) + 1).to(x.dtype)
    g2 = process.noise_scale(x.shape[1], x) ** 2 * process.schedule.beta(tt)[batch, None]
    score = process.project(model(x, tt, batch), batch)
    return process.drift(x, tt, batch, types) - (0.5 if ode else 1.0) * g2 * score


@torch.no_grad()
def reverse_sde_euler(
    model: ScoreModel,
    process: ForwardProcess,
    x1: Tensor,
    batch: Tensor,
    n_steps: int,
    t_end: float = 1e-3,
    types: Tensor | None = None,
    generator: torch.Generator | None = None,
    grid_power: float = 1.0,
) -> SampleResult:
    """Euler-Maruyama on the reverse SDE from ``x1`` at t = 1 to ``t_end`` (NFE = n_steps) on
    :func:`time_grid` of ``grid_power``."""
    grid = time_grid(n_steps, t_end, x1.dtype, grid_power)
    g = process.noise_scale(x1.shape[1], x1)
    x = x1
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        dt = t - t_next
        v = _velocity(process, model, x, t, batch, types, ode=False)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        beta = process.schedule.beta(t)
        x = x - v * dt + process.project(torch.sqrt(beta * dt) * g * z, batch)
    return SampleResult(x=x, nfe=n_steps)


@torch.no_grad()
def probability_flow_heun(
    model: ScoreModel,
    process: ForwardProcess,
    x1: Tensor,
    batch: Tensor,
    n_steps: int,
    t_end: float = 1e-3,
    types: Tensor | None = None,
    grid_power: float = 1.0,
) -> SampleResult:
    """Heun's method on the probability-flow ODE (NFE = 2 n_steps - 1) on :func:`time_grid`."""
    grid = time_grid(n_steps, t_end, x1.dtype, grid_power)
    x, nfe = x1, 0
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        dt = t_next - t
        v = _velocity(process, model, x, t, batch, types, ode=True)
        x_euler = x + v * dt
        nfe += 1
        if i == n_steps - 1:
            x = x_euler
            break
        v_next = _velocity(process, model, x_euler, t_next, batch, types, ode=True)
        nfe += 1
        x = x + 0.5 * (v + v_next) * dt
    return SampleResult(x=x, nfe=nfe)


@torch.no_grad()
def reverse_ancestral(
    model: ScoreModel,
    process: ForwardProcess,
    x1: Tensor,
    batch: Tensor,
    n_steps: int,
    t_end: float = 1e-3,
    generator: torch.Generator | None = None,
    grid_power: float = 1.0,
) -> SampleResult:
    """Ancestral sampling of the VP process (NFE = n_steps): EDM's ``sample_p_zs_given_zt``.

    Each step draws ``x_s ~ q(x_s | x_t, x_0 = x0_hat)``, the Gaussian posterior of the forward
    process with the network's denoised point ``x0_hat = (x_t + sigma_t^2 s) / alpha_t`` (Ho et al.
    2020, eqs. 6-7; Hoogeboom et al. 2022, eq. 8):
    ``x_s = x_t / alpha_ts + (sigma_ts^2 / alpha_ts) s + sigma_ts sigma_s / sigma_t P z``, with
    ``alpha_ts^2 = e^{-B(s, t)}`` and ``sigma_ts^2 = 1 - alpha_ts^2``. The linear part is integrated
    exactly, so a step is stable at any ``beta dt`` (Euler-Maruyama overshoots once ``beta dt > 2``,
    near t = 1 on EDM's schedule). Needs the closed-form (linear VP) transition: other processes
    raise :class:`ValueError`.
    """
    t1 = torch.ones(int(batch.max()) + 1, dtype=torch.float64)
    try:
        process.transition(x1[:0].double(), t1[:0], batch[:0])
    except NoClosedFormTransition as err:
        raise ValueError(f"ancestral sampling needs the linear (VP) process: {err}") from err
    grid = time_grid(n_steps, t_end, torch.float64, grid_power)
    zero = torch.zeros((), dtype=torch.float64)
    x = x1
    for t, s in zip(grid[:-1], grid[1:], strict=True):
        sigma_t2 = -torch.expm1(-process.schedule.integral(zero, t))
        sigma_s2 = -torch.expm1(-process.schedule.integral(zero, s))
        step = process.schedule.integral(s, t)
        alpha_ts, sigma_ts2 = torch.exp(-step / 2), -torch.expm1(-step)
        tt = t.expand(t1.shape[0]).to(x.dtype)
        score = process.project(model(x, tt, batch), batch)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        std = (sigma_ts2 * sigma_s2 / sigma_t2).sqrt()
        x = (
            x / alpha_ts.to(x.dtype)
            + (sigma_ts2 / alpha_ts).to(x.dtype) * score
            + std.to(x.dtype) * process.project(z, batch)
        )
    return SampleResult(x=x, nfe=n_steps)


def prior_sample(
    process: GradientProcess,
    batch: Tensor,
    dim: int,
    duration: float = 10.0,
    max_budget: float = 0.1,
    mode: Mode = "expm",
    types: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw from the stationary law ``exp(-U)`` of a gradient process: ``(num_nodes, dim)``.

    Starts from ``N(0, P)`` (exact for U = |x|^2/2, nothing more to do then) and runs Langevin
    dynamics ``dx = -1/2 grad U dtau + dW`` for ``duration`` units of tau, by local-linearisation
    steps of ``mode`` (``expm`` stable at large steps; ``euler`` cheap for many small ones).
    """
    x = process.project(
        torch.randn((batch.numel(), dim), generator=generator, dtype=torch.float64), batch
    )
    if process.energy.harmonic_constant() is not None:
        return x / process.energy.harmonic_constant() ** 0.5
    langevin = GradientProcess(
        energy=process.energy, schedule=ConstantSchedule(1.0), com_free=process.com_free
    )
    t = torch.full((int(batch.max()) + 1,), duration, dtype=torch.float64)
    return simulate_forward(langevin, x, t, batch, mode, max_budget, types, generator)
