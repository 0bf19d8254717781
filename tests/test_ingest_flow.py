"""The ingest flow under a Prefect test harness, on small real sets (Perov-5 rows, ase g2)."""

from __future__ import annotations

import csv
import json

import pytest
from ase.collections import g2

from flows import ingest
from flows.cli import main
from pipeline import cache
from pipeline import converters as C
from pipeline import datasets as D
from pipeline.io import write_structures

PEROV = D.shared_data_dir() / "crystals" / "perov_5"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LDSM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def perov_folder(tmp_path):
    if not PEROV.exists():
        pytest.skip(f"shared reference data not found at {PEROV} (set LDSM_SHARED_DATA)")
    csv.field_size_limit(2**31 - 1)
    folder = tmp_path / "perov"
    folder.mkdir()
    for split, rows in (("val", 40), ("test", 20)):
        with (
            open(PEROV / f"{split}.csv", newline="") as src,
            open(folder / f"{split}.csv", "w", newline="") as dst,
        ):
            reader, writer = csv.reader(src), csv.writer(dst)
            for _ in range(rows + 1):
                writer.writerow(next(reader))
    return folder


def test_featurise_task_directly(tmp_path):
    records = [C.from_ase(g2[n], name=n) for n in ("CH4", "H2O", "C6H6")]
    write_structures(records, tmp_path / "m.xyz")
    card = D.get_card("files")
    parsed = ingest.parse_task.fn(card, D.source_files(card, tmp_path / "m.xyz"))
    features = ingest.featurise_task.fn(parsed)
    assert features == {"atom_types": [1, 6, 8], "min_atoms": 3, "max_atoms": 12}


def test_cli_ingest_perov_then_cache_hit(perov_folder, tmp_path, home, prefect_harness, capsys):
    out = tmp_path / "summary.json"
    argv = ["ingest", "perov-5", "--path", str(perov_folder), "--summary-json", str(out)]
    assert main(argv) == 0
    summary = json.loads(out.read_text())
    assert summary["dataset"] == "perov-5" and summary["splits"] == {"val": 40, "test": 20}
    assert summary["rejected"] == 0 and summary["cached"] is False
    assert summary["atoms_per_structure"] == {"5": 60} and sum(summary["elements"].values()) == 300
    assert "| val | 40 |" in capsys.readouterr().out
    assert main(argv) == 0
    again = json.loads(out.read_text())
    assert again["cached"] is True and again["splits"] == summary["splits"]
    assert (
        again["elements"] == summary["elements"]
        and again["content_hash"] == summary["content_hash"]
    )

    import httpx
    from prefect.settings import PREFECT_API_URL

    # The REST endpoint directly: this Prefect client serialises default filters into bodies
    # its own server rejects (422) or matches nothing with.
    response = httpx.post(
        f"{PREFECT_API_URL.value()}/artifacts/filter",
        json={"artifacts": {"key": {"any_": ["ingest-perov-5", "ingest-perov-5-splits"]}}},
    )
    response.raise_for_status()
    by_key = {a["key"]: a for a in response.json()}
    assert set(by_key) == {"ingest-perov-5", "ingest-perov-5-splits"}
    assert "| val | 40 |" in by_key["ingest-perov-5"]["data"]


def test_flow_reports_rejects_from_a_folder(tmp_path, home, prefect_harness):
    folder = tmp_path / "g2"
    write_structures([C.from_ase(g2[n], name=n) for n in g2.names[:50]], folder / "g2.extxyz")
    (folder / "nan.xyz").write_text("2\n\nC nan 0 0\nH 0 0 1.09\n")
    (folder / "empty.sdf").write_text("")
    summary = ingest.ingest_flow(ingest.IngestConfig(name=str(folder), use_cache=False))
    assert summary["structures"] == 50 and sum(summary["splits"].values()) == 50
    assert summary["rejected"] == 2
    reasons = {r["file"].rsplit("/", 1)[1]: r["reason"] for r in summary["rejects"]}
    assert reasons == {"nan.xyz": "non-finite coordinates at atom 0", "empty.sdf": "empty file"}
    assert not (home / "ingest").exists()


def test_cli_unknown_name_is_one_line(capsys):
    assert main(["ingest", "qm10"]) == 2
    assert "unknown data set 'qm10'" in capsys.readouterr().err


def test_design_loading_then_ingest_share_one_cache_entry(
    perov_folder, tmp_path, home, prefect_harness
):
    """`make run` then `ldsm ingest`: the entry that the design flow's data loading wrote is
    the one ingest reads (it once lacked the ingest's `features`: KeyError)."""
    D.load_dataset("perov-5", perov_folder)  # what `ldsm design` / `ldsm train` do
    out = tmp_path / "summary.json"
    argv = ["ingest", "perov-5", "--path", str(perov_folder), "--summary-json", str(out)]
    assert main(argv) == 0
    summary = json.loads(out.read_text())
    assert summary["cached"] is True and summary["structures"] == 60
    assert (summary["min_atoms"], summary["max_atoms"]) == (5, 5) and summary["atom_types"]


def test_an_incomplete_or_unreadable_cache_entry_is_rebuilt(perov_folder, home):
    card, path = D.resolve("perov-5", perov_folder)
    entry = cache.cache_file(card.name, D.cache_key(card, D.source_files(card, path)))
    cache.save(entry, {"name": "perov-5", "properties": []})  # no structures, no splits
    assert len(D.load_dataset("perov-5", perov_folder).structures) == 60
    assert len(D.read_cache(entry).structures) == 60  # rewritten whole
    entry.write_bytes(b"not a torch file")
    assert len(D.load_dataset("perov-5", perov_folder).split_set("test")) == 20
