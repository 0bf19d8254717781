"""Relaxation of generated structures: crystals with CHGNet, molecules with GFN2-xTB.

Crystals: CHGNet (Deng et al., Nat. Mach. Intell. 2023).

The pretrained weights ship inside the ``chgnet`` wheel, so nothing is downloaded. Each crystal
that passes CDVAE's structural check is relaxed (atoms and cell) by CHGNet's FIRE optimiser
(``StructOptimizer``) for at most ``steps`` steps or until every force is below ``fmax``
(eV/A); its CHGNet energy per atom (eV/atom) is recorded before and after. A crystal that is
not structurally valid, or on which CHGNet fails, is kept as it is with the reason: a failure is
data, never a crash. The screen's ``--chgnet`` relaxes each crystal with :func:`relax_crystals`
and its ``--xtb`` each molecule with :func:`relax_molecule`.

Molecules: GFN2-xTB (Bannwarth, Ehlert & Grimme, JCTC 2019) through ``tblite``'s ASE calculator,
ASE's BFGS until every force is below ``fmax`` (eV/A) or ``steps`` steps, as issue 17 measured it
(40 samples of the shipped model: EDM atom stability 76.5 % -> 93.8 %). Recorded per molecule:
the xTB energy before and after (eV), the RMSD of the move (A, Kabsch), and at the relaxed
geometry the HOMO-LUMO gap (eV) and the dipole moment (Debye) of a ``tblite`` single point. A
molecule with fewer than two atoms, or on which xTB fails (no SCF convergence), is kept as it is
with the reason.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline import crystal_checks as cc
from pipeline import keys as K
from pipeline.structures import Record, make_crystal, make_molecule

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
    structure: Record


@lru_cache(maxsize=1)
def _chgnet():
    """CHGNet's pretrained model, loaded once per process."""
    from chgnet.model import CHGNet

    return CHGNet.load(verbose=False)


@lru_cache(maxsize=1)
def _optimizer():
    """CHGNet's FIRE relaxer (atoms and cell), built once per process; its constructor's
    "CHGNet will run on cpu" line is swallowed (printed to stdout, not logged)."""
    from chgnet.model import StructOptimizer

    with contextlib.redirect_stdout(io.StringIO()):
        return StructOptimizer(model=_chgnet())


def relax_crystals(
    crystals: Sequence[Record], steps: int = 100, fmax: float = 0.1
) -> list[Relaxed]:
    """Relax every structurally valid crystal of ``crystals`` (in order, names kept).

    ``reason`` is ``"ok"`` when FIRE stopped before ``steps`` steps (converged), else it says that
    the last geometry of ``steps`` steps was kept."""
    out = []
    for data in crystals:
        name = str(data[K.NAME])
        lattice = np.asarray(data[K.LATTICE], dtype=np.float64).reshape(3, 3)
        frac, z = np.asarray(data[K.FRAC], dtype=np.float64), np.asarray(data[K.Z])
        verdict = cc.structural_validity(lattice, frac, z)
        if not verdict.ok:
            reason = f"not relaxed: {verdict.reason}"
            out.append(Relaxed(name, False, reason, None, None, 0, data))
            continue
        structure = cc.to_structure(lattice, frac, z)
        try:
            result = _optimizer().relax(structure, steps=steps, fmax=fmax, verbose=False)
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
        # CHGNet's trajectory has a frame at the start, one per FIRE step and one more after
        # the run (StructOptimizer.relax), so FIRE took len - 2 steps; fewer than ``steps``: it
        # converged.
        taken = len(energies) - 2
        reason = "ok" if taken < steps else f"not converged in {steps} steps (last geometry kept)"
        before, after = float(energies[0]), float(energies[-1])
        out.append(Relaxed(name, True, reason, before, after, taken, relaxed))
    return out


def _mean(values) -> float | None:
    """The mean of ``values`` as a float, None when there are none."""
    values = list(values)
    return float(np.mean(values)) if values else None


def _write_results(results: Sequence, folder: str | Path, kind: str, columns: list[str]) -> dict:
    """``folder``'s sample files (every structure, relaxed where it could be) and
    ``folder/relax.csv`` (one row per result: its ``columns``); the summary both kinds share."""
    from pipeline.generate import write_samples

    folder = Path(folder)
    samples = write_samples([r.structure for r in results], folder, kind)
    table = folder / "relax.csv"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for r in results:
            writer.writerow({c: getattr(r, c) for c in columns})
    return {
        "n": len(results),
        "relaxed": sum(r.relaxed for r in results),
        "files": samples["files"],
        "table": str(table),
    }


def write_relaxed(results: Sequence[Relaxed], folder: str | Path) -> dict:
    """``folder/samples.cif`` (every crystal, relaxed where it could be), ``folder/relax.csv``
    (one row per crystal, :data:`COLUMNS`) and a summary dict: counts and mean energies."""
    done = [r for r in results if r.relaxed]
    return {
        **_write_results(results, folder, "crystal", COLUMNS),
        "mean_energy_per_atom": _mean(r.energy_per_atom for r in done),
        "mean_relaxed_energy_per_atom": _mean(r.relaxed_energy_per_atom for r in done),
    }


MOLECULE_COLUMNS = [
    "name",
    "relaxed",
    "reason",
    "xtb_energy",
    "xtb_relaxed_energy",
    "rmsd",
    "steps",
    "xtb_gap",
    "xtb_dipole",
]
DEBYE_PER_AU = 2.541746  # e * bohr in Debye (CODATA)


@dataclass(frozen=True)
class RelaxedMolecule:
    """One molecule after :func:`relax_molecules`: energies and gap in eV, ``rmsd`` in A, dipole in
    Debye (None where xTB gave none); ``structure`` relaxed, or the input when ``relaxed`` is False
    (``converged`` may be False while ``relaxed`` is True: the last BFGS geometry is kept)."""

    name: str
    relaxed: bool
    reason: str
    xtb_energy: float | None
    xtb_relaxed_energy: float | None
    rmsd: float | None
    steps: int
    xtb_gap: float | None
    xtb_dipole: float | None
    structure: Record


def xtb_properties(z: np.ndarray, pos: np.ndarray) -> tuple[float, float, float]:
    """``(energy eV, HOMO-LUMO gap eV, |dipole| Debye)`` of a GFN2-xTB single point (tblite).

    ``z``: (num_atoms,) atomic numbers; ``pos``: (num_atoms, 3) in A. The gap is the lowest
    unoccupied minus the highest occupied orbital energy (occupation above 1e-6). Raises tblite's
    errors (SCF not converged)."""
    from ase import units
    from tblite.interface import Calculator

    calc = Calculator("GFN2-xTB", np.asarray(z), np.asarray(pos, dtype=np.float64) / units.Bohr)
    calc.set("verbosity", 0)
    result = calc.singlepoint()
    energies, occupations = result.get("orbital-energies"), result.get("orbital-occupations")
    gap = energies[occupations <= 1e-6].min() - energies[occupations > 1e-6].max()
    dipole = float(np.linalg.norm(result.get("dipole"))) * DEBYE_PER_AU
    return float(result.get("energy")) * units.Hartree, float(gap) * units.Hartree, dipole


def relax_molecule(data: Record, steps: int = 200, fmax: float = 0.05) -> RelaxedMolecule:
    """Relax one molecule with GFN2-xTB (BFGS, ``fmax`` eV/A, at most ``steps`` steps)."""
    from ase import Atoms
    from ase.optimize import BFGS
    from tblite.ase import TBLite

    from pipeline.molecule_3d_checks import kabsch_rmsd

    name = str(data[K.NAME])
    z, pos = np.asarray(data[K.Z]), np.asarray(data[K.POS], dtype=np.float64)
    if len(z) < 2:
        reason = "not relaxed: fewer than 2 atoms"
        return RelaxedMolecule(name, False, reason, None, None, None, 0, None, None, data)
    atoms = Atoms(numbers=z, positions=pos)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    try:
        energy = float(atoms.get_potential_energy())
        optimizer = BFGS(atoms, logfile=None)
        converged = bool(optimizer.run(fmax=fmax, steps=steps))
        relaxed_pos = atoms.get_positions()
        relaxed_energy, gap, dipole = xtb_properties(z, relaxed_pos)
    except Exception as err:  # noqa: BLE001 - tblite's SCF failures are data
        reason = f"xtb failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        return RelaxedMolecule(name, False, reason, None, None, None, 0, None, None, data)
    reason = "ok" if converged else f"not converged in {steps} steps (last geometry kept)"
    return RelaxedMolecule(
        name,
        True,
        reason,
        energy,
        relaxed_energy,
        kabsch_rmsd(relaxed_pos, pos),
        optimizer.nsteps,
        gap,
        dipole,
        make_molecule(z, relaxed_pos, name=name),
    )


def relax_molecules(
    molecules: Sequence[Record], steps: int = 200, fmax: float = 0.05, log=None
) -> list[RelaxedMolecule]:
    """:func:`relax_molecule` on every molecule (in order, names kept); ``log`` (a callable
    taking one line) hears about progress every tenth of the set."""
    out = []
    every = max(1, len(molecules) // 10)
    for i, data in enumerate(molecules):
        out.append(relax_molecule(data, steps, fmax))
        if log is not None and ((i + 1) % every == 0 or i + 1 == len(molecules)):
            log(f"xTB relaxation: {i + 1} of {len(molecules)} molecules")
    return out


def write_relaxed_molecules(results: Sequence[RelaxedMolecule], folder: str | Path) -> dict:
    """``folder/samples.sdf`` + ``samples.xyz`` (every molecule, relaxed where it could be),
    ``folder/relax.csv`` (one row per molecule, :data:`MOLECULE_COLUMNS`) and a summary dict."""
    done = [r for r in results if r.relaxed]
    return {
        **_write_results(results, folder, "molecule", MOLECULE_COLUMNS),
        "converged": sum(r.reason == "ok" for r in done),
        "mean_relaxation_energy": _mean(r.xtb_energy - r.xtb_relaxed_energy for r in done),
        "mean_rmsd": _mean(r.rmsd for r in done),
        "mean_gap": _mean(r.xtb_gap for r in done),
    }


__all__ = [
    "COLUMNS",
    "MOLECULE_COLUMNS",
    "Relaxed",
    "RelaxedMolecule",
    "relax_crystals",
    "relax_molecule",
    "relax_molecules",
    "write_relaxed",
    "write_relaxed_molecules",
    "xtb_properties",
]
