"""The ``train`` flow: fit a score network with local-DSM (default), exact DSM or ISM.

``ldsm train --out RUN [--dataset qm9] [--loss local-dsm] [--drift physical] [--steps N] [--resume]``
runs :func:`pipeline.train.train` inside a Prefect flow (the run's metrics table and checkpoint
become artifacts). Under ``torchrun`` it trains with DistributedDataParallel on every process::

    torchrun --nproc_per_node 2 -m flows.cli train --out runs/ddp --steps 1000

Only rank 0 talks to Prefect; the other ranks run the same loop without it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from models.config import CSPNetConfig, EGNNConfig
from pipeline.recipes import LossConfig, MoleculeRecipeConfig, ProcessConfig
from pipeline.train import TrainConfig, TrainResult, train

CRYSTAL_DATASETS = {"perov-5", "carbon-24", "mp-20"}


@flow(name="train", log_prints=True)
def train_flow(config: TrainConfig, out: str, resume: bool = False) -> dict:
    """Train into ``out`` and publish a summary artifact; returns the result as a dict."""
    result = train(config, out, resume=resume)
    summary = _summary(result)
    create_markdown_artifact(
        key="train-summary",
        markdown="\n".join(f"- **{k}**: {v}" for k, v in summary.items()),
        description=f"training run {out}",
    )
    return summary


def _summary(result: TrainResult) -> dict:
    return {
        "status": result.status,
        "step": result.step,
        "skipped": result.skipped,
        "seconds": round(result.seconds, 1),
        "cpu_seconds": round(result.cpu_seconds, 1),
        "loss": result.loss,
        "checkpoint": str(result.checkpoint),
    }


def recipe_from_args(args: argparse.Namespace) -> dict:
    """A recipe config from the command line (``--recipe FILE`` wins over the single options)."""
    if args.recipe:
        return json.loads(Path(args.recipe).read_text())
    loss = LossConfig(kind=args.loss, mode=args.mode, step=args.step, budget=args.budget)
    drift = "linear" if args.loss == "exact-dsm" else args.drift
    if args.dataset in CRYSTAL_DATASETS:
        from pipeline.crystal_recipe import CrystalRecipeConfig, PartWeights, fit_to_data
        from pipeline.datasets import load_dataset

        base = CrystalRecipeConfig()
        model = CSPNetConfig(
            **{**base.model.model_dump(), "hidden": args.hidden, "layers": args.layers}
        )
        process = base.process.model_copy(update={"drift": drift})
        config = base.model_copy(
            update={
                "model": model,
                "loss": loss,
                "process": process,
                "types": "given" if args.csp else "diffuse",
                "part_weights": PartWeights(types=args.type_weight),
            }
        )
        # Elements and lattice prior from the training split: a checkpoint never generates an
        # element its data lacked, and its prior cells have the data's density.
        dataset = load_dataset(args.dataset, args.path)
        if args.split in dataset.splits:  # else the training itself names the missing split
            train = dataset.split_set(args.split)[: args.limit].to_data_list()
            config = fit_to_data(config, train)
        return config.model_dump(mode="json")
    model = EGNNConfig(hidden=args.hidden, layers=args.layers)
    return MoleculeRecipeConfig(
        model=model, loss=loss, process=ProcessConfig(drift=drift)
    ).model_dump(mode="json")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        recipe=recipe_from_args(args),
        dataset=args.dataset,
        dataset_path=args.path,
        split=args.split,
        val_split=args.val_split,
        limit=args.limit,
        steps=args.steps or TrainConfig().steps,
        batch_size=args.batch_size,
        accumulate=args.accumulate,
        lr=args.lr,
        warmup=args.warmup,
        ema_decay=args.ema,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        val_every=args.val_every,
        max_minutes=args.max_minutes,
        threads=args.threads,
    )


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """The training options, shared with ``ldsm design --train``."""
    d = TrainConfig()
    g = parser.add_argument_group("training")
    g.add_argument("--dataset", default=d.dataset, help="data set card name or a path")
    g.add_argument("--path", default=None, help="local source file or folder of the data set")
    g.add_argument(
        "--split",
        default=d.split,
        help="split to train on (the shared Perov-5 and Carbon-24 copies have val and test only:"
        " --split val --val-split test)",
    )
    g.add_argument(
        "--val-split", default=d.val_split, help="split for the validation loss (skipped if absent)"
    )
    g.add_argument("--limit", type=int, default=None, help="train on the first N structures only")
    g.add_argument("--loss", choices=["local-dsm", "exact-dsm", "ism"], default="local-dsm")
    g.add_argument(
        "--drift",
        choices=["physical", "linear"],
        default="physical",
        help="forward drift on positions (exact-dsm implies linear)",
    )
    g.add_argument(
        "--mode",
        choices=["expm", "taylor2", "euler"],
        default="expm",
        help="local-DSM transition moments",
    )
    g.add_argument(
        "--step",
        choices=["fraction", "budget"],
        default=LossConfig().step,
        help="local-DSM step rule D(t)",
    )
    g.add_argument(
        "--budget",
        type=float,
        default=LossConfig().budget,
        help="local-DSM step: int_s^t beta (the cap of the fraction rule)",
    )
    g.add_argument(
        "--csp",
        action="store_true",
        help="crystals: structure prediction, types given (not diffused) as DiffCSP's CSP models",
    )
    g.add_argument(
        "--type-weight",
        type=float,
        default=20.0,
        help="crystals: weight of the type loss against 1 for lattice and coordinates (DiffCSP: 20)",
    )
    g.add_argument("--hidden", type=int, default=64, help="network width")
    g.add_argument("--layers", type=int, default=4, help="network depth")
    g.add_argument("--recipe", default=None, help="a recipe JSON file (overrides the above)")
    g.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"optimiser steps (default {d.steps}; with --resume: the run's own)",
    )
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch")
    g.add_argument(
        "--accumulate",
        type=int,
        default=d.accumulate,
        help="gradient-accumulation shards per process",
    )
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--warmup", type=int, default=d.warmup)
    g.add_argument("--ema", type=float, default=d.ema_decay, help="EMA decay of the saved weights")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    g.add_argument("--val-every", type=int, default=d.val_every, help="0 disables")
    g.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="training budget in CPU minutes of the process",
    )
    g.add_argument("--threads", type=int, default=None, help="torch threads per process")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a score network (local-DSM, exact DSM or ISM)",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "example: ldsm train --out runs/qm9 --steps 5000 --max-minutes 30\n"
            "         ldsm train --out runs/qm9 --resume      (after Ctrl-C or a kill)\n"
            "         ldsm train --dataset perov-5 --split val --val-split test --hidden 128 \\\n"
            "             --loss local-dsm --drift physical --out runs/perov\n"
            "         torchrun --nproc_per_node 2 -m flows.cli train --out runs/ddp"
        ),
    )
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_training_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.resume:
        # The run's own config; only the length and the time budget may change on resume.
        config = TrainConfig.model_validate_json((out / "config.json").read_text())
        update = {"steps": args.steps, "max_minutes": args.max_minutes}
        config = config.model_copy(update={k: v for k, v in update.items() if v is not None})
    else:
        config = config_from_args(args)
    if int(os.environ.get("RANK", "0")) == 0:
        summary = train_flow(config, str(out), resume=args.resume)
    else:
        summary = _summary(train(config, out, resume=args.resume, progress=False))
    print(json.dumps(summary, indent=2))
    return 0 if summary["status"] != "interrupted" else 130
