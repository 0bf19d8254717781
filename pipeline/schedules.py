"""Rate schedules beta(t) of the forward SDE, with their integrals in closed form.

Every forward process here is an autonomous SDE run on the clock tau(t) = int_0^t beta:
``dx = beta(t) F(x) dt + sqrt(beta(t)) G dW``. Transitions between times s < t therefore depend only on
the integral ``B(s, t) = int_s^t beta(r) dr``, which each schedule gives exactly; ``time_before``
inverts it, so that a step of fixed rate budget (an error-controlled local-DSM step) is closed form too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PolynomialSchedule:
    """EDM's ``polynomial_2`` noise schedule (Hoogeboom et al. 2022, ``PredefinedNoiseSchedule``).

    ``alpha^2(t) = (1 - 2p)(1 - t^2)^2 + p``, so ``int_0^t beta = -log alpha^2(t)`` and
    ``beta(t) = 4t(1 - 2p)(1 - t^2) / alpha^2(t)``. (EDM also clips consecutive ratios of its discrete
    grid; the continuous-time form omits that.)
    """

    precision: float = 1e-5

    def _alpha2(self, t: Tensor) -> Tensor:
        p = self.precision
        return (1 - 2 * p) * (1 - t**2) ** 2 + p

    def beta(self, t: Tensor) -> Tensor:
        return 4 * t * (1 - 2 * self.precision) * (1 - t**2) / self._alpha2(t)

    def integral(self, s: Tensor, t: Tensor) -> Tensor:
        """``int_s^t beta(r) dr`` elementwise."""
        return torch.log(self._alpha2(s)) - torch.log(self._alpha2(t))

    def time_before(self, t: Tensor, budget: float | Tensor) -> Tensor:
        """The ``s <= t`` with ``integral(s, t) = budget``, clipped at 0."""
        p = self.precision
        a2 = self._alpha2(t) * torch.exp(torch.as_tensor(budget, dtype=t.dtype))
        u = ((a2 - p) / (1 - 2 * p)).clamp(max=1.0)
        return torch.sqrt((1 - torch.sqrt(u.clamp(min=0.0))).clamp(min=0.0))


@dataclass(frozen=True)
class LinearSchedule:
    """Song et al.'s VP-SDE schedule ``beta(t) = beta_min + t (beta_max - beta_min)``."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _cumulative(self, t: Tensor) -> Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def integral(self, s: Tensor, t: Tensor) -> Tensor:
        return self._cumulative(t) - self._cumulative(s)

    def time_before(self, t: Tensor, budget: float | Tensor) -> Tensor:
        a = 0.5 * (self.beta_max - self.beta_min)
        c = self._cumulative(t) - torch.as_tensor(budget, dtype=t.dtype)
        if a == 0:
            s = c / self.beta_min
        else:
            s = (-self.beta_min + torch.sqrt(self.beta_min**2 + 4 * a * c.clamp(min=0.0))) / (2 * a)
        return s.clamp(min=0.0)


@dataclass(frozen=True)
class ConstantSchedule:
    """``beta(t) = rate``: a time-homogeneous process (e.g. Langevin dynamics towards the prior)."""

    rate: float = 1.0

    def beta(self, t: Tensor) -> Tensor:
        return torch.full_like(t, self.rate)

    def integral(self, s: Tensor, t: Tensor) -> Tensor:
        return self.rate * (t - s)

    def time_before(self, t: Tensor, budget: float | Tensor) -> Tensor:
        return (t - torch.as_tensor(budget, dtype=t.dtype) / self.rate).clamp(min=0.0)


Schedule = PolynomialSchedule | LinearSchedule | ConstantSchedule


def vp_signal_variance(schedule: Schedule, t: Tensor) -> Tensor:
    """``sigma^2(t) = 1 - exp(-int_0^t beta)``: the VP marginal noise variance at unit data scale."""
    return -torch.expm1(-schedule.integral(torch.zeros_like(t), t))


__all__ = [
    "ConstantSchedule",
    "LinearSchedule",
    "PolynomialSchedule",
    "Schedule",
    "vp_signal_variance",
]
