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
import sys
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import ValidationError

from flows import lock
from flows.cli_options import CRYSTAL_DATASETS
from flows.console import UsageError
from models.config import CSPNetConfig, EGNNConfig
from pipeline.losses import LossConfig
from pipeline.molecule_recipe import MoleculeRecipeConfig, ProcessConfig
from pipeline.train import RESUMABLE, TrainConfig, TrainResult, train


@flow(name="train", log_prints=True)
def train_flow(config: TrainConfig, out: str, resume: bool = False) -> dict:
    """Train into ``out`` (holding its lock, :mod:`flows.lock`) and publish a summary artifact;
    returns the result as a dict."""
    with lock.owned(out):
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
    loss = LossConfig(
        kind=args.loss,
        mode=args.mode,
        step=args.step,
        budget=args.budget,
        sim_mode=args.sim_mode,
        sim_budget=args.sim_budget,
        time_power=args.time_power,
        # The output weight (1 / c_out^2, about 1e5 at t -> 1) suits exact DSM only: the local
        # target's noise does not vanish there, and local-DSM's loss started at 5e4 with it.
        weight="output"
        if args.preconditioning != "sigma" and args.loss == "exact-dsm"
        else LossConfig().weight,
    )
    drift = "linear" if args.loss == "exact-dsm" else args.drift
    if args.dataset in CRYSTAL_DATASETS:
        from pipeline.crystal_recipe import CrystalRecipeConfig, PartWeights, fit_to_data
        from pipeline.datasets import load_dataset
        from pipeline.lattice import LatticePrior

        if args.preconditioning != "sigma":
            raise SystemExit(
                f"ldsm train: --preconditioning {args.preconditioning} is for molecules only"
            )

        base = CrystalRecipeConfig()
        model = CSPNetConfig(
            **{
                **base.model.model_dump(),
                "hidden": args.hidden,
                "layers": args.layers,
                "distance_features": args.distance_features,
            }
        )
        process = base.process.model_copy(update={"drift": drift})
        config = base.model_copy(
            update={
                "model": model,
                "loss": loss,
                "process": process,
                "types": "given" if args.csp else "diffuse",
                "part_weights": PartWeights(types=args.type_weight),
                "lattice": LatticePrior(symmetric=args.lattice == "symmetric"),
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
        model=model,
        loss=loss,
        process=ProcessConfig(drift=drift),
        preconditioning=args.preconditioning,
    ).model_dump(mode="json")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The training config of the command line (``--recipe`` or the single options)."""
    return TrainConfig(
        recipe=recipe_from_args(args),
        dataset=args.dataset,
        dataset_path=args.path,
        split=args.split,
        val_split=args.val_split,
        limit=args.limit,
        steps=args.steps if args.steps is not None else TrainConfig().steps,
        batch_size=args.batch_size,
        accumulate=args.accumulate,
        lr=args.lr,
        warmup=args.warmup,
        decay_start=args.decay_start,
        ema_decay=args.ema,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        val_every=args.val_every,
        max_minutes=args.max_minutes,
        threads=args.threads,
        init_from=args.init_from,
    )


# Options that are not part of the training config.
NOT_CONFIG = {"out", "resume", "debug", "command", "explicit", "run"}


def _flat(value, prefix: str = "") -> dict:
    """``{"a.b": leaf}`` of nested dicts."""
    if not isinstance(value, dict):
        return {prefix: value}
    out = {}
    for key, item in value.items():
        out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def resume_conflicts(args: argparse.Namespace, saved: TrainConfig, defaults) -> list[str]:
    """The options given with ``--resume`` that contradict the run's own config ``saved``.

    An option's effect is found by building the config with and without it (every other option
    at its default, ``defaults`` a namespace of the parser's defaults); the fields it sets must
    equal the run's. ``--hidden 48`` on a width-32 run gives ``--hidden 48: the run has
    recipe.model.hidden = 32``.
    """
    base = _flat(config_from_args(defaults).model_dump(mode="json"))
    run = _flat(saved.model_dump(mode="json"))
    conflicts = []
    for dest in sorted(args.explicit - NOT_CONFIG - RESUMABLE):
        alone = argparse.Namespace(**{**vars(defaults), dest: getattr(args, dest)})
        changed = _flat(config_from_args(alone).model_dump(mode="json"))
        differs = [k for k, v in changed.items() if base.get(k) != v or k not in base]
        wrong = [k for k in differs if run.get(k) != changed[k]]
        if wrong:
            option = "--" + dest.replace("_", "-")
            shown = ", ".join(f"{k} = {run.get(k)!r}" for k in wrong[:3])
            conflicts.append(f"{option} {getattr(args, dest)}: the run has {shown}")
    return conflicts


def resumed_config(args: argparse.Namespace, defaults: argparse.Namespace) -> TrainConfig:
    """The run's own config with the resumable options the user gave; refuses contradictions
    and an unreadable ``state.pt`` with :class:`UsageError`."""
    out = Path(args.out)
    config_file, state = out / "config.json", out / "checkpoints" / "state.pt"
    if not state.exists():
        raise UsageError(f"--resume: {state} does not exist (nothing to resume in {out})")
    check_state(state)
    try:
        saved = TrainConfig.model_validate_json(config_file.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"--resume: {config_file} is not a readable training config") from err
    conflicts = resume_conflicts(args, saved, defaults)
    if conflicts:
        raise UsageError(
            "--resume keeps the run's own settings; "
            + "; ".join(conflicts)
            + " (drop the option, or train into a new --out)"
        )
    # Only what the user gave: a default (--checkpoint-every 100) must not replace the run's own.
    update = {k: getattr(args, k) for k in RESUMABLE if k in args.explicit}
    try:
        return TrainConfig.model_validate({**saved.model_dump(), **update})
    except ValidationError as err:  # a cool-down that starts at or after the last step
        raise UsageError(f"--resume: {err.errors()[0]['msg']}") from err


def check_state(path: Path) -> None:
    """Refuse an empty, truncated or unsafe ``state.pt`` with one line naming it."""
    import torch

    if path.stat().st_size == 0:
        raise UsageError(
            f"{path}: empty file (a run killed while saving?); delete it to start over"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or unsafe files
        raise UsageError(
            f"{path}: not a readable training state (corrupt, truncated or not written by "
            f"ldsm train: {type(err).__name__})"
        ) from err
    missing = {"model", "ema", "optimizer", "step"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise UsageError(f"{path}: not a training state (missing {sorted(missing)})")


def saved_on_stop(args: argparse.Namespace) -> str:
    """What an interrupted ``ldsm train`` leaves behind (one line)."""
    state = Path(args.out) / "checkpoints" / "state.pt"
    if state.exists():
        return f"the last checkpoint is {state}; continue with --resume"
    return "no checkpoint was written yet"


def _config(args: argparse.Namespace) -> TrainConfig:
    from flows.cli import build_parser

    out = Path(args.out)
    if args.resume:
        return resumed_config(args, build_parser().parse_args(["train", "--out", args.out]))
    if (out / "checkpoints" / "state.pt").exists():
        raise UsageError(f"--out {out} holds a training run: add --resume, or choose another --out")
    return config_from_args(args)


def check(args: argparse.Namespace) -> None:
    """``ldsm train``'s checks before the flow: a resumable run, no contradicting options."""
    _config(args)


def run(args: argparse.Namespace) -> int:
    """``ldsm train``: trains (under torchrun: on every process) and prints the summary."""
    out = Path(args.out)
    config = _config(args)
    if int(os.environ.get("RANK", "0")) == 0:
        summary = train_flow(config, str(out), resume=args.resume)
    else:
        summary = _summary(train(config, out, resume=args.resume, progress=False))
    print(json.dumps(summary, indent=2))
    if summary["status"] == "interrupted":
        print(f"ldsm train: stopped at step {summary['step']}; saved {summary['checkpoint']} "
              f"and its state.pt; continue with --resume", file=sys.stderr)  # fmt: skip
        return 130
    return 0
