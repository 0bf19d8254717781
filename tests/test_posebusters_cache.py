"""PoseBusters' fast path: the same verdicts as PoseBusters' own call, and a verdict cache that
names a posed molecule whatever its atom order or name."""

from __future__ import annotations

import numpy as np
import pytest
from posebusters import PoseBusters
from rdkit import Chem

from pipeline import molecule_3d_checks as m3d
from pipeline import molecule_checks as mc
from pipeline import qm9
from pipeline.posebusters_cache import VerdictCache, pose_key

# QM9 molecules with rings, N, O and F (qm9pack indices, 7 to 9 heavy atoms)
QM9_ROWS = (400, 700, 1000, 1300, 1600)


@pytest.fixture(scope="module")
def molecules(tmp_path_factory) -> list[Chem.Mol]:
    """Five real QM9 molecules (perceived bonds, as the screen judges them) and a strained copy
    of the first (noise of 0.4 Angstrom on every coordinate), which fails PoseBusters."""
    head = tmp_path_factory.mktemp("qm9") / "head.csv"
    with open(qm9.qm9pack_files()[0]) as f:
        head.write_text("".join(next(f) for _ in range(max(QM9_ROWS) + 2)))
    structures = qm9.read_qm9pack([head])
    mols = []
    for row in QM9_ROWS:
        mol, reason = mc.perceived_mol(structures[row].z.numpy(), structures[row].pos.numpy())
        assert mol is not None, reason
        mols.append(mol)
    strained = Chem.Mol(mols[0])
    conformer = strained.GetConformer()
    noise = np.random.default_rng(0).normal(scale=0.4, size=(strained.GetNumAtoms(), 3))
    for atom, xyz in enumerate(conformer.GetPositions() + noise):
        conformer.SetAtomPosition(atom, xyz.tolist())
    return [*mols, strained]


def reordered_and_renamed(mol: Chem.Mol, seed: int = 1) -> Chem.Mol:
    order = np.random.default_rng(seed).permutation(mol.GetNumAtoms())
    copy = Chem.RenumberAtoms(mol, [int(k) for k in order])
    copy.SetProp("_Name", "a copy")
    return copy


def test_fast_path_gives_posebusters_own_verdicts(molecules, tmp_path):
    buster = PoseBusters(config="mol")
    table = buster.bust(molecules, None, None, full_report=True)
    plain = m3d.read_posebusters_table(table, buster.config)
    assert [v.ok for v in plain] == [True] * 5 + [False]  # the strained copy fails
    cache = tmp_path / "verdicts.sqlite"
    assert m3d.posebusters_checks(molecules, cache=cache) == plain  # busted, then stored
    assert m3d.posebusters_checks(molecules, cache=cache) == plain  # read back
    assert m3d.posebusters_checks([None, *molecules])[1:] == plain


def test_a_reordered_renamed_copy_hits_the_cache(molecules, tmp_path):
    cache = tmp_path / "verdicts.sqlite"
    verdicts = m3d.posebusters_checks(molecules, cache=cache)
    copies = [reordered_and_renamed(m) for m in molecules]
    assert [pose_key(c) for c in copies] == [pose_key(m) for m in molecules]
    # Read straight from the store: no PoseBusters run is needed for the copies.
    store = VerdictCache(cache, m3d.verdict_cache_settings(m3d.POSEBUSTERS_CONFORMERS))
    stored = store.get_many([pose_key(c) for c in copies])
    assert [stored[pose_key(c)] for c in copies] == verdicts
    assert m3d.posebusters_checks(copies, cache=cache) == verdicts
    # Another ensemble size is another setting: nothing of the first is read back.
    other = VerdictCache(cache, m3d.verdict_cache_settings(50))
    assert other.get_many([pose_key(m) for m in molecules]) == {}


def test_the_pose_key_tells_poses_and_graphs_apart(molecules):
    mol = molecules[1]
    moved = Chem.Mol(mol)
    position = moved.GetConformer().GetAtomPosition(0)
    moved.GetConformer().SetAtomPosition(0, (position.x + 1e-9, position.y, position.z))
    assert pose_key(moved) != pose_key(mol)
    charged = Chem.RWMol(mol)
    charged.GetAtomWithIdx(0).SetFormalCharge(1)
    assert pose_key(charged) != pose_key(mol)
    assert pose_key(Chem.MolFromSmiles("CCO")) is None  # no conformer, nothing to key on


def test_duplicate_poses_share_a_verdict_and_an_empty_ensemble_is_refused(molecules):
    verdicts = m3d.posebusters_checks([molecules[2], reordered_and_renamed(molecules[2], 7)])
    assert verdicts[0] == verdicts[1]
    with pytest.raises(ValueError, match=">= 1 conformer"):
        m3d.posebusters_config(0)
