"""Issue 13's quality curve: a long QM9 training run's quality against its CPU-time.

``--snapshot RUN`` copies the run's current EMA checkpoint (``RUN/checkpoints/last.pt`` and its
JSON, written atomically by the trainer while it runs) to ``SNAPSHOTS/step-NNNNNNN.pt``, with
the molecules seen so far (epochs are these over the training set, the sum of ``num_atoms``). Every
snapshot not yet scored is then sampled and scored exactly as the ablation harness scores a
configuration (:func:`benchmarks.quality.qm9_ablation.evaluate`: ``--n`` molecules at ``--nfe``,
EDM's stability and validity, uniqueness, novelty, the denoising error at small t), one JSON per
(snapshot, sampler, NFE, grid power) under ``--results``; ``--sampler``, ``--nfe`` and
``--grid-power`` take several values (every combination is scored). The table (step, epochs, CPU-hours, metrics) goes to BENCHMARKS.md
(``quality-curve``).

    python -m benchmarks.quality.qm9_curve --snapshot models/resume/qm9-flagship
    python -m benchmarks.quality.qm9_curve --sampler sde ancestral --grid-power 1 2 4
    python -m benchmarks.quality.qm9_curve --table-only
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from benchmarks._report import write_section
from benchmarks.quality.qm9_ablation import edm_validity, evaluate, pct
from benchmarks.quality.qm9_methods import train_smiles
from pipeline.samplers import SamplerConfig

RESULTS = Path(__file__).resolve().parent / "results" / "qm9_curve"


def snapshot(run: Path, folder: Path) -> Path:
    """Copy ``run``'s last checkpoint and its JSON to ``folder/step-NNNNNNN.pt`` (a cool-down
    branch, trained with ``--decay-start S``: ``step-NNNNNNN-decayS.pt``; a run grown from a
    checkpoint of step S with ``--init-from``: ``step-NNNNNNN-grownS-LxH.pt``, its step counted
    from S); returns it."""
    last = run / "checkpoints" / "last.pt"
    meta = last.with_suffix(".json")
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((run / "config.json").read_text())
    decay = config.get("decay_start")
    while True:  # the trainer may replace the pair between the two copies: retry until stable
        before = meta.read_text()
        info = json.loads(before)
        origin = info["run"].get("init_from") or {"step": 0}
        step = origin["step"] + info["run"]["step"]
        net = info["config"]
        grown = f"-grown{origin['step']}-{net['layers']}x{net['hidden']}" if origin["step"] else ""
        dest = folder / (
            f"step-{step:07d}" + (f"-decay{decay}" if decay is not None else "") + grown + ".pt"
        )
        shutil.copy2(last, dest)
        if meta.read_text() == before:
            info["run"]["molecules_seen"] = step * config["batch_size"] * config["accumulate"]
            info["run"]["decay_start"] = decay
            dest.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
            return dest


def result_name(checkpoint: Path, sampler: SamplerConfig) -> str:
    """``step-N-nfeK.json`` for the reverse SDE on the uniform grid (the first rows), else with
    the sampler and its grid power (and its noise scale where not 1)."""
    plain = sampler.kind == "sde" and sampler.grid_power == 1.0
    extra = "" if plain else f"-{sampler.kind}-grid{sampler.grid_power:g}"
    if sampler.noise_scale != 1.0:
        extra += f"-noise{sampler.noise_scale:g}"
    return f"{checkpoint.stem}-nfe{sampler.nfe}{extra}.json"


def lr_schedule(m: dict) -> str:
    """``constant``, or ``cool-down from S`` for a branch trained with ``--decay-start S``."""
    return "constant" if m.get("decay_start") is None else f"cool-down from {m['decay_start']:,}"


def network(m: dict) -> str:
    """``L x H`` of the row's EGNN, with the step it was grown at (``--init-from``)."""
    net = f"{m.get('layers', 4)} x {m.get('hidden', 64)}"
    return net + (f", grown at {m['grown_at']:,}" if m.get("grown_at") else "")


def row(m: dict) -> str:
    den = " / ".join(f"{v:.3f}" for v in m["denoising"].values()) or "n/a"
    return (
        f"| {m['step']} | {network(m)} | {lr_schedule(m)} | {m['epochs']:.1f} | {m['cpu_hours']:.2f} | "
        f"{m.get('sampler', 'sde')} | {m.get('grid_power', 1.0):g} | "
        f"{m.get('noise_scale', 1.0):g} | {m['nfe']} | {m['n']} | "
        f"{pct(m['atom_stability'])} | {pct(m['molecule_stability'])} | "
        f"{pct(edm_validity(m))} | {pct(m['validity_x_uniqueness'])} | {pct(m['novelty'])} | "
        f"{den} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snapshot", type=Path, help="a training run folder to snapshot now")
    parser.add_argument("--snapshots", type=Path, default=Path("runs/qm9-curve"))
    parser.add_argument("--nfe", nargs="+", type=int, default=[100])
    parser.add_argument(
        "--sampler", nargs="+", default=["sde"], choices=["sde", "ode", "ancestral", "split"]
    )
    parser.add_argument("--grid-power", nargs="+", type=float, default=[SamplerConfig().grid_power])
    parser.add_argument("--noise-scale", nargs="+", type=float, default=[1.0])
    parser.add_argument("--n", type=int, default=500, help="molecules per snapshot")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table-only", action="store_true", help="write the table and stop")
    parser.add_argument("--notes", default="", help="a Markdown paragraph placed under the table")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.results.mkdir(parents=True, exist_ok=True)
    if args.snapshot and not args.table_only:
        print(f"snapshot {snapshot(args.snapshot, args.snapshots)}", flush=True)
    pending = [] if args.table_only else sorted(args.snapshots.glob("step-*.pt"))
    known = None
    samplers = [
        SamplerConfig(kind=kind, nfe=nfe, grid_power=power, noise_scale=noise)
        for kind in args.sampler
        for nfe in args.nfe
        for power in args.grid_power
        for noise in args.noise_scale
    ]
    for checkpoint, sampler in ((c, s) for c in pending for s in samplers):
        path = args.results / result_name(checkpoint, sampler)
        if path.exists():
            continue
        meta = json.loads(checkpoint.with_suffix(".json").read_text())
        run, origin = meta["run"], meta["run"].get("init_from") or {"step": 0, "cpu_seconds": 0}
        known = known if known is not None else train_smiles()
        print(f"{checkpoint}: sampling {args.n} molecules, {sampler}", flush=True)
        metrics = evaluate(checkpoint, sampler, args.n, args.seed, known)
        metrics.update(
            step=origin["step"] + run["step"],
            layers=meta["config"]["layers"],
            hidden=meta["config"]["hidden"],
            grown_at=origin["step"] or None,
            cpu_hours=(origin["cpu_seconds"] + run["cpu_seconds"]) / 3600,
            epochs=run["molecules_seen"] / sum(run["num_atoms"].values()),
            decay_start=run.get("decay_start"),
        )
        path.write_text(json.dumps(metrics, indent=2) + "\n")
        print(json.dumps(metrics), flush=True)
    found = [json.loads(p.read_text()) for p in args.results.glob("step-*.json")]
    order = {"sde": 0, "ancestral": 1, "split": 2, "ode": 3}
    found.sort(
        key=lambda m: (
            m["step"],
            m.get("grown_at") or 0,
            m.get("layers", 4),
            m.get("decay_start") or 0,
            -m["nfe"],
            order[m["sampler"]],
            m.get("grid_power", 1.0),
            -m.get("noise_scale", 1.0),
        )
    )
    lines = [
        "| step | network | learning rate | epochs | CPU-h | sampler | grid | noise scale | NFE | n |"
        " atom stab. | mol. stab. | valid (EDM) | V x U | novel |"
        " denoising error at t = 0.01 / 0.03 / 0.1 / 0.3 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ] + [row(m) for m in found]
    body = "\n".join(lines) + (
        "\n\nThe flagship recipe (`edm-precond` of `quality-ablation`: EGNN 4 x 64, exact DSM on "
        "EDM's linear VP process, EDM preconditioning, output weight, batch 64, lr 5e-4, EMA 0.999,"
        " seed 0), trained by `ldsm train --threads 1` and resumed across sessions; each row is "
        "the EMA model at that step (`cool-down from S`: a branch resumed from the run's state at "
        "step S with `--decay-start S`, its learning rate falling linearly to 0 at the row's step; "
        "`grown at S`: a run started with `--init-from` on the flagship's EMA network at step S, "
        "grown function-preservingly to the row's network, its step and CPU-hours counted on from "
        "the flagship's), sampled by `sampler` (`sde`: the reverse SDE, Euler-Maruyama;"
        " `ancestral`: EDM's posterior steps; `ode`: Heun on the probability flow) on the time "
        "grid `t_end + (1 - t_end) u^grid`, the fresh noise of every step times `noise scale` "
        "(1: the learnt law, as the published rows sample). Issue 13's bar: atom stability >= 95, molecule "
        "stability >= 50, validity >= 85."
    )
    if args.notes:
        body += "\n\n" + args.notes
    print(body)
    write_section(
        "quality-curve",
        "Quality: the QM9 flagship against its training CPU-time",
        "python -m benchmarks.quality.qm9_curve --snapshot models/resume/qm9-flagship",
        body,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
