"""``ldsm demo``: local-DSM on a 2-D nonlinear process with a known score, in well under two minutes."""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from models.mlp import TimeMLP
from pipeline.energies import Energy
from pipeline.losses import ConstantBudget, UniformTimes, local_dsm_loss
from pipeline.processes import GradientProcess
from pipeline.schedules import LinearSchedule
from pipeline.toy import demo_mixture, fit, score_error


def run(args: argparse.Namespace) -> int:
    """``ldsm demo``: fit, then print the score error before and after and the time."""
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    gmm = demo_mixture()
    process = GradientProcess(Energy([gmm]), schedule=LinearSchedule(0.1, 8.0))
    model = TimeMLP(dim=2, hidden=64, layers=3).double()
    loss = partial(
        local_dsm_loss,
        times=UniformTimes(0.05),
        step=ConstantBudget(args.budget),
        mode=args.mode,
        sim_mode="euler",
        sim_budget=0.1,
    )
    test = gmm.sample(8192, gen)
    test_batch = torch.arange(8192)
    before = score_error(model, process, test, test_batch, gen)
    print(f"local-DSM ({args.mode}) on a 2-D Gaussian-mixture potential, {args.steps} steps")
    start = time.perf_counter()
    result = fit(
        model,
        process,
        gmm.sample,
        loss,
        steps=args.steps,
        batch_size=args.batch_size,
        generator=gen,
    )
    after = score_error(model, process, test, test_batch, gen)
    print(
        f"relative score error E|s - grad log q_t|^2 / E|grad log q_t|^2: {before:.3f} -> {after:.4f}"
    )
    print(f"training time: {time.perf_counter() - start:.1f} s ({result.steps} steps)")
    return 0
