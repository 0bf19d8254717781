"""The ``generate`` flow: sample structures from a trained checkpoint, chunk by chunk.

``ldsm generate --checkpoint C --n N --out DIR`` writes ``DIR/samples.sdf`` and ``samples.xyz``
(molecules) or ``DIR/samples.cif`` and ``samples.extxyz`` (crystals), plus ``generation.json``
(n, NFE, seconds per structure, sampler, checkpoint, degenerate samples with their reasons).
The work is planned up front by :func:`pipeline.generate.plan` (sizes drawn from the training
histogram, sorted, dealt ``--batch-size`` structures per chunk) and every chunk is one Prefect
task seeded by ``(seed, chunk index)``: ``--workers 2`` runs them on a local two-process Dask
cluster and ``--dask-address`` on an existing one, with the same output as one process.
Finished chunks persist in ``DIR/.prefect``, so a killed run started again reuses them.

Structure prediction (a checkpoint trained with ``ldsm train --csp``): ``--composition SrTiO3``
or ``--compositions FILE`` (one formula per line, or a CDVAE CSV whose cells' compositions are
taken) asks for ``--n`` structures of each (default 1), written also as one CIF per structure,
``DIR/cifs/000000_SrTiO3.cif``, ..., named by the input record and numbered in input order.
``--dataset perov-5`` without ``--checkpoint`` takes the shipped model of that data set
(``models/weights/perov-5_csp.pt`` for compositions, ``perov-5.pt`` de novo).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from prefect import flow, task, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from flows import runners
from flows.persist import resumable
from flows.train import CRYSTAL_DATASETS
from pipeline.compositions import CompositionRecord, parse_formula, read_compositions
from pipeline.generate import (
    Chunk,
    ChunkResult,
    GenerateConfig,
    checkpoint_key,
    collect,
    load_cached,
    plan,
    sample_chunk,
    summary_info,
    write_cifs,
    write_samples,
)
from pipeline.recipes import SamplerConfig

WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "weights"


@task(name="sample-chunk")
def sample_chunk_task(
    checkpoint: str,
    checkpoint_key: str,
    index: int,
    rows,
    counts,
    types,
    seed: int,
    sampler: SamplerConfig,
    threads: int,
) -> ChunkResult:
    """Chunk ``index``: structures ``rows`` with atom ``counts`` (atomic numbers ``types`` when
    the compositions are given, else None). ``checkpoint_key`` (path, size, mtime) makes a
    rewritten checkpoint a new task for the result cache."""
    # Module-level names only: Dask pickles this function by value, its globals with it.
    torch.set_num_threads(threads)
    chunk = Chunk(index, rows, counts, seed, types)
    return sample_chunk(load_cached(checkpoint), chunk, sampler)


@flow(name="generate", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def generate_flow(checkpoint: str, config: GenerateConfig, out: str, threads: int = 1) -> dict:
    """Sample ``config.n`` structures from ``checkpoint`` into ``out``; returns the summary."""
    trained = load_cached(checkpoint)
    chunks = plan(config, trained.num_atoms)
    started = time.perf_counter()
    futures = resumable(sample_chunk_task, out).map(
        unmapped(checkpoint),
        unmapped(checkpoint_key(checkpoint)),
        [c.index for c in chunks],
        [c.rows for c in chunks],
        [c.counts for c in chunks],
        [c.types for c in chunks],
        unmapped(config.seed),
        unmapped(config.sampler),
        unmapped(threads),
    )
    names = config.names()
    result = collect([f.result() for f in futures], len(names), names)
    info = {
        **summary_info(checkpoint, config, result),
        "chunks": len(chunks),
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    if config.compositions is not None:
        info["cifs"] = str(Path(out) / "cifs")
        info["cifs_unwritten"] = write_cifs(result.structures, Path(out) / "cifs")
    summary = write_samples(result.structures, out, trained.recipe.config.kind, info)
    print(
        f"generated {summary['n']} {summary['kind']}s at {result.nfe} NFE in {len(chunks)} "
        f"chunks: {summary['seconds_per_structure']} s each; "
        f"{len(summary['degenerate'])} degenerate"
    )
    return summary


def run_generate(
    checkpoint: str,
    config: GenerateConfig,
    out: str,
    workers: int = 0,
    address: str | None = None,
    threads: int = 1,
) -> dict:
    """:func:`generate_flow` on the task runner of ``workers`` / ``address``."""
    return runners.with_runner(generate_flow, workers, address)(checkpoint, config, out, threads)


def register(subparsers) -> None:
    d = GenerateConfig()
    parser = subparsers.add_parser(
        "generate",
        help="sample molecules or crystals from a trained checkpoint",
        description=__doc__.split("\n\n")[0],
        epilog="example: ldsm generate --checkpoint models/weights/qm9_egnn.pt --n 100 --out gen "
        "--nfe 50 --sampler sde\n"
        "         ldsm generate --dataset perov-5 --composition SrTiO3 --n 5 --out srtio3\n"
        "         ldsm generate --checkpoint runs/csp/checkpoints/last.pt --compositions "
        "test.csv --out csp",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="a checkpoint written by ldsm train (default: the shipped model of --dataset)",
    )
    parser.add_argument(
        "--dataset",
        choices=sorted(CRYSTAL_DATASETS),
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
        type=int,
        default=None,
        help=f"structures to generate (default {d.n}); with compositions: per composition "
        "(default 1)",
    )
    parser.add_argument("--out", required=True, help="output folder")
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
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="structures per chunk (sampled together)",
    )
    parser.add_argument("--seed", type=int, default=d.seed, help="chunk k is seeded by (seed, k)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per chunk")
    runners.add_arguments(parser)
    parser.set_defaults(run=run)


def shipped_checkpoint(dataset: str, csp: bool) -> Path:
    """The shipped model of a crystal data set: ``models/weights/<dataset>[_csp].pt``."""
    path = WEIGHTS / f"{dataset}{'_csp' if csp else ''}.pt"
    if not path.exists():
        kind = "structure-prediction" if csp else "de novo"
        raise FileNotFoundError(
            f"no shipped {kind} model for {dataset} ({path}); train one with `ldsm train "
            f"--dataset {dataset} --split val --val-split test{' --csp' if csp else ''} --out RUN` "
            "and pass --checkpoint RUN/checkpoints/last.pt"
        )
    return path


def run(args: argparse.Namespace) -> int:
    compositions = None
    if args.composition is not None:
        compositions = [CompositionRecord(name=args.composition, z=parse_formula(args.composition))]
    elif args.compositions is not None:
        compositions = read_compositions(args.compositions)
    checkpoint = args.checkpoint
    if checkpoint is None:
        if args.dataset is None:
            raise SystemExit("ldsm generate: give --checkpoint, or --dataset for a shipped model")
        checkpoint = str(shipped_checkpoint(args.dataset, compositions is not None))
    config = GenerateConfig(
        n=args.n or (1 if compositions is not None else GenerateConfig().n),
        sampler=SamplerConfig(kind=args.sampler, nfe=args.nfe),
        num_atoms=args.num_atoms,
        compositions=compositions,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    summary = run_generate(
        checkpoint, config, args.out, args.workers, args.dask_address, args.threads
    )
    brief = {k: v for k, v in summary.items() if k not in ("degenerate", "unwritten")}
    brief["degenerate"] = len(summary["degenerate"])
    print(json.dumps(brief, indent=2))
    return 0
