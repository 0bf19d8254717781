"""QM9 (Ramakrishnan et al. 2014) with EDM's split, read fast and without a network.

Two sources give the same 130,831 molecules (QM9's 133,885 minus its 3,054 "uncharacterized"):

- default, offline: the CSVs shipped in the ``qm9pack`` wheel (``qm9pack/data/qm9_part{1,2,3}.csv``),
  read by file path (``import qm9pack`` would pull in ``pkg_resources``);
- canonical: the figshare archive ``dsgdb9nsd.xyz.tar.bz2`` (one QM9-format XYZ file per molecule)
  plus the list of uncharacterized molecules, as EDM downloads them. :func:`download_qm9` fetches
  them (needs internet) into ``$LDSM_HOME/qm9``; ``load_qm9(archive=PATH)`` reads a local copy.

Parsing is vectorised: the coordinate and element columns of all molecules are joined into one
string each and converted in a single NumPy call, and the result is a flat
:class:`pipeline.structure_set.StructureSet` (no per-molecule Python objects).

Each molecule: ``z (N,)``, ``pos (N, 3)`` in Angstrom (B3LYP/6-31G(2df,p) geometry), ``y (1, 15)``
with :data:`PROPERTIES` in QM9's own units (GHz, Debye, bohr^3, Hartree, bohr^2, cal/mol/K),
``name`` (``dsgdb9nsd_000001``) and ``smiles`` (the GDB-17 SMILES). Per-atom Mulliken charges and
harmonic frequencies are not kept.

EDM's split (``qm9/data/prepare/qm9.py::gen_splits_gdb9`` of ehoogeboom/e3_diffusion_for_molecules):
molecules in index order, ``numpy.random.seed(0)``, ``permutation(130831)``; the first 100,000
are train, the next 17,748 validation, the last 13,083 (``int(0.1 * 130831)``) test.
"""

from __future__ import annotations

import importlib.util
import re
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline import keys as K
from pipeline.cache import ldsm_home
from pipeline.records import Reject
from pipeline.structure_set import StructureSet
from pipeline.structures import MIN_DISTANCE

NUM_MOLECULES = 130_831
NUM_TRAIN, NUM_VAL, NUM_TEST = 100_000, 17_748, 13_083
ELEMENTS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
PROPERTIES = (
    "RotA_GHz",
    "RotB_GHz",
    "RotC_GHz",
    "Dipole_debye",
    "Polarizability_bohr3",
    "HOMO_au",
    "LUMO_au",
    "HOMO_LUMO_gap_au",
    "R2_bohr2",
    "ZPVE_au",
    "InternalEnergy_0K_au",
    "InternalEnergy_298K_au",
    "Enthalphy_298K_au",
    "GibbsFreeEnergy_298K_au",
    "Heatcapacity_Cv_cal_mol_K",
)
CSV_COLUMNS = ("XYZ_file", "Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang", *PROPERTIES)

# The canonical files, as EDM downloads them (figshare, QM9's publication record).
ARCHIVE_URL = "https://ndownloader.figshare.com/files/3195389"  # dsgdb9nsd.xyz.tar.bz2
UNCHARACTERIZED_URL = "https://ndownloader.figshare.com/files/3195404"  # uncharacterized.txt


@dataclass
class QM9:
    """The molecules and EDM's split.

    ``structures``: a ``Sequence[Data]`` of the good molecules in QM9 index order;
    ``splits``: ``{"train", "val", "test"} -> (M,) int64`` indices into ``structures``, in EDM's
    permutation order; ``rejects``: molecules that failed the structure checks (none in QM9).
    """

    structures: StructureSet
    splits: dict[str, np.ndarray]
    rejects: list[Reject] = field(default_factory=list)


def qm9pack_files() -> list[Path]:
    """Paths of the three QM9 CSVs inside the installed ``qm9pack`` wheel (not imported)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the qm9pack package is not installed (pip install qm9pack)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    files = [folder / f"qm9_part{i}.csv" for i in (1, 2, 3)]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"qm9pack is missing its data files: {missing}")
    return files


def edm_split(n: int = NUM_MOLECULES) -> dict[str, np.ndarray]:
    """EDM's split of ``n`` molecules (must be all 130,831): ``{"train", "val", "test"} -> (M,)``."""
    if n != NUM_MOLECULES:
        raise ValueError(f"EDM's split is defined for all {NUM_MOLECULES} QM9 molecules, got {n}")
    # EDM seeds the global generator; a local RandomState(0) draws the identical permutation.
    perm = np.random.RandomState(0).permutation(n)
    return {
        "train": perm[:NUM_TRAIN],
        "val": perm[NUM_TRAIN : NUM_TRAIN + NUM_VAL],
        "test": perm[NUM_TRAIN + NUM_VAL :],
    }


def _flat_set(
    z: np.ndarray,
    pos: np.ndarray,
    n_atoms: np.ndarray,
    y: np.ndarray,
    names: list[str],
    smiles: list[str],
) -> StructureSet:
    """StructureSet from flat arrays: ``z (T,)``, ``pos (T, 3)``, ``n_atoms (G,)``, ``y (G, P)``."""
    counts = torch.tensor(np.asarray(n_atoms), dtype=torch.int64)
    ones = torch.ones(len(counts), dtype=torch.int64)
    return StructureSet(
        values={
            K.Z: torch.as_tensor(z, dtype=torch.int64),
            K.POS: torch.as_tensor(pos, dtype=torch.float32),
            K.Y: torch.as_tensor(y, dtype=torch.float32),
        },
        counts={K.Z: counts, K.POS: counts.clone(), K.Y: ones},
        strings={K.NAME: names, K.SMILES: smiles},
    )


def _symbols_to_z(symbols: np.ndarray) -> np.ndarray:
    """Element symbols ``(T,)`` -> atomic numbers ``(T,)``, 0 for a symbol QM9 cannot contain."""
    unique, inverse = np.unique(symbols, return_inverse=True)
    table = np.array([ELEMENTS.get(str(s), 0) for s in unique], dtype=np.int64)
    return table[inverse]


def read_qm9pack(files: list[Path] | None = None) -> StructureSet:
    """All molecules of the qm9pack CSVs, sorted by QM9 index.

    Raises ``ValueError`` if the CSVs are internally inconsistent (atom counts against the element
    and coordinate lists): that is a broken installation, not a bad record.
    """
    import pandas as pd

    files = qm9pack_files() if files is None else files
    frame = pd.concat([pd.read_csv(f, usecols=list(CSV_COLUMNS)) for f in files], ignore_index=True)
    if not frame["Index"].is_monotonic_increasing:
        frame = frame.sort_values("Index", kind="stable").reset_index(drop=True)
    n_atoms = frame["N_atoms"].to_numpy(np.int64)
    total = int(n_atoms.sum())
    # One join + one C-level parse for 2.4 million coordinate triples (a Python loop takes ~30 s).
    coords = ",".join(frame["XYZ_Ang"].tolist()).translate(str.maketrans("[]", "  "))
    pos = np.array(np.fromstring(coords, sep=","), dtype=np.float64)
    symbols = ",".join(frame["Elements"].tolist()).translate(str.maketrans("", "", "[]' \""))
    z = _symbols_to_z(np.array(symbols.split(",")))
    if pos.size != 3 * total or z.size != total:
        raise ValueError(
            f"qm9pack CSVs inconsistent: {total} atoms announced, {z.size} elements, "
            f"{pos.size / 3:g} coordinate triples"
        )
    names = [re.sub(r"\.xyz$", "", s) for s in frame["XYZ_file"].tolist()]
    structures = _flat_set(
        z,
        pos.reshape(-1, 3),
        n_atoms,
        frame[list(PROPERTIES)].to_numpy(np.float64),
        names,
        frame["SMILES"].tolist(),
    )
    return structures


def _parse_qm9_xyz(text: str) -> tuple[int, list[str], np.ndarray, np.ndarray, str]:
    """One QM9-format XYZ file -> ``(index, symbols, pos (N, 3), props (15,), smiles)``.

    Line 2 is ``gdb <index> <15 properties>``; atom lines carry a 5th column (Mulliken charge);
    then frequencies, ``SMILES_GDB17 SMILES_relaxed`` and InChIs. Numbers may use Mathematica's
    ``*^`` exponent.
    """
    lines = text.replace("*^", "e").splitlines()
    n = int(lines[0])
    header = lines[1].split()
    props = np.array([float(v) for v in header[2:17]])
    table = [line.split() for line in lines[2 : 2 + n]]
    symbols = [row[0] for row in table]
    pos = np.array([[float(v) for v in row[1:4]] for row in table])
    smiles = lines[3 + n].split()[0]
    return int(header[1]), symbols, pos, props, smiles


def read_qm9_archive(
    archive: str | Path, uncharacterized: str | Path | None = None
) -> StructureSet:
    """Molecules of QM9's canonical archive (``dsgdb9nsd.xyz.tar.bz2`` or any tar of its XYZ
    files), minus those listed in ``uncharacterized`` (QM9's ``uncharacterized.txt``), sorted by
    index, in the same form as :func:`read_qm9pack`."""
    excluded = set()
    if uncharacterized is not None:
        for line in Path(uncharacterized).read_text().splitlines():
            fields = line.split()
            if fields and fields[0].isdigit():  # EDM's rule: table rows start with the index
                excluded.add(int(fields[0]))
    parsed = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".xyz"):
                text = tar.extractfile(member).read().decode()
                index, symbols, pos, props, smiles = _parse_qm9_xyz(text)
                if index not in excluded:
                    parsed.append((index, Path(member.name).stem, symbols, pos, props, smiles))
    parsed.sort(key=lambda row: row[0])
    return _flat_set(
        _symbols_to_z(np.array([s for row in parsed for s in row[2]])),
        np.concatenate([row[3] for row in parsed]).reshape(-1, 3),
        np.array([len(row[2]) for row in parsed]),
        np.stack([row[4] for row in parsed]),
        [row[1] for row in parsed],
        [row[5] for row in parsed],
    )


def download_qm9(dest: str | Path | None = None) -> tuple[Path, Path]:
    """Fetch QM9's canonical archive and uncharacterized list (needs internet; ~86 MB).

    Files go to ``dest`` (default ``$LDSM_HOME/qm9``); existing files are not fetched again.
    Returns ``(archive, uncharacterized)`` for :func:`load_qm9`.
    """
    dest = Path(dest) if dest is not None else ldsm_home() / "qm9"
    dest.mkdir(parents=True, exist_ok=True)
    targets = {
        ARCHIVE_URL: dest / "dsgdb9nsd.xyz.tar.bz2",
        UNCHARACTERIZED_URL: dest / "uncharacterized.txt",
    }
    for url, target in targets.items():
        if not target.exists():
            partial = target.with_suffix(target.suffix + ".part")
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                out.write(response.read())
            partial.rename(target)
    return targets[ARCHIVE_URL], targets[UNCHARACTERIZED_URL]


def check_molecules(structures: StructureSet, min_distance: float = MIN_DISTANCE) -> list[str]:
    """Reason (or "") per molecule: unknown element, non-finite coordinates, overlapping atoms.

    Vectorised over molecules via padded ``(G, max_atoms, 3)`` blocks (all of QM9 in seconds).
    """
    n_atoms = structures.counts[K.Z].numpy()
    z = structures.values[K.Z].numpy()
    pos = structures.values[K.POS].numpy().astype(np.float64)
    graph = np.repeat(np.arange(len(n_atoms)), n_atoms)
    reasons = [""] * len(n_atoms)
    for g in np.unique(graph[z == 0]):
        reasons[g] = "unknown element (not one of H, C, N, O, F)"
    for g in np.unique(graph[~np.isfinite(pos).all(axis=1)]):
        reasons[g] = reasons[g] or "non-finite coordinates"
    start = np.cumsum(n_atoms) - n_atoms
    slot = torch.as_tensor(np.arange(len(z)) - start[graph])
    graph_t = torch.as_tensor(graph)
    pos_t = torch.as_tensor(pos, dtype=torch.float32)
    chunk = 16384
    for a in range(0, len(n_atoms), chunk):
        b = min(a + chunk, len(n_atoms))
        m = int(n_atoms[a:b].max())
        sel = (graph_t >= a) & (graph_t < b)
        # Padding atoms sit far apart on a line, so they are never anyone's closest neighbour.
        dense = (1e6 * torch.arange(1, m + 1, dtype=torch.float32))[None, :, None].repeat(
            b - a, 1, 3
        )
        dense[graph_t[sel] - a, slot[sel]] = pos_t[sel]
        d = torch.cdist(dense, dense, compute_mode="donot_use_mm_for_euclid_dist")
        d.diagonal(dim1=1, dim2=2).fill_(float("inf"))
        closest = d.amin(dim=(1, 2)).numpy()
        for g in np.nonzero(closest < min_distance)[0]:
            reasons[a + g] = reasons[a + g] or (
                f"overlapping atoms: two atoms {closest[g]:.3g} A apart (< {min_distance} A)"
            )
    return reasons


def load_qm9(archive: str | Path | None = None, uncharacterized: str | Path | None = None) -> QM9:
    """All 130,831 QM9 molecules as Data with EDM's train / val / test split.

    ``archive=None`` reads the qm9pack CSVs (offline); ``archive=PATH`` reads a local copy of the
    canonical archive (e.g. from :func:`download_qm9`) with its ``uncharacterized`` list. The split
    is drawn over all molecules in index order, as EDM does; a molecule that fails the checks
    (none does) is moved to ``rejects`` and out of its split, so split indices point into
    ``structures``.
    """
    if archive is None:
        structures = read_qm9pack()
    else:
        structures = read_qm9_archive(archive, uncharacterized)
    splits = edm_split(len(structures))
    reasons = check_molecules(structures)
    bad = np.array([bool(r) for r in reasons])
    rejects = [Reject("qm9", structures.strings[K.NAME][g], reasons[g]) for g in np.nonzero(bad)[0]]
    if bad.any():
        keep = np.nonzero(~bad)[0]
        new_index = np.full(len(structures), -1)
        new_index[keep] = np.arange(len(keep))
        structures = structures.subset(torch.as_tensor(keep))
        splits = {k: new_index[v][new_index[v] >= 0] for k, v in splits.items()}
    return QM9(structures=structures, splits=splits, rejects=rejects)
