"""The ``ldsm generate``, ``ldsm design``, ``ldsm serve`` and ``ldsm server`` parsers and the
sampler options they share, with the one place that turns those options into a
``SamplerConfig`` (:func:`sampler_config`).
The defaults written here are the configs' own (``tests/test_cli.py`` holds them equal)."""

from __future__ import annotations

import argparse

from flows.cli_data import SCREEN
from flows.cli_options import (
    CRYSTAL_DATASETS,
    add_ranking_options,
    add_runner_options,
    atom_count,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from flows.cli_train import add_training_options

DESIGN_ENTRYPOINT = "flows.design:design"
GENERATE = dict(
    n=100, sampler="auto", nfe=None, grid_power=4.0, corrector=None, noise_scale=0.8,
    batch_size=250, seed=0,
)  # fmt: skip
SAMPLERS = ("auto", "sde", "ode", "ancestral", "split")  # pipeline.samplers.SamplerConfig.kind
SAMPLER_HELP = (
    "reverse SDE (Euler-Maruyama), probability-flow ODE (Heun), ancestral (EDM's posterior "
    "steps; linear-process models only) or split (ancestral steps of any drift, its pair term "
    "frozen over a step); auto: ancestral for a linear-process model, else sde"
)
DESIGN = dict(out="runs/design", n=200, nfe=None, reference_size=1000, relax="none")


def add_sampler_options(parser: argparse.ArgumentParser, nfe: int) -> None:
    """The sampling options of ``generate`` and ``design`` (``pipeline.samplers.SamplerConfig``)."""
    parser.add_argument(
        "--sampler", choices=SAMPLERS, default=GENERATE["sampler"], help=SAMPLER_HELP
    )
    parser.add_argument(
        "--nfe",
        type=positive_int,
        default=nfe,
        help="network evaluations per sample; None: 100 for molecules, 200 for crystals (100 "
        "predictor steps, each after a corrector move)",
    )
    parser.add_argument(
        "--grid-power",
        type=positive_float,
        default=GENERATE["grid_power"],
        help="sampler time grid t_end + (1 - t_end) u^power: > 1 spends more steps at low noise",
    )
    parser.add_argument(
        "--corrector",
        type=nonnegative_float,
        default=GENERATE["corrector"],
        help="crystals: a Langevin corrector of step C sigma_t^2 on the coordinates before every "
        "step (DiffCSP's 1e-5 / 0.005^2 = 0.4; NFE = 2 steps); 0: none; None: 1 for crystals "
        "(Perov-5: 99.2 %% structurally valid at 200 NFE, 95.4 at 100 without), none for molecules",
    )
    parser.add_argument(
        "--noise-scale",
        type=nonnegative_float,
        default=GENERATE["noise_scale"],
        help="the fresh noise of every sde / ancestral step times this (the ode has none): below 1 "
        "trades diversity for validity, like a lower temperature (QM9: 57 %% stable molecules at "
        "0.8, 48 at 1); 1: the learnt law, as published benchmarks sample",
    )
    parser.add_argument(
        "--num-atoms",
        type=atom_count,
        default=None,
        metavar="N|LOW-HIGH",
        help="atoms per structure, or a range such as 12-18 (sizes drawn from the training "
        "histogram within it); None: drawn from the whole training histogram",
    )


def sampler_config(args: argparse.Namespace):
    """The ``pipeline.samplers.SamplerConfig`` of ``--sampler``, ``--nfe``, ``--grid-power``,
    ``--corrector`` and ``--noise-scale``."""
    from pipeline.samplers import SamplerConfig

    return SamplerConfig(
        kind=args.sampler,
        nfe=args.nfe,
        grid_power=args.grid_power,
        corrector=args.corrector,
        noise_scale=args.noise_scale,
    )


def add_design_options(parser: argparse.ArgumentParser) -> None:
    """The design options (shared with ``ldsm serve``)."""
    d = DESIGN
    parser.add_argument("--out", default=d["out"], help="run directory (re-use it to resume)")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="trained checkpoint (.pt); None: the model that ships for --dataset "
        "(models/weights/qm9_egnn.pt for qm9)",
    )
    parser.add_argument("--train", action="store_true", help="train first (training options below)")
    parser.add_argument("--n", type=positive_int, default=d["n"], help="structures to generate")
    add_sampler_options(parser, d["nfe"])
    parser.add_argument(
        "--reference-size",
        type=positive_int,
        default=d["reference_size"],
        help="test-split structures to compare with (novelty, coverage, report plots)",
    )
    parser.add_argument("--no-posebusters", action="store_true", help="skip PoseBusters")
    parser.add_argument(
        "--posebusters-conformers",
        type=positive_int,
        default=SCREEN["posebusters_conformers"],
        help="conformers in PoseBusters' energy-ratio reference ensemble (as ldsm screen's)",
    )
    parser.add_argument(
        "--relax",
        choices=["none", "chgnet", "xtb"],
        default=DESIGN["relax"],
        help="relax the samples, write them and screen them too: crystals with CHGNet, "
        "molecules with GFN2-xTB (seconds per molecule)",
    )
    add_ranking_options(parser)
    add_runner_options(parser)
    add_training_options(parser)


def add_generate(sub) -> None:
    """The ``ldsm generate`` parser (``pipeline.generate.GenerateConfig``)."""
    d = GENERATE
    parser = sub.add_parser(
        "generate",
        help="sample molecules or crystals from a trained checkpoint",
        description="Sample structures from a trained checkpoint, chunk by chunk.",
        epilog="example: ldsm generate --checkpoint models/weights/qm9_egnn.pt --n 100 --out gen "
        "--nfe 50 --sampler sde\n"
        "         ldsm generate --dataset perov-5 --composition SrTiO3 --n 5 --out srtio3\n"
        "         ldsm generate --checkpoint runs/csp/checkpoints/last.pt --compositions "
        "test.csv --out csp",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="a checkpoint written by ldsm train (None: the shipped model of --dataset)",
    )
    parser.add_argument(
        "--dataset",
        choices=("qm9", *CRYSTAL_DATASETS),
        default=None,
        help="use the model that ships for this data set when --checkpoint is unset "
        "(models/weights/<dataset>_*.pt; --composition takes <dataset>_csp.pt)",
    )
    given = parser.add_mutually_exclusive_group()
    given.add_argument(
        "--composition", default=None, help="structure prediction for one formula, e.g. SrTiO3"
    )
    given.add_argument(
        "--compositions",
        default=None,
        help="structure prediction: a file of formulas (one a line) or a CDVAE CSV",
    )
    parser.add_argument(
        "--n",
        type=positive_int,
        default=None,
        help=f"structures to generate (None: {d['n']}); with compositions: per composition (None: 1)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    add_sampler_options(parser, d["nfe"])
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=d["batch_size"],
        help="structures per chunk (sampled together)",
    )
    parser.add_argument(
        "--seed", type=nonnegative_int, default=d["seed"], help="chunk k is seeded by (seed, k)"
    )
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads per chunk")
    add_runner_options(parser)


def add_design(sub) -> None:
    """The ``ldsm design`` parser (``flows.design.DesignConfig``)."""
    parser = sub.add_parser(
        "design",
        help="ingest -> train or load -> generate -> screen -> report",
        description="Ingest -> train (or load a checkpoint) -> generate -> screen -> report.",
        epilog=(
            "example: ldsm design                        (the shipped QM9 model, 200 molecules)\n"
            "         ldsm design --n 1000 --nfe 200 --out runs/big --workers 2\n"
            "         ldsm design --train --max-minutes 30 --out runs/fresh\n"
            "         ldsm design --train --dataset perov-5 --split val --val-split test \\\n"
            "             --hidden 128 --max-minutes 15 --out runs/perov"
        ),
    )
    add_design_options(parser)


def add_serve(sub) -> None:
    """The ``ldsm serve`` parser: the schedule, and the design options."""
    parser = sub.add_parser(
        "serve",
        help="serve the design flow on a cron schedule (a Prefect deployment)",
        description=(
            "Register the deployment design/NAME (or another ldsm flow with --entrypoint) with "
            "the Prefect server that PREFECT_API_URL names, and run each scheduled or manually "
            "triggered run in a subprocess until stopped (Ctrl-C pauses the schedule)."
        ),
        epilog='example: ldsm serve --cron "0 3 * * *" --name nightly --n 500 --out runs/nightly\n'
        '         ldsm serve --cron "0 3 * * *" --config runs/first/config.json',
    )
    parser.add_argument("--cron", default="0 3 * * *", help="cron schedule of the runs")
    parser.add_argument("--timezone", default="UTC", help="IANA time zone of the schedule")
    parser.add_argument("--name", default="nightly", help="deployment name")
    parser.add_argument(
        "--config",
        default=None,
        help="the flow's config as JSON, e.g. a run's config.json (replaces the options below)",
    )
    parser.add_argument(
        "--entrypoint", default=DESIGN_ENTRYPOINT, help="flow to serve, module:attribute"
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=None,
        help="at most this many runs at once (None: no limit)",
    )
    parser.add_argument(
        "--keep-schedule",
        action="store_true",
        help="leave the schedule active when serving stops (for a supervised, restarting serve)",
    )
    add_design_options(parser)


def add_server(sub) -> None:
    """The ``ldsm server`` parser (``flows.server``)."""
    parser = sub.add_parser(
        "server",
        help="start, stop or query a local Prefect server that outlives the command",
        description=(
            "Start a Prefect server (with its UI) on 127.0.0.1 in the background, stop it, or "
            "say whether it answers. While it runs, every ldsm command with the same "
            "PREFECT_HOME reports to it and starts faster than with a temporary server."
        ),
        epilog="example: ldsm server start && ldsm screen samples/ --out runs/screen\n"
        "         ldsm server stop",
    )
    parser.add_argument("action", choices=("start", "stop", "status"), help="what to do")
    parser.add_argument(
        "--port", type=positive_int, default=4200, help="port on 127.0.0.1 (start only)"
    )
