"""The ``screen`` flow: validate candidate molecules and crystals with the field's own checks.

``ldsm screen INPUT --out DIR [--reference REF] [--train-smiles FILE]`` reads INPUT (a file or
folder of SDF / XYZ / extxyz / CIF / CDVAE CSV / POSCAR, compressed or not; in a folder, the same
structures written in two formats, as ``samples.sdf`` and ``samples.xyz``, are read once, and the
log names the file not read) with ``pipeline.io.read_structures``, runs the checks of
``pipeline.molecule_checks`` and ``pipeline.crystal_checks`` on chunks in parallel (Prefect task
mapping), ranks the candidates and writes into DIR:

- ``screen.csv``: one row per candidate with every verdict and its reason, the reader's note
  (``read_note``), the properties (``pipeline.ranking.PROPERTIES``: RDKit's QED, logP and SA score
  of valid molecules; xTB and CHGNet energies where they ran), ``score`` with ``--rank-by``, then
  one row of kind ``unread`` per file or record that could not be read;
- ``passing/``: the passing molecules (``molecules.sdf``) and crystals (one CIF each), in rank
  order (``--rank-by``, a score highest first, and ``--filter`` thresholds: ``pipeline.ranking``);
- ``relaxed/molecules/`` (``--xtb``) and ``relaxed/crystals/`` (``--chgnet``): the structures the
  relaxations computed, in rank order, with ``relax.csv`` (``pipeline.relax``'s writers, as
  ``ldsm design --relax`` writes them);
- ``metrics.json``: ``{"molecules": {...}, "crystals": {...}, "n_read_rejects": k, "ranking":
  {"rank_by": text, "filtered": {filter: removed}}, "n_passed": {"molecules": k, "crystals": k}}``
  with the keys of ``pipeline.metrics`` (None where a metric does not apply), and ``"xtb"`` /
  ``"chgnet"``: the relaxation writers' summaries; read rejects are in neither kind;
- ``report.md`` with ``plots/*.png`` (read rejects and reader notes listed); the same tables are
  published as Prefect artifacts;
- ``config.json``: the ``ScreenConfig`` of the run;
- ``.chunks/``: the checked chunks, stored as data (``flows.persist``): a killed run started
  again into the same DIR checks only the chunks that had not finished.

The checks, the report, the passing-structure writer and the reference are the library's
(``pipeline.metrics``, ``pipeline.report``, ``pipeline.writers``, ``pipeline.reference``); this
module orchestrates them.

A molecule's validity follows the bonds and formal charges of its file where it has them, else
RDKit's perceived bonds; EDM's distance-table stability and validity stay as their own columns
(``pipeline.metrics.check_molecules``).

INPUT that does not exist ends the command before any flow with one line on stderr and exit
code 2; INPUT none of whose files can be read (empty, binary, unsupported, a CSV without its
``cif`` column), or from which no record could be read, ends with one line and exit code 1.

PoseBusters' energy ratio compares the pose with a reference ensemble of
``--posebusters-conformers`` conformers (the verdicts each size changes, and the speed, are in
BENCHMARKS.md, "PoseBusters throughput"); its verdicts are cached in
``$LDSM_HOME/posebusters/verdicts.sqlite`` per posed molecule (any atom order or name) and per
PoseBusters / RDKit version and ensemble size, so a screen of molecules judged before reads them.

``--workers N`` checks the chunks on N local Dask processes, ``--dask-address`` on a running Dask
cluster (``flows.runners``); the outputs are the same.

``--reference`` is a reference (test) split read the same way: it enables crystal novelty,
coverage (with CDVAE's cutoffs for the data set named by ``--cov-cutoffs``, guessed from the path)
and the Wasserstein distances. Its CrystalNN fingerprints are computed on every core
(``--reference-processes``) with progress in the log, and cached under ``$LDSM_HOME/screen`` by
the content of the cells and of the fingerprint code.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.exceptions import MissingContextError
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field, field_validator, model_validator

from flows import lock
from flows.cli_options import runner_options
from flows.console import silence_rdkit
from flows.persist import chunks_kept, run_chunks
from flows.runners import with_runner
from pipeline import crystal_checks as cc
from pipeline import metrics as pm
from pipeline import reference as ref
from pipeline.cache import ldsm_home
from pipeline.molecule_3d_checks import POSEBUSTERS_CONFORMERS
from pipeline.ranking import (
    apply_filters,
    checked_filters,
    checked_rank_by,
    needed_options,
    parse_expression,
    parse_filter,
    rank,
)
from pipeline.relax import write_relaxed, write_relaxed_molecules
from pipeline.report import screen_report
from pipeline.structures import is_crystal
from pipeline.writers import write_passing, write_screen_table

SCREEN_THREADS = 2  # the flow's own task runner (with workers=0)


class ScreenConfig(BaseModel):
    """Typed configuration of one screening run (dumped to DIR/config.json)."""

    input: str
    out: str
    reference: str | None = None
    train_smiles: str | None = None
    posebusters: bool = True
    posebusters_conformers: int = Field(POSEBUSTERS_CONFORMERS, ge=1)  # energy-ratio ensemble
    xtb: bool = False
    chgnet: bool = False
    cov_cutoffs: str | None = None
    chunk_size: int = 256  # at most; a small input is split so that every worker gets a chunk
    workers: int = 0  # local Dask worker processes; 0: threads (see flows.runners)
    dask_address: str | None = None  # an existing Dask scheduler instead
    reference_processes: int = 0  # processes for the reference fingerprints; 0: every core
    rank_by: str | None = None  # a score over pipeline.ranking.PROPERTIES, highest first
    filters: list[str] = []  # thresholds ("qed>=0.5") the passing candidates must meet, in order

    _rank_by = field_validator("rank_by")(checked_rank_by)
    _filters = field_validator("filters")(checked_filters)

    @model_validator(mode="after")
    def _computed(self) -> ScreenConfig:
        """Refuse a column of xTB or CHGNet without its option: ranking on a column nothing
        computes would silently keep the default order, and a filter on it remove everything."""
        for name, option in needed_options(self.rank_by, self.filters).items():
            if not getattr(self, option):
                raise ValueError(f"{name} is computed by --{option}, which is not on")
        return self


@task(retries=2, retry_delay_seconds=1)
def read_task(path: str):
    """Read candidates; I/O retries, bad records come back as rejects. Overlapping atoms are kept
    (``min_distance=0``): judging them is the screen's job, with its own reason."""
    from pipeline.io import read_structures

    return read_structures(path, min_distance=0.0)


@task
def check_molecules_task(
    chunk: list, posebusters: bool, xtb: bool, posebusters_conformers: int = POSEBUSTERS_CONFORMERS
) -> list[dict]:
    """Check one chunk of molecules (``pipeline.metrics.check_molecule_records``), PoseBusters'
    verdicts cached in ``$LDSM_HOME/posebusters/verdicts.sqlite`` (``pipeline.posebusters_cache``)."""
    # RDKit's console lines off in this process too (a Dask worker): the reasons are in the rows.
    silence_rdkit()
    return pm.check_molecule_records(
        chunk,
        posebusters=posebusters,
        xtb=xtb,
        posebusters_conformers=posebusters_conformers,
        posebusters_cache=str(ldsm_home() / "posebusters" / "verdicts.sqlite"),
    )


@task
def check_crystals_task(chunk: list, fingerprints: bool, chgnet: bool) -> list[dict]:
    """Check one chunk of crystals (``pipeline.metrics.check_crystal_records``). CHGNet runs on
    one torch thread, as the chunks already share the cores (10 FIRE steps of a 5-atom Perov-5
    cell took 7.9 s on one thread and 25.7 s on torch's default two, on a loaded 2-core
    machine)."""
    if chgnet:
        import torch

        torch.set_num_threads(1)
    return pm.check_crystal_records(chunk, fingerprints=fingerprints, chgnet=chgnet)


@task
def reference_fingerprints_task(
    structures: list, key: str, processes: int = 0
) -> tuple[list, list]:
    """:func:`pipeline.reference.reference_fingerprints`, with progress in the run's log."""
    return ref.reference_fingerprints(structures, key, processes, _logger())


def _logger():
    """The run's logger inside a flow or task run, a plain one outside (a task called as ``.fn``)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("ldsm.screen")


def _chunks(items: list, size: int, workers: int = 1) -> list[list]:
    """``items`` in chunks of at most ``size``, and at least ``workers`` chunks where there are as
    many items: a small input is spread over every worker (PoseBusters' ~0.1-0.3 CPU s per molecule
    would otherwise run on one core)."""
    size = max(1, min(size, -(-len(items) // max(workers, 1))))
    return [items[k : k + size] for k in range(0, len(items), size)]


def _workers(config: ScreenConfig) -> int:
    """The workers that run the chunks: the flow's 2 threads, the local Dask processes, or 1 on a
    Dask cluster of unknown size (there ``--chunk-size`` alone decides)."""
    if config.dask_address is not None:
        return 1
    return config.workers or SCREEN_THREADS


def reference_structures(path: str) -> tuple[list, str]:
    """The reference's cells and their content key (:func:`pipeline.reference.reference_structures`)."""
    _logger().info(f"reading the reference {path}")
    return ref.reference_structures(read_task.fn(path).records)


@flow(name="screen", task_runner=ThreadPoolTaskRunner(max_workers=SCREEN_THREADS))
def screen_flow(config: ScreenConfig) -> dict:
    """Screen INPUT, write the outputs into ``config.out`` (holding its lock, :mod:`flows.lock`)
    and return the metrics dict."""
    with lock.owned(config.out):
        return _screen(config, Path(config.out))


def _screen(config: ScreenConfig, out: Path) -> dict:
    (out / "config.json").write_text(config.model_dump_json(indent=2))

    result = read_task(config.input)
    for skipped in result.skipped:
        _logger().info(f"not read: {skipped.file} ({skipped.reason})")
    molecules = [d for d in result.records if not is_crystal(d)]
    crystals = [d for d in result.records if is_crystal(d)]

    reference = ref_fps = None
    cutoff_name = config.cov_cutoffs or ref.guess_cutoffs(config.reference)
    if config.reference is not None:
        reference, key = reference_structures(config.reference)
        if crystals and cutoff_name is not None:
            ref_fps = reference_fingerprints_task(reference, key, config.reference_processes)

    mol_calls = [
        dict(
            chunk=c,
            posebusters=config.posebusters,
            xtb=config.xtb,
            posebusters_conformers=config.posebusters_conformers,
        )
        for c in _chunks(molecules, config.chunk_size, _workers(config))
    ]
    cry_calls = [
        dict(chunk=c, fingerprints=ref_fps is not None, chgnet=config.chgnet)
        for c in _chunks(crystals, config.chunk_size, _workers(config))
    ]
    mol_rows = [row for rows in run_chunks(check_molecules_task, out, mol_calls) for row in rows]
    cry_rows = [row for rows in run_chunks(check_crystals_task, out, cry_calls) for row in rows]
    unread = [pm.reject_row(r.file, r.record, r.reason) for r in result.rejects]

    train = None
    if config.train_smiles is not None:
        train = ref.read_train_smiles(config.train_smiles)
    metrics = {
        "molecules": pm.molecule_set_metrics(mol_rows, train),
        "crystals": pm.crystal_set_metrics(
            cry_rows,
            reference,
            ref_fps,
            cc.COV_CUTOFFS.get(cutoff_name) if cutoff_name else None,
        ),
        "n_read_rejects": len(result.rejects),
    }
    removed = apply_filters(mol_rows + cry_rows, [parse_filter(f) for f in config.filters])
    rank_by = parse_expression(config.rank_by) if config.rank_by else None
    rows = rank(mol_rows, rank_by) + rank(cry_rows, rank_by) + unread
    metrics["ranking"] = {"rank_by": config.rank_by, "filtered": removed}
    metrics["n_passed"] = {
        kind: sum(1 for r in rows if r["kind"] == kind[:-1] and r.get("passed"))
        for kind in ("molecules", "crystals")
    }
    metrics.update(write_relaxed_structures(out / "relaxed", rows))
    write_outputs(out, rows, metrics, cutoff_name)
    return metrics


def write_relaxed_structures(folder: Path, rows: list[dict]) -> dict:
    """The structures ``--xtb`` and ``--chgnet`` relaxed (the rows' ``relaxation``), in rank order,
    by the relaxation's own writers: ``folder/molecules/`` (samples.sdf, samples.xyz, relax.csv:
    GFN2-xTB energies before and after, RMSD, gap, dipole) and ``folder/crystals/`` (samples.cif,
    samples.extxyz, relax.csv: CHGNet energy per atom before and after). Returns ``{"xtb": summary,
    "chgnet": summary}`` for the kinds that were relaxed."""
    out = {}
    for kind, key, writer in (
        ("molecule", "xtb", write_relaxed_molecules),
        ("crystal", "chgnet", write_relaxed),
    ):
        results = [r["relaxation"] for r in rows if r["kind"] == kind and "relaxation" in r]
        if results:
            out[key] = writer(results, folder / f"{kind}s")
    return out


def run_screen(config: ScreenConfig) -> dict:
    """:func:`screen_flow` on the task runner that ``config.workers`` / ``config.dask_address``
    choose: the same rows and metrics whichever runs the chunks."""
    return with_runner(screen_flow, config.workers, config.dask_address)(config)


def write_outputs(out: Path, rows: list[dict], metrics: dict, cutoff_name: str | None) -> None:
    """screen.csv, metrics.json, passing structures, report.md with plots, Prefect artifacts."""
    columns = write_screen_table(out / "screen.csv", rows)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_passing(out / "passing", rows)
    report = screen_report(out, rows, metrics, cutoff_name)
    (out / "report.md").write_text(report)
    create_markdown_artifact(markdown=report, key="screen-report", description="Screening report")
    table = [{c: row.get(c) for c in columns[:12]} for row in rows[:200]]
    create_table_artifact(table=table, key="screen-table", description="Top screened candidates")


def saved_on_stop(args) -> str:
    """What an interrupted ``ldsm screen`` leaves behind (one line)."""
    return chunks_kept(args.out, "checked")


def input_error(path: str) -> tuple[int, str] | None:
    """``(exit code, one line)`` when INPUT holds nothing to screen, found before any flow starts:
    2 for a path that does not exist, 1 when every file is unreadable as a whole (empty,
    binary, unsupported, a CSV without its ``cif`` column); None otherwise."""
    from pipeline.io import input_problems, list_files

    problems = input_problems(path)
    if not problems:
        return None
    if not Path(path).exists():
        return 2, f"ldsm screen: {path}: no such file or folder"
    if Path(path).is_dir() and len(problems) < len(list_files(path)):
        return None  # some files may hold records; the others are reported as read rejects
    first = problems[0]
    more = f" (and {len(problems) - 1} more files)" if len(problems) > 1 else ""
    return 1, f"ldsm screen: {first.file}: {first.reason}{more}"


def config_from_args(args) -> ScreenConfig:
    """The :class:`ScreenConfig` of ``ldsm screen``'s options (pydantic's ValidationError for a
    bad combination, e.g. ``--rank-by xtb_gap`` without ``--xtb``)."""
    return ScreenConfig(
        input=args.input,
        out=args.out,
        reference=args.reference,
        train_smiles=args.train_smiles,
        posebusters=not args.no_posebusters,
        posebusters_conformers=args.posebusters_conformers,
        xtb=args.xtb,
        chgnet=args.chgnet,
        cov_cutoffs=args.cov_cutoffs,
        chunk_size=args.chunk_size,
        reference_processes=args.reference_processes,
        rank_by=args.rank_by,
        filters=args.filter or [],
        **runner_options(args),
    )


def check(args) -> None:
    """``ldsm screen``'s option checks before the flow (and before waiting for a server)."""
    config_from_args(args)


def run(args) -> int:
    """``ldsm screen``: runs :func:`run_screen` with the options and prints the metrics."""
    problem = input_error(args.input)
    if problem is not None:
        print(problem[1], file=sys.stderr)
        return problem[0]
    metrics = run_screen(config_from_args(args))
    print(json.dumps(metrics, indent=2))
    if not metrics["molecules"]["n"] and not metrics["crystals"]["n"]:
        print(
            f"ldsm screen: {args.input}: nothing could be read ({metrics['n_read_rejects']} read "
            f"rejects, listed in {Path(args.out) / 'screen.csv'})",
            file=sys.stderr,
        )
        return 1
    return 0
