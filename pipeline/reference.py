"""The reference a screen compares with: its crystals, their fingerprints, the training SMILES.

:func:`reference_structures` reads a reference (test) split as pymatgen ``Structure``s with the
content key of their fingerprints; :func:`reference_fingerprints` computes those fingerprints on
many processes (:func:`fingerprints_in_parallel`) and caches them in
``$LDSM_HOME/screen/reference_fp_<key>.npz``: the key hashes the cells' content and the
fingerprint code, so an edited reference file or fingerprint recomputes and an unchanged one is
read back in a second. :func:`read_train_smiles` reads the molecules' reference, a SMILES file.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from pipeline import crystal_checks as cc
from pipeline import crystal_fingerprints as fp
from pipeline import molecule_checks as mc
from pipeline.cache import ldsm_home
from pipeline.structures import is_crystal

# Reference cells per fingerprint job: small enough for steady progress, large enough that a
# job's pickling is negligible next to CrystalNN.
FP_CHUNK = 64


def guess_cutoffs(reference: str | None) -> str | None:
    """CDVAE cutoff set (a key of ``crystal_checks.COV_CUTOFFS``) from the reference path
    (perov_5 / carbon_24 / mp_20), else None."""
    if reference is None:
        return None
    text = str(reference).lower()
    for name in cc.COV_CUTOFFS:
        if name.split("_")[0] in text:
            return name
    return None


def reference_structures(records: Sequence) -> tuple[list, str]:
    """The crystals of ``records`` (``Record``, as :func:`pipeline.io.read_structures` gives them) as
    pymatgen Structures (degenerate cells left out), and the 16-hex-digit content key of their
    fingerprints (atomic numbers, lattice and fractional coordinates rounded to 1e-5, and the
    fingerprint code)."""
    structures = []
    for d in records:
        if is_crystal(d):
            s = cc.to_structure(
                np.asarray(d.lattice).reshape(3, 3), np.asarray(d.frac), np.asarray(d.z)
            )
            if s is not None:
                structures.append(s)
    digest = hashlib.sha256(fp.fingerprint_code())
    for s in structures:
        digest.update(np.asarray(s.atomic_numbers).tobytes())
        digest.update(np.round(s.lattice.matrix, 5).tobytes())
        digest.update(np.round(s.frac_coords, 5).tobytes())
    return structures, digest.hexdigest()[:16]


def fingerprints_in_parallel(
    structures: list,
    processes: int,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = FP_CHUNK,
) -> tuple[list, list]:
    """:func:`pipeline.crystal_fingerprints.fingerprints` over chunks of ``chunk`` cells on
    ``processes`` processes (the same lists, in the same order); ``progress(done, total)``
    after every chunk."""
    total = len(structures)
    chunks = [structures[k : k + chunk] for k in range(0, total, chunk)]
    results: list = [None] * len(chunks)
    done = 0
    if processes <= 1 or len(chunks) < 2:
        for k, part in enumerate(chunks):
            results[k] = fp.fingerprints(part)
            done += len(part)
            if progress is not None:
                progress(done, total)
    else:
        # spawn, not fork: the flow runs threads (Prefect's event loop), which fork can deadlock.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
            futures = {pool.submit(fp.fingerprints, part): k for k, part in enumerate(chunks)}
            for future in as_completed(futures):
                k = futures[future]
                results[k] = future.result()
                done += len(chunks[k])
                if progress is not None:
                    progress(done, total)
    struct = [f for s, _ in results for f in s]
    comp = [f for _, c in results for f in c]
    return struct, comp


def reference_fingerprints(
    structures: list, key: str, processes: int = 0, logger: logging.Logger | None = None
) -> tuple[list, list]:
    """(structure, composition) fingerprints of the reference cells, cached by ``key``
    (:func:`reference_structures`) under ``$LDSM_HOME/screen``, with progress in ``logger``.

    Computed on ``processes`` cores (0: every core this process may use); CrystalNN takes ~20 ms
    per site, minutes for a few thousand cells on one core. An unreadable cache is recomputed.
    """
    logger = logger or logging.getLogger("ldsm.screen")
    cache = ldsm_home() / "screen" / f"reference_fp_{key}.npz"
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


def read_train_smiles(path: str | Path) -> set[str]:
    """Canonical SMILES (:func:`pipeline.molecule_checks.canonicalize_smiles`) of a file with one
    SMILES per line (first column; a header or an unparsable line is skipped)."""
    out = set()
    for line in Path(path).read_text().splitlines():
        token = line.split(",")[0].split()[0] if line.strip() else ""
        smiles = mc.canonicalize_smiles(token) if token else None
        if smiles is not None:
            out.add(smiles)
    return out


__all__ = [
    "FP_CHUNK",
    "fingerprints_in_parallel",
    "guess_cutoffs",
    "read_train_smiles",
    "reference_fingerprints",
    "reference_structures",
]
