"""The ``design`` flow: ingest -> train (or load a checkpoint) -> generate -> screen -> report.

``ldsm design`` with no arguments loads the QM9 checkpoint that ships in ``models/weights``,
generates molecules, screens them and writes one run directory::

    RUN/config.json        the DesignConfig
    RUN/train/             the training run (``--train`` only: metrics.csv, tb/, checkpoints/)
    RUN/samples/           samples.sdf + samples.xyz (molecules) or samples.cif + samples.extxyz
    RUN/screen/            screen.csv, passing structures, the screen's own report
    RUN/relaxed/           --relax chgnet (crystals): relaxed samples.cif, relax.csv (CHGNet
                           energy per atom before and after), and their screen in screen/
    RUN/metrics.json       the screen's metrics (keys of pipeline.metrics) plus generation figures;
                           with --relax, "relaxed" holds the relaxed crystals' metrics
    RUN/report.md          loss curve, bond lengths, atoms per structure, density, molecule grid

Re-running a killed flow with the same ``--out`` reuses what finished: a finished training run is
loaded (an unfinished one resumes from its checkpoint), and the generation and screening tasks
persist their results keyed by their inputs (Prefect result persistence in ``RUN/.prefect``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Literal

from prefect import flow, task
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from flows import runners
from flows.generate import run_generate
from flows.screen import ScreenConfig, run_screen
from flows.train import add_training_options, train_flow
from flows.train import config_from_args as train_config_from_args
from pipeline import report
from pipeline.crystal_checks import COV_CUTOFFS
from pipeline.datasets import load_dataset
from pipeline.generate import GenerateConfig, load_cached
from pipeline.io import read_structures, write_structures
from pipeline.recipes import SamplerConfig
from pipeline.train import TrainConfig

WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "weights"
DEFAULT_CHECKPOINT = WEIGHTS / "qm9_egnn.pt"


class DesignConfig(BaseModel):
    """One design run. ``train`` set: train with it first; else sample from ``checkpoint``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out: str = "runs/design"  # strftime placeholders allowed: runs/nightly/%Y-%m-%d
    checkpoint: str = str(DEFAULT_CHECKPOINT)
    train: TrainConfig | None = None
    n: PositiveInt = 200
    sampler: SamplerConfig = Field(default_factory=lambda: SamplerConfig(nfe=100))
    num_atoms: PositiveInt | None = None
    seed: int = 0
    reference_size: PositiveInt = 1000  # reference structures (test split) for plots / coverage
    posebusters: bool = True
    relax: Literal["none", "chgnet"] = "none"  # crystals: CHGNet relaxation, screened again
    relax_steps: PositiveInt = 100  # FIRE steps at most per crystal
    workers: int = 0
    dask_address: str | None = None


@task(name="reference", retries=2, retry_delay_seconds=1)
def reference_task(dataset: str, path: str | None, run: str, size: int) -> dict:
    """Write the reference (test) split sample and the training SMILES; returns their paths."""
    data = load_dataset(dataset, path)
    split = "test" if "test" in data.splits else next(iter(data.splits))
    reference = data.split_set(split)[:size].to_data_list()
    folder = Path(run) / "reference"
    folder.mkdir(parents=True, exist_ok=True)
    crystal = reference and reference[0].get("lattice") is not None
    ref_path = folder / ("reference.cif" if crystal else "reference.sdf")

    write_structures(reference, ref_path)
    smiles_path = None
    train_split = data.splits.get("train")
    if not crystal and train_split is not None:
        smiles = data.structures.strings.get("smiles") or []
        known = sorted({smiles[i] for i in train_split.tolist() if smiles and smiles[i]})
        smiles_path = folder / "train_smiles.txt"
        smiles_path.write_text("\n".join(known) + "\n")
    return {
        "reference": str(ref_path),
        "train_smiles": None if smiles_path is None else str(smiles_path),
    }


@task(name="relax")
def relax_task(samples: str, folder: str, steps: int) -> dict:
    """Relax the generated crystals with CHGNet into ``folder``; returns the relaxation summary."""
    from pipeline.relax import relax_crystals, write_relaxed

    crystals = [
        d
        for d in read_structures(samples, min_distance=0.0).records
        if d.get("lattice") is not None
    ]
    return write_relaxed(relax_crystals(crystals, steps=steps), folder)


@flow(name="design", log_prints=True)
def design(config: DesignConfig | None = None) -> dict:
    """Run the whole design pipeline into ``config.out``; returns the metrics dict."""
    config = config or DesignConfig()
    run = Path(time.strftime(config.out))  # "runs/nightly/%Y-%m-%d": one folder per scheduled day
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
    started = time.perf_counter()

    checkpoint, metrics_csv = config.checkpoint, None
    if config.train is not None:
        train_dir = run / "train"
        resume = (train_dir / "checkpoints" / "state.pt").exists()
        summary = train_flow(config.train, str(train_dir), resume=resume)
        if summary["status"] == "interrupted":
            raise RuntimeError(f"training in {train_dir} was interrupted; re-run to resume")
        checkpoint, metrics_csv = summary["checkpoint"], train_dir / "metrics.csv"
    trained = load_cached(checkpoint)  # the generation tasks reuse this load
    refs = reference_task(trained.info.get("dataset", "qm9"), None, str(run), config.reference_size)

    gen_config = GenerateConfig(
        n=config.n, sampler=config.sampler, num_atoms=config.num_atoms, seed=config.seed
    )
    samples = run / "samples"
    generation = run_generate(
        str(checkpoint), gen_config, str(samples), config.workers, config.dask_address
    )
    dataset = trained.info.get("dataset", "qm9").replace("-", "_")
    screen_config = ScreenConfig(
        input=generation["files"][0],  # samples.sdf or samples.cif
        out=str(run / "screen"),
        reference=refs["reference"],
        train_smiles=refs["train_smiles"],
        # The data set is known here: the screen's guess from the reference path matched
        # "mp" in "/tmp/..." and scored a Perov-5 run with MP-20's coverage cut-offs.
        cov_cutoffs=dataset if dataset in COV_CUTOFFS else None,
        posebusters=config.posebusters,
        workers=config.workers,
        dask_address=config.dask_address,
    )
    metrics = {**run_screen(screen_config), "generation": generation}
    if config.relax == "chgnet" and metrics["crystals"]["n"]:
        relaxed = relax_task(generation["files"][0], str(run / "relaxed"), config.relax_steps)
        relaxed_screen = screen_config.model_copy(
            update={"input": relaxed["files"][0], "out": str(run / "relaxed" / "screen")}
        )
        metrics["relaxed"] = {"crystals": run_screen(relaxed_screen)["crystals"], "chgnet": relaxed}
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    # The file the screen read (SDF / CIF), so the report and metrics.json see the same samples.
    generated = read_structures(generation["files"][0], min_distance=0.0).records
    reference = read_structures(refs["reference"], min_distance=0.0).records
    path = report.design_report(
        run,
        generated,
        reference,
        metrics,
        metrics_csv,
        title=f"Design run {run.name}",
        n_generated=generation["n"],
    )
    print(
        f"design run {run}: {len(generated)} structures, report {path}, "
        f"{time.perf_counter() - started:.0f} s"
    )
    return metrics


def config_from_args(args: argparse.Namespace) -> DesignConfig:
    train = train_config_from_args(args) if args.train else None
    return DesignConfig(
        out=args.out,
        checkpoint=args.checkpoint,
        train=train,
        n=args.n,
        sampler=SamplerConfig(kind=args.sampler, nfe=args.nfe),
        num_atoms=args.num_atoms,
        seed=args.seed,
        reference_size=args.reference_size,
        posebusters=not args.no_posebusters,
        relax=args.relax,
        workers=args.workers,
        dask_address=args.dask_address,
    )


def add_design_options(parser: argparse.ArgumentParser) -> None:
    """The design options (shared with ``ldsm serve``)."""
    d = DesignConfig()
    parser.add_argument("--out", default=d.out, help="run directory (re-use it to resume)")
    parser.add_argument("--checkpoint", default=d.checkpoint, help="trained checkpoint (.pt)")
    parser.add_argument("--train", action="store_true", help="train first (training options below)")
    parser.add_argument("--n", type=int, default=d.n, help="structures to generate")
    parser.add_argument(
        "--sampler",
        choices=["sde", "ode"],
        default=d.sampler.kind,
        help="reverse SDE (Euler-Maruyama) or probability-flow ODE (Heun)",
    )
    parser.add_argument("--nfe", type=int, default=d.sampler.nfe, help="network evaluations")
    parser.add_argument(
        "--num-atoms",
        type=int,
        default=None,
        help="atoms per structure; None: drawn from the training histogram",
    )
    parser.add_argument(
        "--reference-size",
        type=int,
        default=d.reference_size,
        help="test-split structures to compare with (novelty, coverage, report plots)",
    )
    parser.add_argument("--no-posebusters", action="store_true", help="skip PoseBusters")
    parser.add_argument(
        "--relax",
        choices=["none", "chgnet"],
        default=d.relax,
        help="crystals: relax the samples with CHGNet, write them and screen them too",
    )
    runners.add_arguments(parser)
    add_training_options(parser)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "design",
        help="ingest -> train or load -> generate -> screen -> report",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "example: ldsm design                        (the shipped QM9 model, 200 molecules)\n"
            "         ldsm design --n 1000 --nfe 200 --out runs/big --workers 2\n"
            "         ldsm design --train --max-minutes 30 --out runs/fresh\n"
            "         ldsm design --train --dataset perov-5 --split val --val-split test \\\n"
            "             --hidden 128 --max-minutes 15 --out runs/perov"
        ),
    )
    add_design_options(parser)
    parser.set_defaults(run=run)


MOLECULE_SUMMARY = [
    "atom_stability",
    "molecule_stability",
    "validity",
    "uniqueness",
    "novelty",
    "posebusters_pass",
]
CRYSTAL_SUMMARY = [
    "structural_validity",
    "compositional_validity",
    "uniqueness",
    "novelty",
    "coverage_recall",
    "coverage_precision",
    "wdist_density",
    "wdist_num_elements",
]


def console_summary(out: str, metrics: dict) -> dict:
    """The headline metrics of a run: the molecule ones, or the crystal ones for crystal runs."""
    crystals = (metrics.get("crystals") or {}).get("n")
    kind, keys = ("crystals", CRYSTAL_SUMMARY) if crystals else ("molecules", MOLECULE_SUMMARY)
    part = metrics.get(kind) or {}
    summary = {"out": out, "kind": kind, "n": part.get("n"), **{k: part.get(k) for k in keys}}
    relaxed = (metrics.get("relaxed") or {}).get("crystals")
    if relaxed:
        summary["relaxed"] = {k: relaxed.get(k) for k in ["n", *keys]}
    return summary


def run(args: argparse.Namespace) -> int:
    metrics = design(config_from_args(args))
    print(json.dumps(console_summary(args.out, metrics), indent=2))
    return 0
