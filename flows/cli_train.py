"""The ``ldsm demo`` and ``ldsm train`` parsers and the training options (shared with ``design``
and ``serve``). The defaults written here are the configs' own (``tests/test_cli.py`` holds them
equal)."""

from __future__ import annotations

import argparse

from flows.cli_options import fraction, nonnegative_int, positive_float, positive_int

MODES = ("expm", "taylor2", "euler", "split")  # pipeline.transitions.MODES

# Defaults of the configs (tests/test_cli.py checks each against its config).
TRAIN = dict(
    dataset="qm9", split="train", val_split="val", steps=2000, batch_size=64, accumulate=1,
    lr=5e-4, warmup=200, ema=0.999, seed=0, checkpoint_every=100, val_every=500,
    loss="local-dsm", drift="physical", mode="expm", step="fraction", budget=0.5,
    sim_mode="euler", sim_budget=0.25,
    hidden=64, layers=4, time_power=1.0, preconditioning="sigma", type_weight=20.0,
    distance_features=32, lattice="symmetric",
)  # fmt: skip


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """The training options, shared by ``ldsm train``, ``ldsm design --train`` and ``serve``."""
    d = TRAIN
    g = parser.add_argument_group("training")
    g.add_argument("--dataset", default=d["dataset"], help="data set card name or a path")
    g.add_argument("--path", default=None, help="local source file or folder of the data set")
    g.add_argument(
        "--split",
        default=d["split"],
        help="split to train on (the shared Perov-5 and Carbon-24 copies have val and test only:"
        " --split val --val-split test)",
    )
    g.add_argument(
        "--val-split",
        default=d["val_split"],
        help="split for the validation loss (skipped if absent)",
    )
    g.add_argument(
        "--limit", type=positive_int, default=None, help="train on the first N structures only"
    )
    g.add_argument(
        "--loss",
        choices=["local-dsm", "exact-dsm", "ism"],
        default=d["loss"],
        help="score-matching loss",
    )
    g.add_argument(
        "--drift",
        choices=["physical", "linear"],
        default=d["drift"],
        help="forward drift on positions (exact-dsm implies linear)",
    )
    g.add_argument(
        "--mode",
        choices=MODES,
        default=d["mode"],
        help="local-DSM transition moments (split: the harmonic part exact, the rest frozen)",
    )
    g.add_argument(
        "--sim-mode",
        choices=MODES,
        default=d["sim_mode"],
        help="steps that simulate y_s from the data",
    )
    g.add_argument(
        "--sim-budget",
        type=positive_float,
        default=d["sim_budget"],
        help="int beta per step when simulating y_s (split steps stay accurate at 1)",
    )
    g.add_argument(
        "--step", choices=["fraction", "budget"], default=d["step"], help="local-DSM step rule D(t)"
    )
    g.add_argument(
        "--budget",
        type=positive_float,
        default=d["budget"],
        help="local-DSM step: int_s^t beta (the cap of the fraction rule)",
    )
    g.add_argument(
        "--csp",
        action="store_true",
        help="crystals: structure prediction, types given (not diffused) as DiffCSP's CSP models",
    )
    g.add_argument(
        "--type-weight",
        type=positive_float,
        default=d["type_weight"],
        help="crystals: weight of the type loss against 1 for lattice and coordinates (DiffCSP: 20)",
    )
    g.add_argument(
        "--distance-features",
        type=nonnegative_int,
        default=d["distance_features"],
        help="crystals: Gaussian radial basis functions of each CSPNet edge's minimum-image length "
        "(0: DiffCSP's features only; 32 gave +14 points of structural validity at equal CPU, "
        "BENCHMARKS quality-carbon-24 and quality-perov-5)",
    )
    g.add_argument(
        "--lattice",
        choices=["as-read", "symmetric"],
        default=d["lattice"],
        help="crystals: MatterGen's symmetric cells with symmetric lattice noise, or the cells as "
        "the data orient them (pipeline.lattice.LatticePrior; symmetric lifted Carbon-24 COV-R "
        "from 0.3 to 57.8 %%, BENCHMARKS quality-carbon-24)",
    )
    g.add_argument(
        "--time-power",
        type=positive_float,
        default=d["time_power"],
        help="training times t = u^power: > 1 trains more at low noise, where bonds are decided",
    )
    g.add_argument(
        "--preconditioning",
        choices=["sigma", "edm", "edm-stationary"],
        default=d["preconditioning"],
        help="molecule score network: noise prediction (sigma), Karras et al.'s EDM "
        "preconditioning with unit weight on the network output (edm), or edm with the "
        "physical drift's stationary score as its reference near t = 1 (edm-stationary)",
    )
    g.add_argument("--hidden", type=positive_int, default=d["hidden"], help="network width")
    g.add_argument("--layers", type=positive_int, default=d["layers"], help="network depth")
    g.add_argument(
        "--init-from",
        default=None,
        metavar="CHECKPOINT",
        help="start from a trained checkpoint of the same recipe (its loss, process and "
        "preconditioning may differ: a fine-tune or warm start): the same network's weights, or "
        "an EGNN grown function-preservingly to --hidden x --layers (None: a fresh network)",
    )
    g.add_argument("--recipe", default=None, help="a recipe JSON file (overrides the above)")
    g.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help=f"optimiser steps ({d['steps']}; with --resume: the run's own)",
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
        default=d["batch_size"],
        help="global batch (summed over processes and accumulation shards)",
    )
    g.add_argument(
        "--accumulate",
        type=positive_int,
        default=d["accumulate"],
        help="gradient-accumulation shards per process",
    )
    g.add_argument("--lr", type=positive_float, default=d["lr"], help="Adam learning rate")
    g.add_argument(
        "--warmup", type=nonnegative_int, default=d["warmup"], help="linear warm-up steps"
    )
    g.add_argument(
        "--decay-start",
        type=nonnegative_int,
        default=None,
        help="cool-down: from this step the learning rate falls linearly to 0 at --steps; with "
        "--resume it branches a cool-down off a run (None: constant after the warm-up)",
    )
    g.add_argument("--ema", type=fraction, default=d["ema"], help="EMA decay of the saved weights")
    g.add_argument("--seed", type=int, default=d["seed"], help="seed of data order and noise")
    g.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=d["checkpoint_every"],
        help="steps between checkpoints",
    )
    g.add_argument(
        "--val-every",
        type=nonnegative_int,
        default=d["val_every"],
        help="steps between validation losses (0 disables)",
    )
    g.add_argument(
        "--max-minutes",
        type=positive_float,
        default=None,
        help="training budget in CPU minutes of the process (None: no budget)",
    )
    g.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch threads per process (2 idle cores: 2 threads 8 %% faster per step than 1; "
        "beside one busy process 2.75x slower; BENCHMARKS threads)",
    )


def add_demo(sub) -> None:
    """The ``ldsm demo`` parser."""
    parser = sub.add_parser(
        "demo",
        help="train a small score network with local-DSM on a 2-D nonlinear process",
        description=(
            "Train an MLP with local-DSM under f = -1/2 beta(t) grad U, U = -log of a 2-D Gaussian "
            "mixture, on exact samples of exp(-U); the true score is -grad U at every t, so the "
            "relative score error is exact."
        ),
        epilog="example: ldsm demo --steps 800 --mode taylor2",
    )
    parser.add_argument("--mode", choices=MODES, default="expm", help="local-DSM transition mode")
    parser.add_argument("--steps", type=positive_int, default=800, help="optimiser steps")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="samples per step")
    parser.add_argument(
        "--budget", type=positive_float, default=0.2, help="rate budget int_s^t beta per step"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of samples and network")


def add_train(sub) -> None:
    """The ``ldsm train`` parser (``pipeline.train.TrainConfig``)."""
    parser = sub.add_parser(
        "train",
        help="train a score network (local-DSM, exact DSM or ISM)",
        description="Fit a score network with local-DSM (default), exact DSM or ISM.",
        epilog=(
            "example: ldsm train --out runs/qm9 --steps 5000 --max-minutes 30\n"
            "         ldsm train --out runs/qm9 --resume      (after Ctrl-C or a kill)\n"
            "         ldsm train --dataset perov-5 --split val --val-split test --hidden 128 \\\n"
            "             --loss local-dsm --drift physical --out runs/perov\n"
            "         torchrun --nproc_per_node 2 -m flows.cli train --out runs/ddp"
        ),
    )
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (only --steps, --decay-start, --max-minutes, "
        "--checkpoint-every and --threads may change)",
    )
    add_training_options(parser)
