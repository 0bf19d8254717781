"""The crystal state of named parts (pipeline.crystal_process) under the generic part losses and
the first-order sampler: each loss at a point mass's exact score against its analytic value, the
sampler returning the data point, and the forward lattice law (MatterGen's)."""

from __future__ import annotations

import math

import pytest
import torch
from crystal_cells import real_cells as _cells
from torch import nn
from torch_geometric.data import Batch

from models.config import CSPNetConfig
from models.cspnet import CrystalScore
from pipeline.batching import counts
from pipeline.crystal_process import CRYSTAL_CORRECTOR, CRYSTAL_NFE, CrystalState, noise_scales
from pipeline.crystal_recipe import (
    CrystalProcessConfig,
    CrystalRecipe,
    CrystalRecipeConfig,
    fit_to_data,
)
from pipeline.lattice import LatticePrior, symmetric_cell
from pipeline.losses import LossConfig
from pipeline.samplers import DEFAULT_NFE, SamplerConfig, resolve_defaults
from pipeline.torus import wrapped_normal_score

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# Losses at the exact score (linear drift, a point-mass data set)
# ---------------------------------------------------------------------------------------------


class PointMassScore(nn.Module):
    """The exact preconditioned outputs (``sigma x score``) for data = one crystal ``x0``, tiled."""

    def __init__(self, recipe: CrystalRecipe, x0: CrystalState):
        super().__init__()
        self.recipe = recipe
        self.frac0 = torch.remainder(recipe.scale * x0.u, 1.0)
        self.lattice0, self.h0 = x0.lattice, x0.h
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, frac, lattice, h, t, batch):
        schedule, c = self.recipe.schedule, self.recipe.scale
        total = schedule.integral(torch.zeros_like(t), t)
        sig_u, sig_vp = noise_scales(schedule, t)
        score_f = wrapped_normal_score(frac - self.frac0, c * total.sqrt()[batch, None])
        alpha, var = torch.exp(-0.5 * total), -torch.expm1(-total)
        state = self.recipe.config.lattice.state(lattice, counts(batch, t.shape[0]))
        score_l = -(state - alpha[:, None, None] * self.lattice0) / var[:, None, None]
        score_h = -(h - alpha[batch, None] * self.h0) / var[batch, None]
        return CrystalScore(
            sig_u[batch, None] * c * score_f,
            sig_vp[:, None, None] * score_l,
            sig_vp[batch, None] * score_h,
        )


def _point_mass(kind: str, copies: int, fitted: bool = False, symmetric: bool = False):
    """A recipe, ``copies`` of NaCl encoded, their batch index and the exact score. ``fitted``:
    the cubic lattice prior fitted to NaCl alone, whose data box is that one cell. ``symmetric``:
    wurtzite ZnO (a cell that is not symmetric) on MatterGen's symmetric lattice."""
    cell = _cells()[2 if symmetric else 0]  # wurtzite ZnO, 4 atoms; NaCl, 2 atoms
    config = CrystalRecipeConfig(
        elements=(8, 30) if symmetric else (11, 17),
        model=CSPNetConfig(num_types=2, hidden=8, layers=1),
        process=CrystalProcessConfig(drift="linear"),
        loss=LossConfig(kind=kind, step="budget", budget=0.05),
        lattice=LatticePrior(symmetric=symmetric),
    )
    recipe = CrystalRecipe(fit_to_data(config, [cell]) if fitted else config)
    batch = Batch.from_data_list([cell] * copies)
    x0 = recipe.encode(batch)
    return recipe, x0, batch.batch, PointMassScore(recipe, x0)


def test_exact_dsm_at_the_exact_score_is_zero():
    """DiffCSP's wrapped target and the VP targets equal the exact score of a point mass."""
    recipe, x0, batch, exact = _point_mass("exact-dsm", 64)
    t = torch.linspace(0.01, 0.99, 64, dtype=torch.float64)
    loss = recipe.loss_at(exact, x0, batch, t, torch.Generator().manual_seed(4))
    assert loss.abs().max() < 1e-18


def test_local_dsm_at_the_exact_score_is_the_analytic_constant():
    """Per entry ``E|target - score|^2 = 1/v - 1/sigma_t^2`` for a Gaussian step of variance v
    (lattice, types: VP; frac: VE with v = B, sigma_t^2 = int_0^t beta); times lambda = sigma_t^2."""
    recipe, x0, batch, exact = _point_mass("local-dsm", 4000)
    t = torch.full((4000,), 0.3, dtype=torch.float64)
    loss = recipe.loss_at(exact, x0, batch, t, torch.Generator().manual_seed(5))
    b, total = recipe.config.loss.budget, float(recipe.schedule.integral(t[:1] * 0, t[:1]))
    w = recipe.config.part_weights
    vp = (1 - math.exp(-total)) / (1 - math.exp(-b)) - 1
    want = w.frac * (total / b - 1) + (w.lattice + w.types) * vp
    assert abs(float(loss.mean()) - want) < 4 * float(loss.std()) / math.sqrt(4000)
    assert abs(float(loss.mean()) - want) < 0.02 * want


def test_ism_at_the_exact_score_is_minus_the_weights():
    """``lambda (|s|^2 + 2 div s) = -1`` per entry in expectation for a Gaussian score."""
    recipe, x0, batch, exact = _point_mass("ism", 4000)
    t = torch.full((4000,), 0.3, dtype=torch.float64)
    loss = recipe.loss_at(exact, x0, batch, t, torch.Generator().manual_seed(6)).detach()
    w = recipe.config.part_weights
    want = -(w.frac + w.lattice + w.types)
    assert abs(float(loss.mean()) - want) < 4 * float(loss.std()) / math.sqrt(4000)


@pytest.mark.parametrize("fitted,symmetric", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("kind,nfe,tol", [("sde", 200, 5e-2), ("ode", 100, 5e-3)])
def test_sampler_with_the_exact_score_returns_the_data_point(kind, nfe, tol, fitted, symmetric):
    """Reverse dynamics driven by a point mass's exact score end at that crystal (to the
    error of the torus, where the lifted point mass is only approximately the wrapped one; the
    ancestral and DDIM steps are exact for the lattice and the types), with either lattice prior;
    the fitted prior's box (one point here) agrees. On the symmetric lattice every state stays
    symmetric and the crystal comes back in its symmetric orientation."""
    recipe, x0, batch, exact = _point_mass("local-dsm", 8, fitted, symmetric)
    x1 = recipe.prior(batch, torch.Generator().manual_seed(7))
    x, used = recipe.reverse(exact, x1, batch, SamplerConfig(kind=kind, nfe=nfe), None)
    assert used == nfe
    out = recipe.decode(x, batch)
    cell = _cells()[2 if symmetric else 0]
    if symmetric:
        assert torch.equal(x1.lattice, x1.lattice.transpose(1, 2))
        assert torch.equal(x.lattice, x.lattice.transpose(1, 2))
    for crystal in out:
        assert crystal.z.tolist() == cell.z.tolist()
        d = crystal.frac - cell.frac
        assert (d - torch.round(d)).abs().max() < tol
    # The lattice in state units, where the sampler's error lives (cells: spread x a_n larger).
    torch.testing.assert_close(x.lattice, x0.lattice, rtol=0, atol=tol)


def test_langevin_corrector_keeps_a_gaussian_at_ulas_analytic_variance():
    """Unadjusted Langevin ``u + e s + sqrt(2e) z`` with the exact score of N(u0, sigma^2) and
    ``e = size sigma^2`` has the stationary variance ``sigma^2 / (1 - size / 2)`` (its linear
    recursion's fixed point); started there, 20 corrector moves keep it (5 sigma of the error),
    and the lattice and types stay as they are."""
    recipe, x0, batch, _ = _point_mass("exact-dsm", 4000)
    t, size = torch.tensor(0.05, dtype=torch.float64), 0.4
    var = float(recipe.schedule.integral(t * 0, t))
    u0 = x0.u.mean(0) * 0 + 0.5 / recipe.scale  # mid-cell: no wrap at this sigma (c sigma << 1)
    want = var / (1 - size / 2)
    gen = torch.Generator().manual_seed(3)
    x = x0._replace(
        u=u0 + math.sqrt(want) * torch.randn(x0.u.shape, generator=gen, dtype=torch.float64)
    )

    def score(state, tt, b):
        return state._replace(u=-(state.u - u0) / var)

    for _ in range(20):
        x = recipe.process.langevin_correct(score, x, t, batch, gen, size)
    d = x.u - u0
    n = d.numel()
    assert abs(float(d.mean())) < 5 * math.sqrt(want / n)
    assert abs(float(d.var()) / want - 1) < 5 * math.sqrt(2 / n)
    assert torch.equal(x.lattice, x0.lattice) and torch.equal(x.h, x0.h)


def test_predictor_corrector_with_the_exact_score_returns_the_data_point():
    """With a corrector, 100 NFE are 50 predictor and 50 corrector evaluations, and the exact
    score still leads every crystal to the data point."""
    recipe, x0, batch, exact = _point_mass("exact-dsm", 8)
    x1 = recipe.prior(batch, torch.Generator().manual_seed(8))
    cfg = SamplerConfig(nfe=100, corrector=0.4)
    x, used = recipe.reverse(exact, x1, batch, cfg, torch.Generator().manual_seed(9))
    assert used == 100
    d = torch.remainder(recipe.scale * x.u, 1.0) - _cells()[0].frac.double().repeat(8, 1)
    assert (d - torch.round(d)).abs().max() < 5e-2
    torch.testing.assert_close(x.lattice, x0.lattice, rtol=0, atol=5e-2)


def test_the_default_sampler_of_crystals_is_corrected_and_of_molecules_not():
    """``SamplerConfig()`` leaves NFE and corrector to the process: 200 NFE, 100 of them corrector
    moves of 1.0 sigma_t^2, for crystals; 100 NFE and no corrector for a process without
    defaults; explicit values stay."""
    recipe, x0, batch, exact = _point_mass("exact-dsm", 2)
    crystal = resolve_defaults(SamplerConfig(), recipe.process)
    assert (crystal.nfe, crystal.corrector) == (CRYSTAL_NFE, CRYSTAL_CORRECTOR) == (200, 1.0)
    other = resolve_defaults(SamplerConfig(), object())
    assert (other.nfe, other.corrector) == (DEFAULT_NFE, 0.0) == (100, 0.0)
    kept = resolve_defaults(SamplerConfig(nfe=30, corrector=0.0), recipe.process)
    assert (kept.nfe, kept.corrector) == (30, 0.0)
    x1 = recipe.prior(batch, torch.Generator().manual_seed(8))
    _, used = recipe.reverse(exact, x1, batch, SamplerConfig(), torch.Generator().manual_seed(9))
    assert used == 200


def test_forward_lattice_law_is_mattergens():
    """``L_t = alpha L_0 + (1 - alpha) a_n I + spread a_n sigma eps`` under the fitted prior:
    mean and std of 4,000 forward draws at t = 0.6 (5 sigma of the sampling error)."""
    recipe, x0, batch, _ = _point_mass("exact-dsm", 4000, fitted=True)
    t = torch.full((4000,), 0.6, dtype=torch.float64)
    xt = recipe.process.simulate(x0, batch, t, torch.Generator().manual_seed(2))
    cells = recipe.cell(xt.lattice, batch)
    prior = recipe.config.lattice
    a = float(prior.side(torch.tensor([2])))
    total = float(recipe.schedule.integral(t[:1] * 0, t[:1]))
    alpha, sigma = math.exp(-total / 2), math.sqrt(1 - math.exp(-total))
    cell0 = _cells()[0].lattice.double().reshape(3, 3)
    mean = alpha * cell0 + (1 - alpha) * a * torch.eye(3, dtype=torch.float64)
    std = prior.spread * a * sigma
    assert (cells.mean(0) - mean).abs().max() < 5 * std / math.sqrt(4000)
    assert abs(float(cells.std(0).mean()) / std - 1) < 0.02


# ---------------------------------------------------------------------------------------------
# MatterGen's symmetric lattice
# ---------------------------------------------------------------------------------------------


def test_symmetric_cell_is_the_same_crystal_rotated():
    """``S = (L L^T)^(1/2)``: symmetric, ``S S^T = L L^T``, ``S = L W^T`` with ``W`` a proper
    rotation, so the same fractional coordinates give the same interatomic distances."""
    from pymatgen.core import Lattice, Structure

    for cell in _cells():
        lattice = cell.lattice.double().reshape(3, 3)
        sym = symmetric_cell(lattice[None])[0]
        torch.testing.assert_close(sym, sym.T, rtol=0, atol=1e-12)
        assert bool((torch.linalg.eigvalsh(sym) > 0).all())
        torch.testing.assert_close(sym @ sym.T, lattice @ lattice.T)
        w = torch.linalg.solve(sym, lattice)  # L = S W
        torch.testing.assert_close(w @ w.T, torch.eye(3, dtype=torch.float64))
        assert math.isclose(float(torch.linalg.det(w)), 1.0, rel_tol=1e-12)
        frac, z = cell.frac.double().numpy(), cell.z.tolist()
        before = Structure(Lattice(lattice.numpy()), z, frac).distance_matrix
        after = Structure(Lattice(sym.numpy()), z, frac).distance_matrix
        assert abs(before - after).max() < 1e-10
    wurtzite = _cells()[2].lattice.double().reshape(3, 3)
    assert (wurtzite - wurtzite.T).abs().max() > 1  # the case that is not symmetric already
    with pytest.raises(ValueError, match="singular"):
        symmetric_cell(torch.zeros(1, 3, 3, dtype=torch.float64))


def test_symmetrized_noise_is_symmetric_with_unit_variance():
    """Each entry of the symmetric noise is N(0, 1): the mirrored pair one draw, independent of
    the others (sample variance and correlation of 20,000 draws, 5 sigma)."""
    prior = LatticePrior(symmetric=True)
    n = 20_000
    z = prior.symmetrized(torch.randn((n, 3, 3), generator=torch.Generator().manual_seed(3)))
    assert torch.equal(z, z.transpose(1, 2))
    flat = z.reshape(n, 9)
    assert (flat.var(0) - 1).abs().max() < 5 * math.sqrt(2 / n)
    independent = flat[:, [0, 1, 2, 4, 5, 8]]  # the diagonal and the upper triangle
    corr = torch.corrcoef(independent.T) - torch.eye(6, dtype=torch.float64)
    assert corr.abs().max() < 5 / math.sqrt(n)
    plain = torch.randn((2, 3, 3))
    assert LatticePrior().symmetrized(plain) is plain


def test_symmetric_lattice_exact_dsm_at_the_exact_score_is_zero_and_its_law_is_mattergens():
    """On the symmetric lattice the exact-DSM target is still the point mass's exact score, and
    the forward cells are symmetric with MatterGen's law: mean ``alpha S_0 + (1 - alpha) a_n I``,
    std ``spread a_n sigma`` in every entry (4,000 draws at t = 0.6, 5 sigma)."""
    recipe, x0, batch, exact = _point_mass("exact-dsm", 4000, fitted=True, symmetric=True)
    t = torch.full((4000,), 0.6, dtype=torch.float64)
    loss = recipe.loss_at(exact, x0, batch, t, torch.Generator().manual_seed(4))
    assert loss.abs().max() < 1e-18
    xt = recipe.process.simulate(x0, batch, t, torch.Generator().manual_seed(2))
    cells = recipe.cell(xt.lattice, batch)
    assert torch.equal(cells, cells.transpose(1, 2))
    prior = recipe.config.lattice
    a = float(prior.side(torch.tensor([4])))
    total = float(recipe.schedule.integral(t[:1] * 0, t[:1]))
    alpha, sigma = math.exp(-total / 2), math.sqrt(1 - math.exp(-total))
    cell0 = symmetric_cell(_cells()[2].lattice.double().reshape(1, 3, 3))[0]
    mean = alpha * cell0 + (1 - alpha) * a * torch.eye(3, dtype=torch.float64)
    std = prior.spread * a * sigma
    assert (cells.mean(0) - mean).abs().max() < 5 * std / math.sqrt(4000)
    assert (cells.reshape(-1, 9).std(0) / std - 1).abs().max() < 0.05


def test_ism_refuses_the_symmetric_lattice():
    with pytest.raises(ValueError, match="ism does not train a symmetric lattice"):
        _point_mass("ism", 2, symmetric=True)


def test_network_lattice_score_is_symmetric_on_the_symmetric_lattice():
    """CSPNet's lattice output ``M L`` is not symmetric; the score of a symmetric state is its
    symmetric part (and the output as it is without ``symmetric``)."""
    torch.manual_seed(0)
    for symmetric in (False, True):
        recipe, x0, batch, _ = _point_mass("exact-dsm", 3, fitted=True, symmetric=symmetric)
        model = recipe.build_model().double()
        t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
        lattice = recipe.score(model)(x0, t, batch).lattice
        asymmetry = (lattice - lattice.transpose(1, 2)).abs().max()
        assert (asymmetry == 0) if symmetric else (asymmetry > 1e-3)
