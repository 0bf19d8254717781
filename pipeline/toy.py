"""Low-dimensional score-matching runs with a known answer (the demo, tests and loss benchmarks).

The data are drawn from ``exp(-U)``, the stationary law of ``f = -1/2 beta grad U``, so every marginal
``q_t`` is ``exp(-U)`` and the true score is ``-grad U = 2 F`` at every t: a nonlinear process whose
score error can be measured exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pipeline.energies import GaussianMixturePotential
from pipeline.losses import relative_score_error
from pipeline.processes import GradientProcess

F64 = torch.float64

# loss_fn(model, process, x0, batch, generator=...) -> per-graph losses, as the pipeline.losses functions
LossFn = Callable[..., Tensor]


def demo_mixture() -> GaussianMixturePotential:
    """A 2-D, three-mode Gaussian mixture: U = -log p is strongly nonlinear between the modes."""
    return GaussianMixturePotential(
        means=torch.tensor([[-1.5, -0.5], [1.5, -0.5], [0.0, 1.6]], dtype=F64),
        stds=torch.tensor([0.45, 0.55, 0.5], dtype=F64),
        weights=torch.tensor([0.3, 0.3, 0.4], dtype=F64),
    )


@dataclass
class FitResult:
    """What a fit did: steps taken, seconds, the loss after each step, and skipped (non-finite) steps."""

    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    skipped: int = 0


def fit(
    model: nn.Module,
    process: GradientProcess,
    sample: Callable[[int, torch.Generator], Tensor],
    loss_fn: LossFn,
    *,
    steps: int,
    batch_size: int,
    nodes_per_graph: int = 1,
    lr: float = 3e-3,
    seconds: float | None = None,
    generator: torch.Generator,
) -> FitResult:
    """Adam on ``loss_fn`` for ``steps`` steps or until ``seconds`` of wall time have passed.

    ``sample(n, generator)`` returns n data graphs as ``(n * nodes_per_graph, d)``.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batch = torch.arange(batch_size).repeat_interleave(nodes_per_graph)
    result = FitResult(steps=0, seconds=0.0)
    start = time.perf_counter()
    while result.steps < steps and (seconds is None or result.seconds < seconds):
        x0 = sample(batch_size, generator)
        loss = loss_fn(model, process, x0, batch, generator=generator).mean()
        opt.zero_grad()
        if torch.isfinite(loss):
            loss.backward()
            opt.step()
            result.losses.append(loss.item())
        else:
            result.skipped += 1
        result.steps += 1
        result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def score_error(
    model: nn.Module,
    process: GradientProcess,
    data: Tensor,
    batch: Tensor,
    generator: torch.Generator,
    t_min: float = 0.05,
) -> float:
    """Relative error ``E|s_theta - s|^2 / E|s|^2`` on stationary data ``data (num_nodes, d)``, with
    ``t ~ U[t_min, 1]`` per graph; the true score is ``P (2 F)``."""
    t = t_min + (1 - t_min) * torch.rand(int(batch.max()) + 1, generator=generator, dtype=F64)
    dtype = next(model.parameters()).dtype
    pred = process.project(model(data.to(dtype), t.to(dtype), batch).double(), batch)
    return relative_score_error(pred, 2 * process.drift_field(data, batch))
