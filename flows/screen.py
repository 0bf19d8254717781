"""The ``screen`` flow: validate candidate molecules and crystals with the field's own checks.

``ldsm screen INPUT --out DIR [--reference REF] [--train-smiles FILE]`` reads INPUT (a file or
folder of SDF / XYZ / extxyz / CIF / CDVAE CSV / POSCAR, compressed or not) with
``pipeline.io.read_structures``, runs the checks of ``pipeline.molecule_checks`` and
``pipeline.crystal_checks`` on chunks in parallel (Prefect task mapping), ranks the candidates
and writes into DIR:

- ``screen.csv``: one row per candidate with every verdict and its reason, the reader's note
  (``read_note``), then one row of kind ``unread`` per file or record that could not be read;
- ``passing/``: the passing molecules (``molecules.sdf``) and crystals (one CIF each);
- ``metrics.json``: ``{"molecules": {...}, "crystals": {...}, "n_read_rejects": k}`` with the keys
  of ``pipeline.metrics`` (None where a metric does not apply); read rejects are in neither kind;
- ``report.md`` with ``plots/*.png`` (read rejects and reader notes listed); the same tables are
  published as Prefect artifacts;
- ``config.json``: the ``ScreenConfig`` of the run;
- ``.chunks/``: the checked chunks, stored as data (``flows.persist``): a killed run started
  again into the same DIR checks only the chunks that had not finished.

A molecule's validity follows the bonds and formal charges of its file where it has them, else
RDKit's perceived bonds; EDM's distance-table stability and validity stay as their own columns
(``pipeline.metrics.check_molecules``).

INPUT that does not exist ends the command before any flow with one line on stderr and exit
code 2; INPUT none of whose files can be read (empty, binary, unsupported, a CSV without its
``cif`` column), or from which no record could be read, ends with one line and exit code 1.

``--workers N`` checks the chunks on N local Dask processes, ``--dask-address`` on a running Dask
cluster (``flows.runners``); the outputs are the same.

``--reference`` is a reference (test) split read the same way: it enables crystal novelty,
coverage (with CDVAE's cutoffs for the data set named by ``--cov-cutoffs``, guessed from the path)
and the Wasserstein distances. Its CrystalNN fingerprints are computed on every core
(``--reference-processes``) with progress in the log, and cached under ``$LDSM_HOME/screen`` by
the content of the cells and of the fingerprint code.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import logging
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.exceptions import MissingContextError
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel
from rdkit import RDLogger

from flows import lock
from flows.persist import chunk_count, run_chunks
from flows.runners import with_runner
from pipeline import crystal_checks as cc
from pipeline import keys as K
from pipeline import metrics as pm
from pipeline import molecule_checks as mc
from pipeline import structures as S


class ScreenConfig(BaseModel):
    """Typed configuration of one screening run (dumped to DIR/config.json)."""

    input: str
    out: str
    reference: str | None = None
    train_smiles: str | None = None
    posebusters: bool = True
    xtb: bool = False
    chgnet: bool = False
    cov_cutoffs: str | None = None
    chunk_size: int = 256
    workers: int = 0  # local Dask worker processes; 0: threads (see flows.runners)
    dask_address: str | None = None  # an existing Dask scheduler instead
    reference_processes: int = 0  # processes for the reference fingerprints; 0: every core


def _ldsm_home() -> Path:
    return Path(os.environ.get("LDSM_HOME", Path.home() / ".cache" / "ldsm"))


def _guess_cutoffs(reference: str | None) -> str | None:
    """CDVAE cutoff set from the reference path (perov_5 / carbon_24 / mp_20), else None."""
    if reference is None:
        return None
    text = str(reference).lower()
    for name in cc.COV_CUTOFFS:
        if name.split("_")[0] in text:
            return name
    return None


@task(retries=2, retry_delay_seconds=1)
def read_task(path: str):
    """Read candidates; I/O retries, bad records come back as rejects. Overlapping atoms are kept
    (``min_distance=0``): judging them is the screen's job, with its own reason."""
    from pipeline.io import read_structures

    return read_structures(path, min_distance=0.0)


def _file_mol(data):
    """The record's own bonds and formal charges as an RDKit molecule; None without bonds."""
    edges = getattr(data, K.EDGE_INDEX, None)
    return None if edges is None or edges.shape[1] == 0 else S.to_rdkit(data)


@task
def check_molecules_task(chunk: list, posebusters: bool, xtb: bool) -> list[dict]:
    """Check one chunk of molecules (``pipeline.metrics.check_molecules``)."""
    # RDKit's console lines off in this process too (a Dask worker): the reasons are in the rows.
    RDLogger.DisableLog("rdApp.*")
    names = [str(getattr(d, "name", "")) or f"record{k}" for k, d in enumerate(chunk)]
    zs = [d.z.numpy() for d in chunk]
    poss = [d.pos.numpy() for d in chunk]
    return pm.check_molecules(
        names,
        zs,
        poss,
        posebusters=posebusters,
        xtb=xtb,
        file_mols=[_file_mol(d) for d in chunk],
        notes=[getattr(d, K.NOTE, None) for d in chunk],
    )


@task
def check_crystals_task(chunk: list, fingerprints: bool, chgnet: bool) -> list[dict]:
    names = [str(getattr(d, "name", "")) or f"record{k}" for k, d in enumerate(chunk)]
    lattices = [d.lattice.numpy().reshape(3, 3) for d in chunk]
    fracs = [d.frac.numpy() for d in chunk]
    zs = [d.z.numpy() for d in chunk]
    notes = [getattr(d, K.NOTE, None) for d in chunk]
    return pm.check_crystals(
        names, lattices, fracs, zs, fingerprints=fingerprints, chgnet=chgnet, notes=notes
    )


# Reference cells per fingerprint job: small enough for steady progress, large enough that a
# job's pickling is negligible next to CrystalNN.
FP_CHUNK = 64


@task
def reference_fingerprints_task(
    structures: list, key: str, processes: int = 0
) -> tuple[list, list]:
    """Fingerprints of the reference cells, with progress in the run's log.

    Cached in ``$LDSM_HOME/screen/reference_fp_<key>.npz``: ``key`` hashes the cells' content and
    the fingerprint code, so an edited reference file or fingerprint recomputes and an unchanged
    one is read back in a second. Computed on ``processes`` cores (0: every core this process may
    use); CrystalNN takes ~20 ms per site, minutes for a few thousand cells on one core.
    """
    logger = _logger()
    cache = _ldsm_home() / "screen" / f"reference_fp_{key}.npz"
    if cache.exists():
        try:
            with np.load(cache) as data:
                struct, comp = list(data["struct"]), list(data["comp"])
            logger.info(f"reference fingerprints of {len(structures)} cells read from {cache}")
            return struct, comp
        except (OSError, ValueError, KeyError) as exc:
            logger.warning(f"reference fingerprint cache {cache} unreadable ({exc}); recomputing")
    n_proc = processes or len(os.sched_getaffinity(0))
    logger.info(
        f"reference fingerprints: {len(structures)} cells on {n_proc} processes "
        f"(cached for the next run in {cache})"
    )
    started = time.monotonic()
    last = [started, 0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 15 and done - last[1] < total / 10:
            return
        last[:] = [now, done]
        rate = done / max(now - started, 1e-9)
        left = (total - done) / rate if rate else float("nan")
        logger.info(
            f"reference fingerprints: {done}/{total} cells ({100 * done / total:.0f}%), "
            f"{now - started:.0f} s, about {left:.0f} s left"
        )

    struct, comp = fingerprints_in_parallel(structures, n_proc, progress)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f".{cache.stem}.{os.getpid()}.npz")
    np.savez(partial, struct=np.asarray(struct), comp=np.asarray(comp))
    partial.replace(cache)  # atomic: a killed run never leaves half a cache
    return struct, comp


def _logger():
    """The run's logger inside a flow or task run, a plain one outside (a task called as ``.fn``)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("ldsm.screen")


def fingerprints_in_parallel(
    structures: list,
    processes: int,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = FP_CHUNK,
) -> tuple[list, list]:
    """:func:`pipeline.crystal_checks.fingerprints` over chunks of ``chunk`` cells on
    ``processes`` processes (the same lists, in the same order); ``progress(done, total)``
    after every chunk."""
    total = len(structures)
    chunks = [structures[k : k + chunk] for k in range(0, total, chunk)]
    results: list = [None] * len(chunks)
    done = 0
    if processes <= 1 or len(chunks) < 2:
        for k, part in enumerate(chunks):
            results[k] = cc.fingerprints(part)
            done += len(part)
            if progress is not None:
                progress(done, total)
    else:
        # spawn, not fork: the flow runs threads (Prefect's event loop), which fork can deadlock.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
            futures = {pool.submit(cc.fingerprints, part): k for k, part in enumerate(chunks)}
            for future in as_completed(futures):
                k = futures[future]
                results[k] = future.result()
                done += len(chunks[k])
                if progress is not None:
                    progress(done, total)
    struct = [fp for s, _ in results for fp in s]
    comp = [fp for _, c in results for fp in c]
    return struct, comp


def _is_crystal(record) -> bool:
    return getattr(record, "lattice", None) is not None


def _chunks(items: list, size: int) -> list[list]:
    return [items[k : k + size] for k in range(0, len(items), size)]


def _fingerprint_code() -> bytes:
    """The source of the fingerprint code, part of the cache key (an edit recomputes)."""
    return inspect.getsource(cc).encode()


def _reference_structures(path: str) -> tuple[list, str]:
    """The reference's cells as pymatgen Structures and the content key of their fingerprints."""
    _logger().info(f"reading the reference {path}")
    result = read_task.fn(path)
    structures = []
    for d in result.records:
        if _is_crystal(d):
            s = cc.to_structure(d.lattice.numpy().reshape(3, 3), d.frac.numpy(), d.z.numpy())
            if s is not None:
                structures.append(s)
    digest = hashlib.sha256(_fingerprint_code())
    for s in structures:
        digest.update(np.asarray(s.atomic_numbers).tobytes())
        digest.update(np.round(s.lattice.matrix, 5).tobytes())
        digest.update(np.round(s.frac_coords, 5).tobytes())
    return structures, digest.hexdigest()[:16]


@flow(name="screen", task_runner=ThreadPoolTaskRunner(max_workers=2))
def screen_flow(config: ScreenConfig) -> dict:
    """Screen INPUT, write the outputs into ``config.out`` (holding its lock, :mod:`flows.lock`)
    and return the metrics dict."""
    with lock.owned(config.out):
        return _screen(config, Path(config.out))


def _screen(config: ScreenConfig, out: Path) -> dict:
    (out / "config.json").write_text(config.model_dump_json(indent=2))

    result = read_task(config.input)
    molecules = [d for d in result.records if not _is_crystal(d)]
    crystals = [d for d in result.records if _is_crystal(d)]

    reference = ref_fps = None
    cutoff_name = config.cov_cutoffs or _guess_cutoffs(config.reference)
    if config.reference is not None:
        reference, key = _reference_structures(config.reference)
        if crystals and cutoff_name is not None:
            ref_fps = reference_fingerprints_task(reference, key, config.reference_processes)

    mol_calls = [
        dict(chunk=c, posebusters=config.posebusters, xtb=config.xtb)
        for c in _chunks(molecules, config.chunk_size)
    ]
    cry_calls = [
        dict(chunk=c, fingerprints=ref_fps is not None, chgnet=config.chgnet)
        for c in _chunks(crystals, config.chunk_size)
    ]
    mol_rows = [row for rows in run_chunks(check_molecules_task, out, mol_calls) for row in rows]
    cry_rows = [row for rows in run_chunks(check_crystals_task, out, cry_calls) for row in rows]
    unread = [pm.reject_row(r.file, r.record, r.reason) for r in result.rejects]

    train = None
    if config.train_smiles is not None:
        train = _read_train_smiles(config.train_smiles)
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
    rows = pm.rank(mol_rows) + pm.rank(cry_rows) + unread
    write_outputs(out, rows, metrics, cutoff_name)
    return metrics


def run_screen(config: ScreenConfig) -> dict:
    """:func:`screen_flow` on the task runner that ``config.workers`` / ``config.dask_address``
    choose: the same rows and metrics whichever runs the chunks."""
    return with_runner(screen_flow, config.workers, config.dask_address)(config)


def _read_train_smiles(path: str) -> set[str]:
    """Canonical SMILES of a file with one SMILES per line (first column; a header is skipped)."""
    out = set()
    for line in Path(path).read_text().splitlines():
        token = line.split(",")[0].split()[0] if line.strip() else ""
        smiles = mc.canonicalize_smiles(token) if token else None
        if smiles is not None:
            out.add(smiles)
    return out


_SKIP_COLUMNS = {"structure", "struct_fp", "comp_fp", "mol"}


def write_outputs(out: Path, rows: list[dict], metrics: dict, cutoff_name: str | None) -> None:
    """screen.csv, metrics.json, passing structures, report.md with plots, Prefect artifacts."""
    columns: list[str] = ["rank"]
    for row in rows:
        columns += [c for c in row if c not in columns and c not in _SKIP_COLUMNS]
    with open(out / "screen.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _write_passing(out / "passing", rows)
    report = _report(out, rows, metrics, cutoff_name)
    (out / "report.md").write_text(report)
    create_markdown_artifact(markdown=report, key="screen-report", description="Screening report")
    table = [{c: row.get(c) for c in columns[:12]} for row in rows[:200]]
    create_table_artifact(table=table, key="screen-table", description="Top screened candidates")


def _write_passing(folder: Path, rows: list[dict]) -> None:
    """Passing molecules into one SDF (sanitised, EDM bonds, 3-D), passing crystals one CIF each."""
    from pymatgen.io.cif import CifWriter
    from rdkit import Chem

    folder.mkdir(parents=True, exist_ok=True)
    passing = [r for r in rows if r.get("passed")]
    writer = Chem.SDWriter(str(folder / "molecules.sdf"))
    for row in passing:
        if row["kind"] == "molecule":
            mol = Chem.Mol(row["mol"])
            mol.SetProp("_Name", row["name"])
            writer.write(mol)
        else:
            CifWriter(row["structure"]).write_file(
                folder / f"{row['rank']}_{_safe(row['name'])}.cif"
            )
    writer.close()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120]


def _report(out: Path, rows: list[dict], metrics: dict, cutoff_name: str | None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    lines = ["# Screening report", ""]
    for kind in ("molecules", "crystals"):
        m = metrics[kind]
        if not m["n"]:
            continue
        lines += [f"## {kind.capitalize()} ({m['n']})", "", "| metric | value |", "| --- | --- |"]
        lines += [
            f"| {k} | {'n/a' if v is None else f'{v:.4g}'} |" for k, v in m.items() if k != "n"
        ]
        fractions = {k: v for k, v in m.items() if k not in ("n",) and v is not None}
        fractions = {k: v for k, v in fractions.items() if not k.startswith("wdist")}
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.barh(list(fractions), list(fractions.values()))
        ax.set_xlim(0, 1)
        ax.set_xlabel("fraction")
        fig.tight_layout()
        fig.savefig(plots / f"{kind}_metrics.png", dpi=100)
        plt.close(fig)
        lines += ["", f"![{kind} metrics](plots/{kind}_metrics.png)", "", "Most common failures:"]
        kind_rows = [r for r in rows if r["kind"] == kind[:-1]]
        reasons = Counter(
            f"{col}: {r[col]}"
            for r in kind_rows
            for col in r
            if col.endswith("_reason") and isinstance(r[col], str) and not r[col].startswith("ok")
        )
        lines += [f"- {n} x {reason}" for reason, n in reasons.most_common(10)] or ["- none"]
        lines.append("")
    if metrics["crystals"]["n"]:
        lines.append(f"Coverage cutoffs: {cutoff_name or 'none (no reference data set named)'}.")
    unread = [r for r in rows if r["kind"] == "unread"]
    lines += ["", f"## Read rejects ({metrics['n_read_rejects']})", ""]
    lines += ["Files and records that could not be read; they are in no rate above.", ""]
    lines += [f"- {r['name']}: {r['read_reason']}" for r in unread[:20]] or ["- none"]
    if len(unread) > 20:
        lines.append(f"- ... and {len(unread) - 20} more (screen.csv, kind 'unread')")
    notes = Counter(r["read_note"] for r in rows if r.get("read_note"))
    if notes:
        lines += ["", "## Read notes", "", "Records read with a remark from the reader:", ""]
        lines += [f"- {n} x {note}" for note, n in notes.most_common(10)]
    return "\n".join(lines) + "\n"


def saved_on_stop(args) -> str:
    """What an interrupted ``ldsm screen`` leaves behind (one line)."""
    return (
        f"{chunk_count(args.out)} checked chunks kept in {Path(args.out) / '.chunks'}; "
        "run the same command again to resume"
    )


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


def run(args) -> int:
    """``ldsm screen``: runs :func:`run_screen` with the options and prints the metrics."""
    problem = input_error(args.input)
    if problem is not None:
        print(problem[1], file=sys.stderr)
        return problem[0]
    config = ScreenConfig(
        input=args.input,
        out=args.out,
        reference=args.reference,
        train_smiles=args.train_smiles,
        posebusters=not args.no_posebusters,
        xtb=args.xtb,
        chgnet=args.chgnet,
        cov_cutoffs=args.cov_cutoffs,
        chunk_size=args.chunk_size,
        reference_processes=args.reference_processes,
        workers=args.workers,
        dask_address=args.dask_address,
    )
    metrics = run_screen(config)
    print(json.dumps(metrics, indent=2))
    if not metrics["molecules"]["n"] and not metrics["crystals"]["n"]:
        print(
            f"ldsm screen: {args.input}: nothing could be read ({metrics['n_read_rejects']} read "
            f"rejects, listed in {Path(args.out) / 'screen.csv'})",
            file=sys.stderr,
        )
        return 1
    return 0
