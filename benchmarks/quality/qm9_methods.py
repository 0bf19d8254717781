"""Issue 7.1 and 7.4: the same EGNN trained with exact DSM, local-DSM and ISM, sampled and screened.

Each training run is an ``ldsm train`` run directory (the same network, the QM9 train split and
the same CPU-time budget ``--max-minutes``); this script samples ``--n`` molecules from each run's
EMA checkpoint at every ``--nfe``, screens them with the checks of ``ldsm screen`` (EDM stability,
RDKit validity, uniqueness, novelty against the training SMILES, PoseBusters) and writes the table,
with the published anchors, into BENCHMARKS.md. Resumable: one JSON per (run, NFE) under
``--results``; a present file is reused.

    python -m benchmarks.quality.qm9_methods --runs runs/q7-exact-dsm runs/q7-local-dsm runs/q7-ism
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._report import write_section
from pipeline import metrics as pm
from pipeline import molecule_checks as mc
from pipeline.datasets import load_dataset
from pipeline.recipes import load_trained
from pipeline.samplers import SamplerConfig

RESULTS = Path(__file__).resolve().parent / "results" / "qm9_methods"
# Published QM9 numbers at 1000 NFE (atom stab., mol. stab., validity, V x U, %): EDM (Hoogeboom et
# al. 2022, Table 1), GeoLDM (Xu et al. 2023, Table 1), EquiFM (Song et al. 2023, Table 1).
ANCHORS = {
    "EDM": (98.7, 82.0, 91.9, 90.7),
    "GeoLDM": (98.9, 89.4, 93.8, 92.7),
    "EquiFM": (98.9, 88.3, 94.7, 93.5),
}


def train_smiles() -> set[str]:
    data = load_dataset("qm9")
    smiles = data.structures.strings["smiles"]
    out = set()
    for i in data.splits["train"].tolist():
        can = mc.canonicalize_smiles(smiles[i]) if smiles[i] else None
        if can:
            out.add(can)
    return out


def training_summary(run: Path) -> dict:
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]
    config = json.loads((run / "config.json").read_text())
    info = json.loads((run / "checkpoints" / "last.json").read_text())["run"]
    origin = info.get("init_from") or {"cpu_seconds": 0.0}
    return {
        "steps": info["step"],
        "cpu_minutes": round(info["cpu_seconds"] / 60, 1),
        # with the training of the checkpoint it started from (--init-from), if any
        "cpu_hours_in_all": (info["cpu_seconds"] + origin["cpu_seconds"]) / 3600,
        "wall_minutes": round(info["seconds"] / 60, 1),
        "skipped": int(last["skipped"]),
        "loss": config["recipe"]["loss"]["kind"],
        "drift": config["recipe"]["process"]["drift"],
        "batch_size": config["batch_size"],
        "hidden": config["recipe"]["model"]["hidden"],
        "layers": config["recipe"]["model"]["layers"],
        "distance_features": config["recipe"]["model"].get("distance_features", 0),
    }


def evaluate(
    run: Path,
    nfe: int,
    n: int,
    batch: int,
    seed: int,
    known: set[str],
    grid_power: float,
    sampler: str = "auto",
    noise_scale: float = 1.0,
) -> dict:
    """Sample ``n`` molecules from ``run``'s EMA checkpoint with ``sampler`` (``auto``: ancestral
    steps for the linear process, the reverse SDE otherwise) at ``nfe`` on the time grid of
    ``grid_power``, the fresh noise times ``noise_scale``, and screen them."""
    trained = load_trained(run / "checkpoints" / "last.pt")
    sizes = np.array(sorted(trained.num_atoms))
    freq = np.array([trained.num_atoms[s] for s in sizes], dtype=float)
    rng = np.random.default_rng(seed)
    counts = torch.as_tensor(rng.choice(sizes, size=n, p=freq / freq.sum()))
    gen = torch.Generator().manual_seed(seed)
    molecules, seconds, used = [], 0.0, 0
    for start in range(0, n, batch):
        started = time.perf_counter()
        chunk, used = trained.recipe.sample(
            trained.model,
            counts[start : start + batch],
            SamplerConfig(kind=sampler, nfe=nfe, grid_power=grid_power, noise_scale=noise_scale),
            gen,
            prefix=f"s{start}",
        )
        seconds += time.perf_counter() - started
        molecules += chunk
    rows = pm.check_molecules(
        [m.name for m in molecules],
        [m.z.numpy() for m in molecules],
        [m.pos.numpy().astype(np.float64) for m in molecules],
        posebusters=True,
    )
    metrics = pm.molecule_set_metrics(rows, known)
    uniq = metrics.get("uniqueness")
    valid = metrics["edm_validity"]  # EDM's number (distance-table bonds), as the anchors
    metrics["validity_x_uniqueness"] = None if uniq is None or valid is None else valid * uniq
    if sampler == "auto":  # what `auto` resolves to
        sampler = "ancestral" if trained.recipe.config.process.drift == "linear" else "sde"
    metrics.update(
        nfe=used,
        seconds_per_molecule=seconds / n,
        n=n,
        sampler=sampler,
        grid_power=grid_power,
        noise_scale=noise_scale,
    )
    return metrics


def result_name(
    run: Path, nfe: int, grid_power: float, sampler: str = "auto", noise_scale: float = 1.0
) -> str:
    """``RUN-nfeK.json`` for the default sampler and grid at noise scale 1, else with
    ``-gridP``, ``-SAMPLER`` and ``-noiseC`` for what differs."""
    extra = "" if grid_power == SamplerConfig().grid_power else f"-grid{grid_power:g}"
    extra += "" if sampler == "auto" else f"-{sampler}"
    extra += "" if noise_scale == 1.0 else f"-noise{noise_scale:g}"
    return f"{run.name}-nfe{nfe}{extra}.json"


def pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _row_order(m: dict) -> tuple:
    return m["nfe"], -m.get("noise_scale", 1.0), m.get("sampler", "sde"), m.get("grid_power", 1.0)


def table(runs: list[Path], results: Path) -> str:
    """The training table and the sample-quality table (every result present, by run and NFE)."""
    head = (
        "| method | sampler | grid | noise scale | NFE | n | atom stab. | mol. stab. | valid | "
        "V x U | novel | PoseBusters | s / molecule |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for run in runs:
        found = [json.loads(p.read_text()) for p in results.glob(f"{run.name}-nfe*.json")]
        for m in sorted(found, key=_row_order):
            # Results without a sampler are of 2026-11-24, sampled by the then default.
            lines.append(
                f"| {run.name} | {m.get('sampler', 'sde')} | {m.get('grid_power', 1.0):g} | "
                f"{m.get('noise_scale', 1.0):g} | {m['nfe']} | {m['n']} | {pct(m['atom_stability'])} | "
                f"{pct(m['molecule_stability'])} | {pct(m.get('edm_validity', m['validity']))} | "
                f"{pct(m['validity_x_uniqueness'])} | {pct(m['novelty'])} | "
                f"{pct(m['posebusters_pass'])} | {m['seconds_per_molecule']:.3f} |"
            )
    for name, (a, mol, v, vu) in ANCHORS.items():
        lines.append(
            f"| {name} (published) | | | 1 | 1000 | 10000 | {a} | {mol} | {v} | {vu} | | | |"
        )
    return training_table(runs, "EGNN") + "\n\n" + head + "\n".join(lines)


def training_table(runs: list[Path], network: str) -> str:
    """One Markdown row per training run: loss, drift, network size (and CSPNet's radial edge
    features, where it has them), steps and time spent (CPU-h in all: with the training of the
    checkpoint a run started from, ``--init-from``)."""
    lines = [
        "| run | loss | drift | network | batch | steps | CPU min | wall min | CPU-h in all |"
        " skipped |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        s = training_summary(run)
        radial = f" + {s['distance_features']} radial" if s["distance_features"] else ""
        lines.append(
            f"| {run.name} | {s['loss']} | {s['drift']} | {network} {s['layers']}x{s['hidden']}"
            f"{radial} | "
            f"{s['batch_size']} | {s['steps']} | {s['cpu_minutes']} | {s['wall_minutes']} | "
            f"{s['cpu_hours_in_all']:.2f} | {s['skipped']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--nfe", nargs="+", type=int, default=[50, 100, 500])
    parser.add_argument("--n", type=int, default=1000, help="molecules per (run, NFE)")
    parser.add_argument("--grid-power", nargs="+", type=float, default=[SamplerConfig().grid_power])
    parser.add_argument(
        "--sampler", nargs="+", default=["auto"], choices=["auto", "sde", "ancestral", "split"]
    )
    parser.add_argument("--noise-scale", nargs="+", type=float, default=[1.0])
    parser.add_argument("--batch", type=int, default=250, help="molecules sampled together")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--notes", default="", help="a Markdown paragraph placed under the table")
    parser.add_argument("--table-only", action="store_true", help="write the table and stop")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.results.mkdir(parents=True, exist_ok=True)
    known = None
    for run, nfe, power, kind, noise in (
        (r, k, g, s, c)
        for r in ([] if args.table_only else args.runs)
        for k in args.nfe
        for g in args.grid_power
        for s in args.sampler
        for c in args.noise_scale
    ):
        path = args.results / result_name(run, nfe, power, kind, noise)
        if not path.exists():
            known = known if known is not None else train_smiles()
            print(
                f"{run.name}: sampling {args.n} molecules at {nfe} NFE, {kind}, grid {power:g}, "
                f"noise scale {noise:g}",
                flush=True,
            )
            metrics = evaluate(run, nfe, args.n, args.batch, args.seed, known, power, kind, noise)
            path.write_text(json.dumps(metrics, indent=2) + "\n")
            print(json.dumps(metrics), flush=True)
    body = table(args.runs, args.results)
    if args.notes:
        notes = Path(args.notes)
        body += "\n\n" + (notes.read_text() if notes.exists() else args.notes)
    print(body)
    command = (
        "python -m benchmarks.quality.qm9_methods --runs "
        + " ".join(str(r) for r in args.runs)
        + f" --nfe {' '.join(map(str, args.nfe))} --n {args.n}"
        + f" --grid-power {' '.join(f'{g:g}' for g in args.grid_power)}"
        + (f" --sampler {' '.join(args.sampler)}" if args.sampler != ["auto"] else "")
        + (
            f" --noise-scale {' '.join(f'{c:g}' for c in args.noise_scale)}"
            if args.noise_scale != [1.0]
            else ""
        )
    )
    write_section("quality-qm9", "Quality: QM9, exact DSM vs local-DSM vs ISM", command, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
