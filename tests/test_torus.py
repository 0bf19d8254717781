"""The torus (pipeline.torus): the wrapped-normal score, cell shifts and the periodic pair energy,
gradient and Hessian against analytic answers, lattice sums and autograd."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from crystal_cells import real_cells as _cells

from pipeline.crystal_recipe import CrystalProcessConfig
from pipeline.energies import CappedLennardJones, SoftSphere
from pipeline.schedules import PolynomialSchedule
from pipeline.torus import (
    TorusProcess,
    cell_shifts,
    periodic_pair_energy,
    periodic_pair_gradient,
    periodic_pair_hessian,
    wrapped_normal_score,
)
from pipeline.transitions import local_step

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# The torus
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.15, 0.3, 0.6])
def test_wrapped_normal_score_matches_its_fourier_series(sigma):
    """Poisson summation: ``p(d) = 1 + 2 sum_m exp(-2 pi^2 m^2 s^2) cos(2 pi m d)`` (the series
    loses digits where p is tiny, hence sigma >= 0.15 here)."""
    delta = torch.linspace(-1.3, 1.7, 301, dtype=torch.float64)
    m = torch.arange(1, 200, dtype=torch.float64)[:, None]
    a = torch.exp(-2 * math.pi**2 * m**2 * sigma**2)
    p = 1 + 2 * (a * torch.cos(2 * math.pi * m * delta)).sum(0)
    dp = -2 * (a * 2 * math.pi * m * torch.sin(2 * math.pi * m * delta)).sum(0)
    torch.testing.assert_close(
        wrapped_normal_score(delta, torch.tensor(sigma, dtype=torch.float64)),
        dp / p,
        rtol=1e-9,
        atol=1e-9,
    )


def test_zero_pair_term_step_is_the_wrapped_normal_for_a_small_step():
    """With epsilon = 0 the local step is ``u_t = u_s + sqrt(B) eps`` exactly, and its lifted
    target equals the wrapped-normal score of ``frac_t`` given ``frac_s`` to float64 rounding."""
    gen = torch.Generator().manual_seed(0)
    batch = torch.tensor([0, 0, 0, 1, 1])
    lattice = torch.stack([c.lattice[0] for c in _cells()[:2]]).double()
    scale = CrystalProcessConfig().scale()
    process = TorusProcess(lattice, scale, SoftSphere(0.0, 1.0), PolynomialSchedule())
    u = torch.rand(5, 3, generator=gen, dtype=torch.float64) / scale
    eps = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    budget = torch.tensor([0.05, 0.02], dtype=torch.float64)
    for mode in ("expm", "taylor2", "euler"):
        u_t, target = local_step(process, u, budget, batch, eps, mode)
        torch.testing.assert_close(u_t - u, budget.sqrt()[batch, None] * eps, rtol=0, atol=1e-12)
        sigma_f = scale * budget.sqrt()[batch, None]  # the step's std in fractional units
        frac_delta = torch.remainder(scale * u_t, 1.0) - torch.remainder(scale * u, 1.0)
        torch.testing.assert_close(
            target / scale, wrapped_normal_score(frac_delta, sigma_f), rtol=1e-9, atol=1e-9
        )


def test_lifted_target_has_the_wrapped_score_as_conditional_mean():
    """At a large step (sigma = 0.4, images matter) the lifted Gaussian target averages, given the
    wrapped point, to the wrapped-normal score: the same regression minimiser (Monte Carlo)."""
    gen = torch.Generator().manual_seed(1)
    sigma = 0.4
    lifted = sigma * torch.randn(1_000_000, generator=gen, dtype=torch.float64)
    target = -lifted / sigma**2
    wrapped = lifted - torch.round(lifted)
    exact = wrapped_normal_score(wrapped, torch.tensor(sigma, dtype=torch.float64))
    assert (target - exact).abs().max() > 1.0  # the two differ pointwise at this step
    bins = torch.bucketize(wrapped, torch.linspace(-0.5, 0.5, 21, dtype=torch.float64)[1:-1])
    for k in range(20):
        sel = bins == k
        diff = target[sel].mean() - exact[sel].mean()
        stderr = (target[sel] - exact[sel]).std() / sel.sum().sqrt()
        assert abs(float(diff)) < 5 * float(stderr)


def _dense_cell(data, dtype=torch.float64):
    return data.frac[None].to(dtype), data.lattice.to(dtype), torch.ones(1, len(data.z), dtype=bool)


def _brute_force_energy(term, frac, lattice, reach=3, wrap=False):
    """``sum_{i<j} sum_{n in [-reach, reach]^3} phi(|(F_j - F_i + n) L|)``: the lattice sum
    (``wrap``: of the difference wrapped into [-1/2, 1/2], the recipe's definition at reach 1)."""
    shifts = torch.tensor(
        list(itertools.product(range(-reach, reach + 1), repeat=3)), dtype=frac.dtype
    )
    total = torch.zeros((), dtype=frac.dtype)
    for i, j in itertools.combinations(range(frac.shape[0]), 2):
        delta = frac[j] - frac[i]
        delta = delta - torch.round(delta) if wrap else delta
        v = (delta + shifts) @ lattice
        total = total + term.phi(v.norm(dim=-1), *term.params(None, v)).sum()
    return total


@pytest.mark.parametrize("jitter", [0.0, 0.05])
def test_periodic_energy_is_the_lattice_sum(jitter):
    """Exact while the cut-off is below 1.5 x the smallest cell height (3.1 A for fcc Cu): 3 A
    reaches nearest neighbours and their periodic images in every cell here."""
    term = SoftSphere(1.3, 3.0)
    gen = torch.Generator().manual_seed(8)
    for cell in _cells()[0::2]:  # two-atom and four-atom cells (one atom has no pairs)
        frac, lattice, mask = _dense_cell(cell)
        frac = frac + jitter * torch.randn(frac.shape, generator=gen, dtype=torch.float64)
        got = periodic_pair_energy(term, frac, lattice, mask)
        want = _brute_force_energy(term, frac[0], lattice[0])
        assert float(want) > 0.1  # the check is not 0 == 0
        torch.testing.assert_close(got[0], want, rtol=1e-12, atol=1e-12)


def test_only_shifts_that_reach_the_cutoff_are_summed():
    """Small noisy cells (the lattice near t = 1) need all 27 shifts, a Perov-5-like cubic cell one;
    the energy is the 27-image sum of its definition either way."""
    gen = torch.Generator().manual_seed(10)
    cubic = 3.9 * torch.eye(3, dtype=torch.float64)[None]
    assert cell_shifts(cubic, 1.0).tolist() == [[0.0, 0.0, 0.0]]
    assert len(cell_shifts(cubic, 3.0)) == 27
    assert len(cell_shifts(torch.zeros(1, 3, 3, dtype=torch.float64), 1.0)) == 27
    term = SoftSphere(1.0, 1.0)
    for lattice in (cubic, torch.randn(1, 3, 3, generator=gen, dtype=torch.float64)):
        frac = torch.rand(1, 6, 3, generator=gen, dtype=torch.float64)
        got = periodic_pair_energy(term, frac, lattice, torch.ones(1, 6, dtype=bool))
        want = _brute_force_energy(term, frac[0], lattice[0], reach=1, wrap=True)
        torch.testing.assert_close(got[0], want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("term", [SoftSphere(1.0, 3.0), CappedLennardJones(0.5, 2.0)])
def test_periodic_gradient_and_hessian_equal_autograd(term):
    """Closed-form soft-sphere derivatives and the forward-mode path of other terms."""
    for cell in _cells()[0::2]:
        frac, lattice, mask = _dense_cell(cell)
        frac = frac + 0.01 * torch.randn(frac.shape, generator=torch.Generator().manual_seed(2))

        def energy(f, lattice=lattice, mask=mask):
            return periodic_pair_energy(term, f, lattice, mask).sum()

        grad = torch.func.grad(energy)(frac)
        hess = torch.autograd.functional.hessian(energy, frac).reshape(frac[0].numel(), -1)
        got_grad = periodic_pair_gradient(term, frac, lattice, mask)
        got_hess = periodic_pair_hessian(term, frac, lattice, mask)[0]
        assert grad.abs().max() > 1e-3
        torch.testing.assert_close(got_grad, grad, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got_hess, hess, rtol=1e-9, atol=1e-9)


def test_torus_drift_and_jacobian_are_those_of_the_energy():
    """``F(u) = -1/2 grad_u U(c u)`` and its Jacobian, per crystal, in lifted units (padding of
    crystals of different sizes included)."""
    cells = _cells()
    sizes = torch.tensor([len(c.z) for c in cells])
    batch = torch.repeat_interleave(torch.arange(3), sizes)
    lattice = torch.cat([c.lattice for c in cells]).double()
    scale = 0.2
    process = TorusProcess(lattice, scale, SoftSphere(1.0, 3.0), PolynomialSchedule())
    gen = torch.Generator().manual_seed(11)
    u = torch.cat([c.frac for c in cells]).double() / scale
    u = u + 0.1 * torch.randn(u.shape, generator=gen, dtype=torch.float64)
    grad = torch.func.grad(lambda x: process.energy(x, batch).sum())(u)
    torch.testing.assert_close(process.drift_field(u, batch), -0.5 * grad)
    full = torch.autograd.functional.jacobian(lambda x: process.drift_field(x, batch), u)
    jac, mask = process.drift_jacobian(u, batch)
    start = 0
    for g, n in enumerate(sizes.tolist()):
        block = full[start : start + n, :, start : start + n, :].reshape(3 * n, 3 * n)
        torch.testing.assert_close(jac[g, : 3 * n, : 3 * n], block, rtol=1e-9, atol=1e-9)
        assert jac[g, 3 * n :].abs().sum() == 0  # padding rows
        start += n
    assert mask.sum(1).tolist() == sizes.tolist() and full.abs().max() > 1e-3


def test_drift_is_periodic_translation_and_rotation_invariant():
    """A common shift of all frac, one atom moved by a lattice vector, and ``L -> L R^T`` leave the
    drift on frac unchanged (it acts on fractional coordinates, which do not rotate)."""
    cells = _cells()
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([len(c.z) for c in cells]))
    lattice = torch.cat([c.lattice for c in cells]).double()
    scale = 0.2
    process = TorusProcess(lattice, scale, SoftSphere(1.0, 3.0), PolynomialSchedule())
    gen = torch.Generator().manual_seed(3)
    frac = torch.cat([c.frac for c in cells]).double()
    frac = frac + 0.02 * torch.randn(frac.shape, generator=gen, dtype=torch.float64)
    drift = process.drift_field(frac / scale, batch)
    assert drift.abs().max() > 1e-3

    shift = torch.rand(3, 3, generator=gen, dtype=torch.float64)[batch]
    torch.testing.assert_close(process.drift_field((frac + shift) / scale, batch), drift)
    hop = torch.zeros_like(frac)
    hop[0] = torch.tensor([1.0, -2.0, 1.0])
    torch.testing.assert_close(process.drift_field((frac + hop) / scale, batch), drift)
    q, _ = torch.linalg.qr(torch.randn(3, 3, 3, generator=gen, dtype=torch.float64))
    rotated = TorusProcess(lattice @ q.transpose(1, 2), scale, process.pair, process.schedule)
    torch.testing.assert_close(rotated.drift_field(frac / scale, batch), drift)
