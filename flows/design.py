"""The ``design`` flow: ingest -> train (or load a checkpoint) -> generate -> screen -> report.

``ldsm design`` with no arguments loads the QM9 checkpoint that ships in ``models/weights``,
generates molecules, screens them and writes one run directory::

    RUN/config.json        the DesignConfig
    RUN/train/             the training run (``--train`` only: metrics.csv, tb/, checkpoints/)
    RUN/samples/           samples.sdf + samples.xyz (molecules) or samples.cif + samples.extxyz
    RUN/screen/            screen.csv, passing structures, the screen's own report
    RUN/relaxed/           --relax chgnet (crystals): relaxed samples.cif, relax.csv (CHGNet
                           energy per atom before and after), and their screen in screen/;
                           --relax xtb (molecules): relaxed samples.sdf, relax.csv (GFN2-xTB
                           energy before and after, RMSD, HOMO-LUMO gap, dipole), screen/
    RUN/metrics.json       the screen's metrics (keys of pipeline.metrics) plus generation figures;
                           with --relax, "relaxed" holds the relaxed structures' metrics
    RUN/report.md          loss curve, bond lengths, atoms per structure, density, molecule grid,
                           the screen's top candidates (--rank-by score, --filter counts)

Re-running a killed flow with the same ``--out`` reuses what finished: a finished training run is
loaded (an unfinished one resumes from its checkpoint), and the generation and screening tasks
keep their finished chunks, keyed by their inputs, as data in ``RUN/samples/.chunks`` and
``RUN/screen/.chunks`` (``flows.persist``).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from flows import lock
from flows.cli_options import CRYSTAL_DATASETS, runner_options
from flows.cli_sample import sampler_config
from flows.cli_train import add_training_options
from flows.console import UsageError
from flows.generate import (
    WEIGHTS,
    check_checkpoint,
    check_num_atoms,
    check_sampler,
    run_generate,
    shipped_checkpoint,
)
from flows.persist import chunk_count
from flows.screen import ScreenConfig, run_screen
from flows.train import config_from_args as train_config_from_args
from flows.train import train_flow
from pipeline import report
from pipeline.crystal_checks import COV_CUTOFFS
from pipeline.datasets import load_dataset
from pipeline.generate import GenerateConfig, NumAtoms, load_cached
from pipeline.io import read_structures, write_structures
from pipeline.metrics import CRYSTAL_KEYS
from pipeline.molecule_3d_checks import POSEBUSTERS_CONFORMERS
from pipeline.ranking import checked_filters, checked_rank_by, needed_options
from pipeline.report_numbers import read_screen_rows
from pipeline.samplers import SamplerConfig
from pipeline.structures import is_crystal
from pipeline.train import TrainConfig

DEFAULT_CHECKPOINT = WEIGHTS / "qm9_egnn.pt"


class DesignConfig(BaseModel):
    """One design run. ``train`` set: train with it first; else sample from ``checkpoint``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out: str = "runs/design"  # strftime placeholders allowed: runs/nightly/%Y-%m-%d
    checkpoint: str = str(DEFAULT_CHECKPOINT)
    train: TrainConfig | None = None
    n: PositiveInt = 200
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    num_atoms: NumAtoms | None = None  # a size, or a range (low, high) of the histogram's
    seed: int = 0
    dataset_path: str | None = None  # source of the reference data set (as --path of ingest)
    reference_size: PositiveInt = 1000  # reference structures (test split) for plots / coverage
    posebusters: bool = True
    posebusters_conformers: int = Field(POSEBUSTERS_CONFORMERS, ge=1)  # the screen's ensemble
    # crystals: CHGNet relaxation; molecules: GFN2-xTB relaxation; the relaxed set is screened too
    relax: Literal["none", "chgnet", "xtb"] = "none"
    relax_steps: PositiveInt | None = None  # at most per structure; None: 100 (FIRE), 200 (BFGS)
    rank_by: str | None = None  # the screen's --rank-by (pipeline.ranking), highest first
    filters: tuple[str, ...] = ()  # the screen's --filter thresholds, in order

    _rank_by = field_validator("rank_by")(checked_rank_by)
    _filters = field_validator("filters")(lambda texts: tuple(checked_filters(texts)))

    @model_validator(mode="after")
    def _screened_columns(self) -> DesignConfig:
        """The design's screens run neither ``--xtb`` nor ``--chgnet`` (``relax`` writes its own
        numbers to relaxed/relax.csv): a score or filter on their columns is refused."""
        for name, option in needed_options(self.rank_by, self.filters).items():
            raise ValueError(
                f"{name} is computed by ldsm screen --{option}, which a design run does not run"
            )
        return self

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
    crystal = bool(reference) and is_crystal(reference[0])
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


RELAX_STEPS = {"chgnet": 100, "xtb": 200}
RELAXED_KIND = {"chgnet": "crystals", "xtb": "molecules"}


@task(name="relax")
def relax_task(samples: str, folder: str, method: str, steps: int) -> dict:
    """Relax the generated crystals with CHGNet (``method`` "chgnet") or the molecules with
    GFN2-xTB ("xtb") into ``folder``; returns the relaxation summary."""
    from pipeline import relax

    structures = read_structures(samples, min_distance=0.0).records
    if method == "chgnet":
        crystals = [d for d in structures if is_crystal(d)]
        return relax.write_relaxed(relax.relax_crystals(crystals, steps=steps), folder)
    molecules = [d for d in structures if not is_crystal(d)]
    results = relax.relax_molecules(molecules, steps=steps, log=print)
    return relax.write_relaxed_molecules(results, folder)


@flow(name="design", log_prints=True)
def design(config: DesignConfig | None = None) -> dict:
    """Run the whole design pipeline into ``config.out`` (holding its lock, :mod:`flows.lock`);
    returns the metrics dict."""
    config = config or DesignConfig()
    run = Path(time.strftime(config.out))  # "runs/nightly/%Y-%m-%d": one folder per scheduled day
    with lock.owned(run):
        return _design(config, run)


def _design(config: DesignConfig, run: Path) -> dict:
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
    dataset_path = config.train.dataset_path if config.train is not None else config.dataset_path
    refs = reference_task(
        trained.info.get("dataset", "qm9"), dataset_path, str(run), config.reference_size
    )

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
        posebusters_conformers=config.posebusters_conformers,
        rank_by=config.rank_by,
        filters=list(config.filters),
        workers=config.workers,
        dask_address=config.dask_address,
    )
    metrics = {**run_screen(screen_config), "generation": generation}
    kind = RELAXED_KIND.get(config.relax)
    if kind and metrics[kind]["n"]:
        steps = config.relax_steps or RELAX_STEPS[config.relax]
        relaxed = relax_task(generation["files"][0], str(run / "relaxed"), config.relax, steps)
        relaxed_screen = screen_config.model_copy(
            update={"input": relaxed["files"][0], "out": str(run / "relaxed" / "screen")}
        )
        metrics["relaxed"] = {kind: run_screen(relaxed_screen)[kind], config.relax: relaxed}
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
        screen_rows=read_screen_rows(run / "screen" / "screen.csv"),
    )
    # The UI cannot reach the plots beside report.md: name their files instead.
    markdown = re.sub(
        r"!\[([^\]]*)\]\(([^)]+)\)", lambda m: f"*{m[1]}: {run / m[2]}*", path.read_text()
    )
    create_markdown_artifact(
        markdown=markdown, key="design-report", description=f"Design run {run}"
    )
    print(
        f"design run {run}: {len(generated)} structures, report {path}, "
        f"{time.perf_counter() - started:.0f} s"
    )
    return metrics


def _training_only(args: argparse.Namespace) -> list[str]:
    """Training options given without ``--train`` (they would be ignored)."""
    group = argparse.ArgumentParser(add_help=False)
    add_training_options(group)
    shared = {"dataset", "path", "seed"}  # also choose the model, the reference and the samples
    dests = {a.dest for a in group._actions} - shared
    return sorted("--" + d.replace("_", "-") for d in dests & getattr(args, "explicit", set()))


def config_from_args(args: argparse.Namespace) -> DesignConfig:
    """The design config of the command line; contradictions raise :class:`UsageError`."""
    explicit = getattr(args, "explicit", set())
    train = None
    if args.train:
        if args.checkpoint:
            raise UsageError(
                "--checkpoint and --train contradict each other: --train trains the model"
            )
        train = train_config_from_args(args)
        checkpoint = str(DEFAULT_CHECKPOINT)
    else:
        ignored = _training_only(args)
        if ignored:
            raise UsageError(f"{', '.join(ignored)}: training options, only used with --train")
        if args.checkpoint:
            checkpoint = args.checkpoint
        elif "dataset" in explicit:
            checkpoint = str(shipped_checkpoint(args.dataset))
        else:
            checkpoint = str(DEFAULT_CHECKPOINT)
    return DesignConfig(
        out=args.out,
        checkpoint=checkpoint,
        train=train,
        dataset_path=args.path,
        n=args.n,
        sampler=sampler_config(args),
        num_atoms=args.num_atoms,
        seed=args.seed,
        reference_size=args.reference_size,
        posebusters=not args.no_posebusters,
        posebusters_conformers=args.posebusters_conformers,
        relax=args.relax,
        rank_by=args.rank_by,
        filters=tuple(args.filter or ()),
        **runner_options(args),
    )


def check_design(config: DesignConfig, args: argparse.Namespace) -> None:
    """Refuse a checkpoint that cannot be loaded, or one trained on another data set than an
    explicit ``--dataset`` (a crystal model with ``--dataset qm9`` would design crystals and
    report molecule metrics, all null), or a ``--relax`` method for the other kind of structure."""
    relaxes = {"chgnet": "crystal", "xtb": "molecule"}.get(config.relax)
    if config.train is not None:
        dataset = config.train.dataset
        kind = (
            "crystal" if dataset in CRYSTAL_DATASETS else "molecule" if dataset == "qm9" else None
        )
        if relaxes and kind not in (None, relaxes):  # a path: its kind is known once read
            raise UsageError(
                f"--relax {config.relax} relaxes {relaxes}s; --dataset {dataset} "
                f"trains a {kind} model"
            )
        return
    trained = check_checkpoint(config.checkpoint)
    if relaxes and trained.recipe.config.kind != relaxes:
        raise UsageError(
            f"--relax {config.relax} relaxes {relaxes}s; --checkpoint {config.checkpoint} is a "
            f"{trained.recipe.config.kind} model"
        )
    check_sampler(config.sampler.kind, trained, config.sampler.corrector)
    check_num_atoms(config.num_atoms, trained)
    trained_on = trained.info.get("dataset", "?")
    if "dataset" in getattr(args, "explicit", set()) and trained_on != args.dataset:
        raise UsageError(
            f"--dataset {args.dataset} contradicts --checkpoint {config.checkpoint}: "
            f"a {trained.recipe.config.kind} model trained on {trained_on}"
        )


def saved_on_stop(args: argparse.Namespace) -> str:
    """What an interrupted ``ldsm design`` leaves behind (one line)."""
    run = Path(time.strftime(args.out))
    state = run / "train" / "checkpoints" / "state.pt"
    kept = [f"the training checkpoint {state}"] if state.exists() else []
    chunks = sum(chunk_count(run / part) for part in ("samples", "screen"))
    kept.append(f"{chunks} finished chunks")
    return f"kept in {run}: {', '.join(kept)}; run the same command again to resume"


def check(args: argparse.Namespace) -> None:
    """``ldsm design``'s checks before the flow: options agree, the checkpoint loads."""
    check_design(config_from_args(args), args)


MOLECULE_SUMMARY = [
    "atom_stability",
    "molecule_stability",
    "validity",
    "uniqueness",
    "novelty",
    "posebusters_pass",
]
CRYSTAL_SUMMARY = CRYSTAL_KEYS[1:]  # every crystal metric but the count, which leads


def console_summary(out: str, metrics: dict) -> dict:
    """The headline metrics of a run: the molecule ones, or the crystal ones for crystal runs;
    with ``--relax``, the same metrics of the relaxed set under ``relaxed``."""
    crystals = (metrics.get("crystals") or {}).get("n")
    kind, keys = ("crystals", CRYSTAL_SUMMARY) if crystals else ("molecules", MOLECULE_SUMMARY)
    part = metrics.get(kind) or {}
    summary = {"out": out, "kind": kind, "n": part.get("n"), **{k: part.get(k) for k in keys}}
    relaxed = (metrics.get("relaxed") or {}).get(kind)
    if relaxed:
        summary["relaxed"] = {k: relaxed.get(k) for k in ["n", *keys]}
    return summary


def run(args: argparse.Namespace) -> int:
    """``ldsm design``: runs :func:`design` and prints the headline metrics."""
    metrics = design(config_from_args(args))
    print(json.dumps(console_summary(args.out, metrics), indent=2))
    return 0
