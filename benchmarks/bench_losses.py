"""local-DSM (each mode) against ISM and exact DSM: seconds per step and score error at equal wall time.

Three settings, each with an exactly known score:
* ``2-D VP``: the linear VP SDE on Gaussian-mixture data (q_t is a mixture in closed form); exact DSM
  exists here.
* ``2-D nonlinear``: f = -1/2 beta grad U with U = -log mixture, data from exp(-U) (stationary, score
  -grad U).
* ``29 atoms``: a 29-atom (87-D) CoM-free state under harmonic confinement plus soft-sphere repulsion,
  data from exp(-U) by long Langevin runs (score -P grad U); exact DSM does not exist.

Every method trains the same MLP from the same seed for the same wall-clock budget.
Usage: ``python benchmarks/bench_losses.py [--seconds 30]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial

import torch

from benchmarks._report import write_section
from models.mlp import TimeMLP
from pipeline.energies import Energy, GaussianMixturePotential, HarmonicConfinement, SoftSphere
from pipeline.losses import (
    ConstantBudget,
    UniformTimes,
    exact_dsm_loss,
    ism_loss,
    local_dsm_loss,
    relative_score_error,
)
from pipeline.processes import GradientProcess, vp_process
from pipeline.samplers import prior_sample
from pipeline.schedules import LinearSchedule
from pipeline.toy import demo_mixture, fit, score_error

F64 = torch.float64
TIMES = UniformTimes(0.05)
SCHEDULE = LinearSchedule(0.1, 8.0)


def methods(exact: bool, budget: float):
    local = partial(
        local_dsm_loss, times=TIMES, step=ConstantBudget(budget), sim_mode="euler", sim_budget=0.1
    )
    table = {f"local-DSM {m}": partial(local, mode=m) for m in ("expm", "taylor2", "euler")}
    table["ISM (Hutchinson)"] = partial(ism_loss, times=TIMES, sim_mode="euler", sim_budget=0.1)
    if exact:
        table["exact DSM"] = partial(exact_dsm_loss, times=TIMES)
    return table


def vp_mixture_score_error(model, gmm: GaussianMixturePotential, process, gen, n=8192) -> float:
    """Score error on the VP process with mixture data: q_t is the mixture with means a mu_k and
    variances a^2 s_k^2 + 1 - a^2, a = exp(-B(0, t)/2)."""
    t = 0.05 + 0.95 * torch.rand(n, generator=gen, dtype=F64)
    a2 = torch.exp(-process.schedule.integral(torch.zeros_like(t), t))
    x0 = gmm.sample(n, gen)
    x = a2.sqrt()[:, None] * x0 + (1 - a2).sqrt()[:, None] * torch.randn(
        n, 2, generator=gen, dtype=F64
    )
    var = a2[:, None] * gmm.stds[None] ** 2 + (1 - a2[:, None])  # (n, K)
    diff = x[:, None, :] - a2.sqrt()[:, None, None] * gmm.means[None]  # (n, K, 2)
    logw = (
        torch.log(gmm.weights / gmm.weights.sum())[None]
        - (diff**2).sum(-1) / (2 * var)
        - torch.log(var)
    )
    resp = torch.softmax(logw, dim=-1)
    true = -(resp[..., None] * diff / var[..., None]).sum(1)
    with torch.no_grad():
        pred = model(x, t, torch.arange(n))
    return relative_score_error(pred, true)


def run_setting(name, process, sample, error, nodes, dim, seconds, exact, budget, hidden):
    rows = []
    for method, loss in methods(exact, budget).items():
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        model = TimeMLP(dim=dim, nodes_per_graph=nodes, hidden=hidden, layers=3).double()
        res = fit(
            model,
            process,
            sample,
            loss,
            steps=10**9,
            batch_size=128,
            nodes_per_graph=nodes,
            seconds=seconds,
            generator=gen,
        )
        err = error(model, torch.Generator().manual_seed(1))
        rows.append((name, method, res.seconds / res.steps, res.steps, err))
        print(
            f"{name:14s} {method:18s} {res.seconds / res.steps * 1e3:8.1f} ms/step "
            f"{res.steps:6d} steps  error {err:.4f}",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="wall-clock training budget per run"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one core per run: the machine is shared, threads would thrash
    rows = []

    gmm = demo_mixture()
    vp = vp_process(SCHEDULE)
    rows += run_setting(
        "2-D VP",
        vp,
        gmm.sample,
        lambda m, g: vp_mixture_score_error(m, gmm, vp, g),
        1,
        2,
        args.seconds,
        True,
        0.2,
        64,
    )

    nonlinear = GradientProcess(Energy([gmm]), schedule=SCHEDULE)
    test2 = gmm.sample(8192, torch.Generator().manual_seed(5))
    rows += run_setting(
        "2-D nonlinear",
        nonlinear,
        gmm.sample,
        lambda m, g: score_error(m, nonlinear, test2, torch.arange(8192), g),
        1,
        2,
        args.seconds,
        False,
        0.2,
        64,
    )

    atoms = 29
    physical = GradientProcess(
        Energy([HarmonicConfinement(1.0), SoftSphere(2.0, 1.0)]), schedule=SCHEDULE, com_free=True
    )
    gen = torch.Generator().manual_seed(2)
    pool_batch = torch.arange(640).repeat_interleave(atoms)
    start = time.perf_counter()
    pool = prior_sample(
        physical, pool_batch, 3, duration=8.0, max_budget=0.01, mode="euler", generator=gen
    )
    print(f"drew 640 stationary 29-atom states in {time.perf_counter() - start:.0f} s", flush=True)
    train, test = pool[: 512 * atoms].reshape(512, atoms, 3), pool[512 * atoms :]
    test_batch = pool_batch[: 128 * atoms]

    def sample_states(n, g):
        return train[torch.randint(0, 512, (n,), generator=g)].reshape(-1, 3)

    rows += run_setting(
        "29 atoms",
        physical,
        sample_states,
        lambda m, g: score_error(m, physical, test, test_batch, g),
        atoms,
        3,
        args.seconds,
        False,
        0.05,
        256,
    )

    table = [
        "| setting | method | ms / step | steps in budget | relative score error |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    table += [f"| {s} | {m} | {t * 1e3:.1f} | {n} | {e:.4f} |" for s, m, t, n, e in rows]
    ratios = []
    for setting in ("2-D VP", "2-D nonlinear", "29 atoms"):
        by = {m: (t, e) for s, m, t, n, e in rows if s == setting}
        ism_t, ism_e = by["ISM (Hutchinson)"]
        best = min((m for m in by if m.startswith("local")), key=lambda m: by[m][1])
        ratios.append(
            f"| {setting} | {best} | {ism_t / by[best][0]:.2f} | {ism_e / by[best][1]:.2f} |"
        )
    body = "\n".join(table) + (
        f"\n\nEach run: the same MLP (3 hidden layers), batch 128 graphs, Adam 3e-3, {args.seconds:.0f} s of "
        "training, seed 0; score error on held-out states with t ~ U[0.05, 1]. Local-DSM steps spend a "
        "rate budget B = 0.2 (2-D) or 0.05 (29 atoms); y_s by Euler-Maruyama steps of budget 0.1.\n\n"
        "Ratios measured in the same run (ISM / best local-DSM mode; > 1 favours local-DSM):\n\n"
        "| setting | best local-DSM mode | step-time ratio | score-error ratio |\n| --- | --- | ---: | ---: |\n"
        + "\n".join(ratios)
    )
    print(body)
    if not args.no_write:
        write_section(
            "losses",
            "Losses: local-DSM against ISM and exact DSM",
            "python benchmarks/bench_losses.py --seconds " + f"{args.seconds:g}",
            body,
        )


if __name__ == "__main__":
    sys.exit(main())
