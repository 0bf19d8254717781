"""PoseBusters verdicts kept on disk, keyed by the posed molecule up to atom order and name.

A PoseBusters verdict depends on the molecule's graph (bonds, charges, stereo) and on its 3-D
coordinates; the energy ratio's reference ensemble depends on the graph alone, and PoseBusters
already caches it per InChI inside one process (``posebusters.modules.energy_ratio.get_energies``
is a ``functools.cache``). Its API takes no reference energy from outside, so what is kept across
processes and runs here is the whole verdict, for a pose seen before: a screen run again on the
same files, a design's samples screened afterwards, or the same record twice in one input.

The key (:func:`pose_key`) names the posed molecule exactly, in an atom order fixed by RDKit's
canonical ranks and the coordinates: a copy with its atoms re-ordered or renamed gets the same
key; any other graph or any other coordinate (to the last bit) gets another.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from rdkit import Chem

from pipeline.verdict import Verdict


def pose_key(mol: Chem.Mol) -> str | None:
    """Hex SHA-256 naming the posed molecule, the same for any atom order and name.

    ``mol``: a sanitised molecule with a conformer; None for one without a conformer (nothing to
    key on: its verdict is not cached). The atoms are put in RDKit's canonical order, symmetry
    classes unbroken (``CanonicalRankAtoms(breakTies=False)``), ties broken by the coordinates;
    the key hashes the isomeric canonical SMILES, then in that order each atom's element, formal
    charge and radical electrons with its coordinates (float64, Angstrom), then every bond as its
    two positions in that order and its bond order.
    """
    if mol.GetNumConformers() == 0:
        return None
    pos = mol.GetConformer().GetPositions()  # (num_atoms, 3)
    classes = list(Chem.CanonicalRankAtoms(mol, breakTies=False))
    order = sorted(range(mol.GetNumAtoms()), key=lambda i: (classes[i], *pos[i]))
    place = {atom: k for k, atom in enumerate(order)}
    atoms = [
        (a.GetAtomicNum(), a.GetFormalCharge(), a.GetNumRadicalElectrons())
        for a in (mol.GetAtomWithIdx(i) for i in order)
    ]
    bonds = sorted(
        (*sorted((place[b.GetBeginAtomIdx()], place[b.GetEndAtomIdx()])), b.GetBondTypeAsDouble())
        for b in mol.GetBonds()
    )
    digest = hashlib.sha256(Chem.MolToSmiles(mol, isomericSmiles=True).encode())
    digest.update(json.dumps([atoms, bonds]).encode())
    digest.update(np.ascontiguousarray(pos[order], dtype=np.float64).tobytes())
    return digest.hexdigest()


class VerdictCache:
    """PoseBusters verdicts in one SQLite file, under the settings that produced them.

    ``settings``: whatever changes a verdict (PoseBusters' and RDKit's versions, the ensemble size,
    the version of the rules that read PoseBusters' table), hashed into every stored key so that
    another setting never reads these verdicts. Several processes may share the file (SQLite
    locks it); an entry is written once its verdict is known.
    """

    def __init__(self, path: str | Path, settings: dict):
        self.path = Path(path)
        self.namespace = json.dumps(settings, sort_keys=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, ok INTEGER, reason TEXT)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def _stored(self, key: str) -> str:
        return hashlib.sha256(f"{self.namespace}\0{key}".encode()).hexdigest()

    def get_many(self, keys: Iterable[str]) -> dict[str, Verdict]:
        """The known verdicts of ``keys`` (pose keys), as ``{key: Verdict}``; unknown keys absent."""
        by_stored = {self._stored(k): k for k in set(keys)}
        found: dict[str, Verdict] = {}
        stored = list(by_stored)
        with self._connect() as db:
            for start in range(0, len(stored), 500):  # SQLite's limit on bound parameters
                part = stored[start : start + 500]
                marks = ",".join("?" * len(part))
                query = f"SELECT key, ok, reason FROM verdicts WHERE key IN ({marks})"
                for key, ok, reason in db.execute(query, part):
                    found[by_stored[key]] = Verdict(bool(ok), reason)
        return found

    def put_many(self, verdicts: dict[str, Verdict]) -> None:
        """Store ``{pose key: Verdict}`` (an entry already there is replaced)."""
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?)",
                [(self._stored(k), int(v.ok), v.reason) for k, v in verdicts.items()],
            )
