import pytest
import torch
from scipy.integrate import quad

from pipeline.schedules import (
    ConstantSchedule,
    LinearSchedule,
    PolynomialSchedule,
    vp_signal_variance,
)

SCHEDULES = [PolynomialSchedule(), LinearSchedule(), ConstantSchedule(2.0)]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_integral_matches_quadrature(schedule):
    for s, t in [(0.0, 0.3), (0.2, 0.9), (0.5, 1.0), (0.0, 1.0)]:
        exact, _ = quad(lambda r: float(schedule.beta(torch.tensor(r, dtype=torch.float64))), s, t)
        got = schedule.integral(
            torch.tensor(s, dtype=torch.float64), torch.tensor(t, dtype=torch.float64)
        )
        assert float(got) == pytest.approx(exact, rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_time_before_inverts_integral(schedule):
    t = torch.linspace(0.3, 1.0, 8, dtype=torch.float64)
    budget = 0.05
    s = schedule.time_before(t, budget)
    assert torch.all(s < t)
    torch.testing.assert_close(
        schedule.integral(s, t), torch.full_like(t, budget), atol=1e-9, rtol=0
    )
    # A budget larger than what is left clips at t = 0.
    assert torch.all(schedule.time_before(torch.tensor([0.01], dtype=torch.float64), 50.0) == 0)


def test_polynomial_schedule_is_edm_alpha():
    """EDM: alpha^2 = (1 - 2p)(1 - t^2)^2 + p. The SDE starts from the data at t = 0, where EDM's
    alpha^2(0) = 1 - p, so its signal factor is alpha^2(t) / alpha^2(0)."""
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    p = 1e-5
    alpha2 = (1 - 2 * p) * (1 - t**2) ** 2 + p
    torch.testing.assert_close(vp_signal_variance(PolynomialSchedule(p), t), 1 - alpha2 / alpha2[0])
