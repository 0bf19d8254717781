"""Screening rows and set metrics: per-candidate verdicts into table rows, rows into metrics.json.

Pure functions over plain arrays (or structures, the readers' ``Record`` or a generated ``Data``:
``check_molecule_records`` / ``check_crystal_records``); the Prefect flow (``flows/screen.py``)
maps those over chunks and calls the set metrics once.

Conventions (written here because the issue leaves them open):
- Molecule fractions follow EDM: ``validity`` over all candidates, ``uniqueness`` over valid ones,
  ``novelty`` over unique valid ones; ``connectivity`` and ``posebusters_pass`` over all candidates
  (a candidate that is not valid fails both). ``validity`` uses the file's bonds and charges where
  it gives them, else RDKit's perceived bonds (``rdDetermineBonds``); ``edm_validity`` is EDM's
  RDKit validity on its distance-table bonds, the number EDM-style papers report.
- A PoseBusters check that cannot judge a molecule is "not applicable", never a failure.
- Crystal ``uniqueness`` is over valid crystals (structurally and compositionally) and ``novelty``
  over unique valid ones, mirroring the molecules; density and element-count distances compare the
  valid crystals with the reference set, as CDVAE does.
- Read rejects are neither molecules nor crystals: they get rows of kind ``"unread"``, are counted
  apart (``n_read_rejects``) and enter no rate.
- A metric that does not apply (no reference, no training SMILES, nothing valid) is None.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rdkit import Chem

from pipeline import converters as C
from pipeline import crystal_checks as cc
from pipeline import crystal_fingerprints as fp
from pipeline import keys as K
from pipeline import molecule_3d_checks as m3d
from pipeline import molecule_checks as mc
from pipeline import structures as S
from pipeline.properties import molecule_properties
from pipeline.relax import relax_crystals, relax_molecule

MOLECULE_KEYS = (
    "n",
    "atom_stability",
    "molecule_stability",
    "validity",
    "edm_validity",
    "uniqueness",
    "novelty",
    "connectivity",
    "posebusters_pass",
)
CRYSTAL_KEYS = (
    "n",
    "structural_validity",
    "compositional_validity",
    "uniqueness",
    "novelty",
    "coverage_recall",
    "coverage_precision",
    "wdist_density",
    "wdist_num_elements",
)


def reject_row(file: str, record: str, reason: str) -> dict:
    """Row of a file or record that could not be read: kind ``"unread"``, in no kind's rates."""
    name = f"{file}:{record}" if record else file
    return {
        "kind": "unread",
        "name": name,
        "read_ok": False,
        "read_reason": reason,
        "passed": False,
    }


NOT_JUDGED_2D = "not judged: 2-D coordinates"


def _read_row(kind: str, name: str, note: str | None) -> dict:
    """The columns every checked candidate's row starts with: what it is and how it was read."""
    return {
        "kind": kind,
        "name": name,
        "read_ok": True,
        "read_reason": "ok",
        "read_note": note or "",
    }


def record_names(records: Sequence[S.Record]) -> list[str]:
    """The records' names, ``record<k>`` (k: position in ``records``) for a record without one."""
    return [str(getattr(d, K.NAME, "")) or f"record{k}" for k, d in enumerate(records)]


def _file_mol(data: S.Record):
    """The record's own bonds and formal charges as an RDKit molecule; None without bonds."""
    edges = getattr(data, K.EDGE_INDEX, None)
    return None if edges is None or edges.shape[1] == 0 else C.to_rdkit(data)


def check_molecule_records(
    records: Sequence[S.Record],
    posebusters: bool = True,
    xtb: bool = False,
    posebusters_conformers: int = m3d.POSEBUSTERS_CONFORMERS,
    posebusters_cache: str | None = None,
) -> list[dict]:
    """:func:`check_molecules` of molecule records (as :mod:`pipeline.io` reads them):
    their names, ``z``, ``pos``, the bonds their file gives and the reader's note."""
    return check_molecules(
        record_names(records),
        [np.asarray(d.z) for d in records],
        [np.asarray(d.pos) for d in records],
        posebusters=posebusters,
        xtb=xtb,
        file_mols=[_file_mol(d) for d in records],
        notes=[getattr(d, K.NOTE, None) for d in records],
        posebusters_conformers=posebusters_conformers,
        posebusters_cache=posebusters_cache,
    )


def check_crystal_records(
    records: Sequence[S.Record], fingerprints: bool = False, chgnet: bool = False
) -> list[dict]:
    """:func:`check_crystals` of crystal records: names, ``lattice`` (1, 3, 3),
    ``frac``, ``z`` and the reader's note."""
    return check_crystals(
        record_names(records),
        [np.asarray(d.lattice).reshape(3, 3) for d in records],
        [np.asarray(d.frac) for d in records],
        [np.asarray(d.z) for d in records],
        fingerprints=fingerprints,
        chgnet=chgnet,
        notes=[getattr(d, K.NOTE, None) for d in records],
    )


def check_molecules(
    names: Sequence[str],
    zs: Sequence[np.ndarray],
    poss: Sequence[np.ndarray],
    posebusters: bool = True,
    xtb: bool = False,
    file_mols: Sequence[Chem.Mol | None] | None = None,
    notes: Sequence[str | None] | None = None,
    posebusters_conformers: int = m3d.POSEBUSTERS_CONFORMERS,
    posebusters_cache: str | None = None,
) -> list[dict]:
    """Per-molecule verdict rows. ``zs[k]`` (N_k,) atomic numbers, ``poss[k]`` (N_k, 3) Angstrom.

    ``file_mols[k]``: the molecule with the bonds and formal charges its file gives
    (``converters.to_rdkit``), None where the file has none; ``notes[k]``: the reader's note.
    ``posebusters_conformers`` and ``posebusters_cache``: the energy ratio's ensemble size and
    the verdict cache file of :func:`pipeline.molecule_3d_checks.posebusters_checks`.

    Three opinions on bonds, each its own columns: the file's (``file_bonds_*``), RDKit's
    perceived bonds (``rdkit_bonds_*``, total charge from the file's formal charges) and EDM's
    distance table (``edm_valid*``, and EDM stability, the numbers papers compare). ``valid``,
    ``smiles`` and ``connected`` follow the file's bonds where it has them, else the perceived
    ones (``bond_source``). A record the reader noted as 2-D is not judged by the 3-D checks.
    A valid molecule gets RDKit's ``qed``, ``logp`` and ``sa`` (:mod:`pipeline.properties`; None
    where not valid); with ``xtb`` a valid 3-D one is relaxed with GFN2-xTB (:func:`_add_xtb`).
    """
    n = len(names)
    file_mols = list(file_mols) if file_mols is not None else [None] * n
    notes = list(notes) if notes is not None else [None] * n
    stability = mc.edm_stability_many(list(zip(zs, poss, strict=True)))
    rows, mols = [], []
    for name, z, pos, st, fmol, note in zip(
        names, zs, poss, stability, file_mols, notes, strict=True
    ):
        flat = bool(note) and S.FLAT_NOTE in note
        edm = mc.rdkit_validity(z, pos)
        charge = 0 if fmol is None else Chem.GetFormalCharge(fmol)
        if flat:
            perceived, perceived_reason = None, NOT_JUDGED_2D
        else:
            perceived, perceived_reason = mc.perceived_mol(z, pos, charge)
        second = mc.validity_of(perceived, perceived_reason)
        row = {
            **_read_row("molecule", name, note),
            "n_atoms": st.n_atoms,
            "n_stable_atoms": st.n_stable_atoms,
            "stable": st.ok and not flat,
            "stable_reason": NOT_JUDGED_2D if flat else st.reason,
        }
        if fmol is not None:
            mol, reason = mc.file_mol(fmol)
            verdict, source = mc.validity_of(mol, reason), "file"
            row["file_bonds_valid"], row["file_bonds_reason"] = verdict.ok, verdict.reason
        else:
            mol, verdict, source = perceived, second, "perceived"
        con = mc.connectivity(verdict)
        row.update(
            {
                "bond_source": source,
                "valid": verdict.ok,
                "valid_reason": verdict.reason,
                "smiles": verdict.smiles,
                "connected": con.ok,
                "connected_reason": con.reason,
                "rdkit_bonds_valid": second.ok,
                "rdkit_bonds_reason": second.reason,
                "rdkit_bonds_smiles": second.smiles,
                "edm_valid": edm.ok,
                "edm_valid_reason": edm.reason,
                "edm_smiles": edm.smiles,
                "coords_3d": not flat,
                "coords_3d_reason": NOT_JUDGED_2D if flat else "ok",
                "mol": mol,  # sanitised RDKit molecule for PoseBusters and the SDF output
            }
        )
        mols.append(None if flat else mol)
        rows.append(row)
    if posebusters:
        verdicts = m3d.posebusters_checks(mols, posebusters_conformers, posebusters_cache)
        for row, verdict in zip(rows, verdicts, strict=True):
            row["posebusters"], row["posebusters_reason"] = verdict.ok, verdict.reason
            if not row["coords_3d"]:
                row["posebusters_reason"] = NOT_JUDGED_2D
    for row in rows:
        row.update(molecule_properties(row["mol"] if row["valid"] else None))
    if xtb:
        for row, z, pos in zip(rows, zs, poss, strict=True):
            _add_xtb(row, z, pos)
    return rows


# The xTB columns of a molecule row (``--xtb``): energies in eV, RMSD in A, dipole in Debye.
XTB_COLUMNS = (
    "xtb_energy", "xtb_relaxed_energy", "xtb_relaxation_ev", "xtb_rmsd_a", "xtb_gap", "xtb_dipole",
)  # fmt: skip
CHGNET_COLUMNS = ("chgnet_energy_per_atom", "chgnet_relaxed_energy_per_atom")  # eV/atom


def _add_xtb(row: dict, z: np.ndarray, pos: np.ndarray) -> None:
    """Relax a valid 3-D molecule with GFN2-xTB (:func:`pipeline.relax.relax_molecule`: BFGS to
    0.05 eV/A, at most 200 steps) into ``row``: ``xtb_ok`` (converged), ``xtb_reason``,
    :data:`XTB_COLUMNS` and the result itself as ``relaxation`` (the relaxed structure)."""
    if not (row["valid"] and row["coords_3d"]):
        row.update(xtb_ok=False, xtb_reason="not valid", **dict.fromkeys(XTB_COLUMNS))
        return
    r = relax_molecule(S.make_molecule(z, pos, name=row["name"]))
    row.update(
        xtb_ok=r.reason == "ok",
        xtb_reason=r.reason,
        xtb_energy=r.xtb_energy,
        xtb_relaxed_energy=r.xtb_relaxed_energy,
        xtb_relaxation_ev=r.xtb_energy - r.xtb_relaxed_energy if r.relaxed else None,
        xtb_rmsd_a=r.rmsd,
        xtb_gap=r.xtb_gap,
        xtb_dipole=r.xtb_dipole,
        relaxation=r,
    )


def _add_chgnet(row: dict, lattice: np.ndarray, frac: np.ndarray, z: np.ndarray) -> None:
    """Relax a structurally valid crystal with CHGNet (:func:`pipeline.relax.relax_crystals`:
    FIRE to 0.1 eV/A, at most 100 steps) into ``row``: ``chgnet_ok``, ``chgnet_reason``,
    :data:`CHGNET_COLUMNS` and the result itself as ``relaxation`` (the relaxed structure)."""
    if not row["struct_valid"]:
        row.update(chgnet_ok=False, chgnet_reason="not structurally valid")
        row.update(dict.fromkeys(CHGNET_COLUMNS))
        return
    r = relax_crystals([S.make_crystal(z, frac, lattice, name=row["name"])])[0]
    row.update(
        chgnet_ok=r.relaxed,
        chgnet_reason=r.reason,
        chgnet_energy_per_atom=r.energy_per_atom,
        chgnet_relaxed_energy_per_atom=r.relaxed_energy_per_atom,
        relaxation=r,
    )


def molecule_set_metrics(rows: list[dict], train_smiles: set[str] | None) -> dict:
    """Fill ``unique``/``novel``/``passed`` in ``rows`` (in place) and return the metrics dict.

    ``train_smiles``: canonical SMILES (``molecule_checks.canonicalize_smiles``) or None.
    """
    out = dict.fromkeys(MOLECULE_KEYS)
    out["n"] = len(rows)
    if not rows:
        return out
    seen: set[str] = set()
    for row in rows:
        smiles = row.get("smiles") if row["read_ok"] else None
        row["unique"] = smiles is not None and smiles not in seen
        row["unique_reason"] = (
            "ok" if row["unique"] else ("not valid" if smiles is None else "duplicate SMILES")
        )
        if smiles is not None:
            seen.add(smiles)
        if train_smiles is not None:
            novel = mc.is_novel(smiles, train_smiles)
            row["novel"], row["novel_reason"] = novel.ok, novel.reason
    judged = [r for r in rows if r["read_ok"]]
    atoms = sum(r["n_atoms"] for r in judged)
    stable_atoms = sum(r["n_stable_atoms"] for r in judged)
    out["atom_stability"] = stable_atoms / atoms if atoms else None
    out["molecule_stability"] = sum(r.get("stable", False) for r in rows) / len(rows)
    out["validity"] = sum(r.get("valid", False) for r in rows) / len(rows)
    out["edm_validity"] = sum(r.get("edm_valid", False) for r in rows) / len(rows)
    smiles = [r.get("smiles") for r in rows]
    out["uniqueness"] = mc.uniqueness(smiles)
    out["novelty"] = mc.novelty(smiles, train_smiles) if train_smiles is not None else None
    out["connectivity"] = sum(r.get("connected", False) for r in rows) / len(rows)
    if any("posebusters" in r for r in judged):
        out["posebusters_pass"] = sum(r.get("posebusters", False) for r in rows) / len(rows)
    for row in rows:
        row["passed"] = bool(row["read_ok"]) and all(
            row.get(c, False) for c in required_checks(row)
        )
    return out


def required_checks(row: dict) -> list[str]:
    """The checks a molecule row must pass: validity (the file's bonds, else the perceived ones),
    connectivity, uniqueness, 3-D coordinates, and PoseBusters and novelty when they ran. EDM's
    distance-based stability is not one of them: it is the column papers compare, and it calls
    ideal benzene unstable (its aromatic C-C lengths fall between EDM's single and double)."""
    return ["valid", "connected", "unique", "coords_3d"] + [
        c for c in ("posebusters", "novel") if c in row
    ]


def check_crystals(
    names: Sequence[str],
    lattices: Sequence[np.ndarray],
    fracs: Sequence[np.ndarray],
    zs: Sequence[np.ndarray],
    fingerprints: bool = False,
    chgnet: bool = False,
    notes: Sequence[str | None] | None = None,
) -> list[dict]:
    """Per-crystal verdict rows: ``lattices[k]`` (3, 3), ``fracs[k]`` (N_k, 3), ``zs[k]`` (N_k,);
    ``notes[k]`` the reader's note (a parser warning, symmetry generated from a symbol).

    With ``fingerprints`` the rows carry ``struct_fp`` / ``comp_fp`` arrays (for coverage; not CSV
    columns); with ``chgnet`` a structurally valid crystal is relaxed by CHGNet
    (:func:`_add_chgnet`).
    """
    rows = []
    notes = list(notes) if notes is not None else [None] * len(names)
    for name, lattice, frac, z, note in zip(names, lattices, fracs, zs, notes, strict=True):
        struct = cc.structural_validity(lattice, frac, z)
        comp = cc.compositional_validity(z)
        structure = cc.to_structure(lattice, frac, z)
        row = {
            **_read_row("crystal", name, note),
            "n_atoms": int(np.size(z)),
            "formula": structure.composition.reduced_formula if structure else None,
            "struct_valid": struct.ok,
            "struct_reason": struct.reason,
            "comp_valid": comp.ok,
            "comp_reason": comp.reason,
            "valid": struct.ok and comp.ok,
            "density": cc.density(structure) if structure else None,
            "num_elements": cc.num_elements(z) if np.size(z) else None,
            "structure": structure,
        }
        if fingerprints:
            # CDVAE fingerprints every constructed crystal, valid or not (Crystal.get_fingerprints)
            row["struct_fp"] = fp.structure_fingerprint(structure)
            row["comp_fp"] = fp.composition_fingerprint(z) if structure is not None else None
        if chgnet:
            _add_chgnet(row, lattice, frac, z)
        rows.append(row)
    return rows


def crystal_set_metrics(
    rows: list[dict],
    reference: Sequence | None = None,
    reference_fps: tuple[list, list] | None = None,
    cutoffs: dict[str, float] | None = None,
    matching: bool = True,
) -> dict:
    """Fill ``unique``/``novel``/``passed`` in ``rows`` (in place) and return the metrics dict.

    ``reference``: pymatgen Structures of the reference (test) split or None; ``reference_fps``:
    their (structure, composition) fingerprints; ``cutoffs``: ``COV_CUTOFFS[name]``. Coverage needs
    both of the last two, and the rows computed with ``fingerprints=True``. ``matching=False``
    skips the StructureMatcher metrics: uniqueness and novelty stay None and ``passed`` is validity.
    """
    out = dict.fromkeys(CRYSTAL_KEYS)
    out["n"] = len(rows)
    if not rows:
        return out
    out["structural_validity"] = sum(r.get("struct_valid", False) for r in rows) / len(rows)
    out["compositional_validity"] = sum(r.get("comp_valid", False) for r in rows) / len(rows)
    valid = [r for r in rows if r.get("valid", False)]
    if matching:
        unique = cc.unique_mask([r["structure"] for r in valid])
        for row in rows:
            row["unique"], row["unique_reason"] = False, "not valid"
        for row, u in zip(valid, unique, strict=True):
            row["unique"], row["unique_reason"] = u, "ok" if u else "matches an earlier crystal"
        out["uniqueness"] = sum(unique) / len(valid) if valid else None
    if matching and reference is not None:
        uniq_rows = [r for r in valid if r["unique"]]
        novel = cc.novel_mask([r["structure"] for r in uniq_rows], reference)
        for row in rows:
            row["novel"], row["novel_reason"] = False, row["unique_reason"]
        for row, n in zip(uniq_rows, novel, strict=True):
            row["novel"], row["novel_reason"] = n, "ok" if n else "matches a reference crystal"
        out["novelty"] = sum(novel) / len(uniq_rows) if uniq_rows else None
    if reference is not None:
        out["wdist_density"] = cc.wdist(
            [r["density"] for r in valid], [s.density for s in reference]
        )
        out["wdist_num_elements"] = cc.wdist(
            [r["num_elements"] for r in valid], [len(s.composition.elements) for s in reference]
        )
    if reference_fps is not None and cutoffs is not None and any("struct_fp" in r for r in rows):
        recall, precision = fp.coverage(
            [r.get("struct_fp") for r in rows],
            [r.get("comp_fp") for r in rows],
            reference_fps[0],
            reference_fps[1],
            cutoffs["struc"],
            cutoffs["comp"],
        )
        out["coverage_recall"], out["coverage_precision"] = recall, precision
    for row in rows:
        checks = ["valid"] + [c for c in ("unique", "novel") if c in row]
        row["passed"] = bool(row["read_ok"]) and all(row.get(c, False) for c in checks)
    return out
