"""The ``generate`` flow: sample structures from a trained checkpoint, chunk by chunk.

``ldsm generate --checkpoint C --n N --out DIR`` writes ``DIR/samples.sdf`` and ``samples.xyz``
(molecules) or ``DIR/samples.cif`` and ``samples.extxyz`` (crystals), plus ``generation.json``
(n, NFE, seconds per structure, sampler, checkpoint, degenerate samples with their reasons).
The work is planned up front by :func:`pipeline.generate.plan` (sizes drawn from the training
histogram, sorted, dealt ``--batch-size`` structures per chunk) and every chunk is one Prefect
task seeded by ``(seed, chunk index)``: ``--workers 2`` runs them on a local two-process Dask
cluster and ``--dask-address`` on an existing one, with the same output as one process.
Finished chunks persist in ``DIR/.prefect``, so a killed run started again reuses them.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from prefect import flow, task, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from flows import runners
from flows.persist import resumable
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
    write_samples,
)
from pipeline.recipes import SamplerConfig


@task(name="sample-chunk")
def sample_chunk_task(
    checkpoint: str,
    checkpoint_key: str,
    index: int,
    rows,
    counts,
    seed: int,
    sampler: SamplerConfig,
    threads: int,
) -> ChunkResult:
    """Chunk ``index``: structures ``rows`` with atom ``counts``. ``checkpoint_key`` (path, size,
    mtime) makes a rewritten checkpoint a new task for the result cache."""
    # Module-level names only: Dask pickles this function by value, its globals with it.
    torch.set_num_threads(threads)
    return sample_chunk(load_cached(checkpoint), Chunk(index, rows, counts, seed), sampler)


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
        unmapped(config.seed),
        unmapped(config.sampler),
        unmapped(threads),
    )
    result = collect([f.result() for f in futures], config.n)
    info = {
        **summary_info(checkpoint, config, result),
        "chunks": len(chunks),
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
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
        "--nfe 50 --sampler sde",
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by ldsm train")
    parser.add_argument("--n", type=int, default=d.n, help="structures to generate")
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


def run(args: argparse.Namespace) -> int:
    config = GenerateConfig(
        n=args.n,
        sampler=SamplerConfig(kind=args.sampler, nfe=args.nfe),
        num_atoms=args.num_atoms,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    summary = run_generate(
        args.checkpoint, config, args.out, args.workers, args.dask_address, args.threads
    )
    brief = {k: v for k, v in summary.items() if k not in ("degenerate", "unwritten")}
    brief["degenerate"] = len(summary["degenerate"])
    print(json.dumps(brief, indent=2))
    return 0
