"""The `ldsm` command line: one sub-command per flow.

This module holds every sub-command's options and imports nothing heavy: ``ldsm --help`` and
``ldsm CMD --help`` answer without loading torch, RDKit or Prefect. A command's own module
(``flows.<command>``, with ``run(args)`` and optionally ``check(args)``, ``saved_on_stop(args)``)
is imported only to run it. The defaults written
here are the configs' own defaults (``tests/test_cli.py`` holds them equal).

Around every command, :func:`main`:

- refuses bad options and files in one line (exit code 2), other failures in one line (exit
  code 1); ``--debug`` shows the traceback instead;
- chooses the Prefect API (``flows.api_server``: the configured one, a running local server, or
  a temporary server that dies with the command);
- turns SIGTERM into the same clean stop as Ctrl-C: one line saying what was saved, exit code
  130 (SIGINT) or 143 (SIGTERM), within seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESIGN_ENTRYPOINT = "flows.design:design"
# Commands whose flows report to a Prefect API (demo is no flow; serve needs a real server).
FLOW_COMMANDS = {"ingest", "train", "generate", "screen", "design"}
CRYSTAL_DATASETS = ("perov-5", "carbon-24", "mp-20")
COV_CUTOFF_NAMES = ("carbon_24", "mp_20", "perov_5")  # pipeline.crystal_checks.COV_CUTOFFS
MODES = ("expm", "taylor2", "euler")  # pipeline.transitions.MODES

# Defaults of the configs (tests/test_cli.py checks each against its config).
TRAIN = dict(
    dataset="qm9", split="train", val_split="val", steps=2000, batch_size=64, accumulate=1,
    lr=5e-4, warmup=200, ema=0.999, seed=0, checkpoint_every=100, val_every=500,
    loss="local-dsm", drift="physical", mode="expm", step="fraction", budget=0.5,
    hidden=64, layers=4, time_power=1.0, preconditioning="sigma", type_weight=20.0,
)  # fmt: skip
GENERATE = dict(n=100, sampler="sde", nfe=100, grid_power=1.0, batch_size=250, seed=0)
SAMPLERS = ("sde", "ode", "ancestral")  # pipeline.recipes.SamplerConfig.kind
SAMPLER_HELP = (
    "reverse SDE (Euler-Maruyama), probability-flow ODE (Heun) or ancestral (EDM's posterior "
    "steps; linear-process models only)"
)
DESIGN = dict(out="runs/design", n=200, nfe=100, reference_size=1000, relax="none")
SCREEN = dict(chunk_size=256, reference_processes=0)


def version() -> str:
    """The installed ``ldsm-design`` version (``unknown`` when run from an uninstalled copy)."""
    try:
        return metadata.version("ldsm-design")
    except metadata.PackageNotFoundError:
        return "unknown"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after every option; descriptions and examples keep their line breaks."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``ldsm CMD: error: ...``), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind, low, strict: bool):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < low or (strict and value == low):
            bound = f"> {low}" if strict else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


positive_int = _number(int, 1, strict=False)
nonnegative_int = _number(int, 0, strict=False)
positive_float = _number(float, 0.0, strict=True)


def fraction(text: str) -> float:
    """A float in [0, 1)."""
    value = _number(float, 0.0, strict=False)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be < 1, got {text}")
    return value


def _card_names() -> list[str]:
    return sorted(p.stem for p in (ROOT / "datasets").glob("*.y*ml"))


def add_runner_options(parser: argparse.ArgumentParser) -> None:
    """``--workers`` and ``--dask-address`` (``flows.runners``) for a command that fans out."""
    parser.add_argument(
        "--workers",
        type=nonnegative_int,
        default=0,
        help="local Dask worker processes (0: a thread pool in this process)",
    )
    parser.add_argument(
        "--dask-address",
        default=None,
        help="scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786",
    )


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
    g.add_argument("--mode", choices=MODES, default=d["mode"], help="local-DSM transition moments")
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
        "--time-power",
        type=positive_float,
        default=d["time_power"],
        help="training times t = u^power: > 1 trains more at low noise, where bonds are decided",
    )
    g.add_argument(
        "--preconditioning",
        choices=["sigma", "edm"],
        default=d["preconditioning"],
        help="molecule score network: noise prediction (sigma) or Karras et al.'s EDM "
        "preconditioning with unit weight on the network output (edm)",
    )
    g.add_argument("--hidden", type=positive_int, default=d["hidden"], help="network width")
    g.add_argument("--layers", type=positive_int, default=d["layers"], help="network depth")
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
        default=None,
        help="torch threads per process (None: torch's default)",
    )


def add_sampler_options(parser: argparse.ArgumentParser, nfe: int) -> None:
    """The sampling options of ``generate`` and ``design`` (``pipeline.recipes.SamplerConfig``)."""
    parser.add_argument(
        "--sampler", choices=SAMPLERS, default=GENERATE["sampler"], help=SAMPLER_HELP
    )
    parser.add_argument(
        "--nfe", type=positive_int, default=nfe, help="network evaluations per sample"
    )
    parser.add_argument(
        "--grid-power",
        type=positive_float,
        default=GENERATE["grid_power"],
        help="sampler time grid t_end + (1 - t_end) u^power: > 1 spends more steps at low noise",
    )
    parser.add_argument(
        "--num-atoms",
        type=positive_int,
        default=None,
        help="atoms per structure; None: drawn from the training histogram",
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
        "--relax",
        choices=["none", "chgnet", "xtb"],
        default=DESIGN["relax"],
        help="relax the samples, write them and screen them too: crystals with CHGNet, "
        "molecules with GFN2-xTB (seconds per molecule)",
    )
    add_runner_options(parser)
    add_training_options(parser)


def _demo(sub) -> None:
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


def _ingest(sub) -> None:
    parser = sub.add_parser(
        "ingest",
        help="read, check, split and cache a data set",
        description="Read, check, split and cache a data set (a card of datasets/ or any files).",
        epilog="example: ldsm ingest qm9 --summary-json runs/qm9.json\n"
        "         ldsm ingest perov-5 --path ../shared/datasets/crystals/perov_5\n"
        "         ldsm ingest my_structures/",
    )
    names = ", ".join(_card_names())
    parser.add_argument("name", help=f"data set ({names}) or a file / folder of structures")
    parser.add_argument("--path", help="source folder / file (CDVAE CSVs, QM9 archive, structures)")
    parser.add_argument("--summary-json", help="write the summary here as JSON")
    parser.add_argument("--no-cache", action="store_true", help="ignore and do not write the cache")


def _train(sub) -> None:
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
        help="continue the run in --out (only --steps, --max-minutes, --checkpoint-every and "
        "--threads may change)",
    )
    add_training_options(parser)


def _generate(sub) -> None:
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
        choices=CRYSTAL_DATASETS,
        default=None,
        help="crystals: use the shipped checkpoint of this data set when --checkpoint is unset",
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


def _screen(sub) -> None:
    parser = sub.add_parser(
        "screen",
        help="validate and rank candidate molecules and crystals",
        description="Validate candidate molecules and crystals with the field's own checks.",
        epilog="example: ldsm screen samples/ --out runs/screen "
        "--reference ../shared/datasets/crystals/perov_5/test.csv",
    )
    parser.add_argument(
        "input",
        help="file or folder of SDF / XYZ / extxyz / CIF / CDVAE CSV / POSCAR (gzip, bz2, xz too)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--reference", help="reference (test) split for novelty and coverage")
    parser.add_argument("--train-smiles", help="file of training SMILES (one per line)")
    parser.add_argument(
        "--cov-cutoffs",
        choices=COV_CUTOFF_NAMES,
        help="CDVAE coverage cutoffs (None: guessed from the --reference path)",
    )
    parser.add_argument("--no-posebusters", action="store_true", help="skip PoseBusters")
    parser.add_argument("--xtb", action="store_true", help="GFN2-xTB relaxation (slow)")
    parser.add_argument("--chgnet", action="store_true", help="CHGNet energy and relaxation")
    parser.add_argument(
        "--chunk-size",
        type=positive_int,
        default=SCREEN["chunk_size"],
        help="candidates per task",
    )
    parser.add_argument(
        "--reference-processes",
        type=nonnegative_int,
        default=SCREEN["reference_processes"],
        help="processes for the reference fingerprints (0: every core); cached by content",
    )
    add_runner_options(parser)


def _design(sub) -> None:
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


def _serve(sub) -> None:
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


COMMANDS = {
    "demo": _demo,
    "ingest": _ingest,
    "train": _train,
    "generate": _generate,
    "screen": _screen,
    "design": _design,
    "serve": _serve,
}


def build_parser() -> argparse.ArgumentParser:
    """The ``ldsm`` parser with every sub-command (nothing heavy imported)."""
    parser = Parser(
        prog="ldsm",
        description="Molecule and materials design with local denoising score matching.",
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"ldsm {version()}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in COMMANDS.values():
        add(sub)
    for name, command in sub.choices.items():
        command.formatter_class = HelpFormatter
        command.allow_abbrev = False
        command.prog = f"ldsm {name}"
        command.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show the traceback of an error",
        )
    return parser


def subcommand(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of ``ldsm COMMAND``."""
    return parser._subparsers._group_actions[0].choices[command]


def explicit_options(parser: argparse.ArgumentParser, command: str, argv: list[str]) -> set[str]:
    """The ``dest`` of every option of ``command`` that ``argv`` gives (abbreviations are off)."""
    given = {token.split("=", 1)[0] for token in argv if token.startswith("-")}
    return {a.dest for a in subcommand(parser, command)._actions if given & set(a.option_strings)}


class _Stop(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every command stops the same way."""


def _raise_stop(signum, frame):
    raise _Stop()


def _stop_line(args: argparse.Namespace, module) -> str:
    saved = getattr(module, "saved_on_stop", None)
    return saved(args) if saved is not None else "nothing was saved"


def main(argv: list[str] | None = None) -> int:
    """Run ``ldsm`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        subcommand(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
    args.explicit = explicit_options(parser, args.command, argv)
    prog = f"ldsm {args.command}"

    from flows import api_server, console

    console.quiet_environment()
    env_before = os.environ.get("PREFECT_API_URL")
    server, saved_ui, module = None, False, None
    rank0 = int(os.environ.get("RANK", "0")) == 0
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        with contextlib.ExitStack() as stack:
            if args.command in FLOW_COMMANDS and rank0 and getattr(args, "out", None):
                from flows import lock

                # The run owns its folder before anything starts (a one-line refusal, at once).
                stack.enter_context(lock.owned(time.strftime(args.out)))
            needs_api = args.command in FLOW_COMMANDS or args.command == "serve"
            if needs_api and rank0 and not api_in_process():
                # serve needs a server that outlives it: never a temporary one.
                url, server, note = api_server.choose_api(temporary=args.command != "serve")
                if note:
                    print(f"ldsm: {note}", file=sys.stderr)
                # Prefect reads its settings when imported: the URL goes in before the import.
                if url or server:
                    os.environ["PREFECT_API_URL"] = url or server.api_url
                if server is not None and "PREFECT_UI_URL" not in os.environ:
                    # No "View at http://127.0.0.1:PORT/..." line: a temporary server has no UI.
                    os.environ["PREFECT_UI_URL"] = ""
                    saved_ui = True
            module = importlib.import_module(f"flows.{args.command}")
            if hasattr(module, "check"):
                module.check(args)  # bad options and files: refused before waiting for a server
            if server is not None and server.wait() != os.environ["PREFECT_API_URL"]:
                from prefect.settings import PREFECT_API_URL, temporary_settings

                # The retry moved the server to another port.
                stack.enter_context(temporary_settings({PREFECT_API_URL: server.api_url}))
            console.quiet_libraries(args.debug)
            return int(module.run(args) or 0)
    except KeyboardInterrupt as stop:
        name = "SIGTERM" if isinstance(stop, _Stop) else "Ctrl-C"
        line = f"{prog}: stopped by {name}; {_stop_line(args, module) if module else 'nothing was saved'}"
        print(line, file=sys.stderr, flush=True)
        code = 143 if isinstance(stop, _Stop) else 130
        if server is not None:
            _drain_prefect(timeout=2)
            server.stop()
        sys.stdout.flush()
        # Worker threads may be in the middle of a chunk for minutes; what finished is saved.
        os._exit(code)
    except Exception as exc:
        if args.debug:
            raise
        code = 2 if _is_usage_error(exc) else 1
        what = "error" if code == 2 else f"error ({type(exc).__name__})"
        hint = "" if code == 2 else " (run with --debug for the traceback)"
        print(f"{prog}: {what}: {_one_line(exc)}{hint}", file=sys.stderr)
        return code
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server is not None:
            _drain_prefect(timeout=10)
            server.stop()
        if saved_ui:
            os.environ.pop("PREFECT_UI_URL", None)
        if env_before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = env_before


def _drain_prefect(timeout: float) -> None:
    """Send the logs and events still queued to the API while the temporary server lives
    (after it stops, Prefect retries them for over a minute at exit)."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout)


def api_in_process() -> str | None:
    """The API of an already imported Prefect (a test harness, a caller's settings), if any."""
    settings = sys.modules.get("prefect.settings")
    return settings.PREFECT_API_URL.value() if settings is not None else None


def _is_usage_error(exc: Exception) -> bool:
    from flows.console import UsageError
    from flows.lock import FolderInUse

    if isinstance(exc, UsageError | FolderInUse):
        return True
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(exc, pydantic.ValidationError)


def _one_line(exc: Exception) -> str:
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(exc, pydantic.ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()
        )
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
