"""Relaxation of generated crystals with CHGNet (Deng et al., Nat. Mach. Intell. 2023).

The pretrained weights ship inside the ``chgnet`` wheel, so nothing is downloaded. Each crystal
that passes CDVAE's structural check is relaxed (atoms and cell) by CHGNet's FIRE optimiser
(``StructOptimizer``) for at most ``steps`` steps or until every force is below ``fmax``
(eV/A); its CHGNet energy per atom (eV/atom) is recorded before and after. A crystal that is
not structurally valid, or on which CHGNet fails, is kept as it is with the reason: a failure is
data, never a crash. :func:`chgnet_energy` is the screen's CHGNet check of one crystal.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from torch_geometric.data import Data

from pipeline import crystal_checks as cc
from pipeline import keys as K
from pipeline.structures import make_crystal
from pipeline.verdict import Verdict

COLUMNS = ["name", "relaxed", "reason", "energy_per_atom", "relaxed_energy_per_atom", "steps"]


@dataclass(frozen=True)
class Relaxed:
    """One crystal after :func:`relax_crystals`: ``structure`` is the relaxed crystal (or the
    input when ``relaxed`` is False); energies in eV/atom (None where CHGNet gave none)."""

    name: str
    relaxed: bool
    reason: str
    energy_per_atom: float | None
    relaxed_energy_per_atom: float | None
    steps: int
    structure: Data


@lru_cache(maxsize=1)
def _chgnet():
    """CHGNet's pretrained model, loaded once per process."""
    from chgnet.model import CHGNet

    return CHGNet.load(verbose=False)


@dataclass(frozen=True)
class ChgnetVerdict(Verdict):
    """CHGNet energy per atom (eV) before and after relaxation; None on failure."""

    energy_per_atom: float | None
    relaxed_energy_per_atom: float | None


def chgnet_energy(structure, relax: bool = False, steps: int = 100) -> ChgnetVerdict:
    """CHGNet energy per atom of a pymatgen ``Structure``, optionally after a FIRE relaxation
    of at most ``steps`` steps (a screening check, off by default)."""
    if structure is None:
        return ChgnetVerdict(False, "no structure", None, None)
    try:
        from chgnet.model import StructOptimizer

        model = _chgnet()
        energy = float(model.predict_structure(structure)["e"])
        relaxed = None
        if relax:
            result = StructOptimizer(model=model).relax(structure, steps=steps, verbose=False)
            relaxed = float(result["trajectory"].energies[-1]) / len(structure)
    except Exception as err:  # CHGNet failures (graph too large, no neighbours) become a verdict
        return ChgnetVerdict(False, f"chgnet failed: {str(err).splitlines()[0]}", None, None)
    return ChgnetVerdict(True, "ok", energy, relaxed)


def relax_crystals(crystals: Sequence[Data], steps: int = 100, fmax: float = 0.1) -> list[Relaxed]:
    """Relax every structurally valid crystal of ``crystals`` (in order, names kept)."""
    from chgnet.model import StructOptimizer

    out = []
    for data in crystals:
        name = str(data[K.NAME])
        lattice = data[K.LATTICE].numpy().reshape(3, 3).astype(np.float64)
        frac, z = data[K.FRAC].numpy().astype(np.float64), data[K.Z].numpy()
        verdict = cc.structural_validity(lattice, frac, z)
        if not verdict.ok:
            reason = f"not relaxed: {verdict.reason}"
            out.append(Relaxed(name, False, reason, None, None, 0, data))
            continue
        structure = cc.to_structure(lattice, frac, z)
        try:
            result = StructOptimizer(model=_chgnet()).relax(
                structure, steps=steps, fmax=fmax, verbose=False
            )
        except Exception as err:  # noqa: BLE001 - CHGNet's failures (no neighbours, ...) are data
            reason = (
                f"chgnet failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
            )
            out.append(Relaxed(name, False, reason, None, None, 0, data))
            continue
        energies = np.asarray(result["trajectory"].energies, dtype=np.float64) / len(structure)
        final = result["final_structure"]
        relaxed = make_crystal(
            np.array(final.atomic_numbers),
            np.asarray(final.frac_coords) % 1.0,
            np.asarray(final.lattice.matrix),
            name=name,
        )
        out.append(
            Relaxed(
                name, True, "ok", float(energies[0]), float(energies[-1]), len(energies), relaxed
            )
        )
    return out


def write_relaxed(results: Sequence[Relaxed], folder: str | Path) -> dict:
    """``folder/samples.cif`` (every crystal, relaxed where it could be), ``folder/relax.csv``
    (one row per crystal, :data:`COLUMNS`) and a summary dict: counts and mean energies."""
    from pipeline.generate import write_samples

    folder = Path(folder)
    samples = write_samples([r.structure for r in results], folder, "crystal")
    with open(folder / "relax.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for r in results:
            writer.writerow({c: getattr(r, c) for c in COLUMNS})
    done = [r for r in results if r.relaxed]
    return {
        "n": len(results),
        "relaxed": len(done),
        "mean_energy_per_atom": float(np.mean([r.energy_per_atom for r in done])) if done else None,
        "mean_relaxed_energy_per_atom": (
            float(np.mean([r.relaxed_energy_per_atom for r in done])) if done else None
        ),
        "files": samples["files"],
        "table": str(folder / "relax.csv"),
    }


__all__ = [
    "COLUMNS",
    "ChgnetVerdict",
    "Relaxed",
    "chgnet_energy",
    "relax_crystals",
    "write_relaxed",
]
