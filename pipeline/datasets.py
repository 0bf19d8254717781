"""The data set registry: dataset cards in ``datasets/*.yaml`` and the steps that load one.

A card (:class:`DatasetCard`) names the data set, its source, format, split rule, licence and
the checksums of its reference files. Loading runs four pure steps that the ingest flow also
calls one by one: :func:`source_files` (which files), :func:`parse` (records and rejects),
:func:`split` (index arrays per split) and :func:`summarise` (counts and histograms);
:func:`load_dataset` chains them and caches the result (:mod:`pipeline.cache`).

Formats: ``qm9`` (:mod:`pipeline.qm9`: the qm9pack CSVs, or ``path`` = the canonical archive),
``cdvae-csv`` (one CSV per split in a folder, the file stem is the split name) and ``files``
(any file or folder that :func:`pipeline.io.read_structures` reads, split at random).
Crystal folders default to ``$LDSM_SHARED_DATA/<default_path>`` with ``LDSM_SHARED_DATA``
defaulting to ``<project root>/../shared/datasets``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict

from pipeline import cache
from pipeline import keys as K
from pipeline import qm9 as qm9_module
from pipeline.io import ReadResult, Reject, list_files, read_cdvae_csv, read_structures
from pipeline.structure_set import StructureSet

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CARDS_DIR = PROJECT_ROOT / "datasets"


class DatasetCard(BaseModel):
    """One ``datasets/<name>.yaml`` (or ``.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["molecule", "crystal", "any"]
    description: str
    format: Literal["qm9", "cdvae-csv", "files"]
    source: str
    licence: str
    split: str
    splits: list[str]
    url: str | None = None
    default_path: str | None = None
    properties: list[str] = []
    checksums: dict[str, str] = {}
    fractions: list[float] | None = None


@dataclass
class Dataset:
    """A loaded data set: ``splits`` maps a split name to ``(M,) int64`` indices into
    ``structures``; ``rejects`` lists every record that could not be used."""

    name: str
    structures: StructureSet
    splits: dict[str, np.ndarray]
    rejects: list[Reject] = field(default_factory=list)
    properties: list[str] = field(default_factory=list)

    def split_set(self, name: str) -> StructureSet:
        """The structures of one split."""
        return self.structures[self.splits[name]]


@dataclass
class Parsed:
    """Output of :func:`parse`: ``groups`` are the splits fixed by the source (QM9's EDM split,
    one CDVAE file per split) or ``{"all": ...}`` for a random split still to draw."""

    structures: StructureSet
    groups: dict[str, np.ndarray]
    rejects: list[Reject]


def load_cards(folder: Path = CARDS_DIR) -> dict[str, DatasetCard]:
    """All cards of ``folder`` by name."""
    cards = {}
    for path in sorted(folder.glob("*")):
        if path.suffix in (".yaml", ".yml"):
            card = DatasetCard(**yaml.safe_load(path.read_text()))
        elif path.suffix == ".json":
            card = DatasetCard(**json.loads(path.read_text()))
        else:
            continue
        cards[card.name] = card
    return cards


def get_card(name: str) -> DatasetCard:
    """The card called ``name``; ``ValueError`` listing the known names otherwise."""
    cards = load_cards()
    if name not in cards:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(cards))}")
    return cards[name]


def shared_data_dir() -> Path:
    """``$LDSM_SHARED_DATA``, default ``<project root>/../shared/datasets``."""
    default = PROJECT_ROOT.parent / "shared" / "datasets"
    return Path(os.environ.get("LDSM_SHARED_DATA", default))


def source_files(card: DatasetCard, path: str | Path | None = None) -> dict[str, list[Path]]:
    """The files that make the data set, by split (``"all"`` where the split is drawn later).

    Raises ``FileNotFoundError`` with the place looked at when nothing is there.
    """
    if card.format == "qm9":
        if path is None:
            return {"all": qm9_module.qm9pack_files()}
        archive = Path(path)
        if not archive.is_file():
            raise FileNotFoundError(f"QM9 archive not found: {archive}")
        extra = archive.parent / "uncharacterized.txt"
        return {"all": [archive, extra] if extra.exists() else [archive]}
    if card.format == "cdvae-csv":
        if path is None and card.default_path is None:
            raise FileNotFoundError(f"{card.name}: give --path to the folder of its CSV files")
        folder = Path(path) if path is not None else shared_data_dir() / card.default_path
        if folder.is_file():
            return {folder.stem: [folder]}
        files = {s: [folder / f"{s}.csv"] for s in card.splits if (folder / f"{s}.csv").exists()}
        if not files:
            raise FileNotFoundError(
                f"{card.name}: none of {[f'{s}.csv' for s in card.splits]} in {folder} "
                "(give --path or set LDSM_SHARED_DATA)"
            )
        return files
    if path is None:
        raise FileNotFoundError(f"{card.name}: give --path to a file or folder of structures")
    if not Path(path).exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    return {"all": list_files(path)}


def verify_checksums(card: DatasetCard, files: dict[str, list[Path]]) -> dict[str, str]:
    """``file name -> "ok" | "mismatch" | "not in card"`` against the card's SHA-256 sums."""
    status = {}
    for paths in files.values():
        for path in paths:
            expected = card.checksums.get(path.name)
            if expected is None:
                status[path.name] = "not in card"
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while block := handle.read(1 << 22):
                    digest.update(block)
            status[path.name] = "ok" if expected == f"sha256:{digest.hexdigest()}" else "mismatch"
    return status


def parse(
    card: DatasetCard,
    files: dict[str, list[Path]],
    progress: Callable[[Path, ReadResult | None], None] | None = None,
) -> Parsed:
    """Read and check every record; ``progress(file, result)`` is called after each file."""
    if card.format == "qm9":
        paths = files["all"]
        archive = None if paths == qm9_module.qm9pack_files() else paths[0]
        uncharacterized = paths[1] if archive is not None and len(paths) > 1 else None
        data = qm9_module.load_qm9(archive, uncharacterized)
        if progress is not None:
            for p in paths:
                progress(p, None)
        return Parsed(data.structures, data.splits, data.rejects)
    records, rejects, groups = [], [], {}
    for split_name, paths in files.items():
        start = len(records)
        for p in paths:
            if card.format == "cdvae-csv":
                result = read_cdvae_csv(p, card.properties)
            else:
                result = read_structures(p, card.properties)
            records.extend(result.records)
            rejects.extend(result.rejects)
            if progress is not None:
                progress(p, result)
        groups[split_name] = np.arange(start, len(records))
    return Parsed(StructureSet.from_data_list(records), groups, rejects)


def random_split(n: int, fractions: list[float], names: list[str], seed: int = 0) -> dict:
    """``numpy.random.default_rng(seed)`` permutation of ``n``; sizes ``floor(f * n)`` except the
    first split, which takes the remainder. Returns ``name -> (M,) int64``."""
    perm = np.random.default_rng(seed).permutation(n)
    sizes = [int(f * n) for f in fractions]
    sizes[0] = n - sum(sizes[1:])
    bounds = np.cumsum(sizes)[:-1]
    return dict(zip(names, np.split(perm, bounds), strict=True))


def split(card: DatasetCard, parsed: Parsed) -> dict[str, np.ndarray]:
    """Split indices: as the source fixes them, or drawn at random for ``files``."""
    if card.format == "files":
        fractions = card.fractions or [0.8, 0.1, 0.1]
        return random_split(len(parsed.structures), fractions, card.splits)
    return {k: np.asarray(v, dtype=np.int64) for k, v in parsed.groups.items()}


def summarise(dataset: Dataset) -> dict:
    """Counts and histograms: ``splits`` (name -> count), ``rejected``, ``elements`` (symbol ->
    atoms), ``atoms_per_structure`` (N -> structures, all splits) and per split."""
    from ase.data import chemical_symbols

    z = dataset.structures.values[K.Z].numpy()
    elements = {chemical_symbols[int(k)]: int(v) for k, v in sorted(Counter(z.tolist()).items())}
    n = dataset.structures.num_atoms().numpy()

    def histogram(values: np.ndarray) -> dict[str, int]:
        counts = np.bincount(values) if values.size else np.zeros(0, dtype=np.int64)
        return {str(k): int(c) for k, c in enumerate(counts) if c}

    return {
        "dataset": dataset.name,
        "structures": len(dataset.structures),
        "splits": {k: int(len(v)) for k, v in dataset.splits.items()},
        "rejected": len(dataset.rejects),
        "rejects": [vars(r) for r in dataset.rejects[:50]],
        "elements": elements,
        "atoms_per_structure": histogram(n),
        "atoms_per_structure_by_split": {k: histogram(n[v]) for k, v in dataset.splits.items()},
        "properties": list(dataset.properties),
    }


def cache_key(card: DatasetCard, files: dict[str, list[Path]]) -> str:
    """Content hash of the source files (split by split) and the card."""
    ordered = [p for name in sorted(files) for p in files[name]]
    return cache.content_hash(ordered, {"card": card.model_dump(), "splits": sorted(files)})


def to_payload(dataset: Dataset) -> dict:
    """A ``weights_only``-loadable dict (tensors, lists, strings) of ``dataset``."""
    return {
        "name": dataset.name,
        "structures": dataset.structures.state_dict(),
        "splits": {k: torch.as_tensor(v, dtype=torch.int64) for k, v in dataset.splits.items()},
        "rejects": [[r.file, r.record, r.reason] for r in dataset.rejects],
        "properties": list(dataset.properties),
    }


PAYLOAD_KEYS = ("name", "structures", "splits", "rejects", "properties")


def from_payload(payload: dict) -> Dataset:
    """The data set of a cache payload (``KeyError`` / ``TypeError`` when it lacks a part)."""
    return Dataset(
        name=payload["name"],
        structures=StructureSet.from_state_dict(payload["structures"]),
        splits={k: v.numpy() for k, v in payload["splits"].items()},
        rejects=[Reject(*r) for r in payload["rejects"]],
        properties=list(payload["properties"]),
    )


def features(structures: StructureSet) -> dict:
    """Atom types present (sorted atomic numbers) and the atoms-per-structure range."""
    z = structures.values[K.Z]
    n = structures.num_atoms()
    return {
        "atom_types": sorted(set(z.tolist())),
        "min_atoms": int(n.min()) if len(n) else 0,
        "max_atoms": int(n.max()) if len(n) else 0,
    }


def read_cache(entry: Path) -> Dataset | None:
    """The data set cached at ``entry``, or None (rebuild it) when there is none, it is from
    another format version, it cannot be read, or it lacks a part a reader needs."""
    try:
        payload = cache.load(entry)
    except Exception:  # a truncated or foreign file: rebuilt, never a crash
        return None
    if payload is None or any(k not in payload for k in PAYLOAD_KEYS):
        return None
    try:
        return from_payload(payload)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def write_cache(entry: Path, dataset: Dataset) -> Path:
    """The one writer of cache entries (``ldsm ingest`` and :func:`load_dataset` both use it)."""
    return cache.save(entry, to_payload(dataset))


def resolve(name: str, path: str | Path | None = None) -> tuple[DatasetCard, str | Path | None]:
    """The card for ``name``; an unregistered ``name`` that is an existing path means ``files``."""
    cards = load_cards()
    if name in cards:
        return cards[name], path
    if path is None and Path(name).exists():
        return cards["files"], name
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(cards))}, or a path")


def load_dataset(name: str, path: str | Path | None = None, use_cache: bool = True) -> Dataset:
    """Load data set ``name`` (a card name, or a path), from the cache when its content is unchanged.

    ``load_dataset("qm9").split_set("train")`` gives EDM's 100,000 training molecules.
    """
    card, path = resolve(name, path)
    files = source_files(card, path)
    entry = cache.cache_file(card.name, cache_key(card, files))
    if use_cache:
        dataset = read_cache(entry)
        if dataset is not None:
            return dataset
    parsed = parse(card, files)
    dataset = Dataset(
        card.name, parsed.structures, split(card, parsed), parsed.rejects, list(card.properties)
    )
    if use_cache:
        write_cache(entry, dataset)
    return dataset
