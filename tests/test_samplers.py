"""Samplers given exact scores recover known laws."""

from typing import NamedTuple

import numpy as np
import pytest
import torch

from pipeline.energies import Energy, GaussianMixturePotential, HarmonicConfinement, SoftSphere
from pipeline.node_parts import NodeParts
from pipeline.processes import GradientProcess, vp_process
from pipeline.samplers import (
    SamplerConfig,
    no_closed_form,
    posterior_step,
    prior_sample,
    probability_flow_heun,
    reverse_ancestral,
    reverse_first_order,
    reverse_sde_euler,
    reverse_split,
    run_sampler,
    time_grid,
)
from pipeline.schedules import LinearSchedule, PolynomialSchedule

F64 = torch.float64
MU, STD = 2.0, 0.5


def gaussian_data_score(process):
    """Data N(MU, STD^2) under the VP SDE: q_t = N(a MU, a^2 STD^2 + 1 - a^2), a = exp(-B/2)."""

    def score(x, t, batch):
        a2 = torch.exp(-process.schedule.integral(torch.zeros_like(t), t))[batch, None]
        return -(x - a2.sqrt() * MU) / (a2 * STD**2 + 1 - a2)

    return score


@pytest.mark.parametrize(
    "sampler, steps, nfe",
    [(reverse_sde_euler, 200, 200), (probability_flow_heun, 40, 79)],
    ids=["reverse-sde-euler", "probability-flow-heun"],
)
def test_sampler_with_exact_gaussian_score_recovers_mean_and_std(sampler, steps, nfe):
    process = vp_process(LinearSchedule())
    n = 10_000
    gen = torch.Generator().manual_seed(0)
    batch = torch.arange(n)
    x1 = prior_sample(process, batch, 2, generator=gen)
    kwargs = {"generator": gen} if sampler is reverse_sde_euler else {}
    out = sampler(gaussian_data_score(process), process, x1, batch, steps, **kwargs)
    assert out.nfe == nfe
    assert float(out.x.mean()) == pytest.approx(MU, abs=0.02)
    assert float(out.x.std()) == pytest.approx(STD, abs=0.02)


def test_time_grid_is_uniform_at_power_one_and_follows_its_formula_otherwise():
    assert torch.equal(time_grid(100, 1e-3, torch.float32), torch.linspace(1.0, 1e-3, 101))
    grid = time_grid(4, 0.01, F64, power=2.0)
    expected = [0.01 + 0.99 * u**2 for u in (1.0, 0.75, 0.5, 0.25, 0.0)]
    assert grid.tolist() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("power", [1.0, 3.0])
def test_sampler_on_a_power_grid_recovers_mean_and_std_on_edm_schedule(power):
    """EDM's schedule is stiff near t = 0; a power grid keeps the reverse SDE exact in the limit."""
    process = vp_process(PolynomialSchedule())
    n = 10_000
    gen = torch.Generator().manual_seed(3)
    batch = torch.arange(n)
    x1 = prior_sample(process, batch, 2, generator=gen)
    out = reverse_sde_euler(
        gaussian_data_score(process), process, x1, batch, 200, generator=gen, grid_power=power
    )
    assert float(out.x.mean()) == pytest.approx(MU, abs=0.02)
    assert float(out.x.std()) == pytest.approx(STD, abs=0.02)


@pytest.mark.parametrize(
    "schedule", [LinearSchedule(), PolynomialSchedule()], ids=["linear", "edm"]
)
def test_ancestral_sampler_with_exact_gaussian_score_recovers_mean_and_std(schedule):
    """Posterior steps with the exact denoised point shrink the variance at coarse grids (std 0.47
    at 100 steps on the linear schedule; the reverse variance lies between the posterior's and
    beta's, Ho et al. 2020, section 3.2); 400 steps are within 0.02."""
    process = vp_process(schedule)
    n = 10_000
    gen = torch.Generator().manual_seed(4)
    batch = torch.arange(n)
    x1 = prior_sample(process, batch, 2, generator=gen)
    out = reverse_ancestral(gaussian_data_score(process), process, x1, batch, 400, generator=gen)
    assert out.nfe == 400
    assert float(out.x.mean()) == pytest.approx(MU, abs=0.02)
    assert float(out.x.std()) == pytest.approx(STD, abs=0.02)


@pytest.mark.parametrize("kind", ["ancestral", "sde"])
@pytest.mark.parametrize("noise_scale", [1.0, 0.5])
def test_noise_scale_gives_the_variance_of_its_linear_recursion(kind, noise_scale):
    """On Gaussian data the exact score is linear, so each step is ``x_s = k x_t + m + lam c z``
    and the variance follows ``V_s = k^2 V_t + lam^2 c^2`` from ``V_1 = 1``: computed here on the
    sampler's grid and compared with 10,000 samples. At ``lam = 1`` it is the data's std."""
    process = vp_process(PolynomialSchedule())
    n, steps, lam = 10_000, 100, noise_scale
    gen = torch.Generator().manual_seed(5)
    batch = torch.arange(n)
    x1 = prior_sample(process, batch, 2, generator=gen)
    cfg = SamplerConfig(kind=kind, nfe=steps, grid_power=4.0, noise_scale=lam)
    out = run_sampler(cfg, gaussian_data_score(process), process, x1, batch, gen)
    grid = time_grid(steps, cfg.t_end, F64, cfg.grid_power)
    zero, var = torch.zeros((), dtype=F64), torch.ones((), dtype=F64)
    for t, s in zip(grid[:-1], grid[1:], strict=True):
        a2_t = torch.exp(-process.schedule.integral(zero, t))
        v_t = a2_t * STD**2 + 1 - a2_t  # score = -(x - sqrt(a2_t) MU) / v_t
        if kind == "ancestral":
            a2_s = torch.exp(-process.schedule.integral(zero, s))
            alpha_ts2 = a2_t / a2_s
            sigma_ts2 = 1 - alpha_ts2
            k = 1 / alpha_ts2.sqrt() - sigma_ts2 / alpha_ts2.sqrt() / v_t
            c2 = sigma_ts2 * (1 - a2_s) / (1 - a2_t)
        else:
            beta, dt = process.schedule.beta(t), t - s
            k, c2 = 1 + beta * dt / 2 - beta * dt / v_t, beta * dt
        var = k**2 * var + lam**2 * c2
    assert float(out.x.std()) == pytest.approx(float(var.sqrt()), rel=0.02)
    if lam == 1.0:
        assert float(out.x.std()) == pytest.approx(STD, abs=0.03)
    else:
        assert float(var.sqrt()) < 0.8 * STD  # a clearly narrower law than the data's


def test_split_sampler_is_the_ancestral_sampler_on_the_vp_process():
    process = vp_process(PolynomialSchedule())
    batch = torch.arange(500)
    x1 = prior_sample(process, batch, 2, generator=torch.Generator().manual_seed(6))
    runs = [
        sampler(
            gaussian_data_score(process), process, x1, batch, 50, generator=gen, grid_power=4.0,
            noise_scale=0.8,
        ).x
        for sampler, gen in (
            (reverse_ancestral, torch.Generator().manual_seed(7)),
            (reverse_split, torch.Generator().manual_seed(7)),
        )
    ]  # fmt: skip
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-9, atol=1e-9)


def test_split_sampler_recovers_gaussian_data_under_a_stiffer_confinement():
    """``U = k/2 x^2`` with k = 4 (a = -2): data N(MU, STD^2) has marginals
    ``N(e^{aB} MU, e^{2aB} STD^2 + (1 - e^{-kB}) / k)``, so the exact score is known; 400 split
    steps from the stationary law N(0, 1/k) recover the data's mean and std."""
    k = 4.0
    process = GradientProcess(
        Energy([HarmonicConfinement(k, centred=False)]), schedule=PolynomialSchedule()
    )

    def score(x, t, batch):
        b = process.schedule.integral(torch.zeros_like(t), t)[batch, None]
        var = torch.exp(-k * b) * STD**2 - torch.expm1(-k * b) / k
        return -(x - torch.exp(-k * b / 2) * MU) / var

    gen = torch.Generator().manual_seed(8)
    batch = torch.arange(10_000)
    x1 = torch.randn(10_000, 2, generator=gen, dtype=F64) / k**0.5
    out = run_sampler(
        SamplerConfig(kind="split", nfe=400, grid_power=1.0, noise_scale=1.0),
        score, process, x1, batch, gen,
    )  # fmt: skip
    assert out.nfe == 400
    assert float(out.x.mean()) == pytest.approx(MU, abs=0.02)
    assert float(out.x.std()) == pytest.approx(STD, abs=0.02)


def test_split_step_freezes_the_pair_term_to_second_order():
    """With no score and no noise a split step from t to s is the backward exponential Euler
    step ``e^{-aB} (x_t - B phi1(aB) R(x_t))``: it undoes the forward split mean
    ``e^{aB} x + B phi1(aB) R(x)`` up to O(B^2) (R frozen at the other end), so halving the
    step quarters the round-trip error. Every pair is inside the soft sphere's range (sigma = 5),
    where R is smooth."""
    from pipeline.transitions import local_step

    energy = Energy([HarmonicConfinement(1.0, centred=True), SoftSphere(1.0, 5.0)])
    process = GradientProcess(energy, schedule=LinearSchedule(), com_free=True)
    gen = torch.Generator().manual_seed(9)
    batch = torch.arange(3).repeat_interleave(6)
    x = process.project(torch.randn(18, 3, generator=gen, dtype=F64) * 0.8, batch)
    errors = []
    for t in (0.0025, 0.00125):
        ones = torch.ones(3, dtype=F64)
        budget = process.schedule.integral((1 - t) * ones, ones)  # the reverse step 1 -> 1 - t
        forward, _ = local_step(process, x, budget, batch, torch.zeros_like(x), mode="split")
        back = reverse_split(
            lambda y, tt, b: torch.zeros_like(y), process, forward, batch, 1, t_end=1 - t,
            noise_scale=0.0,
        ).x  # fmt: skip
        errors.append(float((back - x).abs().max()))
    assert errors[0] > 1e-4  # the pair term acts
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.15)


def test_ancestral_sampler_refuses_a_process_without_closed_form():
    process = GradientProcess(Energy([mixture()]), schedule=LinearSchedule())
    batch = torch.arange(4)
    with pytest.raises(ValueError, match="linear"):
        reverse_ancestral(lambda x, t, b: -x, process, torch.zeros(4, 2, dtype=F64), batch, 5)


@pytest.mark.parametrize("linear", [True, False])
def test_auto_is_ancestral_on_the_linear_process_and_the_sde_otherwise(linear):
    """``kind="auto"`` draws exactly what the kind it resolves to draws, from the same seed."""
    energy = None if linear else Energy([mixture()])
    process = vp_process(LinearSchedule()) if linear else GradientProcess(energy, LinearSchedule())
    x1, batch = torch.randn(6, 2, dtype=F64), torch.arange(6)
    want = "ancestral" if linear else "sde"
    runs = {
        kind: run_sampler(
            SamplerConfig(kind=kind, nfe=7),
            lambda x, t, b: -x,
            process,
            x1,
            batch,
            torch.Generator().manual_seed(2),
        )  # fmt: skip
        for kind in ("auto", want)
    }
    assert runs["auto"].nfe == 7 and torch.equal(runs["auto"].x, runs[want].x)
    assert (no_closed_form(process, x1) is None) == linear


def mixture() -> GaussianMixturePotential:
    return GaussianMixturePotential(
        means=torch.tensor([[-1.5, 0.0], [1.5, 0.5]], dtype=F64),
        stds=torch.tensor([0.5, 0.7], dtype=F64),
        weights=torch.tensor([0.4, 0.6], dtype=F64),
    )


def histogram_tv(a: torch.Tensor, b: torch.Tensor) -> float:
    """Total-variation distance of two 2-D sample sets on a common 24 x 24 grid."""
    edges = [np.linspace(-4, 4, 25), np.linspace(-3, 3.5, 25)]
    ha, _, _ = np.histogram2d(a[:, 0].numpy(), a[:, 1].numpy(), bins=edges)
    hb, _, _ = np.histogram2d(b[:, 0].numpy(), b[:, 1].numpy(), bins=edges)
    return 0.5 * float(np.abs(ha / len(a) - hb / len(b)).sum())


def test_reverse_sde_with_exact_stationary_score_keeps_exp_minus_u():
    """Started at exp(-U) and driven by its exact score -grad U, the reverse SDE keeps exp(-U); the
    wrong score (zero) must visibly fail the same bound."""
    gmm = mixture()
    process = GradientProcess(Energy([gmm]), schedule=LinearSchedule(0.1, 8.0))
    n = 20_000
    gen = torch.Generator().manual_seed(1)
    batch = torch.arange(n)
    x1 = gmm.sample(n, gen)
    reference = gmm.sample(n, gen)
    floor = histogram_tv(gmm.sample(n, gen), reference)  # sampling noise alone

    def exact(x, t, b):
        return 2 * process.drift_field(x, b)

    kept = reverse_sde_euler(exact, process, x1, batch, 200, generator=gen).x
    wrong = reverse_sde_euler(
        lambda x, t, b: torch.zeros_like(x), process, x1, batch, 200, generator=gen
    ).x
    bound = floor + 0.03
    assert histogram_tv(kept, reference) < bound
    assert histogram_tv(wrong, reference) > bound


def test_prior_sample_reaches_the_stationary_law():
    gmm = mixture()
    process = GradientProcess(Energy([gmm]))
    n = 10_000
    gen = torch.Generator().manual_seed(2)
    x = prior_sample(process, torch.arange(n), 2, duration=10.0, max_budget=0.25, generator=gen)
    reference = gmm.sample(n, gen)
    assert histogram_tv(x, reference) < histogram_tv(gmm.sample(n, gen), reference) + 0.03


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_posterior_step_with_a_point_mass_score_lands_on_the_point(kind, eta):
    """The exact score of data = one point ``x0`` makes ``x0_hat = x0`` (Tweedie), so a step to
    ``s`` gives ``alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z`` with ``eps`` the draw's own noise,
    and a step to ``sigma_s = 0`` returns ``x0`` exactly, ancestral or deterministic."""
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(6, 3, generator=gen, dtype=F64)
    index = torch.tensor([0, 0, 0, 1, 1, 1])
    big = torch.tensor([0.8, 2.5], dtype=F64)  # int_0^t beta per graph
    if kind == "vp":
        alpha_t, var_t = torch.exp(-big / 2), -torch.expm1(-big)
    else:
        alpha_t, var_t = torch.ones_like(big), big
    eps = torch.randn(6, 3, generator=gen, dtype=F64)
    x_t = alpha_t[index, None] * x0 + var_t.sqrt()[index, None] * eps
    score = -(x_t - alpha_t[index, None] * x0) / var_t[index, None]
    zero = torch.zeros_like(big)
    one = torch.ones_like(big)
    marg = (alpha_t, one, var_t, zero, var_t if kind == "ve" else -torch.expm1(-big))
    x_s = posterior_step(x_t, score, index, marg, eta, gen)
    torch.testing.assert_close(x_s, x0)
    half = big / 2
    alpha_s, var_s = (torch.exp(-half / 2), -torch.expm1(-half)) if kind == "vp" else (one, half)
    v = -torch.expm1(-half) if kind == "vp" else half
    marg = (alpha_t, alpha_s, var_t, var_s, v)
    x_s = posterior_step(x_t, score, index, marg, 0.0, gen)
    torch.testing.assert_close(x_s, alpha_s[index, None] * x0 + var_s.sqrt()[index, None] * eps)
    # The ancestral step's noise term, and only it, scales with noise_scale.
    mean = posterior_step(x_t, score, index, marg, 1.0, gen, noise_scale=0.0)
    full = posterior_step(x_t, score, index, marg, 1.0, torch.Generator().manual_seed(9))
    scaled = posterior_step(
        x_t, score, index, marg, 1.0, torch.Generator().manual_seed(9), None, 0.5
    )
    torch.testing.assert_close(scaled - mean, 0.5 * (full - mean))
    assert float((full - mean).abs().min()) > 0


@pytest.mark.parametrize("kind,nfe,steps", [("sde", 7, 7), ("ancestral", 7, 7), ("ode", 7, 4)])
def test_sampler_config_steps_and_the_first_order_loop(kind, nfe, steps):
    """Heun spends two evaluations a step but one on the last; first-order integrators one."""
    cfg = SamplerConfig(kind=kind, nfe=nfe, t_end=0.01)
    assert cfg.steps(second_order=kind == "ode") == steps
    seen = []
    x, used = reverse_first_order(lambda x, t, s, eta: seen.append((t, s, eta)) or x + 1, 0, cfg)
    assert (x, used) == (nfe, nfe) and len(seen) == nfe
    assert float(seen[0][0]) == 1.0 and abs(float(seen[-1][1]) - 0.01) < 1e-15
    assert {eta for *_, eta in seen} == {0.0 if kind == "ode" else 1.0}


def test_a_corrected_loop_spends_two_evaluations_a_step_and_corrects_before_each():
    """``floor(nfe / 2)`` steps, each a corrector move at t and then the step t -> s."""
    cfg = SamplerConfig(nfe=7, t_end=0.01, corrector=0.4)
    seen = []
    x, used = reverse_first_order(
        lambda x, t, s, eta: seen.append(("step", float(t))) or x + 1,
        0,
        cfg,
        lambda x, t: seen.append(("correct", float(t))) or x,
    )
    assert (x, used) == (3, 6) and [k for k, _ in seen] == ["correct", "step"] * 3
    assert all(seen[i][1] == seen[i + 1][1] for i in range(0, 6, 2))


def test_a_corrector_on_a_process_without_one_is_refused():
    process = vp_process(LinearSchedule())
    x1, batch = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="no Langevin corrector"):
        run_sampler(SamplerConfig(corrector=0.4), lambda *a: None, process, x1, batch, None)


class _TwoParts(NamedTuple):
    a: torch.Tensor
    b: torch.Tensor


@pytest.mark.parametrize("kind", ["sde", "ode", "ancestral"])
def test_a_state_of_parts_samples_as_its_joined_tensor(kind):
    """The samplers move every part under its own process and draw the noise once for the whole
    state (:class:`NodeParts`): two parts give bit for bit the samples of the joined tensor."""
    process = vp_process(com_free=True)
    batch = torch.tensor([0, 0, 0, 1, 1])
    x1 = torch.randn(5, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    cfg = SamplerConfig(kind=kind, nfe=9)
    score = gaussian_data_score(process)
    joined = run_sampler(cfg, score, process, x1, batch, torch.Generator().manual_seed(1))
    parts = NodeParts(_TwoParts(process, vp_process(com_free=True)))
    x1p = _TwoParts(x1[:, :3], x1[:, 3:])
    split = run_sampler(cfg, score, parts, x1p, batch, torch.Generator().manual_seed(1))
    assert joined.nfe == split.nfe
    assert torch.equal(joined.x, torch.cat(list(split.x), dim=1))
