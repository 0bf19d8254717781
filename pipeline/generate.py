"""Generation: draw structures from a trained checkpoint, in seeded chunks, and write them.

A run is a pure function of ``(checkpoint, GenerateConfig)``:

1. **Sizes.** ``n`` atom counts, fixed by the caller (``num_atoms``) or drawn from the
   checkpoint's training histogram (restricted to a ``num_atoms`` range ``(low, high)``) with a NumPy generator seeded by ``(seed, 0)``. Structure ``i``
   of the output is the ``i``-th draw, whatever the chunking.
2. **Chunks.** The structures are sorted by atom count (stable) and dealt into chunks of
   ``batch_size`` structures (``batch_size`` counts structures, not atoms), each sampled as one
   batched graph. Sorting keeps the sizes in a chunk close: the network's edges are sparse and do
   not care, but the physical prior (Langevin steps whose exact moments come from a padded
   ``eigh`` of the ``3 n_max``-dimensional drift Jacobian) and the pair drift pad every molecule of
   a chunk to its largest one (measured: the prior of 50 molecules costs 4.1 s at 19 atoms each
   and 6.8 s for sizes drawn from 9..29, one thread).
3. **Seeds.** Chunk ``k`` draws all its noise from a ``torch.Generator`` seeded from
   ``SeedSequence((seed, 1, k))``. A chunk's output depends only on its own inputs, so the result
   does not depend on which worker runs which chunk or in what order (the flow fans chunks out as
   Prefect tasks). It does depend on ``batch_size``: a chunk draws its noise as one batch.

Degenerate samples (non-finite coordinates or lattice, all atoms on one point, a flat cell) are
kept and written: the screen reads them back as rejects or judges them invalid, with a reason.
:func:`degenerate_reason` names them, and :func:`write_samples` lists them in ``generation.json``
together with any structure a writer could not hold (then left out of that one file only).
"""

from __future__ import annotations

import json
import math
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator
from torch import Tensor
from torch_geometric.data import Data
from tqdm.auto import tqdm

from pipeline import keys as K
from pipeline.compositions import CompositionRecord, safe_name
from pipeline.io import write_structures
from pipeline.recipes import Trained, load_trained
from pipeline.samplers import SamplerConfig
from pipeline.structures import is_crystal

Kind = Literal["molecule", "crystal"]
# Output files per kind: the first is the one the screen reads.
SAMPLE_FILES: dict[str, tuple[str, str]] = {
    "molecule": ("samples.sdf", "samples.xyz"),
    "crystal": ("samples.cif", "samples.extxyz"),
}
SUMMARY_FILE = "generation.json"
# Atoms per structure: one size, or an inclusive range (low, high) drawn from the histogram.
NumAtoms = PositiveInt | tuple[PositiveInt, PositiveInt]


class GenerateConfig(BaseModel):
    """What to generate: ``n`` structures with ``sampler``.

    ``num_atoms`` fixes every structure's size; a range ``(low, high)`` draws sizes from the
    checkpoint's training histogram restricted to ``low..high`` (both included); None draws them
    from the whole histogram. ``compositions`` (structure prediction, a checkpoint trained with its types given)
    asks for ``n`` structures of each record instead, in record order, sized by the record.
    ``batch_size`` is the number of structures sampled together as one batched graph (one chunk,
    one Prefect task in the flow).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: PositiveInt = 100
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    num_atoms: NumAtoms | None = None
    compositions: list[CompositionRecord] | None = None
    batch_size: PositiveInt = 250
    seed: NonNegativeInt = 0

    @model_validator(mode="after")
    def _one_size_rule(self) -> GenerateConfig:
        if self.compositions is not None and self.num_atoms is not None:
            raise ValueError("compositions fix the sizes: leave num_atoms unset")
        if isinstance(self.num_atoms, tuple) and self.num_atoms[0] > self.num_atoms[1]:
            low, high = self.num_atoms
            raise ValueError(f"num_atoms range {low}-{high}: the low end is above the high end")
        return self

    def records(self) -> list[CompositionRecord] | None:
        """The composition of every output structure (each record ``n`` times), or None."""
        if self.compositions is None:
            return None
        return [r for r in self.compositions for _ in range(self.n)]

    def names(self) -> list[str]:
        """Output names: ``sample_000000``, ... or, for compositions, ``000000_<record>``."""
        records = self.records()
        if records is None:
            return [f"sample_{i:06d}" for i in range(self.n)]
        return [f"{i:06d}_{safe_name(r.name)}" for i, r in enumerate(records)]


@dataclass(frozen=True)
class Chunk:
    """One unit of work: structures ``rows (m,)`` (their output positions) with atom ``counts
    (m,)`` int64, sampled with the generator of ``(seed, index)``; ``types (counts.sum(),)`` the
    atomic numbers of their atoms in row order when the compositions are given, else None."""

    index: int
    rows: Tensor
    counts: Tensor
    seed: int
    types: Tensor | None = None


@dataclass
class ChunkResult:
    """The structures of chunk ``index`` in the order of its ``rows``; NFE and wall seconds."""

    index: int
    rows: Tensor
    structures: list[Data]
    nfe: int
    seconds: float


@dataclass
class GenerationResult:
    """``structures`` in output order (named ``sample_000000``, ...), the NFE of the sampler,
    the wall seconds spent sampling (summed over chunks) and the degenerate samples by name."""

    structures: list[Data]
    nfe: int
    seconds: float
    degenerate: dict[str, str]

    @property
    def seconds_per_structure(self) -> float:
        return self.seconds / max(len(self.structures), 1)


def histogram_sizes(histogram: dict[int, int], within: tuple[int, int] | None = None) -> np.ndarray:
    """The sizes of ``histogram`` ({size: count}) with a count, ascending, restricted to
    ``within`` = (low, high), both included, when given.

    Raises ``ValueError`` when no size is left (an empty histogram, or none in the range).
    """
    sizes = np.array(sorted(int(s) for s, c in histogram.items() if c > 0))
    if len(sizes) == 0:
        raise ValueError("the checkpoint has an empty atom-count histogram; pass num_atoms")
    if within is None:
        return sizes
    low, high = within
    kept = sizes[(sizes >= low) & (sizes <= high)]
    if len(kept) == 0:
        raise ValueError(
            f"no training structure has {low}-{high} atoms "
            f"(the training sizes are {sizes.min()}-{sizes.max()})"
        )
    return kept


def draw_num_atoms(
    histogram: dict[int, int], n: int, seed: int, within: tuple[int, int] | None = None
) -> Tensor:
    """``(n,)`` int64 atom counts drawn with the frequencies of ``histogram`` ({size: count})
    among :func:`histogram_sizes` (``within`` a range (low, high), both included, or all)."""
    sizes = histogram_sizes(histogram, within)
    freq = np.array([histogram[s] for s in sizes], dtype=float)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    return torch.as_tensor(rng.choice(sizes, size=n, p=freq / freq.sum()), dtype=torch.int64)


def plan(config: GenerateConfig, histogram: dict[int, int]) -> list[Chunk]:
    """The chunks of a run: sizes drawn (or fixed, or the compositions'), sorted, dealt
    ``batch_size`` at a time."""
    records = config.records()
    if records is not None:
        counts = torch.tensor([len(r.z) for r in records], dtype=torch.int64)
    elif isinstance(config.num_atoms, int):
        counts = torch.full((config.n,), config.num_atoms, dtype=torch.int64)
    else:
        counts = draw_num_atoms(histogram, config.n, config.seed, config.num_atoms)
    order = torch.argsort(counts, stable=True)
    size = config.batch_size
    chunks = []
    for k in range(math.ceil(len(counts) / size)):
        rows = order[k * size : (k + 1) * size]
        types = None
        if records is not None:
            types = torch.tensor([z for i in rows.tolist() for z in records[i].z])
        chunks.append(Chunk(k, rows, counts[rows], config.seed, types))
    return chunks


def chunk_generator(seed: int, index: int) -> torch.Generator:
    """The generator of chunk ``index``: independent streams for distinct ``(seed, index)``."""
    state = np.random.SeedSequence([seed, 1, index]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


_LOADED: dict[str, Trained] = {}
# torch's forward-mode AD (the drift Hessians of the prior) keeps global dual levels that two
# threads must not interleave: chunks in one process run one at a time; processes (Dask) scale.
_SAMPLING = threading.Lock()


def checkpoint_key(path: str | Path) -> str:
    """``path:size:mtime``: a rewritten checkpoint is a new key (for caches of loaded models and
    of finished chunks)."""
    stat = Path(path).stat()
    return f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def load_cached(checkpoint: str | Path) -> Trained:
    """:func:`pipeline.recipes.load_trained`, once per process and checkpoint version."""
    key = checkpoint_key(checkpoint)
    if key not in _LOADED:
        _LOADED[key] = load_trained(checkpoint)
    return _LOADED[key]


def sample_chunk(trained: Trained, chunk: Chunk, sampler: SamplerConfig) -> ChunkResult:
    """Sample one chunk (:func:`collect` names the structures and puts them in place)."""
    generator = chunk_generator(chunk.seed, chunk.index)
    with _SAMPLING:
        started = time.perf_counter()
        given = {} if chunk.types is None else {"types": chunk.types}
        structures, nfe = trained.recipe.sample(
            trained.model, chunk.counts, sampler, generator, **given
        )
        seconds = time.perf_counter() - started
    return ChunkResult(chunk.index, chunk.rows, structures, nfe, seconds)


def collect(
    results: Sequence[ChunkResult], n: int, names: Sequence[str] | None = None
) -> GenerationResult:
    """Put the chunks' structures at their rows and name them (``names``, by default
    ``sample_000000``, ...).

    Raises ``ValueError`` unless every row 0..n-1 is filled exactly once (a lost or repeated
    chunk is a bug, never a silent gap).
    """
    out: list[Data | None] = [None] * n
    for r in results:
        if len(r.structures) != len(r.rows):
            raise ValueError(f"chunk {r.index}: {len(r.structures)} structures, {len(r.rows)} rows")
        for row, data in zip(r.rows.tolist(), r.structures, strict=True):
            if not 0 <= row < n or out[row] is not None:
                raise ValueError(f"chunk {r.index}: row {row} out of range or filled twice")
            out[row] = data
    missing = [i for i, s in enumerate(out) if s is None]
    if missing:
        raise ValueError(f"{len(missing)} of {n} structures missing (first: {missing[:5]})")
    for i, data in enumerate(out):
        data[K.NAME] = names[i] if names is not None else f"sample_{i:06d}"
    degenerate = {s[K.NAME]: why for s in out if (why := degenerate_reason(s)) is not None}
    return GenerationResult(
        structures=out,
        nfe=max((r.nfe for r in results), default=0),
        seconds=sum(r.seconds for r in results),
        degenerate=degenerate,
    )


def generate(trained: Trained, config: GenerateConfig, progress: bool = False) -> GenerationResult:
    """All chunks of ``config`` in this process, in order; ``progress`` shows a bar."""
    chunks = plan(config, trained.num_atoms)
    names = config.names()
    results = []
    with tqdm(total=len(names), disable=not progress, desc="generate", unit="structure") as bar:
        for chunk in chunks:
            results.append(sample_chunk(trained, chunk, config.sampler))
            bar.update(len(chunk.rows))
    return collect(results, len(names), names)


def degenerate_reason(data: Data) -> str | None:
    """Why a sample (a ``Data``, or a ``Record``) is degenerate (non-finite, all atoms on one
    point, a flat cell), or None."""
    crystal = is_crystal(data)
    coords = np.asarray(data[K.FRAC] if crystal else data[K.POS])
    if not np.isfinite(coords).all():
        return "non-finite coordinates"
    if crystal:
        lattice = np.asarray(data[K.LATTICE], dtype=np.float64).reshape(3, 3)
        if not np.isfinite(lattice).all():
            return "non-finite lattice"
        volume = abs(float(np.linalg.det(lattice)))
        if volume < 1e-6:
            return f"flat cell (volume {volume:.1e} A^3)"
    if len(coords) > 1 and float(np.abs(coords - coords[0]).max()) < 1e-6:
        return "all atoms at one point"
    return None


def _write(structures: Sequence[Data], path: Path) -> dict[str, str]:
    """Write ``structures`` to ``path``; a record the writer cannot hold is left out of this file.

    Returns ``{name: reason}`` of the records left out. The writers of :mod:`pipeline.io` raise on
    some degenerate records (ASE asserts on a zero cell), so after a failed write each record is
    tried alone to find the culprits, and the rest is written.
    """
    # Generated molecules get the bonds and charges the screen perceives (pipeline.writers).
    options = {"perceive_bonds": True} if path.suffix == ".sdf" else {}
    try:
        write_structures(structures, path, **options)
        return {}
    except Exception:  # noqa: BLE001 - any writer failure is handled record by record below
        pass
    unwritable = {}
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / f"probe{path.suffix}"
        for data in structures:
            try:
                write_structures([data], probe, **options)
            except Exception as err:  # noqa: BLE001 - the reason is recorded, not raised
                unwritable[data[K.NAME]] = f"{type(err).__name__}: {err}".strip(": ")[:200]
    write_structures([s for s in structures if s[K.NAME] not in unwritable], path, **options)
    return unwritable


def write_samples(
    structures: Sequence[Data], out: str | Path, kind: Kind | None = None, info: dict | None = None
) -> dict:
    """Write ``out/samples.sdf`` + ``samples.xyz`` (molecules) or ``samples.cif`` +
    ``samples.extxyz`` (crystals) and ``out/generation.json``; returns the summary written there.

    ``kind`` None: from the first structure. The summary is ``info`` (sampler, NFE, timings,
    checkpoint: whatever the caller knows) plus ``n``, ``kind``, ``files`` (paths, the screen's
    input first), ``degenerate`` ({name: reason}) and ``unwritten`` ({file name: {name: reason}}
    for records a writer could not hold; every other file still has them).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if kind is None:
        kind = "crystal" if structures and is_crystal(structures[0]) else "molecule"
    files, unwritten = [], {}
    for name in SAMPLE_FILES[kind]:
        left_out = _write(structures, out / name)
        files.append(str(out / name))
        if left_out:
            unwritten[name] = left_out
    summary = {
        **(info or {}),
        "n": len(structures),
        "kind": kind,
        "files": files,
        "degenerate": {
            s[K.NAME]: why for s in structures if (why := degenerate_reason(s)) is not None
        },
        "unwritten": unwritten,
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def write_cifs(structures: Sequence[Data], folder: str | Path) -> dict[str, str]:
    """One CIF per structure, ``folder/<name>.cif``; returns ``{name: reason}`` of the structures
    the CIF writer could not hold (a degenerate cell), which get no file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unwritten = {}
    for data in structures:
        try:
            write_structures([data], folder / f"{data[K.NAME]}.cif")
        except Exception as err:  # noqa: BLE001 - the reason is recorded, not raised
            unwritten[data[K.NAME]] = f"{type(err).__name__}: {err}".strip(": ")[:200]
    return unwritten


def summary_info(checkpoint: str | Path, config: GenerateConfig, result: GenerationResult) -> dict:
    """The generation facts of a run for :func:`write_samples`' summary."""
    return {
        "checkpoint": str(checkpoint),
        "sampler": config.sampler.model_dump(),
        "nfe": result.nfe,
        "batch_size": config.batch_size,
        "num_atoms": config.num_atoms,
        "compositions": None if config.compositions is None else len(config.compositions),
        "seed": config.seed,
        "seconds": round(result.seconds, 3),
        "seconds_per_structure": round(result.seconds_per_structure, 5),
    }


__all__ = [
    "GenerateConfig",
    "NumAtoms",
    "GenerationResult",
    "Chunk",
    "ChunkResult",
    "draw_num_atoms",
    "histogram_sizes",
    "plan",
    "chunk_generator",
    "checkpoint_key",
    "load_cached",
    "sample_chunk",
    "collect",
    "generate",
    "degenerate_reason",
    "write_cifs",
    "write_samples",
    "summary_info",
]
