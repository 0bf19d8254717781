"""The score parameterisations of the molecule recipe against analytic answers."""

import pytest
import torch

from pipeline.losses import exact_dsm_loss
from pipeline.molecule_recipe import EDMPreconditioned
from pipeline.processes import vp_process
from pipeline.schedules import PolynomialSchedule

F64 = torch.float64
SIGMA_DATA = torch.tensor([1.4, 1.4, 0.11], dtype=F64)


def zero_net(x, t, batch):
    return torch.zeros_like(x)


def test_edm_preconditioning_is_karras_denoiser_written_as_a_score():
    """(x + sigma^2 s) / alpha = c_skip x / alpha + c_out F (Karras et al. 2022, Table 1, VP)."""
    schedule = PolynomialSchedule()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=gen, dtype=F64)
    out = torch.randn(50, 3, generator=gen, dtype=F64)
    t = torch.rand(50, generator=gen, dtype=F64) * 0.98 + 0.01
    batch = torch.arange(50)
    score = EDMPreconditioned(lambda x, t, b: out, schedule, SIGMA_DATA)(x, t, batch)
    total = schedule.integral(torch.zeros_like(t), t)[:, None]
    alpha, sigma = torch.exp(-total / 2), (-torch.expm1(-total)).sqrt()
    s_tilde, sd = sigma / alpha, SIGMA_DATA
    c_skip = sd**2 / (s_tilde**2 + sd**2)
    c_out = s_tilde * sd / (s_tilde**2 + sd**2).sqrt()
    denoised = (x + sigma**2 * score) / alpha
    assert torch.allclose(denoised, c_skip * x / alpha + c_out * out, rtol=1e-10, atol=1e-10)


def test_edm_preconditioning_with_zero_output_is_the_exact_score_of_gaussian_data():
    """Data N(0, sigma_data^2) per column: with F = 0 the model is the true score, so the exact-DSM
    loss takes its analytic minimum E|target|^2 - E|s|^2 = 1/sigma_t^2 - 1/v per entry."""
    process = vp_process(PolynomialSchedule())
    gen = torch.Generator().manual_seed(1)
    n, t_value = 100_000, 0.3
    x0 = torch.randn(n, 3, generator=gen, dtype=F64) * SIGMA_DATA
    model = EDMPreconditioned(zero_net, process.schedule, SIGMA_DATA)
    t = torch.full((n,), t_value, dtype=F64)
    residual = exact_dsm_loss(
        model,
        process,
        x0,
        torch.arange(n),
        times=lambda k, g: t[:k],
        weight=lambda t, s: torch.ones_like(t),
        generator=gen,
    )
    total = process.schedule.integral(torch.zeros(1, dtype=F64), torch.tensor([t_value], dtype=F64))
    sigma2 = -torch.expm1(-total)
    v = sigma2 + torch.exp(-total) * SIGMA_DATA**2
    expected = float((1 / sigma2 - 1 / v).mean())
    assert float(residual.mean()) == pytest.approx(expected, rel=0.02)


def test_output_weight_makes_the_loss_the_squared_error_of_the_network_output():
    """lambda = 1 / c^2 per column: the weighted score error equals |F - F'|^2 for any two outputs."""
    schedule = PolynomialSchedule()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(40, 3, generator=gen, dtype=F64)
    a, b = torch.randn(2, 40, 3, generator=gen, dtype=F64)
    t = torch.rand(40, generator=gen, dtype=F64)
    batch = torch.arange(40)
    sa = EDMPreconditioned(lambda *_: a, schedule, SIGMA_DATA)(x, t, batch)
    model = EDMPreconditioned(lambda *_: b, schedule, SIGMA_DATA)
    weighted = model.output_weight(t, schedule) * (sa - model(x, t, batch)) ** 2
    assert torch.allclose(weighted, (a - b) ** 2, rtol=1e-8)


def test_stationary_reference_is_the_exact_prior_score_at_t_1_and_edm_on_the_linear_process():
    """With F = 0 the ``edm-stationary`` score at t = 1 is ``-grad U`` of the physical drift's
    stationary law exp(-U) (autograd of U, confinement and soft spheres), the pair part
    included; on the linear process it is EDM's score at every t."""
    from pipeline.molecule_recipe import MoleculeRecipe, MoleculeRecipeConfig

    gen = torch.Generator().manual_seed(3)
    batch = torch.arange(4).repeat_interleave(7)
    pos = torch.randn(28, 3, generator=gen, dtype=F64) * 0.7
    pos = pos - torch.zeros(4, 3, dtype=F64).index_add_(0, batch, pos)[batch] / 7
    x = torch.cat([pos, torch.randn(28, 5, generator=gen, dtype=F64)], 1)
    physical = MoleculeRecipe(MoleculeRecipeConfig(preconditioning="edm-stationary"))
    score = physical.score(zero_net)(x, torch.ones(4, dtype=F64), batch)[:, :3]
    exact = pos.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(physical.positions.potential(exact, batch).sum(), exact)
    assert float((grad + pos).abs().max()) > 0.1  # the pairs repel: not the N(0, I) score
    torch.testing.assert_close(score, -grad, rtol=1e-4, atol=1e-4)
    linear = {"preconditioning": "edm-stationary", "process": {"drift": "linear"}}
    recipe = MoleculeRecipe(MoleculeRecipeConfig(**linear))
    edm = MoleculeRecipe(MoleculeRecipeConfig(**{**linear, "preconditioning": "edm"}))
    t = torch.rand(4, generator=gen, dtype=F64)
    torch.testing.assert_close(
        recipe.score(zero_net)(x, t, batch), edm.score(zero_net)(x, t, batch)
    )
