"""Checks of a molecule's 3-D geometry: PoseBusters, and the Kabsch RMSD of a move.

Inputs as in :mod:`pipeline.molecule_checks` (``z`` (num_atoms,) atomic numbers, ``pos``
(num_atoms, 3) Angstrom, or sanitised RDKit molecules with a conformer); every check returns a
:class:`pipeline.verdict.Verdict` and never raises on garbage input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rdkit import Chem

from pipeline.verdict import Verdict

# PoseBusters' internal_energy divides the pose's UFF energy by the mean energy of an ensemble of
# relaxed conformers. For a molecule without torsions or non-bonded terms (H2O, NH3, CH4, CO2) the
# relaxed UFF energy is 0 up to the optimiser's tolerance (1e-11 to 1e-7 kcal/mol, clipped by
# PoseBusters to 1e-10), and a negative mean (C2H2: -0.03) turns the ratio's sign: the ratio then
# says nothing about strain. Below this reference energy the check is "not applicable".
MIN_REFERENCE_ENERGY = 0.1  # kcal/mol, well below kT at 300 K (0.6 kcal/mol)


def posebusters_checks(mols: Sequence[Chem.Mol | None], config: str = "mol") -> list[Verdict]:
    """PoseBusters' molecule checks (bond lengths, angles, clashes, flatness, energy ratio).

    ``mols``: sanitised molecules with a 3-D conformer (None entries fail with a reason). A check
    that cannot judge a molecule is "not applicable", not a failure: one PoseBusters could not
    compute (no value), and ``internal_energy`` when the reference energy is below
    ``MIN_REFERENCE_ENERGY``. ``ok`` when no applicable check fails; the reason names the failing
    checks and then the ones not applicable (``"ok; not applicable: internal_energy (...)"``).
    """
    import pandas as pd
    from posebusters import PoseBusters

    out: list[Verdict] = [Verdict(False, "not valid")] * len(mols)
    present = [k for k, m in enumerate(mols) if m is not None]
    if not present:
        return out
    buster = PoseBusters(config=config)
    try:
        table = buster.bust([mols[k] for k in present], None, None, full_report=True)
    except Exception as err:  # PoseBusters wraps RDKit; any failure becomes a verdict per molecule
        for k in present:
            out[k] = Verdict(False, f"posebusters failed: {err}")
        return out
    # The full report starts with the config's pass/fail columns, in the config's order.
    n_checks = sum(len(m.get("chosen_binary_test_output", [])) for m in buster.config["modules"])
    checks = list(table.columns[:n_checks])
    for k, (_, row) in zip(present, table.iterrows(), strict=True):
        failed, not_applicable = [], []
        for column in checks:
            value = row[column]
            if value is None or pd.isna(value):
                not_applicable.append(f"{column} (PoseBusters could not compute it)")
            elif column == "internal_energy" and not (
                row.get("ensemble_avg_energy", np.inf) >= MIN_REFERENCE_ENERGY
            ):
                energy = float(row.get("ensemble_avg_energy", np.nan))
                not_applicable.append(
                    f"internal_energy (reference energy {energy:.2g} kcal/mol, "
                    f"below {MIN_REFERENCE_ENERGY}: the energy ratio is undefined)"
                )
            elif not bool(value):
                failed.append(str(column))
        reason = "failed: " + ", ".join(failed) if failed else "ok"
        if not_applicable:
            reason += "; not applicable: " + ", ".join(not_applicable)
        out[k] = Verdict(not failed, reason)
    return out


def kabsch_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD of (N, 3) point sets after optimal superposition (Kabsch, rotations only)."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    u, _, vt = np.linalg.svd(a.T @ b)
    sign = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, 1.0, sign]) @ vt
    return float(np.sqrt(((a @ rot - b) ** 2).sum(axis=1).mean()))
