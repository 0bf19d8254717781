"""The bias estimators of benchmarks/quality/step_schedule.py against the linear VP control.

For U = |x|^2/2 and N(0, I) data every quantity is Gaussian: the regression minimiser is
``kappa y`` (vp_kappa), so the bias along the score is ``c = -(1 + kappa)`` and the relative squared
bias ``(1 + kappa)^2``; expm is exact (c = 0), euler is biased by ``(B^2/4) / (1 + B^2/4)``.
"""

import math
from pathlib import Path

import pytest
import torch

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ROOT))  # benchmarks/ is a script folder, not an installed package
        from benchmarks.quality import step_schedule

        yield step_schedule


@pytest.mark.parametrize("b", [0.1, 0.5, 2.0])
def test_vp_kappa_matches_closed_forms(bench, b):
    assert bench.vp_kappa("expm", b) == pytest.approx(-1.0, abs=1e-12)
    assert -(1 + bench.vp_kappa("euler", b)) == pytest.approx(-(b**2 / 4) / (1 + b**2 / 4))
    # taylor2: a = 1 - B/2 + B^2/8, l = sqrt(B)(1 - B/4), tau = -(1 + B/4) eps / sqrt(B)
    a, l2 = 1 - b / 2 + b**2 / 8, b * (1 - b / 4) ** 2
    assert bench.vp_kappa("taylor2", b) == pytest.approx(-(1 - b**2 / 16) / (a**2 + l2))


def test_projection_is_zero_for_the_exact_step_and_not_for_a_long_euler_step(bench):
    system = bench.vp_system(1, com_free=False)
    gen = torch.Generator().manual_seed(0)
    n = 10_000
    y_s = system.sample(n, gen)
    exact = bench.pair_statistics(system, y_s, torch.full((n,), 0.5, dtype=F64), "expm", gen)
    assert abs(exact["c"]) < 4 * exact["c_se"]
    assert abs(exact["proj2"]) < 0.01
    assert exact["spread"] == pytest.approx(1.0, abs=0.05)
    long = bench.pair_statistics(system, y_s, torch.full((n,), 1.0, dtype=F64), "euler", gen)
    analytic = -(1 + bench.vp_kappa("euler", 1.0))  # -0.2
    assert long["c"] == pytest.approx(analytic, abs=4 * long["c_se"])
    assert abs(long["c"]) > 10 * long["c_se"]
    assert long["proj2"] == pytest.approx(analytic**2, abs=0.01)


@pytest.mark.parametrize("mode", ["expm", "taylor2", "euler"])
def test_quadrature_bias_equals_the_analytic_value(bench, mode):
    system = bench.vp_system(1, com_free=False)
    y = system.sample(100, torch.Generator().manual_seed(1))
    out = bench.quadrature_bias(system, y, 0.5, mode)
    expected = (1 + bench.vp_kappa(mode, 0.5)) ** 2
    assert out["bias2"] == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert math.isfinite(out["bias2"])
