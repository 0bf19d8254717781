"""Resumable tasks: content hashes, and a killed screen run that reuses its finished chunks."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from flows.persist import STORE, ChunkStore, chunks_kept, content_hash
from flows.screen import check_molecules_task
from pipeline import qm9
from pipeline import structures as S
from pipeline.io import read_structures, write_structures
from pipeline.structure_set import StructureSet


@pytest.fixture(scope="module")
def sdf(tmp_path_factory):
    """20 QM9 molecules in one SDF."""
    folder = tmp_path_factory.mktemp("persist")
    head = folder / "head.csv"
    with open(qm9.qm9pack_files()[0]) as f:
        head.write_text("".join(next(f) for _ in range(21)))
    write_structures(qm9.read_qm9pack([head]), folder / "in" / "qm9.sdf")
    return folder / "in"


def test_content_hash_follows_content_not_identity(sdf):
    a = read_structures(sdf).records
    b = read_structures(sdf).records
    assert content_hash(a) == content_hash(b)  # two reads: new tensors, same content
    moved = [S.make_molecule(d.z, d.pos + 1e-3 * (k == 3), name=d.name) for k, d in enumerate(b)]
    assert content_hash(moved) != content_hash(a)
    assert content_hash({"x": [1], "y": None}) == content_hash({"y": None, "x": [1]})
    assert content_hash([1]) != content_hash(["1"]) != content_hash((1.0,))
    assert content_hash(torch.zeros(2, dtype=torch.float32)) != content_hash(np.zeros(2))
    with pytest.raises(TypeError, match="no content hash for object"):
        content_hash(object())


def _task_states(flow_run_id) -> dict[str, str]:
    import httpx
    from prefect.settings import PREFECT_API_URL

    response = httpx.post(
        f"{PREFECT_API_URL.value()}/task_runs/filter",
        json={"flow_runs": {"id": {"any_": [str(flow_run_id)]}}},
    )
    response.raise_for_status()
    return {t["name"]: t["state"]["name"] for t in response.json()}


def test_rerun_reuses_finished_chunks(sdf, tmp_path, monkeypatch, prefect_harness):
    from flows.screen import ScreenConfig, screen_flow

    monkeypatch.setenv("LDSM_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    config = ScreenConfig(input=str(sdf), out=str(out), chunk_size=5, posebusters=False)
    first = screen_flow(config, return_state=True)
    table = (out / "screen.csv").read_text()
    states = _task_states(first.state_details.flow_run_id)
    checks = [s for name, s in states.items() if name.startswith("check_molecules_task")]
    assert checks == ["Completed"] * 4  # 20 molecules, chunks of 5
    results = sorted((out / STORE).iterdir())
    assert len(results) == 4

    # A run killed while one chunk was being checked: that chunk's result never got written.
    results[0].unlink()
    (out / "screen.csv").unlink()
    second = screen_flow(config, return_state=True)
    states = _task_states(second.state_details.flow_run_id)
    checks = [s for name, s in states.items() if name.startswith("check_molecules_task")]
    assert checks == ["Completed"]  # only the lost chunk runs again
    assert (out / "screen.csv").read_text() == table


class Planted:
    """A pickle that touches ``marker`` when it is loaded: what a hostile folder would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_planted_pickle_or_an_old_chunk_is_refused_and_recomputed(
    sdf, tmp_path, monkeypatch, capfd, prefect_harness
):
    from flows.screen import ScreenConfig, screen_flow

    monkeypatch.setenv("LDSM_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    config = ScreenConfig(input=str(sdf), out=str(out), chunk_size=5, posebusters=False)
    screen_flow(config)
    table = (out / "screen.csv").read_text()
    first, second, third, _ = sorted((out / STORE).iterdir())
    markers = tmp_path / "ran-a", tmp_path / "ran-b"
    first.write_bytes(pickle.dumps(Planted(markers[0])))  # a bare pickle
    np.savez(second, tree=np.array([Planted(markers[1])], dtype=object))  # a pickled array
    # A chunk of the previous format: a torch.save under the same key.
    old = third.with_suffix(".pt")
    torch.save({"format": "ldsm-chunk", "version": 1, "key": third.stem, "value": []}, old)
    third.unlink()
    # Prefect's own result files name their serializer: one saying "pickle" is never read.
    legacy = out / ".prefect"
    legacy.mkdir()
    (legacy / "x").write_text('{"metadata": {"serializer": {"type": "pickle"}}, "result": ""}')
    capfd.readouterr()
    screen_flow(config)
    assert not any(m.exists() for m in markers)
    lines = [line for line in capfd.readouterr().err.splitlines() if "refused" in line]
    assert len(lines) == 3
    assert [str(p) in line for p, line in zip((first, second, old), lines, strict=True)]
    assert "ldsm-chunk v1" in lines[2]
    assert (out / "screen.csv").read_text() == table  # recomputed, same verdicts
    found, rows = ChunkStore(out, check_molecules_task).load(first.stem)
    assert found and len(rows) == 5  # rewritten as data
    assert ChunkStore(out, check_molecules_task).load(third.stem)[0]


def test_chunks_round_trip_as_data_and_are_bound_to_their_key(sdf, tmp_path):
    from pymatgen.core import Lattice, Structure
    from rdkit import Chem
    from torch_geometric.data import Data

    from pipeline.generate import ChunkResult

    mol = Chem.AddHs(Chem.MolFromSmiles("c1ccccc1O"))
    mol.SetProp("_Name", "phenol")
    salt = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    records = read_structures(sdf).records[:2]
    value = {
        "rows": [{"mol": mol, "fp": np.arange(3.0), "n": np.int64(4), "ok": True, "x": None}],
        "structure": salt,
        "chunk": ChunkResult(1, torch.arange(2), records, 8, 0.5),
        "generated": Data(z=torch.tensor([8, 1, 1]), pos=torch.zeros(3, 3), name="water"),
        (1, "a"): 2.5,
    }
    store = ChunkStore(tmp_path, check_molecules_task)
    key = store.key({"chunk": records})
    assert store.save(key, value)
    found, back = store.load(key)
    assert found
    assert Chem.MolToSmiles(back["rows"][0]["mol"]) == Chem.MolToSmiles(mol)
    assert back["rows"][0]["mol"].GetProp("_Name") == "phenol"
    assert np.array_equal(back["rows"][0]["fp"], np.arange(3.0)) and back["rows"][0]["n"] == 4
    assert back["structure"] == salt and back[(1, "a")] == 2.5
    assert content_hash(back["chunk"].structures) == content_hash(records)
    assert torch.equal(back["chunk"].rows, torch.arange(2))  # tensors come back as tensors
    assert isinstance(back["generated"], Data)
    assert content_hash(back["generated"]) == content_hash(value["generated"])
    # A structure hashes the same as a read Record and as a generated Data.
    assert content_hash(StructureSet.from_data_list(records)[0]) == content_hash(records[0])
    # A chunk copied under another chunk's name is refused.
    other = store.key({"chunk": records[:1]})
    store.path(key).rename(store.path(other))
    assert store.load(other) == (False, None)


def test_a_small_input_is_spread_over_every_worker():
    from flows.screen import ScreenConfig, _chunks, _workers

    assert [len(c) for c in _chunks(list(range(5)), 256, 2)] == [3, 2]
    assert [len(c) for c in _chunks(list(range(600)), 256, 2)] == [256, 256, 88]
    assert [len(c) for c in _chunks(list(range(5)), 256, 8)] == [1] * 5
    assert _chunks([], 256, 2) == []
    config = ScreenConfig(input="x", out="o")
    assert _workers(config) == 2
    assert _workers(config.model_copy(update={"workers": 4})) == 4
    assert _workers(config.model_copy(update={"dask_address": "tcp://127.0.0.1:8786"})) == 1


def test_the_stop_line_says_what_was_kept(tmp_path):
    assert chunks_kept(tmp_path, "checked") == "no checked chunk had been stored yet"
    store = ChunkStore(tmp_path, check_molecules_task)
    assert store.save(store.key({"chunk": 1}), [{"valid": True}])
    assert chunks_kept(tmp_path, "checked") == (
        f"1 checked chunk kept in {tmp_path / STORE}; run the same command again to resume"
    )
