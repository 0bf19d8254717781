"""Resumable tasks: content hashes, and a killed screen run that reuses its finished chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flows.persist import content_hash
from pipeline import qm9
from pipeline import structures as S
from pipeline.io import read_structures, write_structures


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
    results = sorted((out / ".prefect").iterdir())
    assert len(results) == 4

    # A run killed while one chunk was being checked: that chunk's result never got written.
    results[0].unlink()
    (out / "screen.csv").unlink()
    second = screen_flow(config, return_state=True)
    states = _task_states(second.state_details.flow_run_id)
    checks = sorted(s for name, s in states.items() if name.startswith("check_molecules_task"))
    assert checks == ["Cached", "Cached", "Cached", "Completed"]
    assert (out / "screen.csv").read_text() == table
