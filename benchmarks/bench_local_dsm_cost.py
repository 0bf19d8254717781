"""Issue 14's ``local-dsm-cost``: CPU milliseconds per training step by loss and mode, with a breakdown.

One QM9 batch (``--batch`` molecules of the train split), the molecule recipe's EGNN (4 x 64), one
thread, the same weights for every row. A training step is the recipe's loss, its backward pass and
an Adam step; the breakdown times the parts of the local-DSM loss on their own: simulating ``y_s``
from the data (``recipe.process.simulate`` with the recipe's ``sim_mode`` / ``sim_budget``), the local
step (``recipe.process.local_step``) and the network's forward and backward pass. Times are CPU seconds of this
process (``time.process_time``), the median of ``--repeats`` runs, each over the same ``--draws``
time draws; ratios are taken within this one run.

    python benchmarks/bench_local_dsm_cost.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch_geometric.data import Batch

from benchmarks._report import write_section
from pipeline.datasets import load_dataset
from pipeline.losses import FractionBudget, LossConfig, StratifiedTimes
from pipeline.molecule_recipe import MoleculeRecipe, MoleculeRecipeConfig, ProcessConfig

ROWS = [
    ("exact DSM, linear", "linear", LossConfig(kind="exact-dsm")),
    ("local-DSM expm (default), physical", "physical", LossConfig()),
    ("local-DSM euler, physical", "physical", LossConfig(mode="euler")),
    ("local-DSM taylor2, physical", "physical", LossConfig(mode="taylor2")),
    (
        "local-DSM split, y_s split 0.5, physical",
        "physical",
        LossConfig(mode="split", sim_mode="split", sim_budget=0.5),
    ),
    (
        "local-DSM split, y_s split 1, physical",
        "physical",
        LossConfig(mode="split", sim_mode="split", sim_budget=1.0),
    ),
    ("local-DSM expm, linear", "linear", LossConfig()),
    ("ISM, physical", "physical", LossConfig(kind="ism")),
]


def cpu_ms(fn, repeats: int) -> float:
    """Median CPU milliseconds of ``fn()`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(1000 * (time.process_time() - start))
    return statistics.median(times)


def recipe_for(drift: str, loss: LossConfig) -> MoleculeRecipe:
    return MoleculeRecipe(MoleculeRecipeConfig(process=ProcessConfig(drift=drift), loss=loss))


def measure(batch: Batch, draws: int, repeats: int) -> list[dict]:
    return [measure_row(name, drift, loss, batch, draws, repeats) for name, drift, loss in ROWS]


def measure_row(
    name: str, drift: str, loss: LossConfig, batch: Batch, draws: int, repeats: int
) -> dict:
    """The step and its parts for one loss (CPU ms per time draw)."""
    recipe = recipe_for(drift, loss)
    torch.manual_seed(0)
    model = recipe.build_model()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    x0 = recipe.encode(batch)
    process, b = recipe.process, batch.batch
    times = StratifiedTimes(loss.t_min)

    def step():
        for k in range(draws):
            optimiser.zero_grad()
            recipe.loss(model, batch, torch.Generator().manual_seed(k)).sum().backward()
            optimiser.step()

    def simulate(common: bool = False):
        for k in range(draws):
            gen = torch.Generator().manual_seed(k)
            t = times(batch.num_graphs, gen)
            s = FractionBudget(loss.fraction, loss.budget)(t, process.schedule)
            if common:  # every graph takes the batch's largest step count, as before issue 14
                s = s.max().expand_as(s)
            process.simulate(x0, b, s, gen, loss.sim_mode, loss.sim_budget)

    def local():
        gen = torch.Generator().manual_seed(0)
        t = times(batch.num_graphs, gen)
        s = FractionBudget(loss.fraction, loss.budget)(t, process.schedule)
        y = process.simulate(x0, b, s, gen, loss.sim_mode, loss.sim_budget)
        budget = process.schedule.integral(s, t)
        start = time.process_time()
        for _ in range(draws):
            process.local_step(y, budget, b, gen, loss.mode)
        return time.process_time() - start

    def network():
        t = times(batch.num_graphs, torch.Generator().manual_seed(0)).float()
        for _ in range(draws):
            recipe.score(model)(process.join(x0), t, b).pow(2).sum().backward()

    row = {"name": name, "step": cpu_ms(step, repeats) / draws}
    row["network"] = cpu_ms(network, repeats) / draws
    if loss.kind != "exact-dsm":
        row["simulate"] = cpu_ms(simulate, repeats) / draws
        row["simulate_common"] = cpu_ms(lambda: simulate(common=True), repeats) / draws
    if loss.kind == "local-dsm":
        local()
        row["local"] = statistics.median(1000 * local() for _ in range(repeats)) / draws
    return row


def table(rows: list[dict], batch_size: int) -> str:
    exact = rows[0]["step"]
    lines = [
        "| loss | ms / step | x exact DSM | simulate y_s | simulate y_s, one step count "
        "(before) | local step | network fwd + bwd |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        parts = ("simulate", "simulate_common", "local", "network")
        cells = [f"{r[k]:.0f}" if k in r else "" for k in parts]
        lines.append(
            f"| {r['name']} | {r['step']:.0f} | {r['step'] / exact:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + (
        f"\n\nQM9 train split, {batch_size} molecules, EGNN 4 x 64, one thread, CPU milliseconds"
        " (medians). The parts are timed on their own, so they need not add up to the step."
        " 'one step count (before)' simulates every graph for the batch's largest number of"
        " steps, as `simulate_forward` did before each graph got its own count."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--draws", type=int, default=4, help="time draws per timed call")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = load_dataset("qm9")
    structures = data.structures.subset(data.splits["train"][: args.batch])
    batch = Batch.from_data_list(structures.to_data_list())
    body = table(measure(batch, args.draws, args.repeats), args.batch)
    print(body)
    command = f"python benchmarks/bench_local_dsm_cost.py --repeats {args.repeats}"
    write_section("local-dsm-cost", "local-DSM cost per training step (issue 14)", command, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
