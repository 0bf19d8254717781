"""The ``generate`` flow: sample structures from a trained checkpoint, chunk by chunk.

``ldsm generate --checkpoint C --n N --out DIR`` writes ``DIR/samples.sdf`` and ``samples.xyz``
(molecules) or ``DIR/samples.cif`` and ``samples.extxyz`` (crystals), plus ``generation.json``
(n, NFE, seconds per structure, sampler, checkpoint, degenerate samples with their reasons).
The work is planned up front by :func:`pipeline.generate.plan` (sizes drawn from the training
histogram, sorted, dealt ``--batch-size`` structures per chunk) and every chunk is one Prefect
task seeded by ``(seed, chunk index)``: ``--workers 2`` runs them on a local two-process Dask
cluster and ``--dask-address`` on an existing one, with the same output as one process.
Finished chunks are kept in ``DIR/.chunks`` (``flows.persist``), so a killed run started again reuses them.

Structure prediction (a checkpoint trained with ``ldsm train --csp``): ``--composition SrTiO3``
or ``--compositions FILE`` (one formula per line, or a CDVAE CSV whose cells' compositions are
taken) asks for ``--n`` structures of each (default 1), written also as one CIF per structure,
``DIR/cifs/000000_SrTiO3.cif``, ..., named by the input record and numbered in input order.
``--dataset perov-5`` without ``--checkpoint`` takes the shipped model of that data set
(``models/weights/perov-5_csp.pt`` for compositions, ``perov-5_cspnet.pt`` de novo).
"""

from __future__ import annotations

import argparse
import json
import time
import zipfile
from pathlib import Path

import torch
from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from flows import lock, runners
from flows.cli_sample import sampler_config
from flows.console import UsageError
from flows.persist import chunks_kept, run_chunks
from pipeline.compositions import CompositionRecord, parse_formula, read_compositions
from pipeline.generate import (
    Chunk,
    ChunkResult,
    GenerateConfig,
    Trained,
    checkpoint_key,
    collect,
    histogram_sizes,
    load_cached,
    plan,
    sample_chunk,
    summary_info,
    write_cifs,
    write_samples,
)
from pipeline.samplers import SamplerConfig, resolve_defaults

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
    """Sample ``config.n`` structures from ``checkpoint`` into ``out`` (holding its lock,
    :mod:`flows.lock`); returns the summary."""
    with lock.owned(out):
        return _generate(checkpoint, config, out, threads)


def _generate(checkpoint: str, config: GenerateConfig, out: str, threads: int) -> dict:
    trained = load_cached(checkpoint)
    # the model's own NFE and corrector where the config leaves them None, as the summary says
    sampler = resolve_defaults(config.sampler, trained.recipe.process)
    config = config.model_copy(update={"sampler": sampler})
    chunks = plan(config, trained.num_atoms)
    started = time.perf_counter()
    calls = [
        dict(
            checkpoint=checkpoint,
            checkpoint_key=checkpoint_key(checkpoint),
            index=c.index,
            rows=c.rows,
            counts=c.counts,
            types=c.types,
            seed=config.seed,
            sampler=config.sampler,
            threads=threads,
        )
        for c in chunks
    ]
    names = config.names()
    result = collect(run_chunks(sample_chunk_task, out, calls), len(names), names)
    info = {
        **summary_info(checkpoint, config, result),
        "chunks": len(chunks),
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    if config.compositions is not None:
        info["cifs"] = str(Path(out) / "cifs")
        info["cifs_unwritten"] = write_cifs(result.structures, Path(out) / "cifs")
    summary = write_samples(result.structures, out, trained.recipe.config.kind, info)
    noise = "" if config.sampler.kind == "ode" else f" (noise scale {config.sampler.noise_scale:g})"
    print(
        f"generated {summary['n']} {summary['kind']}s at {result.nfe} NFE{noise} in {len(chunks)} "
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


def check_checkpoint(path: str) -> Trained:
    """The trained model at ``path``, or :class:`UsageError` naming the file and what is wrong
    with it (missing, a folder, empty, not a torch file, no config beside it, bad content)."""
    from models.checkpoint import CheckpointError, config_path

    p = Path(path)
    if not p.exists():
        raise UsageError(f"--checkpoint {path}: no such file")
    if p.is_dir():
        raise UsageError(
            f"--checkpoint {path}: a folder; give the .pt file, e.g. {p / 'checkpoints' / 'last.pt'}"
        )
    if p.stat().st_size == 0:
        raise UsageError(f"--checkpoint {path}: empty file")
    if not zipfile.is_zipfile(p):
        raise UsageError(
            f"--checkpoint {path}: not a checkpoint written by ldsm train (not a torch file)"
        )
    if not config_path(p).exists():
        raise UsageError(
            f"--checkpoint {path}: its config {config_path(p).name} is missing beside it "
            "(a checkpoint is the .pt weights plus that .json)"
        )
    try:
        return load_cached(p)
    except CheckpointError as err:
        raise UsageError(f"--checkpoint {' '.join(str(err).split())}") from err


def saved_on_stop(args: argparse.Namespace) -> str:
    """What an interrupted ``ldsm generate`` leaves behind (one line)."""
    return chunks_kept(args.out, "finished")


def check_sampler(kind: str, trained: Trained, corrector: float = 0.0) -> None:
    """Refuse ``--sampler ancestral`` for a molecule model of a nonlinear drift (its posterior
    steps need the closed-form transition of the linear process) and a positive ``--corrector``
    for a molecule model (only the crystal process has a Langevin corrector)."""
    config = trained.recipe.config
    if kind == "ancestral" and config.kind == "molecule" and config.process.drift != "linear":
        raise UsageError(
            f"--sampler ancestral needs a model of the linear process; this one uses the "
            f"{config.process.drift} drift (use --sampler split, sde or ode)"
        )
    if corrector and config.kind == "molecule":
        raise UsageError(
            f"--corrector {corrector:g}: only crystal models have a Langevin corrector; "
            "leave it out for molecules"
        )


def check_compositions(given: bool, trained: Trained, checkpoint: str) -> None:
    """Refuse ``--composition(s)`` for a model that does not predict structures (a molecule
    model, a de novo crystal model), and a structure-prediction model without them."""
    config = trained.recipe.config
    csp = config.kind == "crystal" and config.types == "given"
    if given and not csp:
        what = "molecule" if config.kind == "molecule" else "de novo crystal"
        raise UsageError(
            f"--composition(s): {checkpoint} is a {what} model; compositions need a "
            "structure-prediction model (`ldsm train --csp`, e.g. models/weights/perov-5_csp.pt)"
        )
    if csp and not given:
        raise UsageError(
            f"--checkpoint {checkpoint}: a structure-prediction model; give the compositions "
            "to predict with --composition FORMULA or --compositions FILE"
        )


def check_num_atoms(num_atoms, trained: Trained) -> None:
    """Refuse a ``--num-atoms`` range in which the model saw no training structure (it would
    draw from nothing)."""
    if isinstance(num_atoms, tuple):
        try:
            histogram_sizes(trained.num_atoms, num_atoms)
        except ValueError as err:
            raise UsageError(f"--num-atoms {num_atoms[0]}-{num_atoms[1]}: {err}") from err


def check(args: argparse.Namespace) -> None:
    """``ldsm generate``'s checks before the flow: the compositions parse, the checkpoint loads
    and predicts structures exactly when compositions are given, the sampler suits it, a
    ``--num-atoms`` range holds training sizes."""
    given = compositions_of(args) is not None
    checkpoint = checkpoint_of(args, given)
    trained = check_checkpoint(checkpoint)
    check_compositions(given, trained, checkpoint)
    check_sampler(args.sampler, trained, args.corrector)
    check_num_atoms(args.num_atoms, trained)


def shipped_checkpoint(dataset: str, csp: bool = False) -> Path:
    """The model that ships for ``dataset``: ``models/weights/<dataset>_csp.pt`` for structure
    prediction, else the one ``models/weights/<dataset>_<network>.pt`` that is not it
    (``qm9_egnn.pt``, ``perov-5_cspnet.pt``). :class:`UsageError` when none or several ship,
    saying how to train one or choose one."""
    if csp:
        found = [WEIGHTS / f"{dataset}_csp.pt"]
    else:
        found = [p for p in sorted(WEIGHTS.glob(f"{dataset}_*.pt")) if p.stem != f"{dataset}_csp"]
    found = [p for p in found if p.exists()]
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(str(p) for p in found)
        raise UsageError(
            f"--dataset {dataset}: several models ship ({names}); choose one with --checkpoint"
        )
    kind = "structure-prediction" if csp else "de novo"
    split = " --split val --val-split test" if dataset != "qm9" else ""
    raise UsageError(
        f"--dataset {dataset}: no {kind} model ships for it yet; train one with `ldsm train "
        f"--dataset {dataset}{split}{' --csp' if csp else ''} --out RUN` and pass --checkpoint "
        "RUN/checkpoints/last.pt"
    )


def compositions_of(args: argparse.Namespace) -> list[CompositionRecord] | None:
    """The compositions of ``--composition`` / ``--compositions`` (None: de novo);
    :class:`UsageError` naming a formula or file that cannot be read."""
    try:
        if args.composition is not None:
            z = parse_formula(args.composition)
            return [CompositionRecord(name=args.composition, z=z)]
        if args.compositions is not None:
            return read_compositions(args.compositions)
    except (OSError, ValueError) as err:
        raise UsageError(f"--composition(s): {err}") from err
    return None


def checkpoint_of(args: argparse.Namespace, csp: bool) -> str:
    """``--checkpoint``, else the shipped model of ``--dataset``."""
    if args.checkpoint is not None:
        return args.checkpoint
    if args.dataset is None:
        raise UsageError("--checkpoint required (or --dataset for its shipped model)")
    return str(shipped_checkpoint(args.dataset, csp))


def run(args: argparse.Namespace) -> int:
    """``ldsm generate``: runs :func:`generate_flow` and prints its summary."""
    compositions = compositions_of(args)
    checkpoint = checkpoint_of(args, compositions is not None)
    config = GenerateConfig(
        n=args.n or (1 if compositions is not None else GenerateConfig().n),
        sampler=sampler_config(args),
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
