"""QM9 from the qm9pack wheel: values, EDM's split, the canonical archive reader."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch

from pipeline import keys as K
from pipeline import qm9


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """The first 200 molecules of qm9_part1.csv, through the real reader."""
    path = tmp_path_factory.mktemp("qm9") / "head.csv"
    with open(qm9.qm9pack_files()[0]) as f:
        path.write_text("".join(next(f) for _ in range(201)))
    return qm9.read_qm9pack([path])


@pytest.fixture(scope="module")
def full():
    return qm9.load_qm9()


def test_first_molecule_is_methane_with_qm9_values(head):
    d = head[0]
    assert d.name == "dsgdb9nsd_000001" and d.smiles == "C"
    assert d.z.tolist() == [6, 1, 1, 1, 1]
    # QM9's dsgdb9nsd_000001.xyz, first atom and U0 (Hartree).
    torch.testing.assert_close(d.pos[0], torch.tensor([-0.0126981359, 1.0858041578, 0.0080009958]))
    assert d.y.shape == (1, len(qm9.PROPERTIES))
    assert d.y[0, qm9.PROPERTIES.index("InternalEnergy_0K_au")].item() == pytest.approx(-40.47893)
    # C-H bonds of methane are 1.09 A.
    ch = (d.pos[1:] - d.pos[0]).norm(dim=1)
    torch.testing.assert_close(ch, torch.full((4,), 1.0919), atol=2e-3, rtol=0)


def test_edm_split_matches_edm_code():
    splits = qm9.edm_split()
    assert {k: len(v) for k, v in splits.items()} == {"train": 100000, "val": 17748, "test": 13083}
    # EDM (gen_splits_gdb9): np.random.seed(0); np.random.permutation(Nmols); train | valid | test.
    np.random.seed(0)  # noqa: NPY002  (EDM's own calls, on purpose)
    perm = np.random.permutation(130831)  # noqa: NPY002
    np.testing.assert_array_equal(
        np.concatenate([splits[k] for k in ("train", "val", "test")]), perm
    )
    with pytest.raises(ValueError, match="all 130831"):
        qm9.edm_split(1000)


def test_full_qm9_sizes_and_train_histogram(full):
    assert len(full.structures) == 130831 and not full.rejects
    assert {k: len(v) for k, v in full.splits.items()} == {
        "train": 100000,
        "val": 17748,
        "test": 13083,
    }
    n = full.structures.num_atoms().numpy()
    train = n[full.splits["train"]]
    assert train.min() == 3 and train.max() == 29
    # EDM's published training histogram (configs/datasets_config.py, qm9_with_h "n_nodes").
    edm_n_nodes = {22: 3393, 17: 13025, 23: 4848, 21: 9970, 19: 13832, 20: 9482, 16: 10644,
                   13: 3060, 15: 7796, 25: 1506, 18: 13364, 12: 1689, 11: 807, 24: 539, 14: 5136,
                   26: 48, 7: 16, 10: 362, 8: 49, 9: 124, 27: 266, 4: 4, 29: 25, 6: 9, 5: 5, 3: 1}  # fmt: skip
    values, counts = np.unique(train, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist(), strict=True)) == edm_n_nodes
    assert n.mean() == pytest.approx(18.03, abs=0.005)
    assert set(np.unique(full.structures.values[K.Z].numpy()).tolist()) == {1, 6, 7, 8, 9}
    # EDM permutes the molecules in QM9 index order, so the set must be in that order.
    index = np.array([int(name.split("_")[1]) for name in full.structures.strings[K.NAME]])
    assert (np.diff(index) > 0).all() and index[-1] == 133885


def _qm9_xyz(d) -> str:
    """A molecule in QM9's own XYZ format (with Mathematica exponents, as the archive has)."""
    index = int(d.name.split("_")[1])
    props = "\t".join(f"{v:.6g}".replace("e", "*^") for v in d.y[0].double().tolist())
    atoms = "\n".join(
        f"{'HCNOF'[[1, 6, 7, 8, 9].index(z)]}\t{x:.10f}\t{y:.10f}\t{w:.10f}\t0.0"
        for z, (x, y, w) in zip(d.z.tolist(), d.pos.double().tolist(), strict=True)
    )
    return (
        f"{len(d.z)}\ngdb {index}\t{props}\t\n{atoms}\n1.0\t2.0\n{d.smiles}\t{d.smiles}\n"
        "InChI=1S/x\tInChI=1S/x\n"
    )


def test_canonical_archive_reader_matches_qm9pack(head, tmp_path):
    """The local-file option (offline): a tar.bz2 of QM9-format XYZ files plus an
    uncharacterized list gives the same molecules as qm9pack, minus the excluded ones."""
    records = list(head[:40])
    archive = tmp_path / "dsgdb9nsd.xyz.tar.bz2"
    with tarfile.open(archive, "w:bz2") as tar:
        for d in reversed(records):  # archive order must not matter
            data = _qm9_xyz(d).encode()
            info = tarfile.TarInfo(f"{d.name}.xyz")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    excluded = tmp_path / "uncharacterized.txt"
    excluded.write_text(" Index   SMILES  ...\n   5  C#N  x  y\n   17  CCO  x  y\n")
    got = qm9.read_qm9_archive(archive, excluded)
    expected = [d for d in records if int(d.name.split("_")[1]) not in (5, 17)]
    assert [d.name for d in got] == [d.name for d in expected]
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a.z, b.z) and a.smiles == b.smiles
        torch.testing.assert_close(a.pos, b.pos, atol=1e-7, rtol=0)
        torch.testing.assert_close(a.y, b.y, rtol=1e-5, atol=1e-6)


def test_check_molecules_flags_bad_rows(head):
    broken = head[:10]
    broken.values[K.POS][7] = broken.values[K.POS][6]  # molecule 1 (NH3): atoms 2 and 3 coincide
    broken.values[K.POS][10, 1] = float("nan")  # molecule 2 (H2O, atoms 9-11)
    broken.values[K.Z][20] = 0
    reasons = qm9.check_molecules(broken)
    assert "overlapping atoms" in reasons[1] and "non-finite" in reasons[2]
    assert (
        "unknown element"
        in reasons[np.searchsorted(np.cumsum(broken.num_atoms().numpy()), 20, side="right")]
    )
    assert sum(bool(r) for r in reasons) == 3
