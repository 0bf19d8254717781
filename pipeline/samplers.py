"""Reverse-time samplers; each returns its samples and its number of network evaluations (NFE).

Reverse SDE (Anderson 1982; Song et al. 2021, eq. 6): ``dx = [f - g^2 P s] dt + g P dW``, integrated
backwards by Euler-Maruyama. Probability-flow ODE (Song et al. 2021, eq. 13):
``dx/dt = f - 1/2 g^2 P s``, integrated by Heun's method (EDM, Karras et al. 2022, Algorithm 1, the
last step plain Euler). Here ``f = beta(t) F`` and ``g^2 = beta(t) G^2`` (:mod:`pipeline.processes`).
Both, and EDM's ancestral steps, move a state of per-node named parts
(:class:`pipeline.node_parts.NodeParts`, a bare node tensor being a state of one part) part by
part, the noise drawn once for the whole state. Processes with their own reverse step (crystals:
DDIM / ancestral posterior steps per part, :func:`posterior_step`) go through
:func:`reverse_first_order`. The prior at t = 1 comes from :func:`prior_sample`, with no network
involved. :class:`SamplerConfig` names a sampler for a recipe and :func:`run_sampler` is the one
dispatch for both recipes; the step count of a given NFE is :meth:`SamplerConfig.steps`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import Tensor

from pipeline.losses import ScoreModel
from pipeline.node_parts import NodeParts, as_parts, map_parts
from pipeline.processes import ForwardProcess, GradientProcess, NoClosedFormTransition
from pipeline.schedules import ConstantSchedule
from pipeline.transitions import Mode, phi1, simulate_forward


@dataclass(frozen=True)
class SampleResult:
    """The state at t = t_end (a node tensor, or a state of parts) and the number of network
    evaluations."""

    x: Any
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


def _velocity(parts: NodeParts, score, x, t, batch, ode: bool):
    """``f - c g^2 P s`` per part with c = 1/2 (ODE) or 1 (SDE); ``t`` a scalar tensor."""
    tt = t.expand(int(batch.max()) + 1).to(x[0].dtype)
    s = parts.project(score(x, tt, batch), batch)

    def part(process, v: Tensor, sv: Tensor) -> Tensor:
        g2 = process.noise_scale(v.shape[1], v) ** 2 * process.schedule.beta(tt)[batch, None]
        return process.drift(v, tt, batch, parts.types) - (0.5 if ode else 1.0) * g2 * sv

    return map_parts(part, parts.parts, x, s)


@torch.no_grad()
def reverse_sde_euler(
    model: ScoreModel,
    process: ForwardProcess | NodeParts,
    x1,
    batch: Tensor,
    n_steps: int,
    t_end: float = 1e-3,
    types: Tensor | None = None,
    generator: torch.Generator | None = None,
    grid_power: float = 1.0,
    noise_scale: float = 1.0,
) -> SampleResult:
    """Euler-Maruyama on the reverse SDE from ``x1`` at t = 1 to ``t_end`` (NFE = n_steps) on
    :func:`time_grid` of ``grid_power``. ``x1`` a node tensor under a :class:`ForwardProcess` or
    a state of per-node parts under :class:`NodeParts` (noise drawn jointly); ``model`` a
    network on joined states. ``noise_scale`` multiplies the fresh noise of every step
    (:class:`SamplerConfig`)."""
    parts, x, unwrap = as_parts(process, x1, types)
    score = parts.score(model)
    grid = time_grid(n_steps, t_end, x[0].dtype, grid_power)
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        dt = t - t_next
        v = _velocity(parts, score, x, t, batch, ode=False)
        z = parts.noise(x, generator)
        beta = parts.schedule.beta(t)
        x = type(x)(
            *(
                xp
                - vp * dt
                + p.project(
                    noise_scale * torch.sqrt(beta * dt) * p.noise_scale(xp.shape[1], xp) * zp, batch
                )
                for p, xp, vp, zp in zip(parts.parts, x, v, z, strict=True)
            )
        )
    return SampleResult(x=unwrap(x), nfe=n_steps)


@torch.no_grad()
def probability_flow_heun(
    model: ScoreModel,
    process: ForwardProcess | NodeParts,
    x1,
    batch: Tensor,
    n_steps: int,
    t_end: float = 1e-3,
    types: Tensor | None = None,
    grid_power: float = 1.0,
) -> SampleResult:
    """Heun's method on the probability-flow ODE (NFE = 2 n_steps - 1) on :func:`time_grid`;
    states as in :func:`reverse_sde_euler`."""
    parts, x, unwrap = as_parts(process, x1, types)
    score = parts.score(model)
    grid = time_grid(n_steps, t_end, x[0].dtype, grid_power)
    nfe = 0
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        dt = t_next - t
        v = _velocity(parts, score, x, t, batch, ode=True)
        x_euler = type(x)(*(xp + vp * dt for xp, vp in zip(x, v, strict=True)))
        nfe += 1
        if i == n_steps - 1:
            x = x_euler
            break
        v_next = _velocity(parts, score, x_euler, t_next, batch, ode=True)
        nfe += 1
        x = type(x)(*(xp + 0.5 * (a + b) * dt for xp, a, b in zip(x, v, v_next, strict=True)))
    return SampleResult(x=unwrap(x), nfe=nfe)


def no_closed_form(process: ForwardProcess | NodeParts, x1) -> str | None:
    """Why ``process`` (on states like ``x1``) has no closed-form ``q(x_t | x_0)`` for some part,
    or None when every part has one (the linear VP process: ancestral steps apply)."""
    parts, x, _ = as_parts(process, x1)
    empty = torch.zeros(0, dtype=torch.float64)
    try:
        parts.transition(map_parts(lambda v: v[:0].double(), x), empty, empty.long())
    except NoClosedFormTransition as err:
        return str(err)
    return None


@torch.no_grad()
def reverse_ancestral(
    model: ScoreModel,
    process: ForwardProcess | NodeParts,
    x1,
    batch: Tensor,
    n_steps: int,
    t_end: float = 1e-3,
    generator: torch.Generator | None = None,
    grid_power: float = 1.0,
    noise_scale: float = 1.0,
) -> SampleResult:
    """Ancestral sampling of the VP process (NFE = n_steps): EDM's ``sample_p_zs_given_zt``.

    Each step draws ``x_s ~ q(x_s | x_t, x_0 = x0_hat)``, the Gaussian posterior of the forward
    process with the network's denoised point ``x0_hat = (x_t + sigma_t^2 s) / alpha_t`` (Ho et al.
    2020, eqs. 6-7; Hoogeboom et al. 2022, eq. 8):
    ``x_s = x_t / alpha_ts + (sigma_ts^2 / alpha_ts) s + sigma_ts sigma_s / sigma_t P z``, with
    ``alpha_ts^2 = e^{-B(s, t)}`` and ``sigma_ts^2 = 1 - alpha_ts^2``. The linear part is integrated
    exactly, so a step is stable at any ``beta dt`` (Euler-Maruyama overshoots once ``beta dt > 2``,
    near t = 1 on EDM's schedule). Needs the closed-form (linear VP) transition of every part:
    other processes raise :class:`ValueError`. States as in :func:`reverse_sde_euler`;
    ``noise_scale`` multiplies the last term's ``z`` (:class:`SamplerConfig`).
    """
    parts, x, unwrap = as_parts(process, x1)
    score = parts.score(model)
    t1 = torch.ones(int(batch.max()) + 1, dtype=torch.float64)
    reason = no_closed_form(process, x1)
    if reason is not None:
        raise ValueError(f"ancestral sampling needs the linear (VP) process: {reason}")
    grid = time_grid(n_steps, t_end, torch.float64, grid_power)
    zero = torch.zeros((), dtype=torch.float64)
    for t, s in zip(grid[:-1], grid[1:], strict=True):
        sigma_t2 = -torch.expm1(-parts.schedule.integral(zero, t))
        sigma_s2 = -torch.expm1(-parts.schedule.integral(zero, s))
        step = parts.schedule.integral(s, t)
        alpha_ts, sigma_ts2 = torch.exp(-step / 2), -torch.expm1(-step)
        tt = t.expand(t1.shape[0]).to(x[0].dtype)
        sc = parts.project(score(x, tt, batch), batch)
        z = parts.project(parts.noise(x, generator), batch)
        std = noise_scale * (sigma_ts2 * sigma_s2 / sigma_t2).sqrt()
        a, b, c = (
            alpha_ts.to(x[0].dtype),
            (sigma_ts2 / alpha_ts).to(x[0].dtype),
            std.to(x[0].dtype),
        )
        x = type(x)(*(xp / a + b * sp + c * zp for xp, sp, zp in zip(x, sc, z, strict=True)))
    return SampleResult(x=unwrap(x), nfe=n_steps)


@torch.no_grad()
def reverse_split(
    model: ScoreModel,
    process: ForwardProcess | NodeParts,
    x1,
    batch: Tensor,
    n_steps: int,
    t_end: float = 1e-3,
    generator: torch.Generator | None = None,
    grid_power: float = 1.0,
    noise_scale: float = 1.0,
    types: Tensor | None = None,
) -> SampleResult:
    """Ancestral steps of a drift ``F(x) = a x + R(x)`` (NFE = n_steps): the exponential integrator
    of the reverse SDE with the forward process's ``split`` transition
    (:func:`pipeline.transitions.local_step`, the moments local-DSM trains on).

    Per part, over a step from t to s < t with ``B = int_s^t beta`` and ``a`` its
    :meth:`~pipeline.processes.ForwardProcess.linear_rate`, the forward step is
    ``x_t = e^{aB} x_s + B phi1(aB) R(x_s) + L P z`` with ``L^2 = B phi1(2aB) G^2``. Tweedie's
    formula for that Gaussian step, with R frozen at ``x_t``, gives the reverse mean
    ``x_s = e^{-aB} (x_t - B phi1(aB) R(x_t) + L^2 P s(x_t))``; the noise is the posterior's of the
    linear part, ``std^2 = L^2 S_s^2 / S_t^2`` with ``S_t^2 = B_t phi1(2 a B_t) G^2`` its marginal
    variance from a point (Ho et al. 2020, eq. 7). On EDM's VP process (a = -1/2, R = 0) this is
    :func:`reverse_ancestral` exactly; on the physical drift the harmonic confinement is integrated
    exactly and only the pair term is frozen, so a step stays stable where Euler-Maruyama
    overshoots (``beta dt > 2``). ``noise_scale`` multiplies the noise term (:class:`SamplerConfig`).
    """
    parts, x, unwrap = as_parts(process, x1, types)
    score = parts.score(model)
    grid = time_grid(n_steps, t_end, torch.float64, grid_power)
    zero = torch.zeros((), dtype=torch.float64)
    num_graphs = int(batch.max()) + 1
    for t, s in zip(grid[:-1], grid[1:], strict=True):
        tt = t.expand(num_graphs).to(x[0].dtype)
        sc = parts.project(score(x, tt, batch), batch)
        z = parts.project(parts.noise(x, generator), batch)
        totals = parts.schedule.integral(zero, t), parts.schedule.integral(zero, s)
        x = type(x)(
            *(
                _split_reverse_step(p, xp, sp, zp, *totals, batch, parts.types, noise_scale)
                for p, xp, sp, zp in zip(parts.parts, x, sc, z, strict=True)
            )
        )
    return SampleResult(x=unwrap(x), nfe=n_steps)


def _split_reverse_step(
    process: ForwardProcess,
    x: Tensor,
    score: Tensor,
    z: Tensor,
    total_t: Tensor,
    total_s: Tensor,
    batch: Tensor,
    types: Tensor | None,
    noise_scale: float,
) -> Tensor:
    """One :func:`reverse_split` step of one part, from ``B_t = total_t`` to ``B_s = total_s``
    (scalar float64 tensors); ``score`` and the noise ``z`` already projected."""
    rate = process.linear_rate()
    a = torch.tensor(rate, dtype=torch.float64)
    g2 = process.noise_scale(x.shape[1], x).double() ** 2
    step = total_t - total_s
    var = step * phi1(2 * a * step) * g2
    marginal_t = total_t * phi1(2 * a * total_t) * g2
    marginal_s = total_s * phi1(2 * a * total_s) * g2
    std = noise_scale * (var * marginal_s / marginal_t).sqrt()
    rest = process.drift_field(x, batch, types) - rate * x
    mean = x - (step * phi1(a * step)).to(x.dtype) * rest + var.to(x.dtype) * score
    return torch.exp(-a * step).to(x.dtype) * mean + std.to(x.dtype) * z


def posterior_step(
    x: Tensor,
    score: Tensor,
    index: Tensor,
    marginals: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
    eta: float,
    generator: torch.Generator | None,
    clip: Callable[[Tensor], Tensor] | None = None,
    noise_scale: float = 1.0,
    shape_noise: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """One DDIM step (Song, Meng & Ermon 2021, eq. 12) of one part of a state, from t to s < t.

    The part has marginal ``x_t = alpha_t x_0 + sigma_t eps``; ``marginals = (alpha_t, alpha_s,
    sigma_t^2, sigma_s^2, v)`` per graph ``(num_graphs,)`` float64, ``v`` the variance of the
    forward step s -> t; ``x (rows, ...)`` and ``score`` (the model's, same shape) with ``index
    (rows,)`` the graph of each row. Denoised point ``x0_hat = clip((x + sigma_t^2 score) /
    alpha_t)`` (Tweedie), ``eps_hat = (x - alpha_t x0_hat) / sigma_t``, then
    ``x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z`` with
    ``c^2 = eta^2 v sigma_s^2 / sigma_t^2``. ``eta = 1`` is DDPM's ancestral step, the exact
    Gaussian posterior ``q(x_s | x_t, x0_hat)`` (Ho et al. 2020, eqs. 6-7); ``eta = 0`` the
    deterministic DDIM step, the exponential integrator of the probability-flow ODE
    (DPM-Solver-1). Both are exact for a point mass and stable at any step size. VP parts have
    ``alpha^2 = e^{-B_t}``, ``sigma^2 = 1 - alpha^2``; variance-exploding ones ``alpha = 1``,
    ``sigma^2 = B_t``. ``z`` (only when ``eta > 0``) is drawn in float64, and the noise term is
    ``noise_scale c z`` (:class:`SamplerConfig`), ``z`` passed through ``shape_noise`` where given
    (a symmetric lattice's noise, :meth:`pipeline.lattice.LatticePrior.symmetrized`). Returns
    float64.
    """
    alpha_t, alpha_s, var_t, var_s, v = marginals
    shape = (-1,) + (1,) * (x.dim() - 1)
    a_t, a_s = alpha_t[index].reshape(shape), alpha_s[index].reshape(shape)
    sig_t, sig_s2 = var_t[index].sqrt().reshape(shape), var_s[index].reshape(shape)
    x0 = (x + sig_t**2 * score.double()) / a_t
    if clip is not None:
        x0 = clip(x0)
    eps = (x - a_t * x0) / sig_t
    c2 = eta**2 * (v * var_s / var_t)[index].reshape(shape)
    noise = 0.0
    if eta:
        z = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        noise = noise_scale * c2.sqrt() * (shape_noise(z) if shape_noise is not None else z)
    return a_s * x0 + (sig_s2 - c2).clamp(min=0.0).sqrt() * eps + noise


def reverse_first_order(
    step: Callable[[object, Tensor, Tensor, float], object],
    x1,
    cfg: SamplerConfig,
    correct: Callable[[object, Tensor], object] | None = None,
) -> tuple[object, int]:
    """Integrate a first-order reverse step from t = 1 to ``cfg.t_end``: the state and its NFE.

    ``step(x, t, s, eta)`` moves a state (any type, e.g. a state of named parts) from ``t`` to
    ``s < t`` with one network evaluation; ``eta = 0`` for ``ode`` (DDIM), 1 otherwise (ancestral,
    the reverse SDE), on :func:`time_grid` of ``cfg.steps(...)`` steps. With ``correct(x, t)``
    (one network evaluation, a Langevin move at fixed ``t``), every step is preceded by it: the
    predictor-corrector sampler (Song et al. 2021, Algorithm 1; DiffCSP samples so, Jiao et al.
    2023, Algorithm 2), two evaluations a step.
    """
    eta = 0.0 if cfg.kind == "ode" else 1.0
    n_steps = cfg.steps(second_order=False, corrected=correct is not None)
    grid = time_grid(n_steps, cfg.t_end, torch.float64, cfg.grid_power)
    x = x1
    for t, s in zip(grid[:-1], grid[1:], strict=True):
        if correct is not None:
            x = correct(x, t)
        x = step(x, t, s, eta)
    return x, n_steps * (2 if correct is not None else 1)


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
    steps of ``mode``: ``expm`` (stable at large steps), ``euler`` (cheap for many small ones) or
    ``split`` (a harmonic confinement exact, the rest frozen: where a confinement dominates, as
    in the molecules' physical drift, it keeps the stationary law at Euler's cost,
    tests/test_transitions.py).
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


# The default noise scale of SamplerConfig, so of ``ldsm generate`` and ``ldsm design``. On the
# shipped QM9 model (8 x 64 EGNN, step 101,827; 500 molecules at 100 NFE, ancestral, grid power 4;
# BENCHMARKS quality-curve) atom / molecule stability and EDM validity are 95.1 / 48.0 / 83.6 % at
# 1 and 96.5 / 57.4 / 91.4 % at 0.8, novelty 79.0 and 72.2 %; on the Perov-5 model shipped until
# 2026-12-01 and the shipped Carbon-24 one structural validity goes from 89.0 to 90.3 % and from
# 97.0 to 99.0 % (quality-perov-5, quality-carbon-24), uniqueness falls by 4 and 3 points (the
# radial Perov-5 model shipped since: 95.4 % at 1, 94.9 % at 0.8).
DESIGN_NOISE_SCALE = 0.8
DEFAULT_NFE = 100  # network evaluations per sample where the process names no default_nfe


class SamplerConfig(BaseModel):
    """How to draw samples: ``sde`` (Euler-Maruyama, NFE = steps), ``ode`` (Heun, NFE = 2 steps - 1),
    ``ancestral`` (EDM's posterior steps, linear process only, NFE = steps) or ``split``
    (:func:`reverse_split`, ancestral steps of any drift with its nonlinear rest frozen); ``auto`` is
    ``ancestral`` where every part has a closed-form transition and ``sde`` otherwise. The
    default grid power 4 spends steps at low noise. On the QM9 flagship at 100 NFE (step 40,000,
    500 molecules, BENCHMARKS quality-curve) molecule stability is 19.6 % for the SDE on the
    uniform grid, 25.0 % for the SDE at power 2, 31.2 % for ancestral steps at power 4. Crystals
    take their own posterior step whatever the kind (DDIM for ``ode``, ancestral otherwise).

    ``corrector > 0`` adds a Langevin corrector before every step of a process that has one
    (crystals: :meth:`pipeline.crystal_process.CrystalProcess.langevin_correct`), of step size
    ``corrector x sigma_t^2`` on the coordinates, so NFE = 2 steps. In DiffCSP's terms ``corrector =
    step_lr / sigma_begin^2`` (Jiao et al. 2023, Algorithm 2; ``step_lr = 1e-5`` and
    ``sigma_begin = 0.005`` give 0.4). ``None`` (the default) takes the process's own
    ``default_corrector`` (crystals: :data:`pipeline.crystal_process.CRYSTAL_CORRECTOR`), none
    where it has no corrector (molecules); ``nfe = None`` likewise its ``default_nfe`` (crystals
    :data:`pipeline.crystal_process.CRYSTAL_NFE`, else :data:`DEFAULT_NFE`), see
    :func:`resolve_defaults`. A positive value on a process without a corrector is a
    ``ValueError`` from :func:`run_sampler`.

    ``noise_scale`` multiplies the fresh Gaussian noise of every reverse step (``sde``,
    ``ancestral``, the crystals' posterior steps), the drift and the denoised point unchanged: the
    "noise scale" of protein-design samplers (RFdiffusion, Watson et al. 2023; FrameDiff, Yim et
    al. 2023), which Xu et al. 2025 (Temporal Score Rescaling, arXiv 2510.01184) call constant
    noise scaling. Below 1 it concentrates samples where the learnt density is high, as a lower
    temperature would (it is not exactly ``p^(1/T)``), trading diversity for validity; 1 samples
    the learnt law, as published benchmarks do (ours say which they use). The default is
    :data:`DESIGN_NOISE_SCALE`. The ``ode`` draws no noise and ignores it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["auto", "sde", "ode", "ancestral", "split"] = "auto"
    nfe: PositiveInt | None = None  # network evaluations; None: the process's default_nfe
    t_end: PositiveFloat = 1e-3
    prior_budget: PositiveFloat = 0.1  # Langevin step of the prior (physical drifts)
    grid_power: PositiveFloat = 4.0  # time grid t_end + (1 - t_end) u^power (time_grid)
    corrector: NonNegativeFloat | None = None  # corrector step / sigma_t^2 (0: none; None: default)
    noise_scale: NonNegativeFloat = DESIGN_NOISE_SCALE  # fresh noise of each step x this

    def steps(self, second_order: bool, corrected: bool = False) -> int:
        """Steps that spend at most ``nfe`` evaluations: ``nfe`` for a first-order integrator (one
        evaluation a step), ``ceil(nfe / 2)`` for Heun (two a step, one on the last),
        ``floor(nfe / 2)`` for a first-order step with a corrector (two every step); at least 1."""
        if corrected:
            return max(1, self.nfe // 2)
        return max(1, (self.nfe + 1) // 2) if second_order else self.nfe


def resolve_defaults(cfg: SamplerConfig, process) -> SamplerConfig:
    """``cfg`` with ``nfe`` and ``corrector`` left at None set to ``process``'s own
    ``default_nfe`` and ``default_corrector`` (:data:`DEFAULT_NFE` and no corrector where it has
    none: molecules; crystals: :mod:`pipeline.crystal_process`)."""
    return cfg.model_copy(
        update={
            "nfe": cfg.nfe if cfg.nfe is not None else getattr(process, "default_nfe", DEFAULT_NFE),
            "corrector": cfg.corrector
            if cfg.corrector is not None
            else getattr(process, "default_corrector", 0.0),
        }
    )


def run_sampler(
    cfg: SamplerConfig,
    model,
    process,
    x1,
    batch: Tensor,
    generator: torch.Generator | None,
) -> SampleResult:
    """Integrate the reverse dynamics of ``cfg`` from ``x1`` at t = 1, spending at most ``cfg.nfe``.

    A process with its own reverse step (``process.reverse_step(score, x, t, s, batch, generator,
    eta)``, e.g. :class:`pipeline.crystal_process.CrystalProcess`) is integrated by
    :func:`reverse_first_order`, ``model`` a score on its states. Otherwise ``x1`` is a node tensor
    under a :class:`ForwardProcess` or a state of per-node parts under :class:`NodeParts`,
    ``model`` a network on joined states, and ``cfg.kind`` (``auto`` resolved by
    :func:`no_closed_form`) picks :func:`reverse_sde_euler`,
    :func:`probability_flow_heun` or :func:`reverse_ancestral` (on a process without a
    closed-form transition: :class:`ValueError`).
    """
    if cfg.corrector and not hasattr(process, "langevin_correct"):
        raise ValueError(f"corrector={cfg.corrector}: this process has no Langevin corrector")
    cfg = resolve_defaults(cfg, process)
    if hasattr(process, "reverse_step"):

        def step(x, t: Tensor, s: Tensor, eta: float):
            return process.reverse_step(model, x, t, s, batch, generator, eta, cfg.noise_scale)

        def correct(x, t: Tensor):
            return process.langevin_correct(model, x, t, batch, generator, cfg.corrector)

        x, nfe = reverse_first_order(step, x1, cfg, correct if cfg.corrector > 0 else None)
        return SampleResult(x=x, nfe=nfe)
    kind = cfg.kind
    if kind == "auto":
        kind = "sde" if no_closed_form(process, x1) is not None else "ancestral"
    first_order = {"sde": reverse_sde_euler, "split": reverse_split, "ancestral": reverse_ancestral}
    if kind in first_order:
        return first_order[kind](
            model,
            process,
            x1,
            batch,
            cfg.steps(second_order=False),
            cfg.t_end,
            generator=generator,
            grid_power=cfg.grid_power,
            noise_scale=cfg.noise_scale,
        )
    return probability_flow_heun(
        model,
        process,
        x1,
        batch,
        cfg.steps(second_order=True),
        cfg.t_end,
        grid_power=cfg.grid_power,
    )
