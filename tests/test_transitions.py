"""Local transition moments against analytic answers and against a fine-grid Monte-Carlo estimate."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch.func import jacrev

from pipeline.energies import DoubleWell, Energy, HarmonicConfinement, SoftSphere
from pipeline.processes import ActiveOUProcess, GradientProcess, vp_process
from pipeline.schedules import ConstantSchedule, PolynomialSchedule
from pipeline.transitions import (
    MODES,
    local_step,
    phi1,
    simulate_forward,
    van_loan_moments,
    vp_step,
)

F64 = torch.float64


def moments(process, y, budget, batch, mode):
    """Mean ``(num_nodes * d,)`` and covariance of the local step, from its affine map of eps."""

    def draw(eps):
        return local_step(process, y, budget, batch, eps, mode)[0]

    zero = torch.zeros_like(y)
    lmap = jacrev(draw)(zero).reshape(y.numel(), y.numel())
    return draw(zero).reshape(-1), lmap @ lmap.T


def com_projector(n: int, d: int) -> torch.Tensor:
    p = torch.eye(n, dtype=F64) - torch.full((n, n), 1 / n, dtype=F64)
    return torch.kron(p, torch.eye(d, dtype=F64))


def test_phi1_continuous_at_zero():
    z = torch.tensor([-1e-7, 0.0, 1e-7, 1e-3, -5.0], dtype=F64)
    expected = [1 - 5e-8, 1.0, 1 + 5e-8, math.expm1(1e-3) / 1e-3, (math.exp(-5) - 1) / -5]
    torch.testing.assert_close(phi1(z), torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", ["expm", "split"])
@pytest.mark.parametrize("com_free", [False, True])
def test_linear_drift_local_moments_equal_closed_form_vp(com_free, mode):
    """U = |x|^2/2: the linearisation is exact, so m = e^{-B/2} y and Sigma = (1 - e^{-B}) P; the
    split step integrates this linear drift exactly too."""
    process = vp_process(PolynomialSchedule(), com_free=com_free)
    gen = torch.Generator().manual_seed(0)
    n, d = 4, 3
    y = process.project(
        torch.randn(n, d, generator=gen, dtype=F64), torch.zeros(n, dtype=torch.long)
    )
    batch = torch.zeros(n, dtype=torch.long)
    s, t = torch.tensor([0.3], dtype=F64), torch.tensor([0.45], dtype=F64)
    budget = process.schedule.integral(s, t)
    mean, cov = moments(process, y, budget, batch, mode)
    proj = com_projector(n, d) if com_free else torch.eye(n * d, dtype=F64)
    torch.testing.assert_close(mean, torch.exp(-budget / 2) * y.reshape(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(cov, -torch.expm1(-budget) * proj, atol=1e-6, rtol=0)


def test_linear_drift_local_target_equals_exact_dsm_target():
    """From y_s = x_0 at s = 0 the local step is the exact transition, so the targets coincide."""
    process = vp_process(com_free=True)
    gen = torch.Generator().manual_seed(1)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    x0 = process.project(torch.randn(8, 3, generator=gen, dtype=F64), batch)
    t = torch.tensor([0.2, 0.7], dtype=F64)
    eps = torch.randn(8, 3, generator=gen, dtype=F64)
    y_t, target = local_step(process, x0, process.schedule.integral(0 * t, t), batch, eps, "expm")
    tr = process.transition(x0, t, batch)
    var = tr.std[batch, None] ** 2
    torch.testing.assert_close(target, -(y_t - tr.mean) / var, atol=1e-6, rtol=0)
    torch.testing.assert_close(y_t, tr.mean + tr.std[batch, None] * process.project(eps, batch))


def test_van_loan_agrees_with_eigh_and_quadrature_on_symmetric_drift():
    jac = torch.tensor([[[-2.0, 0.5], [0.5, -1.0]]], dtype=F64)
    drift = torch.tensor([[1.0, 2.0]], dtype=F64)
    budget = torch.tensor([0.3], dtype=F64)
    shift, cov = van_loan_moments(jac, torch.eye(2, dtype=F64)[None], drift, budget)
    lam, q = torch.linalg.eigh(jac[0])
    torch.testing.assert_close(shift[0], q @ torch.diag(0.3 * phi1(0.3 * lam)) @ q.T @ drift[0])
    torch.testing.assert_close(cov[0], q @ torch.diag(0.3 * phi1(0.6 * lam)) @ q.T)
    r = np.linspace(0, 0.3, 3001)
    jn = jac[0].numpy()
    integrand = [scipy.linalg.expm(jn * x) @ scipy.linalg.expm(jn.T * x) for x in r]
    np.testing.assert_allclose(cov[0].numpy(), np.trapezoid(integrand, r, axis=0), atol=1e-7)


def test_active_ou_in_harmonic_trap_reaches_lyapunov_covariance():
    """AOUP in U = k/2 r^2 is linear: a long step's covariance solves J S + S J^T + G G^T = 0."""
    k = 1.5
    process = ActiveOUProcess(
        Energy([HarmonicConfinement(k, centred=False)]),
        dim=2,
        temperature=0.2,
        persistence=0.7,
        speed=0.8,
        schedule=ConstantSchedule(1.0),
    )
    y = torch.tensor([[0.3, -0.2, 0.5, 0.1]], dtype=F64)
    batch = torch.zeros(1, dtype=torch.long)
    mean, cov = moments(process, y, torch.tensor([60.0], dtype=F64), batch, "expm")
    jac = process.drift_jacobian(y, batch)[0][0].numpy()
    assert not np.allclose(jac, jac.T)  # the drift is not a gradient: Van Loan path
    g2 = np.diag(process.noise_scale(4, y).numpy() ** 2)
    np.testing.assert_allclose(
        cov.numpy(), scipy.linalg.solve_continuous_lyapunov(jac, -g2), atol=1e-8
    )
    np.testing.assert_allclose(mean.numpy(), 0.0, atol=1e-8)  # stationary mean of a linear trap


def test_taylor2_and_euler_converge_to_expm_at_their_orders():
    """Against the exact linearised moments, taylor2's mean errs at O(B^3) and euler's at O(B^2)."""
    process = GradientProcess(
        Energy([HarmonicConfinement(1.0), SoftSphere(2.0, 1.5)]),
        schedule=ConstantSchedule(1.0),
        com_free=True,
    )
    gen = torch.Generator().manual_seed(3)
    y = process.project(
        torch.randn(5, 3, generator=gen, dtype=F64), torch.zeros(5, dtype=torch.long)
    )
    batch = torch.zeros(5, dtype=torch.long)
    errors = {"taylor2": [], "euler": []}
    for b in (0.04, 0.02):
        ref, ref_cov = moments(process, y, torch.tensor([b], dtype=F64), batch, "expm")
        for mode in errors:
            mean, cov = moments(process, y, torch.tensor([b], dtype=F64), batch, mode)
            errors[mode].append(float((mean - ref).norm()))
    assert math.log2(errors["taylor2"][0] / errors["taylor2"][1]) == pytest.approx(3, abs=0.3)
    assert math.log2(errors["euler"][0] / errors["euler"][1]) == pytest.approx(2, abs=0.3)


def test_local_moments_approach_fine_grid_monte_carlo_at_predicted_order():
    """Double well U = (x^2 - 1)^2 in 1-D, F = -U'/2, g = 1, from y = 0.5, where F = 3/4,
    dF = 1/2, d2F = -6 and d3F = -12.

    Ito-Taylor: the exact mean is ``y + B F + B^2/2 (F dF + d2F/2) + O(B^3)``; the linearised SDE
    drops the ``d2F B^2 / 4`` term, so the mean error is O(B^2), here ``1.5 B^2``. A Gaussian moment
    closure gives the exact variance ``B + B^2/2 - 6.83 B^3 + O(B^4)``; the linearised variance
    ``B phi1(2 dF B) = B + B^2/2 + B^3/6 + ...`` agrees through O(B^2), so its error is O(B^3),
    here ``7.0 B^3``. (Plain Euler-Maruyama, variance ``B``, errs already at O(B^2).)
    """
    process = GradientProcess(Energy([DoubleWell(1.0)]), schedule=ConstantSchedule(1.0))
    y = torch.tensor([[0.5]], dtype=F64)
    batch = torch.zeros(1, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    budgets = [0.2, 0.1, 0.05]
    err_mean, err_var = [], []
    for b in budgets:
        x = torch.full((300_000,), 0.5, dtype=F64)
        h = b / 200
        for _ in range(200):
            x = (
                x
                - 2 * x * (x**2 - 1) * h
                + math.sqrt(h) * torch.randn(x.shape, generator=gen, dtype=F64)
            )
        mean, cov = moments(process, y, torch.tensor([b], dtype=F64), batch, "expm")
        err_mean.append(float(mean[0]) - float(x.mean()))
        err_var.append(float(cov[0, 0]) - float(x.var()))

    def slope(err):
        return np.polyfit(np.log(budgets), np.log(np.abs(err)), 1)[0]

    assert slope(err_mean) == pytest.approx(2.0, abs=0.3)
    assert err_mean[-1] == pytest.approx(1.5 * budgets[-1] ** 2, rel=0.3)
    assert slope(err_var) == pytest.approx(3.0, abs=0.6)
    assert err_var[-1] == pytest.approx(7.0 * budgets[-1] ** 3, rel=0.3)


@pytest.mark.parametrize("mode", MODES)
def test_local_step_is_float64_inside_and_keeps_caller_dtype(mode):
    process = GradientProcess(Energy([HarmonicConfinement(), SoftSphere()]), com_free=True)
    batch = torch.tensor([0, 0, 0, 1, 1])
    y = process.project(torch.randn(5, 3), batch)
    y_t, target = local_step(process, y, torch.tensor([1e-4, 1e-3]), batch, torch.randn(5, 3), mode)
    assert y_t.dtype == target.dtype == torch.float32
    assert torch.isfinite(target).all()
    # The CoM-free process keeps both the state and its score on the CoM-free subspace.
    for v in (y_t, target):
        torch.testing.assert_close(process.project(v, batch), v, atol=1e-4, rtol=1e-5)


def test_simulate_forward_with_a_step_count_per_graph_gives_the_exact_ou_marginals():
    """Graphs with different t take different numbers of steps (sub-batches); on the OU process
    every one still ends at N(e^{-t/2} x0, 1 - e^{-t}) (expm steps are exact for a linear drift)."""
    process = vp_process(ConstantSchedule(1.0))
    n = 30_000
    t = torch.tensor([0.0, 0.3, 3.0], dtype=F64).repeat(n // 3)  # 0, 2 and 12 steps of 0.25
    nodes = torch.arange(n).repeat_interleave(2)  # two atoms per graph
    x0 = torch.full((2 * n, 1), 2.0, dtype=F64)
    x = simulate_forward(
        process, x0, t, nodes, "expm", 0.25, generator=torch.Generator().manual_seed(0)
    )
    for value in (0.0, 0.3, 3.0):
        group = x[(t == value)[nodes]]
        assert float(group.mean()) == pytest.approx(2.0 * math.exp(-value / 2), abs=0.02)
        assert float(group.var()) == pytest.approx(1 - math.exp(-value), abs=0.02)


def test_vp_step_is_the_closed_form_and_the_exact_local_step():
    """``x_t = e^{-B/2} x + sqrt(1 - e^{-B}) eps`` with score ``-eps / sqrt(1 - e^{-B})``, and the
    linearised (expm) step of the VP process gives the same draw and target (its drift is linear)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=gen, dtype=F64)
    eps = torch.randn(5, 3, generator=gen, dtype=F64)
    budget = torch.tensor([0.3, 1.7], dtype=F64)
    batch = torch.tensor([0, 0, 1, 1, 1])
    x_t, target = vp_step(x, budget[batch, None], eps)
    b = budget[batch, None]
    torch.testing.assert_close(x_t, torch.exp(-b / 2) * x + torch.sqrt(1 - torch.exp(-b)) * eps)
    torch.testing.assert_close(target, -(x_t - torch.exp(-b / 2) * x) / (1 - torch.exp(-b)))
    for mode in ("expm", "split"):
        y_t, y_target = local_step(vp_process(PolynomialSchedule()), x, budget, batch, eps, mode)
        torch.testing.assert_close(y_t, x_t)
        torch.testing.assert_close(y_target, target)


def test_split_step_is_exponential_euler_and_matches_euler_without_a_linear_part():
    """``m = e^{aB} y + B phi1(aB) R(y)`` with ``a = -k/2`` and ``R = F - a y``; ``L^2 = B phi1(2aB)``.
    Without a harmonic confinement (a = 0) it is the Euler step."""
    gen = torch.Generator().manual_seed(4)
    batch = torch.zeros(5, dtype=torch.long)
    y = torch.randn(5, 3, generator=gen, dtype=F64)
    budget = torch.tensor([0.7], dtype=F64)
    k = 1.5
    process = GradientProcess(
        Energy([HarmonicConfinement(k, centred=False), SoftSphere(2.0, 1.5)]),
        schedule=ConstantSchedule(1.0),
    )
    assert process.linear_rate() == -k / 2
    rest = process.drift_field(y, batch) + k / 2 * y
    b, a = 0.7, -k / 2
    mean, cov = moments(process, y, budget, batch, "split")
    expected = math.exp(a * b) * y + (math.expm1(a * b) / a) * rest
    torch.testing.assert_close(mean, expected.reshape(-1), atol=1e-12, rtol=0)
    var = -math.expm1(-k * b) / k
    torch.testing.assert_close(cov, var * torch.eye(15, dtype=F64), atol=1e-12, rtol=0)
    pairs_only = GradientProcess(Energy([SoftSphere(2.0, 1.5)]), schedule=ConstantSchedule(1.0))
    eps = torch.randn(5, 3, generator=gen, dtype=F64)
    for got, want in zip(
        local_step(pairs_only, y, budget, batch, eps, "split"),
        local_step(pairs_only, y, budget, batch, eps, "euler"),
        strict=True,
    ):
        torch.testing.assert_close(got, want)


def test_split_steps_keep_the_stationary_law_where_euler_steps_drift():
    """U = x^2/2 + 0.1 (x^2 - 1)^2 in 1-D: from exact draws of exp(-U) (inverse CDF on a grid), the
    law must stay exp(-U). Steps of budget 0.25 up to B = 4: the split steps keep its variance
    within 2 % (measured 0.5 %), Euler steps inflate it by more than 3 % (measured 5 %) and
    the expm linearisation by more than 5 % (measured 7 %): the harmonic part, integrated exactly,
    is what a frozen drift got wrong."""
    process = GradientProcess(
        Energy([HarmonicConfinement(1.0, centred=False), DoubleWell(0.1)]),
        schedule=ConstantSchedule(1.0),
    )
    grid = np.linspace(-6, 6, 100_001)
    density = np.exp(-(grid**2 / 2 + 0.1 * (grid**2 - 1) ** 2))
    density /= density.sum()
    variance = float((density * grid**2).sum())
    n = 100_000
    u = np.random.default_rng(0).random(n)
    x0 = torch.tensor(np.interp(u, np.cumsum(density), grid), dtype=F64)[:, None]
    t = torch.full((n,), 4.0, dtype=F64)
    error = {}
    for mode in ("split", "euler", "expm"):
        gen = torch.Generator().manual_seed(1)
        x = simulate_forward(process, x0, t, torch.arange(n), mode, 0.25, generator=gen)
        error[mode] = float(x.var()) / variance - 1
    assert abs(error["split"]) < 0.02
    assert error["euler"] > 0.03 and error["expm"] > 0.05
