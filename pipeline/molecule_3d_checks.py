"""Checks of a molecule's 3-D geometry: PoseBusters, and the Kabsch RMSD of a move.

Inputs as in :mod:`pipeline.molecule_checks` (``z`` (num_atoms,) atomic numbers, ``pos``
(num_atoms, 3) Angstrom, or sanitised RDKit molecules with a conformer); every check returns a
:class:`pipeline.verdict.Verdict` and never raises on garbage input.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rdkit import Chem

from pipeline.verdict import Verdict

# PoseBusters' internal_energy divides the pose's UFF energy by the mean energy of an ensemble of
# relaxed conformers. For a molecule without torsions or non-bonded terms (H2O, NH3, CH4, CO2) the
# relaxed UFF energy is 0 up to the optimiser's tolerance (1e-11 to 1e-7 kcal/mol, clipped by
# PoseBusters to 1e-10), and a negative mean (C2H2: -0.03) turns the ratio's sign: the ratio then
# says nothing about strain. Below this reference energy the check is "not applicable".
MIN_REFERENCE_ENERGY = 0.1  # kcal/mol, well below kT at 300 K (0.6 kcal/mol)
# The conformers of the energy ratio's reference ensemble (ETKDGv3 + UFF, seed 42). PoseBusters'
# "mol" config uses 50; the ensemble is most of PoseBusters' time on QM9-sized molecules, and an
# ensemble ETKDG cannot embed (strained polycyclic QM9 molecules: the check is then not
# applicable) costs seconds per conformer asked for. On 100 valid QM9 test molecules 10 and 5 gave
# the verdicts of 50; on 100 strained copies 10 gave all of them and 5 changed one. 5 checks 12.2
# valid molecules per second on one process (10: 8.0) on an idle 2-core machine (BENCHMARKS.md,
# "PoseBusters throughput", counts the verdicts each size changes and lists the changed ones).
POSEBUSTERS_CONFORMERS = 5
# Bump when the reading of PoseBusters' table below changes: cached verdicts of older rules are
# then not reused (pipeline.posebusters_cache).
VERDICT_RULES = 1


def posebusters_config(conformers: int = POSEBUSTERS_CONFORMERS) -> dict:
    """PoseBusters' "mol" config with ``conformers`` in the energy ratio's reference ensemble.

    The "mol" config of PoseBusters 0.6 lists the energy-ratio module twice, once without a
    pass/fail output; its result columns are the same as the second one's, which overwrites them,
    so it is dropped here: its run repeated the pose's own UFF work, and the whole ensemble where
    ETKDG could not embed one (PoseBusters caches ensembles per InChI, but not failures).
    ``conformers`` >= 1, else ValueError.
    """
    from posebusters import PoseBusters

    if conformers < 1:
        raise ValueError(f"the reference ensemble needs >= 1 conformer, got {conformers}")
    config = PoseBusters(config="mol").config
    modules = []
    for module in config["modules"]:
        if module["function"] == "energy_ratio":
            if not module.get("chosen_binary_test_output"):
                continue
            module["parameters"]["ensemble_number_conformations"] = conformers
        modules.append(module)
    config["modules"] = modules
    return config


def read_posebusters_table(table, config: dict) -> list[Verdict]:
    """One verdict per row of PoseBusters' full report (``bust(..., full_report=True)``).

    A check that cannot judge a molecule is "not applicable", not a failure: one PoseBusters could
    not compute (no value), and ``internal_energy`` when the reference energy is below
    ``MIN_REFERENCE_ENERGY``. ``ok`` when no applicable check fails; the reason names the failing
    checks and then the ones not applicable (``"ok; not applicable: internal_energy (...)"``).
    """
    import pandas as pd

    # The full report starts with the config's pass/fail columns, in the config's order.
    n_checks = sum(len(m.get("chosen_binary_test_output", [])) for m in config["modules"])
    checks = list(table.columns[:n_checks])
    out = []
    for _, row in table.iterrows():
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
        out.append(Verdict(not failed, reason))
    return out


def verdict_cache_settings(conformers: int) -> dict:
    """What a cached verdict was judged under: PoseBusters' and RDKit's versions, the ensemble
    size and :data:`VERDICT_RULES` (the settings of :class:`pipeline.posebusters_cache.VerdictCache`)."""
    from posebusters import __version__ as posebusters_version
    from rdkit import __version__ as rdkit_version

    return dict(
        posebusters=posebusters_version,
        rdkit=rdkit_version,
        conformers=conformers,
        rules=VERDICT_RULES,
    )


def posebusters_checks(
    mols: Sequence[Chem.Mol | None],
    conformers: int = POSEBUSTERS_CONFORMERS,
    cache: str | Path | None = None,
) -> list[Verdict]:
    """PoseBusters' molecule checks (bond lengths, angles, clashes, flatness, energy ratio).

    ``mols``: sanitised molecules with a 3-D conformer (None entries fail with a reason);
    ``conformers``: the energy ratio's reference ensemble (:func:`posebusters_config`). Verdicts
    as :func:`read_posebusters_table` reads them. A pose that occurs more than once (same graph
    and coordinates, any atom order or name: :func:`pipeline.posebusters_cache.pose_key`) is
    busted once; with ``cache`` (an SQLite file, created if missing) verdicts of poses busted
    before under the same PoseBusters, RDKit, ensemble size and rules are read from it, and new
    ones are added.
    """
    from posebusters import PoseBusters

    from pipeline.posebusters_cache import VerdictCache, pose_key

    out: list[Verdict] = [Verdict(False, "not valid")] * len(mols)
    # A molecule without a conformer has no pose key: its index stands in, and is not stored.
    keys: dict[int, str | int] = {k: pose_key(m) or k for k, m in enumerate(mols) if m is not None}
    store = VerdictCache(cache, verdict_cache_settings(conformers)) if cache is not None else None
    poses = [key for key in keys.values() if isinstance(key, str)]
    known: dict = store.get_many(poses) if store is not None else {}
    first = {}  # one molecule per pose not known yet
    for k, key in keys.items():
        if key not in known:
            first.setdefault(key, k)
    if first:
        config = posebusters_config(conformers)
        try:
            table = PoseBusters(config=config).bust(
                [mols[k] for k in first.values()], None, None, full_report=True
            )
            fresh = dict(zip(first, read_posebusters_table(table, config), strict=True))
        except Exception as err:  # PoseBusters wraps RDKit; any failure becomes a verdict per pose
            fresh = dict.fromkeys(first, Verdict(False, f"posebusters failed: {err}"))
        else:
            if store is not None:
                store.put_many({key: v for key, v in fresh.items() if isinstance(key, str)})
        known.update(fresh)
    for k, key in keys.items():
        out[k] = known[key]
    return out


def kabsch_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD of (N, 3) point sets after optimal superposition (Kabsch, rotations only)."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    u, _, vt = np.linalg.svd(a.T @ b)
    sign = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, 1.0, sign]) @ vt
    return float(np.sqrt(((a @ rot - b) ** 2).sum(axis=1).mean()))
