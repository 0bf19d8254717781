"""Losses against analytic values, and a local-DSM training run against a known score."""

from functools import partial
from typing import NamedTuple

import pytest
import torch

from models.mlp import TimeMLP
from pipeline.energies import Energy, GaussianMixturePotential
from pipeline.losses import (
    ConstantBudget,
    ConstantStep,
    FractionBudget,
    LossConfig,
    PartError,
    StratifiedTimes,
    UniformTimes,
    exact_dsm_loss,
    hutchinson_terms,
    ism_loss,
    local_dsm_loss,
    parts_error,
    relative_score_error,
    step_rule,
    time_sampler,
    unit_weight,
)
from pipeline.node_parts import NodeParts
from pipeline.processes import GradientProcess, NoClosedFormTransition, vp_process
from pipeline.schedules import ConstantSchedule, LinearSchedule, PolynomialSchedule

F64 = torch.float64


def exact_standard_normal_score(x, t, batch):
    """N(0, I) data is stationary under the VP SDE, so grad log q_t(x) = -x at every t."""
    return -x


def test_exact_dsm_with_exact_score_equals_analytic_value():
    """Per entry, E|s - target|^2 = E|target|^2 - E|s|^2 = 1/sigma_t^2 - 1 when s is the exact score."""
    process = vp_process(ConstantSchedule(1.0))
    gen = torch.Generator().manual_seed(0)
    n = 100_000
    batch = torch.arange(n)
    x0 = torch.randn(n, 2, generator=gen, dtype=F64)
    t = 0.5
    loss = exact_dsm_loss(
        exact_standard_normal_score,
        process,
        x0,
        batch,
        times=lambda k, g: torch.full((k,), t, dtype=F64),
        weight=unit_weight,
        generator=gen,
    )
    sigma2 = 1 - torch.exp(torch.tensor(-t, dtype=F64))
    assert float(loss.mean()) == pytest.approx(float(1 / sigma2 - 1), rel=0.02)


def test_local_dsm_with_exact_score_equals_analytic_value():
    """On a linear drift the local target is exact: loss = 1/v - 1 with v the local step variance."""
    process = vp_process(ConstantSchedule(1.0))
    gen = torch.Generator().manual_seed(1)
    n = 100_000
    batch = torch.arange(n)
    x0 = torch.randn(n, 2, generator=gen, dtype=F64)
    size = 0.2
    loss = local_dsm_loss(
        exact_standard_normal_score,
        process,
        x0,
        batch,
        times=lambda k, g: torch.full((k,), 0.8, dtype=F64),
        step=ConstantStep(size),
        weight=unit_weight,
        generator=gen,
    )
    v = 1 - torch.exp(torch.tensor(-size, dtype=F64))
    assert float(loss.mean()) == pytest.approx(float(1 / v - 1), rel=0.02)


def test_ism_with_exact_score_equals_analytic_value():
    """|s|^2 + 2 div s with s = -x on N(0, I): E = 1 - 2 = -1 per entry, for any t."""
    process = vp_process(ConstantSchedule(1.0))
    gen = torch.Generator().manual_seed(2)
    n = 50_000
    batch = torch.arange(n)
    x0 = torch.randn(n, 2, generator=gen, dtype=F64)
    loss = ism_loss(
        exact_standard_normal_score, process, x0, batch, weight=unit_weight, generator=gen
    )
    assert float(loss.mean()) == pytest.approx(-1.0, abs=0.02)


def test_zero_score_local_dsm_loss_is_mean_squared_target():
    """s = 0: the loss is E|target|^2 = 1/v for the VP local step, a check that the residual is formed."""
    process = vp_process(ConstantSchedule(1.0))
    gen = torch.Generator().manual_seed(3)
    n = 100_000
    x0 = torch.randn(n, 1, generator=gen, dtype=F64)
    loss = local_dsm_loss(
        lambda x, t, b: torch.zeros_like(x),
        process,
        x0,
        torch.arange(n),
        times=lambda k, g: torch.full((k,), 0.5, dtype=F64),
        step=ConstantStep(0.1),
        weight=unit_weight,
        generator=gen,
    )
    v = 1 - torch.exp(torch.tensor(-0.1, dtype=F64))
    assert float(loss.mean()) == pytest.approx(float(1 / v), rel=0.02)


def test_exact_dsm_needs_a_closed_form_transition():
    process = GradientProcess(Energy([two_mode_mixture()]))
    with pytest.raises(NoClosedFormTransition):
        exact_dsm_loss(exact_standard_normal_score, process, torch.zeros(4, 2), torch.arange(4))


def two_mode_mixture() -> GaussianMixturePotential:
    return GaussianMixturePotential(
        means=torch.tensor([[-1.5, 0.0], [1.5, 0.5]], dtype=F64),
        stds=torch.tensor([0.5, 0.7], dtype=F64),
        weights=torch.tensor([0.4, 0.6], dtype=F64),
    )


def test_mlp_trained_with_local_dsm_learns_the_known_score():
    """Data drawn from exp(-U) stay at exp(-U) under f = -1/2 beta grad U, so the score of q_t is
    -grad U at every t. y_s is simulated by small Euler-Maruyama steps (cheap, and stable at this
    stiffness). A small MLP trained with local-DSM (expm target) must reach a relative score error
    below 0.1 (a zero network scores 1.0). After 300 steps seeds 0-2 gave 0.07-0.11, so it trains
    400."""
    torch.manual_seed(0)
    gmm = two_mode_mixture()
    process = GradientProcess(Energy([gmm]), schedule=LinearSchedule(0.1, 8.0))
    gen = torch.Generator().manual_seed(0)
    model = TimeMLP(dim=2, hidden=64, layers=2).double()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = torch.arange(256)
    for _ in range(400):
        x0 = gmm.sample(256, gen)
        loss = local_dsm_loss(
            model,
            process,
            x0,
            batch,
            times=UniformTimes(0.05),
            step=ConstantBudget(0.2),
            sim_mode="euler",
            sim_budget=0.1,
            generator=gen,
        )
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    x = gmm.sample(4096, gen)
    test_batch = torch.arange(4096)
    t = torch.rand(4096, generator=gen, dtype=F64) * 0.95 + 0.05
    true = 2 * process.drift_field(x, test_batch)  # -grad U
    with torch.no_grad():
        err = relative_score_error(model(x, t, test_batch), true)
    assert err < 0.1


@pytest.mark.parametrize("schedule", [PolynomialSchedule(), LinearSchedule()])
def test_fraction_budget_spends_a_fraction_of_the_noise_up_to_its_cap(schedule):
    t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64)
    s = FractionBudget(0.5, cap=1.0)(t, schedule)
    spent = schedule.integral(s, t)
    expected = (0.5 * schedule.integral(torch.zeros_like(t), t)).clamp(max=1.0)
    torch.testing.assert_close(spent, expected, rtol=1e-6, atol=1e-9)
    assert bool((s >= 0).all()) and bool((s <= t).all())


@pytest.mark.parametrize("sampler", [UniformTimes, StratifiedTimes])
def test_time_power_gives_the_law_of_u_to_the_power(sampler):
    """t = t_min + (1 - t_min) u^p: P((t - t_min) / (1 - t_min) <= x) = x^(1/p) (KS distance)."""
    t_min, power, n = 0.01, 2.0, 20_000
    t = sampler(t_min, power)(n, torch.Generator().manual_seed(0))
    x = torch.sort((t - t_min) / (1 - t_min)).values
    empirical = torch.arange(1, n + 1, dtype=F64) / n
    assert float((empirical - x ** (1 / power)).abs().max()) < 0.015
    assert torch.equal(
        sampler(t_min)(64, torch.Generator().manual_seed(1)),
        sampler(t_min, 1.0)(64, torch.Generator().manual_seed(1)),
    )


def test_parts_error_is_the_weighted_mean_of_each_part_per_graph():
    """Two graphs (2 and 1 atoms): a per-atom part (3 entries a row) and a per-graph part (4)."""
    atoms = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0], [6.0, 6.0, 6.0]])
    per_graph = torch.tensor([[1.0, 1.0, 1.0, 5.0], [0.0, 0.0, 0.0, 8.0]])
    w_atoms, w_graph = torch.tensor([2.0, 3.0], dtype=F64), torch.tensor([1.0, 0.5], dtype=F64)
    total = parts_error(
        [
            PartError(atoms, torch.tensor([0, 0, 1]), w_atoms),
            PartError(per_graph, torch.arange(2), w_graph),
        ],
        2,
    )
    want = torch.tensor([2.0 * 18 / 6 + 1.0 * 8 / 4, 3.0 * 6 + 0.5 * 2], dtype=F64)
    torch.testing.assert_close(total, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="at least one part"):
        parts_error([], 2)


def test_hutchinson_terms_of_a_gaussian_score_are_exact():
    """For ``s = -x / v`` per part, ``d s / dx v = -v / var`` and ``v^2 = 1``, so every entry's
    integrand is ``s^2 - 2 / var`` whatever the Rademacher draw (the ISM constant of a Gaussian)."""
    gen = torch.Generator().manual_seed(1)
    x = [
        torch.randn(4, 3, generator=gen, dtype=F64),
        torch.randn(2, 3, 3, generator=gen, dtype=F64),
    ]
    x = [p.requires_grad_(True) for p in x]
    var = (0.5, 2.0)
    pred = [-p / v for p, v in zip(x, var, strict=True)]
    terms = hutchinson_terms(pred, x, gen)
    for term, p, v in zip(terms, pred, var, strict=True):
        torch.testing.assert_close(term, p**2 - 2 / v)


def test_configs_build_their_time_sampler_and_step_rule():
    cfg = LossConfig(times="uniform", t_min=0.01, time_power=2.0, step="budget", budget=0.2)
    assert time_sampler(cfg) == UniformTimes(0.01, 2.0)
    assert step_rule(cfg) == ConstantBudget(0.2)
    cfg = LossConfig(fraction=0.25, budget=0.7)
    assert time_sampler(cfg) == StratifiedTimes(1e-3, 1.0)
    assert step_rule(cfg) == FractionBudget(0.25, 0.7)


class _TwoParts(NamedTuple):
    a: torch.Tensor
    b: torch.Tensor


@pytest.mark.parametrize("kind", ["exact-dsm", "local-dsm", "ism"])
def test_a_state_of_parts_gives_the_loss_of_its_joined_tensor(kind):
    """Noise is one joint draw split into the parts (:class:`NodeParts`), so two per-node parts
    under their own (here equal, elementwise) processes give bit for bit the loss of the joined
    tensor under one process: splitting a state keeps fixed-seed losses."""
    loss = {
        "exact-dsm": exact_dsm_loss,
        "local-dsm": partial(local_dsm_loss, mode="euler", sim_mode="euler"),
        "ism": partial(ism_loss, sim_mode="euler"),
    }[kind]
    process = vp_process()
    x = torch.randn(7, 5, dtype=F64, generator=torch.Generator().manual_seed(2))
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2])

    def model(y, t, b):
        return -y * (1 + t[b, None]) + 0.1 * y**2

    joined = loss(model, process, x, batch, generator=torch.Generator().manual_seed(4))
    parts = NodeParts(_TwoParts(process, vp_process()))
    split = loss(
        model,
        parts,
        _TwoParts(x[:, :2], x[:, 2:]),
        batch,
        generator=torch.Generator().manual_seed(4),
    )
    assert torch.isfinite(joined).all() and torch.equal(joined, split)
