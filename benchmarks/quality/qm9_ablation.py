"""Issue 13's fixed-budget ablation harness: one QM9 recipe change per row, equal CPU budgets.

Every configuration is a named change to the shipped recipe (EGNN 4 x 64, exact DSM on EDM's
linear VP process, batch 64, seed 0) and trains with ``pipeline.train.train`` on one thread for the
same CPU-time budget (``--minutes``) into ``RUNS/NAME``; a killed run is resumed where it stopped.
Each trained run is then sampled (``--n`` molecules at every ``--nfe``, the sampler's
``--grid-power``) and scored by the screen's checks (EDM atom / molecule stability, EDM's validity,
uniqueness, novelty against the QM9 training SMILES; PoseBusters off, it does not change these)
plus the denoising error ``E|sigma s(x_t, t) + eps|^2 / 3`` of the positions at small noise levels
on 512 validation molecules (the linear process only: it uses the closed-form ``q(x_t | x_0)``).
One JSON per (run, NFE, grid) under ``--results``; the table goes to BENCHMARKS.md
(``quality-ablation``).

    nice python -m benchmarks.quality.qm9_ablation --configs baseline t-power-2 --minutes 25
    python -m benchmarks.quality.qm9_ablation --configs baseline t-power-2 --table-only
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch

from benchmarks._report import write_section
from benchmarks.quality.qm9_methods import train_smiles
from pipeline import metrics as pm
from pipeline.datasets import load_dataset
from pipeline.molecule_recipe import MoleculeRecipeConfig
from pipeline.recipes import load_trained
from pipeline.samplers import SamplerConfig
from pipeline.schedules import vp_signal_variance
from pipeline.train import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results" / "qm9_ablation"
SHIPPED = Path(__file__).resolve().parents[2] / "models" / "weights" / "qm9_egnn.pt"
BASE = MoleculeRecipeConfig().model_dump(mode="json")
BASE["process"]["drift"] = "linear"
BASE["loss"]["kind"] = "exact-dsm"


def _recipe(**changes) -> dict:
    """The base recipe with ``changes`` applied (``"loss.time_power": 2`` style keys)."""
    recipe = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        *path, last = key.split(".")
        node = recipe
        for part in path:
            node = node[part]
        node[last] = value
    return MoleculeRecipeConfig.model_validate(recipe).model_dump(mode="json")


# name -> (recipe, TrainConfig changes). Rows are added as configurations are tried. "shipped" is
# the shipped checkpoint: the base recipe trained for 25 CPU-minutes (issue 7), evaluated only.
CONFIGS: dict[str, tuple[dict, dict]] = {
    "shipped": (_recipe(), {}),
    "baseline": (_recipe(), {}),
    "t-power-2": (_recipe(**{"loss.time_power": 2.0}), {}),
    "edm-precond-t-power-2": (
        _recipe(preconditioning="edm", **{"loss.weight": "output", "loss.time_power": 2.0}),
        {},
    ),
    "edm-precond": (_recipe(preconditioning="edm", **{"loss.weight": "output"}), {}),
    # issue 14 on the same network: local-DSM under the physical drift, Euler local step capped at
    # int beta = 0.2 (the cheapest mode; quality-qm9's best local-DSM row). Its weight stays the VP
    # one: the local target's noise does not vanish at t -> 1 as exact DSM's does, so the output
    # weight (about 1e5 there) made the loss 5e4 in the first steps
    "local-dsm-physical-edm-precond": (
        _recipe(
            preconditioning="edm",
            **{
                "loss.kind": "local-dsm",
                "loss.mode": "euler",
                "loss.budget": 0.2,
                "process.drift": "physical",
            },
        ),
        {},
    ),
    # What ran on 2026-11-30 as "split": the molecule recipe's product process did not pass its
    # harmonic rate on, so the split steps were Euler steps there (local cap 0.2, y_s by Euler
    # steps of budget 1). Kept under the name of what it was.
    "local-dsm-physical-euler-sim1-edm-precond": (
        _recipe(
            preconditioning="edm",
            **{
                "loss.kind": "local-dsm",
                "loss.mode": "euler",
                "loss.budget": 0.2,
                "loss.sim_mode": "euler",
                "loss.sim_budget": 1.0,
                "process.drift": "physical",
            },
        ),
        {},
    ),
    # issue 14's split steps: the exponential Euler local step (cap 0.2) and y_s by split steps of
    # budget 1 (the harmonic part exact), about 1.2x an exact-DSM step
    "local-dsm-physical-split-edm-precond": (
        _recipe(
            preconditioning="edm",
            **{
                "loss.kind": "local-dsm",
                "loss.mode": "split",
                "loss.budget": 0.2,
                "loss.sim_mode": "split",
                "loss.sim_budget": 1.0,
                "process.drift": "physical",
            },
        ),
        {},
    ),
    # issue 14's variance goal: local-DSM on the linear process against "baseline" (same recipe,
    # exact DSM) at the same number of steps. On the linear drift the split step is the exact OU
    # transition, so the only difference is the target: the score of q(x_t | x_s) at the default
    # local step (s = t / 2, int_s^t beta <= 0.5) instead of q(x_t | x_0).
    "local-dsm-linear-split": (
        _recipe(
            **{
                "loss.kind": "local-dsm",
                "loss.mode": "split",
                "loss.sim_mode": "split",
                "loss.sim_budget": 1.0,
            },
        ),
        {"steps": 3577, "max_minutes": None},
    ),
    # The same with a constant step (int_s^t beta = min(int_0^t beta, 0.5)): s = 0 wherever
    # int_0^t beta <= 0.5 (t < 0.47 on EDM's schedule), where the split step from the data is the
    # exact transition and the target is exact DSM's; elsewhere the step of the row above.
    "local-dsm-linear-split-budget": (
        _recipe(
            **{
                "loss.kind": "local-dsm",
                "loss.mode": "split",
                "loss.step": "budget",
                "loss.budget": 0.5,
                "loss.sim_mode": "split",
                "loss.sim_budget": 1.0,
            },
        ),
        {"steps": 3577, "max_minutes": None},
    ),
}
DENOISING_T = (0.01, 0.03, 0.1, 0.3)


def train_config(name: str, minutes: float) -> TrainConfig:
    recipe, changes = CONFIGS[name]
    base = dict(recipe=recipe, steps=10**7, max_minutes=minutes, threads=1, checkpoint_every=200)
    return TrainConfig(**{**base, **changes})


def checkpoint_of(name: str, runs: Path) -> Path:
    return SHIPPED if name == "shipped" else runs / name / "checkpoints" / "last.pt"


def ensure_trained(name: str, runs: Path, minutes: float) -> Path:
    """Train (or resume) ``runs/name`` until its CPU budget is spent; returns its checkpoint."""
    checkpoint = checkpoint_of(name, runs)
    info = checkpoint.with_suffix(".json")
    if name == "shipped" or (
        info.exists() and json.loads(info.read_text())["run"]["cpu_seconds"] >= 60 * minutes
    ):
        return checkpoint
    run = runs / name
    resume = (run / "checkpoints" / "state.pt").exists()
    print(f"{name}: training {'(resumed) ' if resume else ''}for {minutes} CPU-minutes", flush=True)
    train(train_config(name, minutes), run, resume=resume)
    return checkpoint


@torch.no_grad()
def denoising_error(trained, seed: int = 0, size: int = 512) -> dict[str, float]:
    """``E|sigma s(x_t) + eps|^2`` per position entry at each of ``DENOISING_T`` (linear process)."""
    recipe = trained.recipe
    if recipe.config.process.drift != "linear":
        return {}
    data = load_dataset("qm9")
    batch = Batch.from_data_list(data.structures.subset(data.splits["val"][:size]).to_data_list())
    process = recipe.process
    x0 = type(recipe.encode(batch))(*(v.double() for v in recipe.encode(batch)))
    score = recipe.score(trained.model)
    out = {}
    for t_value in DENOISING_T:
        gen = torch.Generator().manual_seed(seed)
        t = torch.full((batch.num_graphs,), t_value, dtype=torch.float64)
        trs = process.transition(x0, t, batch.batch)
        parts = process.project(process.noise(x0, gen), batch.batch)
        x_t = [tr.mean + tr.std[batch.batch, None] * e for tr, e in zip(trs, parts, strict=True)]
        x_t = torch.cat(x_t, dim=1)
        eps = process.join(parts)
        pred = score(x_t.float(), t.float(), batch.batch).double()
        sigma = vp_signal_variance(recipe.process.schedule, t).sqrt()[batch.batch, None]
        out[f"t={t_value}"] = float(((sigma * pred + eps)[:, :3] ** 2).mean())
    return out


def evaluate(checkpoint: Path, sampler: SamplerConfig, n: int, seed: int, known) -> dict:
    trained = load_trained(checkpoint)
    sizes = np.array(sorted(trained.num_atoms))
    freq = np.array([trained.num_atoms[s] for s in sizes], dtype=float)
    counts = torch.as_tensor(np.random.default_rng(seed).choice(sizes, size=n, p=freq / freq.sum()))
    gen = torch.Generator().manual_seed(seed)
    molecules = []
    for start in range(0, n, 250):
        chunk, _ = trained.recipe.sample(
            trained.model, counts[start : start + 250], sampler, gen, prefix=f"s{start}"
        )
        molecules += chunk
    rows = pm.check_molecules(
        [m.name for m in molecules],
        [m.z.numpy() for m in molecules],
        [m.pos.numpy().astype(np.float64) for m in molecules],
        posebusters=False,
    )
    metrics = pm.molecule_set_metrics(rows, known)
    uniq, valid = metrics.get("uniqueness"), metrics["edm_validity"]
    metrics["validity_x_uniqueness"] = None if uniq is None or valid is None else valid * uniq
    metrics.update(
        sampler=sampler.kind,
        nfe=sampler.nfe,
        grid_power=sampler.grid_power,
        noise_scale=sampler.noise_scale,
        n=n,
        denoising=denoising_error(trained),
        # the checkpoint may be replaced later (the shipped one is): keep what was scored
        run={k: trained.info.get(k) for k in ("step", "cpu_seconds")},
    )
    return metrics


def edm_validity(metrics: dict) -> float | None:
    """EDM's validity (RDKit on the distance-table bonds). Results written before the screen
    split its validity opinions (2026-11-30) hold it under ``validity``."""
    return metrics.get("edm_validity", metrics.get("validity"))


def pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def table(names: list[str], runs: Path, results: Path) -> str:
    lines = [
        "| config | steps | CPU min | sampler | NFE | grid | atom stab. | mol. stab. | valid (EDM) | V x U | "
        "novel | denoising error at t = " + " / ".join(str(t) for t in DENOISING_T) + " |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        info = checkpoint_of(name, runs).with_suffix(".json")
        if not info.exists():
            continue
        mine = re.compile(rf"{re.escape(name)}(-ancestral)?-nfe\d+-grid[\d.]+\.json")
        for path in sorted(p for p in results.iterdir() if mine.fullmatch(p.name)):
            m = json.loads(path.read_text())
            run = m.get("run") or json.loads(info.read_text())["run"]
            s = {"steps": run["step"], "cpu_minutes": round(run["cpu_seconds"] / 60, 1)}
            den = " / ".join(f"{v:.3f}" for v in m["denoising"].values()) or "n/a"
            lines.append(
                f"| {name} | {s['steps']} | {s['cpu_minutes']} | {m.get('sampler', 'sde')} | "
                f"{m['nfe']} | {m['grid_power']} | "
                f"{pct(m['atom_stability'])} | {pct(m['molecule_stability'])} | "
                f"{pct(edm_validity(m))} | {pct(m['validity_x_uniqueness'])} | "
                f"{pct(m['novelty'])} | {den} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--minutes", type=float, default=25.0, help="CPU minutes per run")
    parser.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--nfe", nargs="+", type=int, default=[100])
    parser.add_argument("--grid-power", nargs="+", type=float, default=[1.0])
    parser.add_argument("--sampler", nargs="+", default=["sde"], choices=["sde", "ancestral"])
    parser.add_argument("--n", type=int, default=500, help="molecules per (run, NFE, grid)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table-only", action="store_true", help="write the table and stop")
    parser.add_argument("--notes", default="", help="a Markdown paragraph placed under the table")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.results.mkdir(parents=True, exist_ok=True)
    known = None
    for name in [] if args.table_only else args.configs:
        checkpoint = ensure_trained(name, args.runs, args.minutes)
        samplers = [
            SamplerConfig(kind=kind, nfe=nfe, grid_power=power, noise_scale=1.0)
            for kind in args.sampler
            for nfe in args.nfe
            for power in args.grid_power
        ]
        for sampler in samplers:
            prefix = "" if sampler.kind == "sde" else f"-{sampler.kind}"
            path = args.results / f"{name}{prefix}-nfe{sampler.nfe}-grid{sampler.grid_power:g}.json"
            if not path.exists():
                known = known if known is not None else train_smiles()
                print(f"{name}: sampling {args.n} molecules, {sampler}", flush=True)
                metrics = evaluate(checkpoint, sampler, args.n, args.seed, known)
                path.write_text(json.dumps(metrics, indent=2) + "\n")
                print(json.dumps(metrics), flush=True)
    body = table(args.configs, args.runs, args.results)
    body += (
        f"\n\nEvery run: QM9 train split, batch 64, seed 0, one thread, {args.minutes:g} CPU-minutes"
        " (`pipeline.train.train` with `max_minutes`); samples by the reverse SDE with the time grid"
        " `t_end + (1 - t_end) u^grid`. The changes are relative to the base recipe (shipped until 2026-11-30: EGNN 4 x 64,"
        " exact DSM on EDM's linear VP process, noise prediction, uniform stratified t)."
    )
    if args.notes:
        body += "\n\n" + args.notes
    print(body)
    command = f"python -m benchmarks.quality.qm9_ablation --configs {' '.join(args.configs)}"
    write_section(
        "quality-ablation", "Quality: QM9 recipe ablation at a fixed CPU budget", command, body
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
