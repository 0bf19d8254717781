"""Dataset cards, the registry, splits and the content-hash cache."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from pipeline import cache, qm9
from pipeline import datasets as D

PEROV = D.shared_data_dir() / "crystals" / "perov_5"
needs_shared = pytest.mark.skipif(
    not PEROV.exists(), reason=f"shared reference data not found at {PEROV} (set LDSM_SHARED_DATA)"
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LDSM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_cards_are_complete_and_consistent():
    cards = D.load_cards()
    assert {"qm9", "perov-5", "carbon-24", "mp-20", "files"} <= set(cards)
    for card in cards.values():
        assert card.licence and card.source and card.split and card.splits
    assert cards["qm9"].properties == list(qm9.PROPERTIES)
    with pytest.raises(ValueError, match="unknown data set 'qm10'"):
        D.get_card("qm10")


def test_qm9pack_files_match_card_checksums():
    card = D.get_card("qm9")
    status = D.verify_checksums(card, D.source_files(card))
    assert status == {f"qm9_part{i}.csv": "ok" for i in (1, 2, 3)}


def test_random_split_sizes_and_determinism():
    splits = D.random_split(1003, [0.8, 0.1, 0.1], ["train", "val", "test"])
    assert {k: len(v) for k, v in splits.items()} == {"train": 803, "val": 100, "test": 100}
    np.testing.assert_array_equal(np.sort(np.concatenate(list(splits.values()))), np.arange(1003))
    again = D.random_split(1003, [0.8, 0.1, 0.1], ["train", "val", "test"])
    assert all(np.array_equal(splits[k], again[k]) for k in splits)


@needs_shared
def test_cdvae_folder_split_by_file_and_cache_hit(tmp_path, home):
    folder = tmp_path / "perov"
    folder.mkdir()
    # A small real copy: the first 30 rows of each split file (CSV rows span lines, so via csv).

    csv.field_size_limit(2**31 - 1)
    for split in ("val", "test"):
        with (
            open(PEROV / f"{split}.csv", newline="") as src,
            open(folder / f"{split}.csv", "w", newline="") as dst,
        ):
            reader, writer = csv.reader(src), csv.writer(dst)
            for _ in range(31):
                writer.writerow(next(reader))
    ds = D.load_dataset("perov-5", folder)
    assert {k: len(v) for k, v in ds.splits.items()} == {"val": 30, "test": 30}
    assert ds.structures[int(ds.splits["test"][0])].y.shape == (1, 1)
    assert not ds.rejects and (ds.structures.num_atoms() == 5).all()
    entries = list((home / "ingest").glob("perov-5-*.pt"))
    assert len(entries) == 1
    # Second load reads the cache: proven by a cache entry whose content we altered.
    payload = cache.load(entries[0])
    payload["name"] = "from-cache"
    cache.save(entries[0], payload)
    assert D.load_dataset("perov-5", folder).name == "from-cache"
    # A changed source file gives a new key and a fresh parse.
    shutil.copy(folder / "val.csv", folder / "test.csv")
    fresh = D.load_dataset("perov-5", folder)
    assert fresh.name == "perov-5" and len(list((home / "ingest").glob("perov-5-*.pt"))) == 2
    summary = D.summarise(fresh)
    assert summary["splits"] == {"val": 30, "test": 30} and summary["rejected"] == 0
    assert summary["atoms_per_structure"] == {"5": 60}
    assert sum(summary["elements"].values()) == 300


def test_files_dataset_from_a_path(tmp_path, home):
    from ase.collections import g2

    from pipeline import converters as C
    from pipeline.io import write_structures

    write_structures([C.from_ase(g2[n], name=n) for n in g2.names], tmp_path / "g2" / "all.xyz")
    (tmp_path / "g2" / "broken.sdf").write_text("title\n\n\n  3  2  0  0  0  0\n")
    ds = D.load_dataset(str(tmp_path / "g2"))
    assert ds.name == "files" and len(ds.structures) == 162
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 130, "val": 16, "test": 16}
    assert len(ds.rejects) == 1 and "truncated record" in ds.rejects[0].reason
    with pytest.raises(FileNotFoundError, match="give --path"):
        D.source_files(D.get_card("files"))
