"""The ``ingest`` flow: read -> parse -> featurise -> split -> cache, with a summary.

``ldsm ingest NAME [--path P] [--summary-json FILE]`` loads a registered data set (a card of
``datasets/``: qm9, perov-5, carbon-24, mp-20) or any file / folder of structures (``NAME`` an
existing path, or ``files --path P``). Steps (Prefect tasks; the maths lives in
``pipeline.datasets``):

1. read: locate the source files and hash their content (I/O, retried); a cache entry under
   ``$LDSM_HOME/ingest`` with that hash ends the flow early with the cached data set;
2. parse: every file through the readers of ``pipeline.io`` / ``pipeline.qm9`` with a progress
   bar; bad records become rejects (file, record, reason), never an error;
3. featurise: atom types present and atoms per structure;
4. split: the source's split (EDM for QM9, one CDVAE file per split) or a seeded random one;
5. cache: the collated data set, saved atomically (I/O, retried).

The summary (structures per split, rejects, element and atoms-per-structure histograms, cache
file, checksums against the card) is printed, written as JSON with ``--summary-json`` and
published as Prefect artifacts (a Markdown report and a table of the splits).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel
from tqdm.auto import tqdm

from flows.console import UsageError
from pipeline import cache
from pipeline import datasets as D


class IngestConfig(BaseModel):
    """Typed configuration of one ingest run."""

    name: str
    path: str | None = None
    summary_json: str | None = None
    use_cache: bool = True


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def read_task(name: str, path: str | None) -> tuple[D.DatasetCard, dict, str, dict]:
    """Card, source files by split, content hash, checksum status (I/O: retried)."""
    card, path = D.resolve(name, path)
    files = D.source_files(card, path)
    return card, files, D.cache_key(card, files), D.verify_checksums(card, files)


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def load_cache_task(entry: str) -> D.Dataset | None:
    """The cached data set, or None when the entry is missing, unreadable or incomplete."""
    return D.read_cache(Path(entry))


@task(cache_policy=NO_CACHE)
def parse_task(card: D.DatasetCard, files: dict) -> D.Parsed:
    """Parse every source file, with a progress bar; bad records become rejects."""
    paths = [p for ps in files.values() for p in ps]
    with tqdm(total=len(paths), desc=f"parse {card.name}", unit="file") as bar:

        def progress(path, result) -> None:
            if result is not None:
                bar.set_postfix(records=len(result.records), rejects=len(result.rejects))
            bar.update(1)

        return D.parse(card, files, progress)


@task(cache_policy=NO_CACHE)
def featurise_task(parsed: D.Parsed) -> dict:
    """Atom types present (sorted atomic numbers) and the atoms-per-structure range."""
    return D.features(parsed.structures)


@task(cache_policy=NO_CACHE)
def split_task(card: D.DatasetCard, parsed: D.Parsed) -> dict:
    """The source's split, or a seeded random one."""
    return D.split(card, parsed)


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def save_cache_task(entry: str, dataset: D.Dataset) -> str:
    """Write the collated data set to its cache entry, atomically."""
    return str(D.write_cache(Path(entry), dataset))


def _report(summary: dict) -> str:
    lines = [
        f"# Ingest: {summary['dataset']}",
        "",
        f"{summary['structures']} structures, {summary['rejected']} rejected; "
        f"{'read from cache' if summary['cached'] else 'parsed'} in {summary['seconds']:.1f} s.",
        f"Cache: `{summary['cache_file']}`.",
        "",
        "| split | structures |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in summary["splits"].items()],
        "",
        "| element | atoms |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in summary["elements"].items()],
        "",
        "| atoms per structure | structures |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in summary["atoms_per_structure"].items()],
    ]
    if summary["rejects"]:
        lines += ["", "| file | record | reason |", "| --- | --- | --- |"]
        lines += [f"| {r['file']} | {r['record']} | {r['reason']} |" for r in summary["rejects"]]
    if summary["checksums"]:
        lines += [
            "",
            "Checksums: " + ", ".join(f"{k} {v}" for k, v in summary["checksums"].items()),
        ]
    return "\n".join(lines) + "\n"


@flow(name="ingest")
def ingest_flow(config: IngestConfig) -> dict:
    """Ingest one data set; returns the summary dict (keys ``dataset``, ``splits``, ``rejected``,
    ``elements``, ``atoms_per_structure``, ``cached``, ``cache_file``, ...)."""
    start = time.perf_counter()
    card, files, key, checksums = read_task(config.name, config.path)
    entry = cache.cache_file(card.name, key)
    dataset = load_cache_task(str(entry)) if config.use_cache else None
    cached = dataset is not None
    if cached:
        features = D.features(dataset.structures)
    else:
        parsed = parse_task(card, files)
        features = featurise_task(parsed)
        splits = split_task(card, parsed)
        dataset = D.Dataset(
            card.name, parsed.structures, splits, parsed.rejects, list(card.properties)
        )
        if config.use_cache:
            save_cache_task(str(entry), dataset)
    summary = {
        **D.summarise(dataset),
        **features,
        "cached": cached,
        "cache_file": str(entry),
        "content_hash": key,
        "checksums": checksums,
        "sources": {k: [str(p) for p in v] for k, v in files.items()},
        "seconds": time.perf_counter() - start,
    }
    key_name = f"ingest-{card.name}".lower().replace("_", "-")
    create_markdown_artifact(markdown=_report(summary), key=key_name, description="Ingest summary")
    create_table_artifact(
        table=[{"split": k, "structures": v} for k, v in summary["splits"].items()]
        + [{"split": "rejected", "structures": summary["rejected"]}],
        key=f"{key_name}-splits",
        description=f"{card.name}: structures per split",
    )
    if config.summary_json:
        Path(config.summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(config.summary_json).write_text(json.dumps(summary, indent=2))
    return summary


def saved_on_stop(args) -> str:
    """What an interrupted ``ldsm ingest`` leaves behind (one line)."""
    return "nothing was cached (the cache entry is written only when the data set is complete)"


def check(args) -> None:
    """``ldsm ingest``'s checks before the flow: the name and its files exist."""
    try:
        card, path = D.resolve(args.name, args.path)
        D.source_files(card, path)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc


def run(args) -> int:
    """``ldsm ingest``: runs :func:`ingest_flow` and prints the report."""
    config = IngestConfig(
        name=args.name, path=args.path, summary_json=args.summary_json, use_cache=not args.no_cache
    )
    summary = ingest_flow(config)
    print(_report(summary))
    return 0 if summary["structures"] else 1
